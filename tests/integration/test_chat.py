"""Client messages to others through the real handlers: $default (publish, sendmessage) → swarm →
(query) → post, with the same exact accounting as an operator's broadcast, the rate limits in the
rate limits table and the ids' idempotency records in the idempotency table.

DynamoDB Local (behind the strict layer) holds the tables, SQS is the project's emulator, and the
`@connections` API is a fake that records every frame.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest

from fanout.adapters.ratelimits import RateLimitsTable
from fanout.protocol import authorizer_context
from fanout.ratelimit import Admitted, BucketLimit, Limited
from tests.events import LambdaContextStub
from tests.integration.pipeline_harness import Pipeline, pipeline


@pytest.fixture
def pipe(dynamodb_local: str, local_sqs: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pipeline]:
    with pipeline(dynamodb_local, local_sqs, monkeypatch, partition_count=4, shard_count=2) as p:
        yield p


class Sender:
    """One connection of a user, sending on $default with the authorizer's context of its token."""

    def __init__(self, pipe: Pipeline, connection_id: str, user: str, publish: list[str]) -> None:
        self.pipe = pipe
        self.connection_id = connection_id
        self.user = user
        self.context = authorizer_context(user, ["room:*"], publish)

    def send(self, frame: dict[str, Any] | str) -> dict[str, Any]:
        from handlers import default

        now = int(time.time() * 1000)
        event = {
            "requestContext": {
                "routeKey": "$default",
                "messageId": uuid.uuid4().hex[:12],
                "eventType": "MESSAGE",
                "extendedRequestId": uuid.uuid4().hex,
                "requestTime": "04/Dec/2026:10:00:00 +0000",
                "messageDirection": "IN",
                "stage": "test",
                "connectedAt": now - 5000,
                "requestTimeEpoch": now,
                "identity": {"sourceIp": "203.0.113.7"},
                "requestId": uuid.uuid4().hex,
                "domainName": "abc.execute-api.us-east-1.amazonaws.com",
                "connectionId": self.connection_id,
                "apiId": "abc",
                "authorizer": {**self.context, "principalId": self.user},
            },
            "body": frame if isinstance(frame, str) else json.dumps(frame),
            "isBase64Encoded": False,
        }
        out = default.handler(event, LambdaContextStub("fanout-default"))
        assert out["statusCode"] == 200
        answer: dict[str, Any] = json.loads(out["body"])
        return answer


def received(pipe: Pipeline) -> dict[str, list[dict[str, Any]]]:
    return {cid: [json.loads(f) for f in frames] for cid, frames in pipe.connections.frames.items() if frames}


def deliver(pipe: Pipeline) -> None:
    """Run the swarm invocations $default made and drain the pipeline."""
    assert pipe.run_swarms() >= 1
    pipe.drain()


def view(pipe: Pipeline, broadcast_id: str) -> dict[str, Any]:
    status, body, _ = pipe.api("GET", f"/broadcasts/{broadcast_id}")
    assert status == 200, body
    return body


ROOM = [f"r{i}=" for i in range(6)]  # r0 and r1 are alice's; the others belong to bob, carol, dave
USERS = {"r0=": "alice", "r1=": "alice", "r2=": "bob", "r3=": "bob", "r4=": "carol", "r5=": "dave"}
OUTSIDE = ["o0=", "o1="]  # connected, in no channel: dave's second device and erin's


def seed_room(pipe: Pipeline) -> None:
    users = {**USERS, "o0=": "dave", "o1=": "erin"}
    pipe.seed_connections(
        {0: ROOM[:3] + OUTSIDE[:1], 1: ROOM[3:] + OUTSIDE[1:]},
        users=users,
        channels={c: ["room:1"] for c in ROOM},
    )
    pipe.set_occupancy("room:1", len(ROOM), 4)
    pipe.connections.live.update(ROOM + OUTSIDE)


def test_publish_reaches_every_member_once_from_the_tokens_user_and_counts_exactly(pipe: Pipeline) -> None:
    # Given a room of six connections of four users, and two connections outside it
    seed_room(pipe)
    alice = Sender(pipe, "r0=", "alice", ["room:*"])

    # When alice publishes to the room
    ack = alice.send({"action": "publish", "channel": "room:1", "message": {"text": "hi"}, "id": "m1"})
    deliver(pipe)

    # Then she gets an ack with the broadcast, and every member (her own connections too) one envelope
    assert ack == {"type": "ack", "id": "m1", "broadcastId": ack["broadcastId"], "offset": 1}
    got = received(pipe)
    assert set(got) == set(ROOM)
    for cid in ROOM:
        (frame,) = got[cid]
        assert frame["from"] == "alice" and frame["channel"] == "room:1" and frame["data"] == {"text": "hi"}
        assert frame["broadcastId"] == ack["broadcastId"]
        assert frame["offset"] == ack["offset"] and frame["epoch"]  # its place in the room's history
    record = view(pipe, ack["broadcastId"])
    assert (record["status"], record["targeted"], record["delivered"]) == ("completed", 6, 6)


