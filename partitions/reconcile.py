"""Reconciliation planning: counted rows per partition vs the stored counters → corrections, skew."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Correction:
    partition_id: int
    stored: int | None  # None: the partition row (or its counter) does not exist
    counted: int

    @property
    def drift(self) -> int:
        return (self.stored or 0) - self.counted


@dataclass(frozen=True)
class ReconciliationPlan:
    corrections: list[Correction]
    total: int
    largest: int
    mean: float
    skew: float  # largest / mean over the counted partitions; 1.0 when there are no connections


def skew(counts: Mapping[int, int]) -> float:
    """max/mean of the counts; 1.0 (balanced) when empty or when every partition is empty."""
    if not counts:
        return 1.0
    total = sum(counts.values())
    if total <= 0:
        return 1.0
    return max(counts.values()) / (total / len(counts))


def plan_reconciliation(
    counted: Mapping[int, int], stored: Mapping[int, int | None], *, partition_count: int | None = None
) -> ReconciliationPlan:
    """A correction for every counted partition whose stored counter differs (or is missing).

    Partitions that are stored but were not counted are left alone: the caller decides which
    partitions to count (all of 0..N-1 and every stored row). The figures (total, largest, mean,
    skew) cover the partitions `0 .. partition_count-1` when it is given, else every counted one.
    """
    corrections = [
        Correction(pid, stored.get(pid), count)
        for pid, count in sorted(counted.items())
        if stored.get(pid) != count
    ]
    live = counted if partition_count is None else {p: c for p, c in counted.items() if p < partition_count}
    total = sum(live.values())
    largest = max(live.values(), default=0)
    mean = total / len(live) if live else 0.0
    return ReconciliationPlan(corrections, total, largest, mean, skew(live))


def recount_slice(partition_ids: Iterable[int], per_run: int, run_index: int) -> list[int]:
    """The partitions run `run_index` recounts: the ids in order, cut in slices of `per_run`, the
    slices taken in turn, so ceil(ids/per_run) consecutive runs recount each partition once.

    A recount reads every row of the table; drift is rare (a stream record the counter gave up
    on), so spreading the recount over a few runs bounds its cost per run (and DynamoDB's) by
    `per_run` partitions, for a correction that may wait that many runs.
    """
    if per_run < 1:
        raise ValueError("per_run must be at least 1")
    ordered = sorted(set(partition_ids))
    if len(ordered) <= per_run:
        return ordered
    slices = -(-len(ordered) // per_run)
    start = (run_index % slices) * per_run
    return ordered[start : start + per_run]
