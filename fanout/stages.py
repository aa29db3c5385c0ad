"""The pipeline's stages: swarm → query → post. Async, with clients passed in (aioboto3 low-level).

Each stage reads and writes through the adapters (fanout.adapters) and decides with plain functions
(fanout.accounting, fanout.planning, fanout.settlement).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

from fanout.accounting import counter_shards, is_complete, post_entry, query_entry
from fanout.adapters.dynamodb import PipelineTables
from fanout.adapters.sqs import SQS_BATCH, send_batches
from fanout.delivery import DeliveryOutcome, RateLimiter, deliver
from fanout.errors import MessageRefused
from fanout.models import BroadcastRecord, BroadcastStatus, PartitionTask, PostBatch
from fanout.planning import partition_shard, plan_batches
from fanout.postclient import Poster
from fanout.settings import PipelinePart
from fanout.settlement import PostOutcome, settle
from fanout.sigv4 import payload_hash
from fanout.store import BroadcastRequests, shards_of, with_totals

__all__ = ["SQS_BATCH", "StageDeps", "run_partition_task", "run_post_batch", "run_swarm", "send_batches"]


class MetricsSink(Protocol):
    def add_metric(self, name: str, unit: Any, value: float) -> None: ...


class NullMetrics:
    def add_metric(self, name: str, unit: Any, value: float) -> None:
        return None


@dataclass
class StageDeps:
    """What a stage needs, built once per container."""

    settings: PipelinePart
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

    @cached_property
    def tables(self) -> PipelineTables:
        s = self.settings
        return PipelineTables(
            self.dynamodb,
            self.requests,
            connections_table=s.connections_table,
            connections_index=s.connections_index,
            partitions_table=s.partitions_table,
            on_conflict=lambda: self.metrics.add_metric("TransactionConflicts", "Count", 1),
        )

    def next_post_shard(self) -> int:
        if self._shard_cycle is None:
            self._shard_cycle = itertools.cycle(range(self.settings.shard_count))
            for _ in range(random.randrange(self.settings.shard_count)):
                next(self._shard_cycle)
        return int(next(self._shard_cycle))


# -- shared helpers ---------------------------------------------------------------------------------
async def frame_of(deps: StageDeps, broadcast_id: str, inline: str | None) -> tuple[bytes, str]:
    """The frame's bytes and SHA-256, inline or read once per container from the broadcasts table."""
    cached = deps.frames.get(broadcast_id)
    if cached is not None:
        return cached
    if inline is None:
        _, values = await deps.tables.load_broadcast(broadcast_id, frame=True)
        inline = str(values["frame"])
    data = inline.encode("utf-8")
    entry = (data, payload_hash(data))
    deps.frames[broadcast_id] = entry
    while len(deps.frames) > 32:
        deps.frames.popitem(last=False)
    return entry


async def check_completion(
    deps: StageDeps, broadcast_id: str, partitions: int, shards: int
) -> BroadcastRecord | None:
    """Mark the broadcast completed if every partition was counted and every target accounted for."""
    tables = deps.tables
    totals = await tables.totals(broadcast_id, shards)
    if not is_complete(partitions, totals):
        return None
    if not await tables.finish(broadcast_id, BroadcastStatus.COMPLETED):
        return None  # another worker completed it
    record, _ = await tables.load_broadcast(broadcast_id)
    deps.metrics.add_metric("BroadcastsCompleted", "Count", 1)
    if record.completed_at is not None:
        deps.metrics.add_metric("BroadcastDuration", "Milliseconds", record.completed_at - record.created_at)
    return with_totals(record, totals)


# -- swarm ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SwarmResult:
    broadcast_id: str
    partitions: int
    tasks_sent: int
    error: str | None = None


async def run_swarm(deps: StageDeps, broadcast_id: str) -> SwarmResult:
    """Queue one task per non-empty partition over the Q partition queues, many batches in flight.

    A message SQS refuses for good fails the broadcast with the reason; any other failure is noted on
    the broadcast and raised, so that Lambda retries the invocation (and the sweeper after it).
    """
    try:
        return await _swarm(deps, broadcast_id)
    except MessageRefused as exc:
        error = f"the partition tasks were refused by SQS: {exc}"
        await deps.tables.finish(broadcast_id, BroadcastStatus.FAILED, error=error)
        deps.metrics.add_metric("BroadcastsFailed", "Count", 1)
        return SwarmResult(broadcast_id, 0, 0, error=error)
    except Exception as exc:
        with contextlib.suppress(Exception):
            await deps.tables.note_error(broadcast_id, f"swarm: {type(exc).__name__}: {exc}")
        raise


