"""The pipeline's stages: swarm → query → post. Async, with clients passed in (aioboto3 low-level)."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from botocore.exceptions import ClientError

from fanout.delivery import DeliveryOutcome, RateLimiter, deliver
from fanout.errors import BroadcastNotFound, RetryableError
from fanout.models import BroadcastRecord, BroadcastStatus, PartitionTask, PostBatch
from fanout.planning import is_complete, partition_shard, plan_batches
from fanout.postclient import Poster
from fanout.retry import requeue_delay_seconds
from fanout.settings import Settings
from fanout.sigv4 import payload_hash
from fanout.store import BroadcastRequests, from_item, is_transaction_duplicate, now_ms, parse_broadcast

SQS_BATCH = 10
DDB_DELETE_BATCH = 25


class MetricsSink(Protocol):
    def add_metric(self, name: str, unit: Any, value: float) -> None: ...


class NullMetrics:
    def add_metric(self, name: str, unit: Any, value: float) -> None:
        return None


@dataclass
class StageDeps:
    """What a stage needs, built once per container."""

    settings: Settings
    dynamodb: Any  # aioboto3 DynamoDB client
    sqs: Any  # aioboto3 SQS client
    poster: Poster | None = None
    metrics: MetricsSink = field(default_factory=NullMetrics)
    limiter: RateLimiter | None = None
    frames: OrderedDict[str, tuple[bytes, str]] = field(default_factory=OrderedDict)
    _shard_cycle: Any = None

    @property
    def requests(self) -> BroadcastRequests:
        return BroadcastRequests(self.settings.broadcasts_table, self.settings.idempotency_table)

    def next_post_shard(self) -> int:
        if self._shard_cycle is None:
            self._shard_cycle = itertools.cycle(range(self.settings.shard_count))
            for _ in range(random.randrange(self.settings.shard_count)):
                next(self._shard_cycle)
        return int(next(self._shard_cycle))


# -- shared helpers ---------------------------------------------------------------------------------
async def load_broadcast(
    deps: StageDeps, broadcast_id: str, *, frame: bool = False
) -> tuple[BroadcastRecord, dict]:
    out = await deps.dynamodb.get_item(**deps.requests.get(broadcast_id, frame=frame))
    if "Item" not in out:
        raise BroadcastNotFound(f"no broadcast {broadcast_id}")
    return parse_broadcast(out["Item"])


async def frame_of(deps: StageDeps, broadcast_id: str, inline: str | None) -> tuple[bytes, str]:
    """The frame's bytes and SHA-256, inline or read once per container from the broadcasts table."""
    cached = deps.frames.get(broadcast_id)
    if cached is not None:
        return cached
    if inline is None:
        _, values = await load_broadcast(deps, broadcast_id, frame=True)
        inline = str(values["frame"])
    data = inline.encode("utf-8")
    entry = (data, payload_hash(data))
    deps.frames[broadcast_id] = entry
    while len(deps.frames) > 32:
        deps.frames.popitem(last=False)
    return entry


async def send_batches(
    sqs: Any, queue_url: str, bodies: Sequence[str], *, delay: int = 0, attempts: int = 5
) -> None:
    """SendMessageBatch in groups of 10, resending only the entries that failed."""
    for start in range(0, len(bodies), SQS_BATCH):
        entries = [
            {"Id": str(i), "MessageBody": body, **({"DelaySeconds": delay} if delay else {})}
            for i, body in enumerate(bodies[start : start + SQS_BATCH])
        ]
        for attempt in range(attempts):
            out = await sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
            failed = {f["Id"] for f in out.get("Failed", [])}
            if not failed:
                break
            entries = [e for e in entries if e["Id"] in failed]
            await asyncio.sleep(0.05 * 2**attempt)
        else:
            raise RetryableError(f"SendMessageBatch to {queue_url} kept failing for {len(entries)} entries")


async def check_completion(deps: StageDeps, broadcast_id: str) -> BroadcastRecord | None:
    """Mark the broadcast completed if every partition was queried and every target accounted for."""
    record, _ = await load_broadcast(deps, broadcast_id)
    if not is_complete(record):
        return None
    at = now_ms()
    try:
        await deps.dynamodb.update_item(**deps.requests.finish(broadcast_id, BroadcastStatus.COMPLETED, at))
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
            return None  # another worker completed it
        raise
    deps.metrics.add_metric("BroadcastsCompleted", "Count", 1)
    deps.metrics.add_metric("BroadcastDuration", "Milliseconds", at - record.created_at)
    return record.model_copy(update={"status": BroadcastStatus.COMPLETED, "completed_at": at})


async def _transact(deps: StageDeps, request: dict[str, Any]) -> bool:
    """Run a ledger transaction; False if its ledger item already existed (a replay)."""
    try:
        await deps.dynamodb.transact_write_items(**request)
    except ClientError as exc:
        if is_transaction_duplicate(exc):
            return False
        raise
    return True


