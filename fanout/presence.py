"""Channel occupancy as domain operations over the adapters: one function per handler.

`count_batch` is the channel counter's (the subscriptions stream), `reconcile` the channel
reconciler's. The decisions are fanout.occupancy's; the adapters (fanout.adapters.channels,
fanout.adapters.subscription_reads) are passed in; nothing here reads settings or builds clients.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from fanout.adapters.channels import AppliedPresence, ChannelsTable
from fanout.adapters.subscription_reads import SubscriptionReads
from fanout.errors import FanoutError
from fanout.occupancy import (
    CounterDelta,
    OccupancyFix,
    PresenceKey,
    PresenceUpdate,
    SubscriptionChange,
    aggregate,
    count_rows,
    counter_deltas,
    expired_members,
    is_busy,
    plan_checkpoint,
    plan_fix,
    prefix_before_failure,
)


class OccupancySink(Protocol):
    def apply_presence(self, deltas: dict[PresenceKey, int]) -> AppliedPresence: ...

    def apply_counters(self, deltas: dict[str, CounterDelta]) -> dict[str, FanoutError]: ...


@dataclass(frozen=True)
class BatchCount:
    """What one stream batch did. `retry_from` is the index (in the batch) of the record to report as
    failed because a presence ADD it contributed to did not land; None when every record counted."""

    presence: dict[PresenceKey, int]
    counters: dict[str, CounterDelta]
    records_counted: int
    expired: int
    retry_from: int | None = None
    failed_presence: dict[PresenceKey, FanoutError] = field(default_factory=dict)
    compensation_failed: dict[PresenceKey, FanoutError] = field(default_factory=dict)
    failed_counters: dict[str, FanoutError] = field(default_factory=dict)


def count_batch(changes: Sequence[SubscriptionChange | None], sink: OccupancySink) -> BatchCount:
    """Apply the records before the first unreadable one (None): presence ADDs, then one counter ADD
    per channel from what the presence ADDs answered.

    A presence ADD that fails moves the checkpoint back to the first record touching it, and the landed
    ADDs are compensated for the records that will be redelivered (fanout.occupancy.plan_checkpoint).
    The counter ADDs follow the presence ADDs that landed (compensations included), so the counter and
    the presence rows agree. A counter ADD that fails is not retried by redelivery (the presence rows
    already moved: a replay would count them twice); the reconciler corrects that counter within a run.
    """
    prefix = prefix_before_failure(changes)
    applied = sink.apply_presence(aggregate(prefix))
    checkpoint = plan_checkpoint(prefix, applied.failed)
    landed: list[PresenceUpdate] = list(applied.landed)
    compensation_failed: dict[PresenceKey, FanoutError] = {}
    if checkpoint.compensation:
        compensated = sink.apply_presence(checkpoint.compensation)
        landed += compensated.landed
        compensation_failed = dict(compensated.failed)
    counters = counter_deltas(landed)
    failed_counters = sink.apply_counters(counters)
    counted = prefix if checkpoint.index is None else prefix[: checkpoint.index]
    return BatchCount(
        presence=aggregate(counted),
        counters={ch: d for ch, d in counters.items() if ch not in failed_counters},
        records_counted=len(counted),
        expired=sum(1 for c in counted if c.expired),
        retry_from=checkpoint.index,
        failed_presence=dict(applied.failed),
        compensation_failed=compensation_failed,
        failed_counters=failed_counters,
    )


@dataclass(frozen=True)
class ChannelReconciliation:
    channels: int  # channels looked at: with a counter row or with subscription rows
    corrected: list[OccupancyFix]
    skipped: list[OccupancyFix]  # changed by the stream lately, or moved under us: the next run
    busy: int  # channels left alone because the counter changed them within the quiet window
    expired_deleted: int
    connections: int  # subscription rows counted
    queries: int


def reconcile(
    channels: ChannelsTable, subscriptions: SubscriptionReads, *, now_ms: int, quiet_ms: int = 0
) -> ChannelReconciliation:
    """Recount every channel from its subscription rows and set its counter and presence rows to the
    truth where they differ; then delete the subscription rows whose expiry has passed.

    Why the quiet window: a subscription row and its stream record are not applied at once, so a
    recount can hold a row whose INSERT the counter has not applied yet (or miss one whose REMOVE it
    has not), and writing it would count that row twice once the record lands. A channel the counter
    changed within `quiet_ms` is left for a later run, and every write is conditional on the value
    read, so a batch landing between the read and the write is never overwritten.

    Expired rows are counted as rows (they exist until deleted), then deleted: their REMOVEs flow
    through the stream and the counter like TTL deletions (which DynamoDB makes only eventually).
    """
    rows = subscriptions.all_rows()
    names = channels.counted_channels() | {r.channel for r in rows}
    corrected: list[OccupancyFix] = []
    skipped: list[OccupancyFix] = []
    busy = queries = counted_rows = 0
    for channel in sorted(names):
        stored = channels.stored(channel)
        if is_busy(stored, now_ms=now_ms, quiet_ms=quiet_ms):
            busy += 1
            continue
        members, pages = subscriptions.channel_rows(channel)
        queries += pages
        counted_rows += len(members)
        fix = plan_fix(channel, stored, count_rows(r.user_id for r in members))
        if fix is None:
            continue
        ok = True
        for p in fix.presence:
            ok = channels.set_presence(channel, p.user_id, expected=p.expected, value=p.value) and ok
        if fix.counter is not None:
            c = fix.counter
            ok = channels.set_counter(channel, expected=c.expected, value=c.value, now_ms=now_ms) and ok
        (corrected if ok else skipped).append(fix)
    expired = expired_members(((r.channel, r.member, r.expires_at) for r in rows), now_s=now_ms // 1000)
    deleted = subscriptions.delete_expired(expired, now_s=now_ms // 1000) if expired else 0
    return ChannelReconciliation(len(names), corrected, skipped, busy, deleted, counted_rows, queries)
