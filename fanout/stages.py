"""The pipeline's stages: swarm → query → post. Async, over the adapters passed in.

Each stage function reads and writes through the adapters (fanout.adapters: the only code that calls
AWS) and decides with plain functions over plain data: fanout.swarming (start, resume, which tasks),
fanout.querying (counts, post batches, shards), fanout.settlement and fanout.posting (what a post
batch's outcome counts, re-enqueues and dead-letters), fanout.completion (when a broadcast is done).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeVar

from aws_lambda_powertools.metrics import MetricUnit

from fanout.accounting import post_entry, query_entry
from fanout.adapters.broadcasts import AsyncBroadcastsTable
from fanout.adapters.channels import AsyncChannelsTable
from fanout.adapters.connections import AsyncConnectionsTable
from fanout.adapters.partitions import AsyncPartitionsTable
from fanout.adapters.sqs import Queues
from fanout.adapters.subscriptions import AsyncSubscriptionsTable
from fanout.channels import channel_index, unit_parts, with_channel, with_channel_counts
from fanout.completion import completion_ms, is_complete, with_totals
from fanout.delivery import DeliveryOutcome, RateLimiter, deliver
from fanout.errors import MessageRefused
from fanout.models import Audience, AudienceKind, BroadcastRecord, BroadcastStatus, PartitionTask, PostBatch
from fanout.postclient import ConnectionsPoster
from fanout.posting import DUPLICATE, PostResult, checks_completion, connecting_delay, post_result
from fanout.querying import ShardCycle, by_shard, post_batches, query_counts
from fanout.querying import checks_completion as query_checks_completion
from fanout.settings import PipelinePart
from fanout.settlement import PostOutcome, settle
from fanout.sigv4 import payload_hash
from fanout.store import BroadcastRequests, now_ms
from fanout.swarming import (
    StoredBroadcast,
    SwarmPlan,
    SwarmStep,
    attempt_error,
    audience_plan,
    first_plan,
    inline_frame,
    partition_tasks,
    refusal_reason,
    resumed_plan,
    runs_in_swarm,
    send_batches_of,
    still_to_send,
    swarm_step,
    targeted_ids,
    unit_channel,
    unit_tasks,
)

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb.client import DynamoDBClient
    from types_aiobotocore_sqs.client import SQSClient

__all__ = [
    "FrameCache",
    "PostResult",
    "QueryResult",
    "StageDeps",
    "SwarmResult",
    "decode",
    "run_partition_task",
    "run_post_batch",
    "run_swarm",
    "stage_deps",
]

Message = TypeVar("Message", PartitionTask, PostBatch)

# Frames kept per container: a container serves a few broadcasts at a time (one frame per channel).
FRAMES_KEPT = 32
# Units the swarm reads itself at once (small channels, users, connections), and user queries at once.
LOCAL_UNITS_IN_FLIGHT = 16
USER_QUERIES_IN_FLIGHT = 32


class MetricsSink(Protocol):
    def add_metric(self, name: str, unit: MetricUnit, value: float) -> None: ...


class Members(Protocol):
    """The subscriptions table, as the stages use it (fanout.adapters.subscriptions)."""

    async def member_ids(self, channel: str, lo: int, hi: int, offset: int | None = None) -> list[str]: ...
    async def remove(self, rows: Mapping[str, Iterable[str]]) -> None: ...


class Occupancy(Protocol):
    """The channel occupancy counters, as the swarm reads them (fanout.adapters.channels)."""

    async def member_counts(self, channels: Sequence[str]) -> dict[str, int]: ...


class NullMetrics:
    def add_metric(self, name: str, unit: MetricUnit, value: float) -> None:
        return None


@dataclass
class FrameCache:
    """The frames of recent broadcasts, with their SHA-256 (signing needs it once per frame)."""

    limit: int = FRAMES_KEPT
    _entries: OrderedDict[tuple[str, str | None], tuple[bytes, str]] = field(default_factory=OrderedDict)

    def get(self, broadcast_id: str, channel: str | None = None) -> tuple[bytes, str] | None:
        return self._entries.get((broadcast_id, channel))

    def put(
        self,
        broadcast_id: str,
        frame: str,
        channel: str | None = None,
        offset: int | None = None,
        epoch: str | None = None,
    ) -> tuple[bytes, str]:
        """Keep the broadcast's frame as `channel`'s members receive it (naming the channel, and its
        offset and epoch in the channel's history)."""
        data = with_channel(frame, channel, offset, epoch).encode("utf-8")
        entry = (data, payload_hash(data))
        self._entries[(broadcast_id, channel)] = entry
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)
        return entry