# -- swarm ------------------------------------------------------------------------------------------
async def non_empty_partitions(deps: StageDeps) -> list[int]:
    ids: list[int] = []
    kwargs: dict[str, Any] = {
        "TableName": deps.settings.partitions_table,
        "ProjectionExpression": "partitionId",
        "FilterExpression": "connectionCount > :zero",
        "ExpressionAttributeValues": {":zero": {"N": "0"}},
    }
    while True:
        out = await deps.dynamodb.scan(**kwargs)
        ids.extend(int(i["partitionId"]["N"]) for i in out.get("Items", []))
        if "LastEvaluatedKey" not in out:
            return sorted(ids)
        kwargs["ExclusiveStartKey"] = out["LastEvaluatedKey"]


@dataclass(frozen=True)
class SwarmResult:
    broadcast_id: str
    partitions: int
    tasks_sent: int


async def run_swarm(deps: StageDeps, broadcast_id: str) -> SwarmResult:
    """Queue one task per non-empty partition over the Q partition queues, many batches in flight."""
    settings = deps.settings
    settings.require("partition_queue_urls")
    record, values = await load_broadcast(deps, broadcast_id, frame=True)
    if record.status in (BroadcastStatus.COMPLETED, BroadcastStatus.FAILED):
        return SwarmResult(broadcast_id, record.partitions, 0)
    if record.status == BroadcastStatus.QUEUED:
        partition_ids = await non_empty_partitions(deps)
        try:
            await deps.dynamodb.update_item(**deps.requests.start(broadcast_id, partition_ids))
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            record, values = await load_broadcast(deps, broadcast_id, frame=True)
            partition_ids = [int(p) for p in values.get("partitionIds") or []]
    else:  # running: a retried invocation re-sends the recorded plan; the query ledger dedupes
        partition_ids = [int(p) for p in values.get("partitionIds") or []]
    if not partition_ids:
        await check_completion(deps, broadcast_id)
        return SwarmResult(broadcast_id, 0, 0)

    frame = str(values["frame"])
    inline = frame if len(frame.encode("utf-8")) <= settings.inline_payload_limit else None
    by_shard: dict[int, list[str]] = {}
    for pid in partition_ids:
        body = PartitionTask(broadcast_id=broadcast_id, partition_id=pid, frame=inline).model_dump_json(
            by_alias=True
        )
        by_shard.setdefault(partition_shard(pid, settings.shard_count), []).append(body)
    semaphore = asyncio.Semaphore(settings.swarm_send_concurrency)

    async def send(shard: int, chunk: list[str]) -> None:
        async with semaphore:
            await send_batches(deps.sqs, settings.partition_queue_urls[shard], chunk)

    await asyncio.gather(
        *(
            send(shard, bodies[i : i + SQS_BATCH])
            for shard, bodies in by_shard.items()
            for i in range(0, len(bodies), SQS_BATCH)
        )
    )
    return SwarmResult(broadcast_id, len(partition_ids), len(partition_ids))


# -- query ------------------------------------------------------------------------------------------
async def partition_connection_ids(deps: StageDeps, partition_id: int) -> list[str]:
    """Page through the keys-only GSI for one partition."""
    ids: list[str] = []
    kwargs: dict[str, Any] = {
        "TableName": deps.settings.connections_table,
        "IndexName": deps.settings.connections_index,
        "KeyConditionExpression": "partitionId = :p",
        "ExpressionAttributeValues": {":p": {"N": str(partition_id)}},
        "ProjectionExpression": "connectionId",
    }
    while True:
        out = await deps.dynamodb.query(**kwargs)
        ids.extend(i["connectionId"]["S"] for i in out.get("Items", []))
        if "LastEvaluatedKey" not in out:
            return ids
        kwargs["ExclusiveStartKey"] = out["LastEvaluatedKey"]


@dataclass(frozen=True)
class QueryResult:
    targeted: int
    batches: int
    replayed: bool


async def run_partition_task(deps: StageDeps, task: PartitionTask) -> QueryResult:
    """Load a partition's connections, count them once, and send post batches of B ids."""
    settings = deps.settings
    settings.require("post_queue_urls")
    requests = deps.requests
    ledger_key = requests.query_ledger_key(task.broadcast_id, task.partition_id)
    replayed = False
    existing = await deps.dynamodb.get_item(**requests.get_ledger(ledger_key))
    if "Item" in existing:
        ids = [str(i) for i in from_item(existing["Item"]).get("connectionIds") or []]
        replayed = True
    else:
        ids = await partition_connection_ids(deps, task.partition_id)
        if not await _transact(deps, requests.count_partition(task.broadcast_id, task.partition_id, ids)):
            existing = await deps.dynamodb.get_item(**requests.get_ledger(ledger_key))
            ids = [str(i) for i in from_item(existing["Item"]).get("connectionIds") or []]
            replayed = True

    batches = plan_batches(ids, settings.post_batch_size, partition_id=task.partition_id)
    by_shard: dict[int, list[str]] = {}
    for batch_id, chunk in batches:
        body = PostBatch(
            broadcast_id=task.broadcast_id,
            partition_id=task.partition_id,
            batch_id=batch_id,
            connection_ids=chunk,
            frame=task.frame,
        ).model_dump_json(by_alias=True, exclude_defaults=True)
        by_shard.setdefault(deps.next_post_shard(), []).append(body)
    await asyncio.gather(
        *(send_batches(deps.sqs, settings.post_queue_urls[s], b) for s, b in by_shard.items())
    )
    if not ids:
        await check_completion(deps, task.broadcast_id)
    return QueryResult(len(ids), len(batches), replayed)


