"""Channel occupancy through the real handlers against DynamoDB Local (behind the strict layer).

Subscription rows are written directly (as the connection functions write them); the channel counter
gets the subscriptions table's real stream records, in Lambda's event shape; the channel reconciler
runs as scheduled.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from fanout.channels import member_key
from fanout.occupancy import CounterDelta
from fanout.settings import Settings, load
from infra.local.events import stream_record
from infra.local.resources import create_tables, stream_arns
from tests.events import LambdaContextStub

REGION = "us-east-1"


def _reset_caches() -> None:
    from handlers import channel_counter, channel_reconciler

    load.cache_clear()
    channel_counter.deps.cache_clear()
    channel_reconciler.deps.cache_clear()


@dataclass
class Stack:
    endpoint: str
    dynamodb: Any
    streams: Any
    stream_arn: str
    subscriptions_table: str
    channels_table: str


@pytest.fixture(scope="module")
def stack(dynamodb_local: str) -> Iterator[Stack]:
    prefix = f"oc{uuid.uuid4().hex[:8]}"
    env = {
        "AWS_ENDPOINT_URL_DYNAMODB": dynamodb_local,
        **{f"FANOUT_{t.upper()}_TABLE": f"{prefix}-{t}" for t in
           ("connections", "partitions", "broadcasts", "idempotency", "subscriptions", "channels")},
        # the tests drive the stream by hand, so nothing is in flight when the reconciler runs
        "FANOUT_RECONCILE_QUIET_SECONDS": "0",
    }  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        _reset_caches()
        settings = load(Settings)
        dynamodb = boto3.client("dynamodb", endpoint_url=dynamodb_local, region_name=REGION)
        create_tables(dynamodb, settings, seed_partitions=False)
        streams = boto3.client("dynamodbstreams", endpoint_url=dynamodb_local, region_name=REGION)
        yield Stack(
            dynamodb_local,
            dynamodb,
            streams,
            stream_arns(dynamodb, settings)["subscriptions"],
            settings.subscriptions_table,
            settings.channels_table,
        )
    _reset_caches()


class StreamReader:
    """Reads the subscriptions table's stream incrementally, as Lambda's event source mapping would."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.positions: dict[str, str] = {}
        self.read()  # start after whatever earlier tests wrote

    def read(self) -> list[dict[str, Any]]:
        s = self.stack
        records: list[dict[str, Any]] = []
        for shard in s.streams.describe_stream(StreamArn=s.stream_arn)["StreamDescription"]["Shards"]:
            sid = shard["ShardId"]
            kwargs: dict[str, Any] = {"StreamArn": s.stream_arn, "ShardId": sid}
            last = self.positions.get(sid)
            kwargs |= (
                {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": last}
                if last
                else {"ShardIteratorType": "TRIM_HORIZON"}
            )
            iterator = s.streams.get_shard_iterator(**kwargs)["ShardIterator"]
            while iterator:
                page = s.streams.get_records(ShardIterator=iterator, Limit=1000)
                if not page["Records"]:
                    break
                records.extend(stream_record(r, s.stream_arn, REGION) for r in page["Records"])
                self.positions[sid] = page["Records"][-1]["dynamodb"]["SequenceNumber"]
                iterator = page.get("NextShardIterator")
        return records


def event(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {"Records": json.loads(json.dumps(records))}


def subscribe(
    stack: Stack, channel: str, connection_id: str, user_id: str, *, expires_at: int | None = None
) -> None:
    stack.dynamodb.put_item(
        TableName=stack.subscriptions_table,
        Item={
            "channel": {"S": channel},
            "member": {"S": member_key(connection_id)},
            "connectionId": {"S": connection_id},
            "userId": {"S": user_id},
            "expiresAt": {"N": str(expires_at or int(time.time()) + 3600)},
        },
    )


def unsubscribe(stack: Stack, channel: str, connection_id: str) -> None:
    stack.dynamodb.delete_item(
        TableName=stack.subscriptions_table,
        Key={"channel": {"S": channel}, "member": {"S": member_key(connection_id)}},
    )


def channels_table(stack: Stack) -> Any:
    from fanout.adapters.channels import ChannelsTable

    return ChannelsTable(stack.dynamodb, stack.channels_table)


def truth(stack: Stack, channel: str) -> tuple[int, int]:
    items = stack.dynamodb.query(
        TableName=stack.subscriptions_table,
        KeyConditionExpression="channel = :c",
        ExpressionAttributeValues={":c": {"S": channel}},
        ConsistentRead=True,
    )["Items"]
    return len(items), len({i["userId"]["S"] for i in items})


def count(records: list[dict[str, Any]]) -> Any:
    from handlers import channel_counter

    return channel_counter.handler(event(records), LambdaContextStub("fanout-channel-counter"))


def reconcile() -> dict[str, Any]:
    from handlers import channel_reconciler

    result: dict[str, Any] = channel_reconciler.handler(
        {"source": "aws.events", "detail-type": "Scheduled Event"},
        LambdaContextStub("fanout-channel-reconciler"),
    )
    return result


# -- the counter -----------------------------------------------------------------------------------------
def test_the_counter_follows_subscriptions_connections_and_distinct_users(stack: Stack) -> None:
    reader = StreamReader(stack)
    table = channels_table(stack)
    assert table.occupancy("lobby") == (0, 0)  # no row yet

    # Given alice on two devices and bob on one in the lobby, and alice in a room
    subscribe(stack, "lobby", "c-a1", "alice")
    subscribe(stack, "lobby", "c-a2", "alice")
    subscribe(stack, "lobby", "c-b1", "bob")
    subscribe(stack, "room:1", "c-a1", "alice")
    # When the counter gets the stream batch
    assert count(reader.read()) == {"batchItemFailures": []}
    # Then
    assert table.occupancy("lobby") == (3, 2) == truth(stack, "lobby")
    assert table.occupancy("room:1") == (1, 1)

    # When one of alice's devices leaves, and bob's subscription expires (a TTL deletion)
    unsubscribe(stack, "lobby", "c-a1")
    unsubscribe(stack, "lobby", "c-b1")
    records = reader.read()
    assert [r["eventName"] for r in records] == ["REMOVE", "REMOVE"]
    records[1]["userIdentity"] = {"type": "Service", "principalId": "dynamodb.amazonaws.com"}
    assert count(records) == {"batchItemFailures": []}
    # Then alice still counts once, bob is gone, and so is his presence row
    assert table.occupancy("lobby") == (1, 1) == truth(stack, "lobby")
    stored = table.stored("lobby")
    assert stored.presence == {"alice": 1}
    assert stored.updated_at_ms is not None  # the reconciler's quiet window reads it

    # A renewed expiry (MODIFY) counts nothing
    subscribe(stack, "lobby", "c-a2", "alice", expires_at=int(time.time()) + 7200)
    records = reader.read()
    assert [r["eventName"] for r in records] == ["MODIFY"]
    count(records)
    assert table.occupancy("lobby") == (1, 1)


def test_a_partial_batch_failure_then_its_redelivery_counts_each_record_once(stack: Stack) -> None:
    reader = StreamReader(stack)
    table = channels_table(stack)
    for i in range(5):
        subscribe(stack, "partial", f"p-{i}", f"user-{i % 3}")
    records = reader.read()
    assert len(records) == 5
    good = json.loads(json.dumps(records[2]))
    records[2]["dynamodb"]["NewImage"].pop("userId")  # unreadable

    response = count(records)

    assert response == {"batchItemFailures": [{"itemIdentifier": records[2]["dynamodb"]["SequenceNumber"]}]}
    assert table.occupancy("partial") == (2, 2)  # only the two before it
    assert count([good, *records[3:]]) == {"batchItemFailures": []}
    assert table.occupancy("partial") == (5, 3) == truth(stack, "partial")


# -- the reconciler --------------------------------------------------------------------------------------
def test_the_reconciler_corrects_replays_corruption_and_expired_rows(stack: Stack) -> None:
    reader = StreamReader(stack)
    table = channels_table(stack)
    now = int(time.time())
    # Given two channels counted from the stream, one with a row whose expiry has passed
    subscribe(stack, "drift:a", "d-1", "ann")
    subscribe(stack, "drift:a", "d-2", "ann")
    subscribe(stack, "drift:a", "d-3", "ben")
    subscribe(stack, "drift:b", "d-4", "cat")
    subscribe(stack, "drift:b", "d-5", "dan", expires_at=now - 60)
    batch = reader.read()
    count(batch)
    assert table.occupancy("drift:a") == (3, 2) and table.occupancy("drift:b") == (2, 2)

    # And drift: the batch replayed on drift:a, a corrupted presence row, drift:b's counter lost
    count([r for r in batch if r["dynamodb"]["NewImage"]["channel"]["S"] == "drift:a"])
    assert table.occupancy("drift:a") == (6, 2)
    stack.dynamodb.put_item(
        TableName=stack.channels_table,
        Item={"channel": {"S": "drift:a"}, "key": {"S": "u#ghost"}, "connections": {"N": "4"}},
    )
    stack.dynamodb.delete_item(
        TableName=stack.channels_table, Key={"channel": {"S": "drift:b"}, "key": {"S": "#"}}
    )
    assert table.occupancy("drift:b") == (0, 0)

    # When the scheduled reconciler runs
    result = reconcile()

    # Then both channels hold their recount, presence rows included
    assert result["corrected"] >= 2 and result["skipped"] == 0
    assert table.occupancy("drift:a") == (3, 2) == truth(stack, "drift:a")
    assert table.stored("drift:a").presence == {"ann": 2, "ben": 1}
    assert table.occupancy("drift:b") == (2, 2)  # the expired row still counts until it is gone
    # And the expired row is deleted, which reaches the counter through the stream
    assert result["expiredDeleted"] == 1
    assert truth(stack, "drift:b") == (1, 1)
    removed = reader.read()
    assert [(r["eventName"], r["dynamodb"]["OldImage"]["userId"]["S"]) for r in removed] == [
        ("REMOVE", "dan")
    ]
    count(removed)
    assert table.occupancy("drift:b") == (1, 1) == truth(stack, "drift:b")
    assert table.stored("drift:b").presence == {"cat": 1}

    # And a second run finds nothing to correct and nothing expired
    again = reconcile()
    assert (again["corrected"], again["expiredDeleted"]) == (0, 0)


def test_the_reconciler_leaves_a_channel_the_stream_just_changed(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader = StreamReader(stack)
    table = channels_table(stack)
    subscribe(stack, "busy", "b-1", "eve")
    count(reader.read())
    table.add_counter("busy", CounterDelta(5, 0))  # drift written just now, as the counter would
    monkeypatch.setenv("FANOUT_RECONCILE_QUIET_SECONDS", "600")
    _reset_caches()
    try:
        result = reconcile()
        assert result["busy"] >= 1
        assert table.occupancy("busy") == (6, 1)  # left for a later run
    finally:
        monkeypatch.setenv("FANOUT_RECONCILE_QUIET_SECONDS", "0")
        _reset_caches()
    reconcile()
    assert table.occupancy("busy") == (1, 1)


def test_a_correction_never_overwrites_a_counter_that_moved(stack: Stack) -> None:
    table = channels_table(stack)
    table.add_counter("race", CounterDelta(2, 1))
    table.add_counter("race", CounterDelta(1, 0))  # a stream ADD between the reconciler's read and write
    assert table.set_counter("race", expected=(2, 1), value=(0, 0), now_ms=0) is False
    assert table.occupancy("race") == (3, 1)
    assert table.set_counter("race", expected=(3, 1), value=(0, 0), now_ms=0) is True
    assert table.set_counter("race-new", expected=None, value=(1, 1), now_ms=0) is True
    assert table.set_counter("race-new", expected=None, value=(2, 2), now_ms=0) is False


# -- the swarm's read ------------------------------------------------------------------------------------
def test_member_counts_reads_many_counters_in_batches(stack: Stack) -> None:
    import aioboto3

    from fanout.adapters.channels import AsyncChannelsTable

    table = channels_table(stack)
    names = [f"many:{i:03d}" for i in range(130)]  # more than one BatchGetItem (100 keys)
    table.apply_counters({n: CounterDelta(i + 1, 1) for i, n in enumerate(names[:120])})

    async def read() -> dict[str, int]:
        session = aioboto3.Session()
        async with session.client("dynamodb", endpoint_url=stack.endpoint, region_name=REGION) as client:
            return await AsyncChannelsTable(client, stack.channels_table).member_counts(
                [*names, names[0], "never-seen"]
            )

    counts = asyncio.run(read())
    assert counts == {
        **{n: i + 1 for i, n in enumerate(names[:120])},
        **dict.fromkeys(names[120:], 0),
        "never-seen": 0,
    }