def test_echo_off_leaves_out_the_senders_connection_only_and_never_targets_it(pipe: Pipeline) -> None:
    seed_room(pipe)
    alice = Sender(pipe, "r0=", "alice", ["room:*"])
    frame = {"action": "publish", "channel": "room:1", "message": "quiet", "id": "m1", "echo": False}
    ack = alice.send(frame)
    deliver(pipe)
    # her other device is a member like any other: only the sending connection is left out
    assert set(received(pipe)) == set(ROOM) - {"r0="}
    record = view(pipe, ack["broadcastId"])
    assert (record["status"], record["targeted"], record["delivered"], record["failed"]) == (
        "completed", 5, 5, 0,
    )  # fmt: skip


def test_a_direct_message_reaches_every_connection_of_that_user_and_no_one_else(pipe: Pipeline) -> None:
    seed_room(pipe)
    alice = Sender(pipe, "r0=", "alice", ["$user"])
    ack = alice.send({"action": "sendmessage", "to": "dave", "message": {"move": "e4"}, "id": "d1"})
    deliver(pipe)
    assert ack["type"] == "ack" and ack["id"] == "d1"
    got = received(pipe)
    assert set(got) == {"r5=", "o0="}  # dave's two connections, in the room or not
    assert all(f == [{**f[0], "from": "alice", "data": {"move": "e4"}}] for f in got.values())
    assert all("channel" not in f[0] for f in got.values())
    assert view(pipe, ack["broadcastId"])["targeted"] == 2


def test_sendmessage_without_a_target_relays_to_every_connection(pipe: Pipeline) -> None:
    seed_room(pipe)
    alice = Sender(pipe, "r0=", "alice", ["$all"])
    ack = alice.send({"action": "sendmessage", "message": "hello all", "id": "e1"})
    deliver(pipe)
    got = received(pipe)
    assert set(got) == set(ROOM + OUTSIDE)
    assert Counter(f[0]["from"] for f in got.values()) == {"alice": 8}
    record = view(pipe, ack["broadcastId"])
    assert (record["targeted"], record["delivered"]) == (8, 8)


def test_the_same_id_from_the_same_user_is_sent_once_and_answered_the_first_ack(pipe: Pipeline) -> None:
    seed_room(pipe)
    alice = Sender(pipe, "r0=", "alice", ["room:*"])
    other_device = Sender(pipe, "r1=", "alice", ["room:*"])
    bob = Sender(pipe, "r2=", "bob", ["room:*"])
    frame = {"action": "publish", "channel": "room:1", "message": "once", "id": "same"}

    first = alice.send(frame)
    again = alice.send(frame)
    from_her_other_device = other_device.send(frame)  # the key is the user's, not the connection's
    bobs = bob.send(frame)  # another user's same id is another message
    reused = alice.send({**frame, "message": "something else"})

    assert again == first and from_her_other_device == first
    assert bobs["type"] == "ack" and bobs["broadcastId"] != first["broadcastId"]
    assert reused["type"] == "error" and reused["code"] == "invalid" and reused["id"] == "same"
    assert pipe.run_swarms() == 2  # alice's message once, bob's once
    pipe.drain()
    assert Counter(len(f) for f in pipe.connections.frames.values()) == {2: len(ROOM)}


@pytest.fixture
def tight(dynamodb_local: str, local_sqs: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pipeline]:
    # Refills too slowly to matter within a test: only the burst counts.
    limits = {
        "connection_message_rate": 0.01,
        "connection_message_burst": 3,
        "user_message_rate": 0.01,
        "user_message_burst": 5,
    }
    with pipeline(dynamodb_local, local_sqs, monkeypatch, partition_count=2, **limits) as p:
        yield p