@dataclass(frozen=True)
class StageDeps:
    """What a stage needs, built once per container (fanout.container): settings, adapters, the poster."""

    settings: PipelinePart
    broadcasts: AsyncBroadcastsTable
    connections: AsyncConnectionsTable
    partitions: AsyncPartitionsTable
    queues: Queues
    poster: ConnectionsPoster | None = None
    metrics: MetricsSink = field(default_factory=NullMetrics)
    limiter: RateLimiter | None = None
    frames: FrameCache = field(default_factory=FrameCache)
    post_shards: ShardCycle | None = None
    subscriptions: Members | None = None
    occupancy: Occupancy | None = None

    def members(self) -> Members:
        if self.subscriptions is None:
            raise RuntimeError("the stage deps were built without the subscriptions table")
        return self.subscriptions

    def next_post_shard(self) -> int:
        if self.post_shards is None:
            raise RuntimeError("the stage deps were built without post queue shards")
        return self.post_shards()


def stage_deps(
    settings: PipelinePart,
    dynamodb: DynamoDBClient,
    sqs: SQSClient,
    *,
    poster: ConnectionsPoster | None = None,
    metrics: MetricsSink | None = None,
    limiter: RateLimiter | None = None,
) -> StageDeps:
    """The stages' adapters over one DynamoDB and one SQS client (aioboto3)."""
    sink = metrics or NullMetrics()
    return StageDeps(
        settings=settings,
        broadcasts=AsyncBroadcastsTable(
            dynamodb,
            BroadcastRequests(settings.broadcasts_table, settings.idempotency_table),
            on_conflict=lambda: sink.add_metric("TransactionConflicts", MetricUnit.Count, 1),
        ),
        connections=AsyncConnectionsTable(
            dynamodb,
            settings.connections_table,
            index=settings.connections_index,
            users_index=settings.users_index,
        ),
        partitions=AsyncPartitionsTable(dynamodb, settings.partitions_table),
        queues=Queues(sqs),
        poster=poster,
        metrics=sink,
        limiter=limiter,
        post_shards=ShardCycle(settings.shard_count),
        subscriptions=AsyncSubscriptionsTable(
            dynamodb, settings.subscriptions_table, connections_table=settings.connections_table
        ),
        occupancy=AsyncChannelsTable(dynamodb, settings.channels_table),
    )


# -- shared -----------------------------------------------------------------------------------------
async def frame_of(
    deps: StageDeps,
    broadcast_id: str,
    inline: str | None,
    channel: str | None = None,
    offset: int | None = None,
    epoch: str | None = None,
) -> tuple[bytes, str]:
    """The frame's bytes and SHA-256, inline or read once per container from the broadcasts table;
    a channel's members get it naming the channel."""
    cached = deps.frames.get(broadcast_id, channel)
    if cached is not None:
        return cached
    if inline is None:
        inline = (await deps.broadcasts.load(broadcast_id, frame=True)).frame or ""
    return deps.frames.put(broadcast_id, inline, channel, offset, epoch)


async def check_completion(
    deps: StageDeps, broadcast_id: str, partitions: int, shards: int
) -> BroadcastRecord | None:
    """Mark the broadcast completed if every partition was counted and every target accounted for."""
    broadcasts = deps.broadcasts
    totals = await broadcasts.totals(broadcast_id, shards)
    if not is_complete(partitions, totals):
        return None
    if not await broadcasts.finish(broadcast_id, BroadcastStatus.COMPLETED):
        return None  # another worker completed it
    record = (await broadcasts.load(broadcast_id)).record
    deps.metrics.add_metric("BroadcastsCompleted", MetricUnit.Count, 1)
    duration = completion_ms(record)
    if duration is not None:
        deps.metrics.add_metric("BroadcastDuration", MetricUnit.Milliseconds, duration)
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
        error = refusal_reason(exc)
        await deps.broadcasts.finish(broadcast_id, BroadcastStatus.FAILED, error=error)
        deps.metrics.add_metric("BroadcastsFailed", MetricUnit.Count, 1)
        return SwarmResult(broadcast_id, 0, 0, error=error)
    except Exception as exc:
        with contextlib.suppress(Exception):
            await deps.broadcasts.note_error(broadcast_id, attempt_error(exc))
        raise