async def _swarm(deps: StageDeps, broadcast_id: str) -> SwarmResult:
    settings = deps.settings
    tables = deps.tables
    record, values = await tables.load_broadcast(broadcast_id, frame=True)
    if record.status in (BroadcastStatus.COMPLETED, BroadcastStatus.FAILED):
        return SwarmResult(broadcast_id, record.partitions, 0)
    redrive = record.status == BroadcastStatus.RUNNING
    if not redrive:
        counts = await tables.non_empty_partitions()
        partition_ids = list(counts)
        shards = counter_shards(counts.values(), settings.post_batch_size, minimum=settings.counter_shards)
        if not await tables.start(broadcast_id, partition_ids, shards):
            record, values = await tables.load_broadcast(broadcast_id, frame=True)
            redrive = True
    if redrive:  # a retried invocation or a re-drive: the recorded plan, less what was counted
        partition_ids = [int(p) for p in values.get("partitionIds") or []]
        shards = shards_of(values)
    partitions = len(partition_ids)
    if redrive and partition_ids:
        # Partitions already counted were queried: sending them again would post their batches again.
        counted = (await tables.totals(broadcast_id, shards)).counted_partitions()
        partition_ids = [p for p in partition_ids if p not in counted]
    if not partition_ids:
        await check_completion(deps, broadcast_id, partitions, max(shards, 1))
        return SwarmResult(broadcast_id, partitions, 0)

    frame = str(values["frame"])
    inline = frame if len(frame.encode("utf-8")) <= settings.inline_payload_limit else None
    by_shard: dict[int, list[str]] = {}
    for pid in partition_ids:
        body = PartitionTask(
            broadcast_id=broadcast_id,
            partition_id=pid,
            partitions=partitions,
            counter_shards=shards,
            frame=inline,
        ).model_dump_json(by_alias=True)
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
    return SwarmResult(broadcast_id, partitions, len(partition_ids))


# -- query ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QueryResult:
    targeted: int
    batches: int
    replayed: bool


async def run_partition_task(deps: StageDeps, task: PartitionTask) -> QueryResult:
    """Load a partition's connections (or the plan of an earlier run), count them once, and send post
    batches of B ids."""
    settings = deps.settings
    tables = deps.tables
    bid, pid, shards = task.broadcast_id, task.partition_id, task.counter_shards
    ids = await tables.load_plan(bid, pid)
    replayed = ids is not None
    if ids is None:
        ids = await tables.partition_connection_ids(pid)
        if not await tables.save_plan(bid, pid, ids):  # another run of this task stored its plan first
            ids = await tables.load_plan(bid, pid) or []
            replayed = True
    counted = await tables.count(bid, query_entry(pid), {"targeted": len(ids), "partitionsDone": 1}, shards)

    batches = plan_batches(ids, settings.post_batch_size, partition_id=pid)
    by_shard: dict[int, list[str]] = {}
    for batch_id, chunk in batches:
        body = PostBatch(
            broadcast_id=bid,
            partition_id=pid,
            batch_id=batch_id,
            connection_ids=chunk,
            partitions=task.partitions,
            counter_shards=shards,
            frame=task.frame,
        ).model_dump_json(by_alias=True, exclude_defaults=True)
        by_shard.setdefault(deps.next_post_shard(), []).append(body)
    await asyncio.gather(
        *(send_batches(deps.sqs, settings.post_queue_urls[s], b) for s, b in by_shard.items())
    )
    if not ids and counted:
        await check_completion(deps, bid, task.partitions, shards)
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


async def run_post_batch(deps: StageDeps, batch: PostBatch) -> PostResult:
    """Post the frame to every id of the batch; prune 410s; re-enqueue only the ids still failing."""
    settings = deps.settings
    if deps.poster is None:
        raise RuntimeError("the post stage needs a poster")
    tables = deps.tables
    bid, shards = batch.broadcast_id, batch.counter_shards
    entry = post_entry(batch.batch_id, batch.attempt)
    if await tables.is_applied(bid, entry, shards):
        return PostResult(0, 0, 0, 0, duplicate=True)

    started = time.perf_counter()
    frame, sha = await frame_of(deps, bid, batch.frame)
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
    gone: list[str] = []
    connecting: list[str] = []
    if outcome.gone:
        gone, connecting = await tables.prune(outcome.gone, grace_ms=int(settings.prune_grace_seconds * 1000))
    settlement = settle(
        batch,
        PostOutcome(outcome.delivered, gone, outcome.retry, outcome.failed, connecting),
        max_attempts=settings.max_post_attempts,
        requeue_base_delay=settings.requeue_base_delay_seconds,
        connecting_delay=int(-(-settings.prune_grace_seconds // 1)),
    )
    if settlement.requeue is not None:
        url = settings.post_queue_urls[deps.next_post_shard()]
        body = settlement.requeue.model_dump_json(by_alias=True, exclude_defaults=True)
        await send_batches(deps.sqs, url, [body], delay=settlement.requeue_delay)
    if settlement.dead_letter is not None and settings.post_dead_letter_queue_urls:
        url = settings.post_dead_letter_queue_urls[deps.next_post_shard()]
        body = settlement.dead_letter.model_dump_json(by_alias=True, exclude_defaults=True)
        await send_batches(deps.sqs, url, [body])

    counts = settlement.counts
    counted = await tables.count(bid, entry, counts, shards) if counts else True

    m = deps.metrics
    failed = counts.get("failed", 0) if not batch.dead_lettered else 0
    m.add_metric("Delivered", "Count", len(outcome.delivered))
    m.add_metric("Gone", "Count", len(gone))
    m.add_metric("Throttled", "Count", outcome.throttled)
    m.add_metric("Failed", "Count", failed)
    m.add_metric("BatchLatency", "Milliseconds", (time.perf_counter() - started) * 1000)
    if counted and counts:
        await check_completion(deps, bid, batch.partitions, shards)
    return PostResult(
        len(outcome.delivered),
        counts.get("gone", 0),
        failed,
        settlement.requeued,
        duplicate=not counted,
        last_error=outcome.last_error,
    )


def decode(body: str, model: type[PartitionTask] | type[PostBatch]) -> Any:
    return model.model_validate(json.loads(body))
