"""The connection lifecycle as domain operations over the adapters: one function per handler.

Adapters are passed in (see partitions.dynamodb); nothing here reads settings or builds clients.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from fanout.errors import FanoutError
from partitions.choice import PartitionChooser
from partitions.counting import StreamChange, aggregate, plan_checkpoint, prefix_before_failure
from partitions.dynamodb import AppliedDeltas, ConnectionsTable, PartitionsTable
from partitions.reconcile import Correction, ReconciliationPlan, plan_reconciliation


class DeltaSink(Protocol):
    def apply_deltas(self, deltas: dict[int, int]) -> AppliedDeltas: ...


@dataclass(frozen=True)
class Connected:
    connection_id: str
    partition_id: int
    expires_at: int


def open_connection(
    chooser: PartitionChooser,
    connections: ConnectionsTable,
    *,
    connection_id: str,
    user_id: str,
    source_ip: str,
    now: float,
) -> Connected:
    """Choose a partition (cached view, least loaded of d) and write the connection row.

    No counter write: the stream of the connections table feeds the counters.
    """
    partition_id = chooser.choose()
    item = connections.put(
        connection_id=connection_id, partition_id=partition_id, user_id=user_id, source_ip=source_ip, now=now
    )
    return Connected(connection_id, partition_id, int(item["expiresAt"]["N"]))


def close_connection(connections: ConnectionsTable, connection_id: str) -> int | None:
    """Delete the row; the partition it was in, or None when it was already gone."""
    return connections.delete(connection_id)


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
    skipped: list[Correction]  # moved under us twice (or kept failing): left for the next run
    queries: int


def reconcile(
    connections: ConnectionsTable,
    partitions: PartitionsTable,
    *,
    partition_count: int,
    now_ms: int,
    retries: int = 1,
) -> Reconciliation:
    """Recount every partition through the GSI and correct the counters that drifted.

    The stored counters are read before the recount, and each correction is conditional on the
    counter still holding the value read, so an ADD from the stream that lands in between is never
    overwritten: that correction fails, and is retried on a fresh read and recount of that one
    partition (`retries` times), else left for the next run.
    """
    stored = partitions.stored_counts()
    ids = set(range(partition_count)) | set(stored)
    counted, queries = connections.count_partitions(ids)
    plan = plan_reconciliation(counted, stored, partition_count=partition_count)
    corrected: list[Correction] = []
    skipped: list[Correction] = []
    for correction in plan.corrections:
        current = correction
        done = partitions.correct(
            current.partition_id, expected=current.stored, value=current.counted, now_ms=now_ms
        )
        attempts = 0
        while not done and attempts < retries:
            attempts += 1
            expected = partitions.get_count(current.partition_id)
            count, pages = connections.count_partition(current.partition_id)
            queries += pages
            current = Correction(current.partition_id, expected, count)
            if expected == count:
                done = True  # the stream caught up by itself: nothing to correct
                break
            done = partitions.correct(current.partition_id, expected=expected, value=count, now_ms=now_ms)
        if not done:
            skipped.append(current)
        elif current.stored != current.counted:
            corrected.append(current)
    return Reconciliation(plan, corrected, skipped, queries)