async def _swarm(deps: StageDeps, broadcast_id: str) -> SwarmResult:
    settings = deps.settings
    broadcasts = deps.broadcasts
    stored = await broadcasts.load(broadcast_id, frame=True)
    step = swarm_step(stored.record.status)
    if step == SwarmStep.ENDED:
        return SwarmResult(broadcast_id, stored.record.partitions, 0)
    if step == SwarmStep.START:
        plan = await _first_plan(deps, stored.audience)
        if not await broadcasts.start(broadcast_id, plan.partition_ids, plan.shards):
            stored = await broadcasts.load(broadcast_id, frame=True)  # another invocation started it
            step = SwarmStep.RESUME
    if step == SwarmStep.RESUME:
        plan = resumed_plan(stored)
    todo = plan.partition_ids
    if step == SwarmStep.RESUME and todo:
        todo = still_to_send(plan, await broadcasts.totals(broadcast_id, plan.shards))
    if not todo:
        await check_completion(deps, broadcast_id, plan.partitions, max(plan.shards, 1))
        return SwarmResult(broadcast_id, plan.partitions, 0)

    audience = stored.audience
    frame = inline_frame(stored.frame or "", settings.inline_payload_limit)
    local = [unit for unit in todo if runs_in_swarm(audience, unit)]
    queued = [unit for unit in todo if not runs_in_swarm(audience, unit)]
    tasks = partition_tasks(
        broadcast_id,
        queued,
        plan,
        frame=frame,
        queue_shards=settings.shard_count,
        channel_of=lambda unit: unit_channel(audience, unit),
        exclude_connection=stored.record.exclude_connection,
        positions=stored.positions,
    )
    semaphore = asyncio.Semaphore(settings.swarm_send_concurrency)
    urls = settings.partition_queue_urls

    async def send(shard: int, bodies: list[str]) -> None:
        async with semaphore:
            await deps.queues.send(urls[shard], bodies)

    await asyncio.gather(*(send(shard, bodies) for shard, bodies in send_batches_of(tasks)))
    if local:
        await _run_here(deps, stored, plan, local, frame)
    return SwarmResult(broadcast_id, plan.partitions, len(todo))


async def _first_plan(deps: StageDeps, audience: Audience | None) -> SwarmPlan:
    settings = deps.settings
    if audience is None:
        counts = await deps.partitions.non_empty()
        return first_plan(counts, batch_size=settings.post_batch_size, min_shards=settings.counter_shards)
    members: dict[str, int] = {}
    if audience.channels is not None:
        if deps.occupancy is None:
            raise RuntimeError("the stage deps were built without the channel occupancy table")
        members = await deps.occupancy.member_counts(audience.channels)
    return audience_plan(
        audience,
        members,
        per_task=settings.channel_task_members,
        batch_size=settings.post_batch_size,
        min_shards=settings.counter_shards,
    )


async def _run_here(
    deps: StageDeps, stored: StoredBroadcast, plan: SwarmPlan, units: list[int], frame: str | None
) -> None:
    """Do the query stage's work for units the swarm reads itself (fanout.swarming.runs_in_swarm)."""
    audience = stored.audience
    tasks = unit_tasks(
        stored.record.broadcast_id,
        units,
        plan,
        frame=frame,
        channel_of=lambda unit: unit_channel(audience, unit),
        exclude_connection=stored.record.exclude_connection,
        positions=stored.positions,
    )
    semaphore = asyncio.Semaphore(LOCAL_UNITS_IN_FLIGHT)

    async def one(task: PartitionTask) -> None:
        async with semaphore:
            await run_unit(deps, task, lambda: _audience_ids(deps, audience, task))

    await asyncio.gather(*(one(task) for task in tasks))


async def _audience_ids(deps: StageDeps, audience: Audience | None, task: PartitionTask) -> list[str]:
    """The connection ids of one unit: a partition, a channel's bucket range, users' or given ids."""
    if task.channel is not None:
        _, lo, hi = unit_parts(task.partition_id)
        return await deps.members().member_ids(task.channel, lo, hi, task.offset)
    if audience is None:
        return await deps.connections.partition_ids(task.partition_id)
    if audience.kind == AudienceKind.USERS:
        semaphore = asyncio.Semaphore(USER_QUERIES_IN_FLIGHT)

        async def of_user(user: str) -> list[str]:
            async with semaphore:
                return await deps.connections.user_ids(user)

        found = await asyncio.gather(*(of_user(user) for user in audience.ids))
        return list(dict.fromkeys(cid for ids in found for cid in ids))
    return audience.ids


# -- query ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QueryResult:
    targeted: int
    batches: int
    replayed: bool


