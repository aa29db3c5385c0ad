"""What AWS does that a forgiving emulator hides, and how the pipeline holds up: concurrent accounting
under DynamoDB's rules, partitions larger than an item, messages SQS refuses, 410s during $connect, and
broadcasts whose swarm invocation was lost. DynamoDB is the strict layer over DynamoDB Local (the
`dynamodb_local` fixture), SQS the project's server."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from fanout import stages, store
from fanout.adapters.broadcasts import BroadcastsTable
from fanout.adapters.lambdas import SwarmLauncher
from fanout.container import Container
from fanout.models import BroadcastStatus, PostBatch
from fanout.stages import run_post_batch
from fanout.store import BroadcastRequests
from fanout.sweeper import SweepReport
from fanout.sweeper import sweep as sweep_once
from tests.integration.pipeline_harness import Pipeline, pipeline


@pytest.fixture
def pipe(dynamodb_local: str, local_sqs: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pipeline]:
    with pipeline(dynamodb_local, local_sqs, monkeypatch, partition_count=20, post_batch_size=5) as p:
        yield p


def ids_for(partitions: int, per_partition: int, prefix: str = "c") -> dict[int, list[str]]:
    return {p: [f"{prefix}{p:03d}x{i:03d}=" for i in range(per_partition)] for p in range(partitions)}


def start(pipe: Pipeline, message: Any) -> str:
    status, body, _ = pipe.api("POST", "/broadcasts", body={"message": message})
    assert status == 202, body
    return str(body["broadcastId"])


def status(pipe: Pipeline, broadcast_id: str) -> dict[str, Any]:
    code, view, _ = pipe.api("GET", f"/broadcasts/{broadcast_id}")
    assert code == 200, view
    return view


def run_queries(pipe: Pipeline) -> None:
    import handlers.query

    while pipe._drain_once(pipe.settings.partition_queue_urls, handlers.query.handler, "fanout-query"):
        pass


def run_posts(pipe: Pipeline) -> None:
    import handlers.post

    while pipe._drain_once(pipe.settings.post_queue_urls, handlers.post.handler, "fanout-post"):
        pass


def take_post_batches(pipe: Pipeline) -> list[PostBatch]:
    """Every post batch queued, removed from the post queues."""
    batches: list[PostBatch] = []
    for url in pipe.settings.post_queue_urls:
        while True:
            got = pipe.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
            msgs = got.get("Messages", [])
            if not msgs:
                break
            batches.extend(PostBatch.model_validate_json(m["Body"]) for m in msgs)
            pipe.sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(msgs)],
            )
    return batches


def test_concurrent_post_batches_and_their_replays_count_exactly_once(pipe: Pipeline) -> None:
    """https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/transaction-apis.html#transaction-conflict-handling:
    DynamoDB cancels a transaction that overlaps another on the same item. Every post batch of a
    broadcast settling at once, each delivered twice by SQS, must still count each id once."""
    # Given 20 partitions of 10 connections, in 40 post batches of 5
    per_partition = ids_for(20, 10)
    pipe.seed_connections(per_partition)
    everyone = [c for ids in per_partition.values() for c in ids]
    pipe.connections.live.update(everyone)
    broadcast_id = start(pipe, "all at once")
    pipe.run_swarms()
    run_queries(pipe)
    batches = take_post_batches(pipe)
    assert len(batches) == 40

    # When every batch and a replay of it settle concurrently on one worker's event loop
    work = batches + batches
    random.Random(7).shuffle(work)
    container = Container(pipe.settings, poster=True)
    try:
        results = container.run(
            asyncio.gather(*(run_post_batch(container.deps, b) for b in work), return_exceptions=True)
        )
    finally:
        container.close()

    # Then nothing failed, every id counts once, and the broadcast completed
    assert [r for r in results if isinstance(r, BaseException)] == []
    view = status(pipe, broadcast_id)
    assert view["status"] == "completed"
    assert (view["targeted"], view["delivered"], view["gone"], view["failed"]) == (200, 200, 0, 0)
    assert sum(1 for r in results if not isinstance(r, BaseException) and r.delivered) >= 40
    # a replay that raced its original may post again (at least once), never a third time
    assert max(len(pipe.connections.frames[c]) for c in everyone) <= 2


def test_a_partition_of_30000_connections_broadcasts_exactly(
    dynamodb_local: str, local_sqs: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An item holds at most 400 KB (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/ServiceQuotas.html#limits-items),
    about 20,000 connection ids; a Query page 1 MB
    (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Query.Pagination.html)."""
    with pipeline(dynamodb_local, local_sqs, monkeypatch, partition_count=1, post_batch_size=1000) as pipe:
        # Given one partition of 30,000 connections (API Gateway ids are 16 characters)
        ids = [f"{i:015d}=" for i in range(30_000)]
        seed_fast(pipe, 0, ids)
        pipe.connections.live.update(ids)
        page = pipe.dynamodb.query(
            TableName=pipe.settings.connections_table,
            IndexName=pipe.settings.connections_index,
            KeyConditionExpression="partitionId = :p",
            ExpressionAttributeValues={":p": {"N": "0"}},
        )
        assert "LastEvaluatedKey" in page  # more than one page to read

        # When it is broadcast to
        view = pipe.broadcast("big partition")

        # Then every connection received it once and the counts are exact
        assert (view["status"], view["targeted"], view["delivered"], view["failed"]) == (
            "completed",
            30_000,
            30_000,
            0,
        )
        assert sorted(len(pipe.connections.frames[c]) for c in (ids[0], ids[-1])) == [1, 1]
        assert sum(len(f) for f in pipe.connections.frames.values()) == 30_000
        # and the partition's plan was kept in two items, both under the item limit
        requests = BroadcastRequests(pipe.settings.broadcasts_table, pipe.settings.idempotency_table)
        head = pipe.dynamodb.get_item(**requests.get_plan(view["broadcastId"], 0))["Item"]
        assert head["chunks"] == {"N": "2"}