def test_rate_limits_per_connection_and_per_user_refuse_with_the_wait(tight: Pipeline) -> None:
    seed_room(tight)
    phone = Sender(tight, "r0=", "alice", ["room:*"])
    laptop = Sender(tight, "r1=", "alice", ["room:*"])

    def publish(sender: Sender, n: int) -> dict[str, Any]:
        return sender.send(
            {"action": "publish", "channel": "room:1", "message": n, "id": f"{sender.connection_id}{n}"}
        )

    # the phone's burst is 3
    answers = [publish(phone, n) for n in range(4)]
    assert [a["type"] for a in answers] == ["ack", "ack", "ack", "error"]
    limited = answers[3]
    assert (limited["code"], limited["action"], limited["id"]) == ("rate_limited", "publish", "r0=3")
    assert 0 < limited["retryAfterMs"] <= 100_000  # one token at 0.01/s
    # the laptop has its own connection bucket, but alice's user bucket (5) has 2 tokens left
    answers = [publish(laptop, n) for n in range(3)]
    assert [a["type"] for a in answers] == ["ack", "ack", "error"]
    assert answers[2]["code"] == "rate_limited"
    # a refused message started nothing; and its id is free again for a later retry
    assert tight.run_swarms() == 5
    assert publish(phone, 3)["code"] == "rate_limited"


def test_bucket_tokens_are_shared_by_concurrent_containers(pipe: Pipeline) -> None:
    """Eight containers (clients) take tokens of one bucket at once: the conditional writes through
    the strict layer admit exactly the burst, and every refusal tells how long to wait."""
    endpoint = pipe.dynamodb.meta.endpoint_url
    table = pipe.settings.rate_limits_table
    limit = BucketLimit(rate=0.01, burst=12)
    key = f"c#{uuid.uuid4().hex}"
    start = threading.Barrier(8)

    def container(_: int) -> list[Admitted | Limited]:
        client = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
        buckets = RateLimitsTable(client, table)
        start.wait()
        return [buckets.take(key, limit) for _ in range(5)]

    with ThreadPoolExecutor(8) as pool:
        decisions = [d for ds in pool.map(container, range(8)) for d in ds]
    admitted = [d for d in decisions if isinstance(d, Admitted)]
    limited = [d for d in decisions if isinstance(d, Limited)]
    assert len(admitted) + len(limited) == 40
    assert 1 <= len(admitted) <= limit.burst
    assert all(d.retry_after_ms > 0 for d in limited)
    # No token was spent twice or lost: a take lost to contention refuses without spending, so what
    # is left in the bucket is exactly burst - admitted (the refill at 0.01/s is far below one token).
    buckets = RateLimitsTable(pipe.dynamodb, table)
    left = [buckets.take(key, limit) for _ in range(limit.burst - len(admitted))]
    assert all(isinstance(d, Admitted) for d in left)
    assert isinstance(buckets.take(key, limit), Limited)


def test_a_refused_take_carries_the_row_as_aws_returns_it(pipe: Pipeline) -> None:
    """ReturnValuesOnConditionCheckFailure through the strict layer: the refusal holds the row, so a
    contended take decides again without a read."""
    from botocore.exceptions import ClientError

    from fanout.adapters.ratelimits import BucketRequests

    table = pipe.settings.rate_limits_table
    requests = BucketRequests(table)
    limit = BucketLimit(rate=1, burst=1)
    key = f"u#{uuid.uuid4().hex}"
    pipe.dynamodb.update_item(**requests.take(key, old_tat=None, new_tat=5_000.0, now=4_000.0, limit=limit))
    with pytest.raises(ClientError) as refused:
        pipe.dynamodb.update_item(
            **requests.take(key, old_tat=1.0, new_tat=2_000.0, now=4_500.0, limit=limit)
        )
    assert refused.value.response["Error"]["Code"] == "ConditionalCheckFailedException"
    assert float(refused.value.response["Item"]["tat"]["N"]) == 5_000.0


@pytest.fixture
def split(dynamodb_local: str, local_sqs: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pipeline]:
    # two members per channel task: the six-member room is read by three query tasks, not the swarm
    with pipeline(
        dynamodb_local, local_sqs, monkeypatch, partition_count=4, shard_count=2, channel_task_members=2
    ) as p:
        yield p


def test_echo_off_holds_when_the_room_is_read_by_the_query_stage(split: Pipeline) -> None:
    seed_room(split)
    alice = Sender(split, "r0=", "alice", ["room:*"])
    frame = {"action": "publish", "channel": "room:1", "message": "quiet", "id": "q1", "echo": False}
    ack = alice.send(frame)
    split.run_swarms()
    split.drain()
    assert set(received(split)) == set(ROOM) - {"r0="}
    record = view(split, ack["broadcastId"])
    assert record["partitions"] == 3  # three bucket ranges, each a query task carrying the exclusion
    assert (record["status"], record["targeted"], record["delivered"]) == ("completed", 5, 5)
