"""What the swarm does with a broadcast (pure): start it, resume it, or leave it; which partition tasks
it sends, to which partition queue shard, and what a failure means.

The swarm is invoked asynchronously, so Lambda may run it twice, and the sweeper re-drives it when it
stalls. A queued broadcast is started with the partitions that have connections now (its plan, stored
on the broadcast with its counter shards); a running one is resumed from that stored plan, less the
partitions already counted, whose tasks ran and whose post batches are queued or sent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from fanout.accounting import Totals, counter_shards
from fanout.channels import BUCKETS, bucket_ranges, unit_id, unit_parts
from fanout.errors import MessageRefused
from fanout.models import Audience, AudienceKind, BroadcastRecord, BroadcastStatus, PartitionTask
from fanout.planning import partition_shard

# SendMessageBatch takes at most 10 messages.
SQS_BATCH = 10


@dataclass(frozen=True)
class StoredBroadcast:
    """A broadcast as read from its table: the record (without its counts), and what the swarm stored."""

    record: BroadcastRecord
    frame: str | None = None  # read only when asked for
    partition_ids: tuple[int, ...] = ()  # the plan, once started
    # a channel broadcast's place in each channel's history: channel → (offset, epoch)
    positions: Mapping[str, tuple[int, str]] = field(default_factory=dict)

    @property
    def shards(self) -> int:
        """The broadcast's counter shards (0 until the swarm has started it)."""
        return self.record.counter_shards

    @property
    def audience(self) -> Audience | None:
        """Who it goes to; None: every connection."""
        return self.record.audience


class SwarmStep(StrEnum):
    ENDED = "ended"  # completed or failed: nothing to send
    START = "start"  # queued: plan it from the partitions' counts
    RESUME = "resume"  # running: a retried invocation or a re-drive, from the stored plan


@dataclass(frozen=True)
class SwarmPlan:
    partition_ids: list[int]  # every partition targeted (the broadcast's `partitions`)
    shards: int  # its counter shards

    @property
    def partitions(self) -> int:
        return len(self.partition_ids)


def swarm_step(status: BroadcastStatus) -> SwarmStep:
    if status in (BroadcastStatus.COMPLETED, BroadcastStatus.FAILED):
        return SwarmStep.ENDED
    if status == BroadcastStatus.RUNNING:
        return SwarmStep.RESUME
    return SwarmStep.START


def first_plan(counts: Mapping[int, int], *, batch_size: int, min_shards: int) -> SwarmPlan:
    """Every partition with connections, in partition order, and the counter shards they need."""
    ids = sorted(pid for pid, count in counts.items() if count > 0)
    shards = counter_shards((counts[pid] for pid in ids), batch_size, minimum=min_shards)
    return SwarmPlan(ids, shards)


# A users or connections audience is one work unit: its ids are known to the swarm (or read with one
# query per user), and 1,000 users of a few devices each are a few post batches.
SINGLE_UNIT = 0


def audience_plan(
    audience: Audience,
    member_counts: Mapping[str, int],
    *,
    per_task: int,
    batch_size: int,
    min_shards: int,
) -> SwarmPlan:
    """The work units of a targeted broadcast and its counter shards.

    A channel is read in bucket ranges, one unit per `per_task` members by its occupancy count (which
    may lag: it only sizes the split, every unit reads the rows themselves, so a stale count costs
    parallelism, never a member). Users and connections are one unit.
    """
    if audience.kind != AudienceKind.CHANNELS:
        guess = len(audience.ids) * (3 if audience.kind == AudienceKind.USERS else 1)
        return SwarmPlan([SINGLE_UNIT], counter_shards([guess], batch_size, minimum=min_shards))
    units: list[int] = []
    sizes: list[int] = []
    for index, name in enumerate(audience.channels or []):
        members = max(member_counts.get(name, 0), 0)
        ranges = bucket_ranges(members, per_task)
        units += [unit_id(index, lo, hi) for lo, hi in ranges]
        sizes += [math.ceil(members / len(ranges))] * len(ranges)
    return SwarmPlan(units, counter_shards(sizes, batch_size, minimum=min_shards))


def unit_channel(audience: Audience | None, unit: int) -> str | None:
    """The channel a work unit reads (None unless the audience is channels)."""
    if audience is None or audience.channels is None:
        return None
    return audience.channels[unit_parts(unit)[0]]