def seed_fast(pipe: Pipeline, partition: int, ids: list[str]) -> None:
    """Connection rows written by 8 threads of BatchWriteItem, an hour old; the partition count set."""
    now = int(time.time())
    table = pipe.settings.connections_table

    def write(chunk: list[str]) -> None:
        pending: dict[str, Any] = {
            table: [
                {
                    "PutRequest": {
                        "Item": {
                            "connectionId": {"S": c},
                            "partitionId": {"N": str(partition)},
                            "connectedAt": {"N": str((now - 3600) * 1000)},
                            "expiresAt": {"N": str(now + 3600)},
                        }
                    }
                }
                for c in chunk
            ]
        }
        while pending:
            pending = pipe.dynamodb.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, [ids[i : i + 25] for i in range(0, len(ids), 25)]))
    pipe.dynamodb.put_item(
        TableName=pipe.settings.partitions_table,
        Item={"partitionId": {"N": str(partition)}, "connectionCount": {"N": str(len(ids))}},
    )


def test_a_message_with_characters_sqs_refuses_is_delivered_intact(pipe: Pipeline) -> None:
    """SQS accepts #x9 | #xA | #xD | #x20 to #xD7FF | #xE000 to #xFFFD | #x10000 to #x10FFFF in a body
    (https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_SendMessage.html)."""
    per_partition = ids_for(2, 3)
    pipe.seed_connections(per_partition)
    pipe.connections.live.update(c for ids in per_partition.values() for c in ids)
    text = "a\uffffb\ufffe"

    view = pipe.broadcast({"text": text})

    assert (view["status"], view["delivered"]) == ("completed", 6)
    frame = json.loads(pipe.connections.frames[per_partition[0][0]][0])
    assert frame["data"] == {"text": text}


def test_a_task_sqs_refuses_for_good_fails_the_broadcast_with_the_reason(pipe: Pipeline) -> None:
    # Given partition queues that take 1 KB messages at most, and frames that travel inline
    for url in pipe.settings.partition_queue_urls:
        pipe.sqs.set_queue_attributes(QueueUrl=url, Attributes={"MaximumMessageSize": "1024"})
    pipe.seed_connections(ids_for(2, 3))
    status_code, body, _ = pipe.api("POST", "/broadcasts", body={"message": "x" * 2000})
    assert status_code == 202

    # When the swarm runs
    pipe.run_swarms()

    # Then the broadcast failed at once (not retried as if transient), saying why
    view = status(pipe, body["broadcastId"])
    assert view["status"] == "failed"
    assert "refused by SQS" in view["error"] and "shorter than 1024 bytes" in view["error"]