async def run_partition_task(deps: StageDeps, task: PartitionTask) -> QueryResult:
    """Load a partition's connections, or a channel's bucket range (or the plan of an earlier run),
    count them once, and send post batches of B ids."""
    return await run_unit(deps, task, lambda: _audience_ids(deps, None, task))


async def run_unit(
    deps: StageDeps, task: PartitionTask, load_ids: Callable[[], Awaitable[list[str]]]
) -> QueryResult:
    """The query stage's work for one unit, whoever runs it: the ids `load_ids` reads (or the plan of
    an earlier run), counted once, sent as post batches of B ids."""
    settings = deps.settings
    broadcasts = deps.broadcasts
    bid, pid, shards = task.broadcast_id, task.partition_id, task.counter_shards
    ids = await broadcasts.load_plan(bid, pid)
    replayed = ids is not None
    if ids is None:
        ids = targeted_ids(await load_ids(), task.exclude_connection)
        if not await broadcasts.save_plan(bid, pid, ids):  # another run of this task stored its plan first
            ids = await broadcasts.load_plan(bid, pid) or []
            replayed = True
    counted = await broadcasts.count(bid, query_entry(pid), query_counts(ids, task), shards)

    batches = post_batches(task, ids, settings.post_batch_size)
    urls = settings.post_queue_urls
    await asyncio.gather(
        *(deps.queues.send(urls[s], bodies) for s, bodies in by_shard(batches, deps.next_post_shard).items())
    )
    if query_checks_completion(ids, counted):
        await check_completion(deps, bid, task.partitions, shards)
    return QueryResult(len(ids), len(batches), replayed)


# -- post -------------------------------------------------------------------------------------------
async def run_post_batch(deps: StageDeps, batch: PostBatch) -> PostResult:
    """Post the frame to every id of the batch; prune 410s; re-enqueue only the ids still failing."""
    settings = deps.settings
    if deps.poster is None:
        raise RuntimeError("the post stage needs a poster")
    broadcasts = deps.broadcasts
    bid, shards = batch.broadcast_id, batch.counter_shards
    entry = post_entry(batch.batch_id, batch.attempt)
    if await broadcasts.is_applied(bid, entry, shards):
        return DUPLICATE

    started = time.perf_counter()
    frame, sha = await frame_of(deps, bid, batch.frame, batch.channel, batch.offset, batch.epoch)
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
        gone, connecting, subscribed = await deps.connections.prune(
            outcome.gone, now_ms=now_ms(), grace_ms=int(settings.prune_grace_seconds * 1000)
        )
        if subscribed:  # a pruned connection's subscriptions go with it
            await deps.members().remove(subscribed)
    settlement = settle(
        batch,
        PostOutcome(outcome.delivered, gone, outcome.retry, outcome.failed, connecting),
        max_attempts=settings.max_post_attempts,
        requeue_base_delay=settings.requeue_base_delay_seconds,
        connecting_delay=connecting_delay(settings.prune_grace_seconds),
    )
    if settlement.requeue is not None:
        url = settings.post_queue_urls[deps.next_post_shard()]
        body = settlement.requeue.model_dump_json(by_alias=True, exclude_defaults=True)
        await deps.queues.send(url, [body], delay=settlement.requeue_delay)
    if settlement.dead_letter is not None and settings.post_dead_letter_queue_urls:
        url = settings.post_dead_letter_queue_urls[deps.next_post_shard()]
        await deps.queues.send(
            url, [settlement.dead_letter.model_dump_json(by_alias=True, exclude_defaults=True)]
        )

    counts = with_channel_counts(settlement.counts, channel_index(batch.partition_id, batch.channel))
    counted = await broadcasts.count(bid, entry, counts, shards) if counts else True
    result = post_result(
        batch,
        settlement,
        delivered=len(outcome.delivered),
        throttled=outcome.throttled,
        counted=counted,
        last_error=outcome.last_error,
    )
    m = deps.metrics
    m.add_metric("Delivered", MetricUnit.Count, result.delivered)
    m.add_metric("Gone", MetricUnit.Count, len(gone))
    m.add_metric("Throttled", MetricUnit.Count, result.throttled)
    m.add_metric("Failed", MetricUnit.Count, result.failed)
    m.add_metric("BatchLatency", MetricUnit.Milliseconds, (time.perf_counter() - started) * 1000)
    if checks_completion(settlement, counted):
        await check_completion(deps, bid, batch.partitions, shards)
    return result


def decode(body: str, model: type[Message]) -> Message:
    """A queue message's body as its model (raises pydantic's ValidationError, or ValueError)."""
    return model.model_validate(json.loads(body))
