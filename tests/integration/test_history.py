"""Channel history through the real handlers on the strict DynamoDB layer: offsets and epochs on
every envelope, the history action, GET /channels/{name}/history, concurrent appends racing for
offsets, and recovery's hand-over to live delivery with no gap and no duplicate.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

import handlers.default
import handlers.recovery
from fanout.adapters.history import HistoryTable
from fanout.channels import member_key, with_channel
from fanout.history import RECOVERING
from tests.events import LambdaContextStub
from tests.integration.pipeline_harness import Pipeline, pipeline


@pytest.fixture
def pipe(dynamodb_local: str, local_sqs: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pipeline]:
    with pipeline(dynamodb_local, local_sqs, monkeypatch, partition_count=4, shard_count=1) as p:
        handlers.default.deps.cache_clear()
        handlers.recovery.deps.cache_clear()
        yield p
        handlers.default.deps.cache_clear()
        handlers.recovery.deps.cache_clear()


def received(pipe: Pipeline, cid: str) -> list[dict[str, Any]]:
    return [json.loads(f) for f in pipe.connections.frames[cid]]


def default_event(cid: str, body: str, channels: list[str]) -> dict[str, Any]:
    return {
        "requestContext": {
            "routeKey": "$default",
            "eventType": "MESSAGE",
            "extendedRequestId": "x",
            "requestTime": "04/Dec/2026:12:00:00 +0000",
            "messageDirection": "IN",
            "stage": "test",
            "connectedAt": 1_700_000_000_000,
            "requestTimeEpoch": 1_700_000_000_000,
            "identity": {"sourceIp": "203.0.113.9"},
            "requestId": "r",
            "domainName": "example.com",
            "connectionId": cid,
            "apiId": "abc",
            "messageId": "m",
            "authorizer": {"userId": "u1", "channels": json.dumps(channels), "publish": "[]"},
        },
        "body": body,
        "isBase64Encoded": False,
    }


def test_channel_messages_carry_gapless_offsets_and_one_epoch_and_are_read_back_as_sent(
    pipe: Pipeline,
) -> None:
    # Given two members of "room:1" and one of "room:2"
    pipe.seed_connections(
        {0: ["a=", "b="], 1: ["c="]},
        channels={"a=": ["room:1"], "b=": ["room:1", "room:2"], "c=": ["room:2"]},
    )
    pipe.connections.live.update({"a=", "b=", "c="})
    # When the operator broadcasts three times to room:1 and once to both
    accepted = []
    for n in range(3):
        status, body, _ = pipe.api(
            "POST", "/broadcasts", body={"message": {"n": n}, "to": {"channels": ["room:1"]}}
        )
        assert status == 202
        accepted.append(body)
    status, both, _ = pipe.api(
        "POST", "/broadcasts", body={"message": "x", "to": {"channels": ["room:1", "room:2"]}}
    )
    pipe.run_swarms()
    pipe.drain()
    # Then the offsets are 1..4 in room:1 and 1 in room:2, one epoch each, announced in the 202s
    assert [b["offsets"] for b in accepted] == [{"room:1": 1}, {"room:1": 2}, {"room:1": 3}]
    assert both["offsets"] == {"room:1": 4, "room:2": 1}
    epoch = accepted[0]["epochs"]["room:1"]
    assert {b["epochs"]["room:1"] for b in [*accepted, both]} == {epoch}
    a = received(pipe, "a=")
    assert sorted(f["offset"] for f in a) == [1, 2, 3, 4] and {f["epoch"] for f in a} == {epoch}
    assert [(f["channel"], f["offset"]) for f in received(pipe, "c=")] == [("room:2", 1)]
    # GET /channels/room:1/history?since=1 gives 2, 3, 4 exactly as members received them
    status, page, _ = pipe.api("GET", "/channels/room%3A1/history?since=1&epoch=" + epoch)
    assert status == 200, page
    assert page["epoch"] == epoch and page["more"] is False
    by_offset = {f["offset"]: f for f in a}
    assert page["messages"] == [by_offset[2], by_offset[3], by_offset[4]]
    # the history action answers the same to a connection allowed to subscribe
    reply = handlers.default.handler(
        default_event(
            "a=",
            json.dumps({"action": "history", "channel": "room:1", "since": 3, "epoch": epoch}),
            ["room:*"],
        ),
        LambdaContextStub("fanout-default"),
    )
    frame = json.loads(reply["body"])
    assert frame["type"] == "history" and [m["offset"] for m in frame["messages"]] == [4]
    # and refuses one that is not, or a wrong epoch (410 on the operator API)
    refused = handlers.default.handler(
        default_event("a=", json.dumps({"action": "history", "channel": "room:1", "since": 0}), ["room:2"]),
        LambdaContextStub("fanout-default"),
    )
    assert json.loads(refused["body"])["code"] == "forbidden"
    wrong = handlers.default.handler(
        default_event(
            "a=",
            json.dumps({"action": "history", "channel": "room:1", "since": 1, "epoch": "zzz"}),
            ["room:*"],
        ),
        LambdaContextStub("fanout-default"),
    )
    error = json.loads(wrong["body"])
    assert error["code"] == "recovery_impossible" and error["channel"] == "room:1" and error["epoch"] == epoch
    status, body, _ = pipe.api("GET", "/channels/room:1/history?since=1&epoch=zzz")
    assert status == 410 and body["code"] == "recovery_impossible"


def test_concurrent_appends_to_one_channel_get_every_offset_once(pipe: Pipeline) -> None:
    # Given 8 writers racing on one channel (the strict layer cancels conflicting transactions)
    table = pipe.settings.history_table
    conflicts: list[int] = []

    def writer(results: list[int]) -> None:
        history = HistoryTable(
            boto3.client("dynamodb", endpoint_url=pipe.dynamodb.meta.endpoint_url),
            table,
            keep=100,
            ttl_seconds=3600,
            meta_ttl_seconds=3600,
            on_conflict=lambda: conflicts.append(1),
        )
        for _ in range(5):
            head = history.append(
                "hot", lambda h: with_channel('{"type":"broadcast","data":1}', "hot", h.offset, h.epoch)
            )
            results.append(head.offset)

    results: list[list[int]] = [[] for _ in range(8)]
    threads = [threading.Thread(target=writer, args=(r,)) for r in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then offsets 1..40 were each given once, and each writer's grow
    assert sorted(o for r in results for o in r) == list(range(1, 41))
    assert all(r == sorted(r) for r in results)
    history = HistoryTable(pipe.dynamodb, table, keep=100, ttl_seconds=3600, meta_ttl_seconds=3600)
    assert [r.offset for r in history.rows("hot", 0)] == list(range(1, 41))


def test_only_the_last_k_are_kept(pipe: Pipeline) -> None:
    history = HistoryTable(
        pipe.dynamodb, pipe.settings.history_table, keep=3, ttl_seconds=3600, meta_ttl_seconds=3600
    )
    for _ in range(5):
        history.append("k", lambda h: with_channel('{"type":"broadcast","data":1}', "k", h.offset, h.epoch))
    assert [r.offset for r in history.rows("k", 0)] == [3, 4, 5]


def test_a_recovering_subscription_takes_no_live_message_until_recovery_hands_over(pipe: Pipeline) -> None:
    # Given "r=" reconnected with ?recover=room:1:1:<epoch>, its row written with liveFrom = RECOVERING,
    # and "m=" a plain member
    pipe.seed_connections({0: ["m=", "r="]}, channels={"m=": ["room:1"]})
    pipe.connections.live.update({"m=", "r="})
    for n in range(3):
        pipe.api("POST", "/broadcasts", body={"message": n, "to": {"channels": ["room:1"]}})
    pipe.run_swarms()
    pipe.drain()
    epoch = received(pipe, "m=")[0]["epoch"]
    pipe.dynamodb.put_item(
        TableName=pipe.settings.subscriptions_table,
        Item={
            "channel": {"S": "room:1"},
            "member": {"S": member_key("r=")},
            "connectionId": {"S": "r="},
            "userId": {"S": "u"},
            "expiresAt": {"N": "9999999999"},
            "liveFrom": {"N": str(RECOVERING)},
        },
    )
    # When a message is broadcast while it recovers, then recovery runs, then another message
    pipe.broadcast(3, to={"channels": ["room:1"]})
    assert received(pipe, "r=") == []  # live delivery skipped it: it is recovery's
    out = handlers.recovery.handler(
        {"connectionId": "r=", "items": [{"channel": "room:1", "since": 1, "epoch": epoch}]},
        LambdaContextStub("fanout-recovery"),
    )
    assert out["channels"] == [{"channel": "room:1", "sent": 3}]
    pipe.broadcast(4, to={"channels": ["room:1"]})
    # Then it got 2, 3, 4 recovered and 5 live: no gap, no duplicate, in order
    assert [f["offset"] for f in received(pipe, "r=")] == [2, 3, 4, 5]
    # (the first three were broadcast at once, so they may arrive in any order; the client orders by
    # offset)
    member = [f["offset"] for f in received(pipe, "m=")]
    assert sorted(member[:3]) == [1, 2, 3] and member[3:] == [4, 5]
    # and a retried invocation sends nothing twice (the row was handed over)
    handlers.recovery.handler(
        {"connectionId": "r=", "items": [{"channel": "room:1", "since": 1, "epoch": epoch}]},
        LambdaContextStub("fanout-recovery"),
    )
    assert len(received(pipe, "r=")) == 4


def test_recovery_with_a_wrong_epoch_tells_the_client_and_goes_live(pipe: Pipeline) -> None:
    pipe.seed_connections({0: ["r="]}, channels={})
    pipe.connections.live.add("r=")
    pipe.broadcast("first", to={"channels": ["room:9"]})
    pipe.dynamodb.put_item(
        TableName=pipe.settings.subscriptions_table,
        Item={
            "channel": {"S": "room:9"},
            "member": {"S": member_key("r=")},
            "connectionId": {"S": "r="},
            "userId": {"S": "u"},
            "expiresAt": {"N": "9999999999"},
            "liveFrom": {"N": str(RECOVERING)},
        },
    )
    handlers.recovery.handler(
        {"connectionId": "r=", "items": [{"channel": "room:9", "since": 0, "epoch": "stale"}]},
        LambdaContextStub("fanout-recovery"),
    )
    pipe.broadcast("second", to={"channels": ["room:9"]})
    frames = received(pipe, "r=")
    assert frames[0]["code"] == "recovery_impossible" and frames[0]["channel"] == "room:9"
    assert [(f["offset"], f["data"]) for f in frames[1:]] == [(2, "second")]


def test_subscribing_again_while_recovering_keeps_the_row_out_of_live_delivery(pipe: Pipeline) -> None:
    from fanout.adapters.subscriptions import SubscriptionsTable

    pipe.seed_connections({0: ["r="]}, channels={})
    key = {"channel": {"S": "room:3"}, "member": {"S": member_key("r=")}}
    table = pipe.settings.subscriptions_table
    pipe.dynamodb.put_item(
        TableName=table,
        Item={**key, "connectionId": {"S": "r="}, "userId": {"S": "u"}, "expiresAt": {"N": "9999999999"},
              "liveFrom": {"N": str(RECOVERING)}},
    )  # fmt: skip
    subs = SubscriptionsTable(pipe.dynamodb, table, connections_table=pipe.settings.connections_table)
    subs.subscribe("r=", "u", "room:3", expires_at=9999999999, limit=10)
    item = pipe.dynamodb.get_item(TableName=table, Key=key, ConsistentRead=True)["Item"]
    assert item["liveFrom"] == {"N": str(RECOVERING)} and item["userId"] == {"S": "u"}