# -- post -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PostResult:
    delivered: int
    gone: int
    failed: int
    requeued: int
    duplicate: bool = False
    last_error: str | None = None


async def prune(deps: StageDeps, connection_ids: Sequence[str]) -> None:
    """Delete gone connections' rows (the stream then lowers the partition counts)."""
    table = deps.settings.connections_table
    for start in range(0, len(connection_ids), DDB_DELETE_BATCH):
        pending: dict[str, Any] = {
            table: [
                {"DeleteRequest": {"Key": {"connectionId": {"S": c}}}}
                for c in connection_ids[start : start + DDB_DELETE_BATCH]
            ]
        }
        for attempt in range(6):
            out = await deps.dynamodb.batch_write_item(RequestItems=pending)
            pending = out.get("UnprocessedItems") or {}
            if not pending:
                break
            await asyncio.sleep(0.05 * 2**attempt)


async def run_post_batch(deps: StageDeps, batch: PostBatch) -> PostResult:
    """Post the frame to every id of the batch; prune 410s; re-enqueue only the ids still failing."""
    settings = deps.settings
    settings.require("connections_endpoint", "post_queue_urls")
    if deps.poster is None:
        raise RuntimeError("the post stage needs a poster")
    requests = deps.requests
    ledger = await deps.dynamodb.get_item(
        **requests.get_ledger(requests.post_ledger_key(batch.broadcast_id, batch.batch_id, batch.attempt))
    )
    if "Item" in ledger:
        return PostResult(0, 0, 0, 0, duplicate=True)

    started = time.perf_counter()
    frame, sha = await frame_of(deps, batch.broadcast_id, batch.frame)
    outcome: DeliveryOutcome = await deliver(
        batch.connection_ids,
        frame,
        sha,
        deps.poster,
        concurrency=settings.post_concurrency,
        retries=settings.post_in_call_retries,
        base_delay=settings.retry_base_seconds,
        cap_delay=settings.retry_cap_seconds,
        limiter=deps.limiter,
    )
    if outcome.gone:
        await prune(deps, outcome.gone)

    failed = list(outcome.failed)
    requeued = 0
    if outcome.retry:
        nxt = batch.model_copy(
            update={"connection_ids": outcome.retry, "attempt": batch.attempt + 1, "retry": True}
        )
        if batch.attempt < settings.max_post_attempts and not batch.dead_lettered:
            delay = requeue_delay_seconds(batch.attempt, base=settings.requeue_base_delay_seconds)
            url = settings.post_queue_urls[deps.next_post_shard()]
            await send_batches(
                deps.sqs, url, [nxt.model_dump_json(by_alias=True, exclude_defaults=True)], delay=delay
            )
            requeued = len(outcome.retry)
        else:
            dead = nxt.model_copy(update={"dead_lettered": True})
            if settings.post_dead_letter_queue_urls:
                url = settings.post_dead_letter_queue_urls[deps.next_post_shard()]
                await send_batches(
                    deps.sqs, url, [dead.model_dump_json(by_alias=True, exclude_defaults=True)]
                )
            if not batch.dead_lettered:  # a redriven batch's ids already count as failed
                failed.extend(outcome.retry)

    counts = {"delivered": len(outcome.delivered), "gone": len(outcome.gone), "failed": len(failed)}
    if batch.dead_lettered:  # redrive: what is delivered or gone now leaves `failed`; the rest stays failed
        counts["failed"] = -(len(outcome.delivered) + len(outcome.gone))
    counted = (
        await _transact(
            deps,
            requests.count_batch(
                batch.broadcast_id, batch.batch_id, batch.attempt, {k: v for k, v in counts.items() if v}
            ),
        )
        if any(counts.values())
        else True
    )

    m = deps.metrics
    m.add_metric("Delivered", "Count", len(outcome.delivered))
    m.add_metric("Gone", "Count", len(outcome.gone))
    m.add_metric("Throttled", "Count", outcome.throttled)
    m.add_metric("Failed", "Count", len(failed))
    m.add_metric("BatchLatency", "Milliseconds", (time.perf_counter() - started) * 1000)
    if counted and any(counts.values()):
        await check_completion(deps, batch.broadcast_id)
    return PostResult(
        len(outcome.delivered),
        len(outcome.gone),
        len(failed),
        requeued,
        duplicate=not counted,
        last_error=outcome.last_error,
    )


def decode(body: str, model: type[PartitionTask] | type[PostBatch]) -> Any:
    return model.model_validate(json.loads(body))
