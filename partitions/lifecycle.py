"""The connection lifecycle as domain operations over the adapters: one function per handler.

Adapters are passed in (fanout.adapters.connections, fanout.adapters.partitions,
fanout.adapters.subscriptions); nothing here reads settings or builds clients.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from fanout.adapters.connections import ConnectionsTable, channels_of
from fanout.adapters.partitions import AppliedDeltas, PartitionsTable
from fanout.adapters.subscriptions import SubscriptionsTable
from fanout.errors import FanoutError
from fanout.history import RECOVERING, RecoverFrom
from fanout.protocol import Grants, connect_channels, connect_recovery
from partitions.choice import PartitionChooser
from partitions.counting import StreamChange, aggregate, plan_checkpoint, prefix_before_failure
from partitions.reconcile import Correction, ReconciliationPlan, plan_reconciliation, recount_slice


class DeltaSink(Protocol):
    def apply_deltas(self, deltas: dict[int, int]) -> AppliedDeltas: ...


@dataclass(frozen=True)
class Connected:
    connection_id: str
    partition_id: int
    expires_at: int
    channels: tuple[str, ...] = ()
    # the channels of ?recover=, subscribed to but taking no live message until recovery hands over
    recover: tuple[RecoverFrom, ...] = ()


def open_connection(
    chooser: PartitionChooser,
    connections: ConnectionsTable,
    subscriptions: SubscriptionsTable,
    *,
    connection_id: str,
    grants: Grants,
    source_ip: str,
    now: float,
    expires_at: int,
    requested: Sequence[str] = (),
    recover: str = "",
    max_subscriptions: int,
) -> Connected:
    """Decide the channels asked for at $connect (fanout.protocol.connect_channels: raises Refused,
    and then nothing is written), choose a partition (cached view, least loaded of d) and write the
    rows: the subscription rows first, then the connection row listing them.

    In that order a connection row never lists a channel without its row; if the connection row
    cannot be written, the subscription rows are deleted again (best effort: they expire with the
    connection's expiresAt otherwise). No counter write: the stream of the connections table feeds
    the counters.
    """
    recovering = connect_recovery(grants, recover, requested, limit=max_subscriptions)
    channels = connect_channels(grants, requested, limit=max_subscriptions)
    channels = list(dict.fromkeys([*channels, *(r.channel for r in recovering)]))
    partition_id = chooser.choose()
    if channels:
        live_from = {r.channel: RECOVERING for r in recovering}
        subscriptions.put_rows(connection_id, grants.user_id, channels, expires_at, live_from)
    try:
        item = connections.put(
            connection_id=connection_id,
            partition_id=partition_id,
            user_id=grants.user_id,
            source_ip=source_ip,
            now=now,
            channels=channels,
            expires_at=expires_at,
        )
    except FanoutError:
        if channels:
            with contextlib.suppress(FanoutError):
                subscriptions.remove(connection_id, channels)
        raise
    return Connected(
        connection_id, partition_id, int(item["expiresAt"]["N"]), tuple(channels), tuple(recovering)
    )


@dataclass(frozen=True)
class Disconnected:
    partition_id: int | None
    channels: tuple[str, ...]


def close_connection(
    connections: ConnectionsTable, subscriptions: SubscriptionsTable, connection_id: str
) -> Disconnected | None:
    """Delete the connection row, then the subscription rows it listed; None when the row was
    already gone (its subscription rows, if any are left, expire with it)."""
    old = connections.delete_row(connection_id)
    if old is None:
        return None
    channels = channels_of(old)
    if channels:
        subscriptions.remove(connection_id, channels)
    partition = old.get("partitionId")
    return Disconnected(int(partition["N"]) if partition else None, tuple(channels))


@dataclass(frozen=True)
class BatchCount:
    """What one stream batch did to the counters.

    `retry_from` is the index (in the batch) of a record that must be reported as failed because an
    ADD it contributed to did not land; None when every applied record counted.
    """

    deltas: dict[int, int]
    records_counted: int
    expired: int
    retry_from: int | None = None
    failed_adds: dict[int, FanoutError] = field(default_factory=dict)
    compensation: dict[int, int] = field(default_factory=dict)
    compensation_failed: dict[int, FanoutError] = field(default_factory=dict)


def count_batch(changes: Sequence[StreamChange | None], counters: DeltaSink) -> BatchCount:
    """Apply one net ADD per partition for the records before the first failed one (None).

    See partitions.counting for why the suffix after a failure is left for the redelivery.
    """
    prefix = prefix_before_failure(changes)
    deltas = aggregate(prefix)
    applied = counters.apply_deltas(deltas)
    checkpoint = plan_checkpoint(prefix, applied.failed)
    compensated = AppliedDeltas()
    if checkpoint.compensation:
        compensated = counters.apply_deltas(checkpoint.compensation)
    counted = prefix if checkpoint.index is None else prefix[: checkpoint.index]
    landed = aggregate(counted)
    return BatchCount(
        deltas=landed,
        records_counted=len(counted),
        expired=sum(1 for c in counted if c.expired),
        retry_from=checkpoint.index,
        failed_adds=dict(applied.failed),
        compensation=dict(compensated.applied),
        compensation_failed=dict(compensated.failed),
    )


@dataclass(frozen=True)
class Reconciliation:
    plan: ReconciliationPlan
    corrected: list[Correction]
    skipped: list[Correction]  # changed by the stream lately, or moved under us: left for the next run
    queries: int
    recounted: int = 0  # partitions recounted by this run


def reconcile(
    connections: ConnectionsTable,
    partitions: PartitionsTable,
    *,
    partition_count: int,
    now_ms: int,
    quiet_ms: int = 0,
    per_run: int | None = None,
    run_index: int = 0,
) -> Reconciliation:
    """Recount partitions through the GSI and correct the counters that drifted: every partition,
    or with `per_run` the `run_index`-th slice of that many (partitions.reconcile.recount_slice);
    the figures (total, largest, skew) then take the stored counters for the partitions not recounted.

    A row and its stream record are not written at once: a recount can include rows whose INSERT
    (or miss rows whose REMOVE) the stream has not applied yet, and setting the counter to it would
    count them twice when the records land. So a partition the stream changed less than `quiet_ms`
    before this run is left for a later one (skipped), and so is one whose counter moves between
    the read and the write (the correction is conditional on the value read). `quiet_ms` must be
    above the stream's processing lag.
    """
    rows = partitions.stored_counters()
    stored = {pid: row.count for pid, row in rows.items()}
    ids = set(range(partition_count)) | set(stored)
    recounted = recount_slice(ids, per_run, run_index) if per_run else sorted(ids)
    counted, queries = connections.count_partitions(recounted)
    plan = plan_reconciliation(counted, stored, partition_count=partition_count)
    if len(recounted) < len(ids):
        known = {pid: 0 for pid in ids} | {pid: n for pid, n in stored.items() if n is not None}
        figures = plan_reconciliation(known | counted, stored, partition_count=partition_count)
        plan = replace(figures, corrections=plan.corrections)
    corrected: list[Correction] = []
    skipped: list[Correction] = []
    for correction in plan.corrections:
        at = rows[correction.partition_id].counted_at_ms if correction.partition_id in rows else None
        busy = at is not None and at > now_ms - quiet_ms
        if busy or not partitions.correct(
            correction.partition_id, expected=correction.stored, value=correction.counted, now_ms=now_ms
        ):
            skipped.append(correction)
        else:
            corrected.append(correction)
    return Reconciliation(plan, corrected, skipped, queries, len(recounted))