def test_a_410_for_a_connection_still_connecting_does_not_prune_it(
    dynamodb_local: str, local_sqs: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """API Gateway answers 410 to PostToConnection until $connect has returned, and the row is written
    during $connect: a young row's 410 is tried again, not pruned."""
    with pipeline(
        dynamodb_local, local_sqs, monkeypatch, prune_grace_seconds=3, requeue_base_delay_seconds=0
    ) as pipe:
        old = ids_for(1, 3, "old")
        pipe.seed_connections(old)
        pipe.connections.live.update(old[0])
        # Given a connection whose $connect wrote its row a moment ago and has not returned yet
        pipe.seed_connections({1: ["young0000000000="]}, connected_ago=0)
        # (the post stage's clock stands still at that moment, so the row stays younger than the
        # grace however slowly this machine runs the stages)
        seeded_at = store.now_ms()
        monkeypatch.setattr(stages, "now_ms", lambda: seeded_at)
        broadcast_id = start(pipe, "hello")
        pipe.run_swarms()
        run_queries(pipe)
        run_posts(pipe)  # what is visible now; the retry waits out its delay
        assert "young0000000000=" in pipe.connection_rows()
        assert status(pipe, broadcast_id)["status"] == "running"

        # When its $connect returns, and the retry comes after the grace
        pipe.connections.live.add("young0000000000=")
        deadline = time.monotonic() + 30
        while status(pipe, broadcast_id)["status"] != "completed":
            assert time.monotonic() < deadline, "the retry never came"
            pipe.drain(idle_rounds=1)

        # Then it received the broadcast and nothing was counted gone
        view = status(pipe, broadcast_id)
        assert (view["delivered"], view["gone"]) == (4, 0)
        assert len(pipe.connections.frames["young0000000000="]) == 1
        assert "young0000000000=" in pipe.connection_rows()


def test_a_broadcast_whose_swarm_event_was_lost_is_redriven_by_the_sweeper(pipe: Pipeline) -> None:
    per_partition = ids_for(2, 3)
    pipe.seed_connections(per_partition)
    pipe.connections.live.update(c for ids in per_partition.values() for c in ids)
    # Given a broadcast whose asynchronous swarm invocation never ran (dropped after Lambda's retries)
    broadcast_id = start(pipe, "lost")
    pipe.lambdas.invocations.clear()
    created = int(status(pipe, broadcast_id)["createdAt"])

    # When the sweeper runs before the deadline, then after it
    early = sweep(pipe, now_ms=created + 1000)
    late = sweep(pipe, now_ms=created + int(pipe.settings.sweep_after_seconds * 1000))

    # Then it waits, then invokes the swarm again, and the broadcast completes
    assert early.redriven == [] and late.redriven == [broadcast_id]
    assert pipe.run_swarms() == 1
    pipe.drain()
    view = status(pipe, broadcast_id)
    assert (view["status"], view["delivered"]) == ("completed", 6)
    # and a completed broadcast is no longer pending
    assert sweep(pipe).pending == 0


def test_a_broadcast_that_cannot_start_is_failed_with_the_reason_after_the_last_redrive(
    pipe: Pipeline,
) -> None:
    pipe.seed_connections(ids_for(2, 3))
    # Given partition queues that no longer exist: every swarm attempt fails
    for url in pipe.settings.partition_queue_urls:
        pipe.sqs.delete_queue(QueueUrl=url)
    broadcast_id = start(pipe, "doomed")
    with pytest.raises(Exception, match=r"NonExistentQueue|QueueDoesNotExist"):
        pipe.run_swarms()
    created = int(status(pipe, broadcast_id)["createdAt"])
    step = int(pipe.settings.sweep_after_seconds * 1000)

    # When the sweeper re-drives it as often as it may, and each re-drive fails too
    for n in range(1, pipe.settings.sweep_attempts + 1):
        report = sweep(pipe, now_ms=created + n * step)
        assert report.redriven == [broadcast_id]
        with pytest.raises(Exception, match=r"NonExistentQueue|QueueDoesNotExist"):
            pipe.run_swarms()
    final = sweep(pipe, now_ms=created + (pipe.settings.sweep_attempts + 1) * step)

    # Then it is failed, with the swarm's last error as the reason
    assert final.failed == [broadcast_id]
    view = status(pipe, broadcast_id)
    assert view["status"] == BroadcastStatus.FAILED.value
    assert "re-drive" in view["error"] and "swarm:" in view["error"]


def sweep(pipe: Pipeline, *, now_ms: int | None = None) -> SweepReport:
    """One pass of the sweeper over the pipeline's tables, re-driving through the fake Lambda API."""
    import boto3

    settings = pipe.settings
    broadcasts = BroadcastsTable(
        pipe.dynamodb, BroadcastRequests(settings.broadcasts_table, settings.idempotency_table)
    )
    swarm = SwarmLauncher(
        boto3.client("lambda", endpoint_url=pipe.lambdas.endpoint), settings.swarm_function_name
    )
    return sweep_once(
        broadcasts,
        swarm,
        after_ms=int(settings.sweep_after_seconds * 1000),
        attempts=settings.sweep_attempts,
        now_ms=now_ms,
    )