def runs_in_swarm(audience: Audience | None, unit: int) -> bool:
    """Whether the swarm reads the unit and queues its post batches itself, sparing the audience a
    queue hop and a query invocation: a user's devices, a list of connections, a channel read in one
    range. Partitions of everyone, and the ranges of a big channel, go to the query stage in parallel."""
    if audience is None:
        return False
    if audience.kind != AudienceKind.CHANNELS:
        return True
    _, lo, hi = unit_parts(unit)
    return (lo, hi) == (0, BUCKETS - 1)


def resumed_plan(stored: StoredBroadcast) -> SwarmPlan:
    return SwarmPlan(list(stored.partition_ids), stored.shards)


def unsent(partition_ids: Sequence[int], counted: Collection[int]) -> list[int]:
    """The partitions whose tasks must be sent (again): not counted yet. A counted partition was
    queried, so sending it again would post its batches again."""
    return [pid for pid in partition_ids if pid not in counted]


def still_to_send(plan: SwarmPlan, totals: Totals) -> list[int]:
    return unsent(plan.partition_ids, totals.counted_partitions())


def inline_frame(frame: str, limit: int) -> str | None:
    """The frame if it travels inside the tasks (small), None if the stages read it by reference."""
    return frame if len(frame.encode("utf-8")) <= limit else None


def partition_tasks(
    broadcast_id: str,
    partition_ids: Sequence[int],
    plan: SwarmPlan,
    *,
    frame: str | None,
    queue_shards: int,
    channel_of: Callable[[int], str | None] = lambda unit: None,
    exclude_connection: str | None = None,
    positions: Mapping[str, tuple[int, str]] | None = None,
) -> dict[int, list[str]]:
    """The bodies of the partition tasks, by partition queue shard (a partition always goes to one)."""
    by_shard: dict[int, list[str]] = {}
    tasks = unit_tasks(
        broadcast_id,
        partition_ids,
        plan,
        frame=frame,
        channel_of=channel_of,
        exclude_connection=exclude_connection,
        positions=positions,
    )
    for task in tasks:
        body = task.model_dump_json(by_alias=True, exclude_none=True)
        by_shard.setdefault(partition_shard(task.partition_id, queue_shards), []).append(body)
    return by_shard


def unit_tasks(
    broadcast_id: str,
    units: Sequence[int],
    plan: SwarmPlan,
    *,
    frame: str | None,
    channel_of: Callable[[int], str | None] = lambda unit: None,
    exclude_connection: str | None = None,
    positions: Mapping[str, tuple[int, str]] | None = None,
) -> list[PartitionTask]:
    """The task of each unit (a partition of everyone, or a unit of a targeted broadcast), with its
    channel's offset and epoch when the broadcast has them."""
    tasks = []
    for unit in units:
        channel = channel_of(unit)
        offset, epoch = (positions or {}).get(channel or "", (None, None))
        tasks.append(
            PartitionTask(
                broadcast_id=broadcast_id,
                partition_id=unit,
                partitions=plan.partitions,
                counter_shards=plan.shards,
                frame=frame,
                channel=channel,
                exclude_connection=exclude_connection,
                offset=offset,
                epoch=epoch,
            )
        )
    return tasks


def targeted_ids(ids: Sequence[str], exclude_connection: str | None) -> list[str]:
    """A unit's connection ids less the one a client's message leaves out (its sender, echo off):
    filtered before the unit is counted, so the excluded connection is never targeted."""
    if exclude_connection is None:
        return list(ids)
    return [cid for cid in ids if cid != exclude_connection]


def send_batches_of(
    by_shard: Mapping[int, Sequence[str]], size: int = SQS_BATCH
) -> list[tuple[int, list[str]]]:
    """(shard, up to `size` bodies): one SendMessageBatch each, sent many at once."""
    return [
        (shard, list(bodies[i : i + size]))
        for shard, bodies in by_shard.items()
        for i in range(0, len(bodies), size)
    ]


def refusal_reason(exc: MessageRefused) -> str:
    """Why a broadcast fails when SQS refuses its tasks for good: no retry can change a refused body."""
    return f"the partition tasks were refused by SQS: {exc}"


def attempt_error(exc: BaseException) -> str:
    """What is noted on a broadcast when a swarm attempt fails otherwise (retried by Lambda, then the
    sweeper, which puts it in the reason when it gives up)."""
    return f"swarm: {type(exc).__name__}: {exc}"
