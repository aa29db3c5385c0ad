"""Partition choice on `$connect`: a cached view of the counts and the least loaded of d candidates.

Pure: the view loader and the clock are passed in, so the same code runs in a Lambda container
(loader = a Scan of the partitions table, clock = time.monotonic) and in a deterministic simulation.

Why d random candidates rather than the global minimum of the view: many containers connect at
once, each with its own view that is a few seconds stale. Every one of them would send all its
connects to the same "least loaded" partition until its next refresh (herding). The least loaded of
d random candidates spreads those connects while still steering them to light partitions (the power
of d choices). The container bumps its own view on each assignment, so its own connects spread even
between refreshes; other containers' connects show up at the next refresh.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ViewLoad:
    """What one load of the partition view returned, and what it cost in DynamoDB pages (reads)."""

    counts: Mapping[int, int]
    pages: int = 1


@dataclass
class ChooserStats:
    loads: int = 0
    pages: int = 0
    choices: int = 0
    failed_loads: int = 0

    @property
    def reads_per_choice(self) -> float:
        return self.pages / self.choices if self.choices else 0.0


@dataclass
class PartitionView:
    """Counts per partition id `0 .. N-1` as last loaded, plus this container's own assignments."""

    counts: list[int]
    loaded_at: float

    @classmethod
    def from_counts(cls, counts: Mapping[int, int], partition_count: int, loaded_at: float) -> PartitionView:
        # Ids outside 0..N-1 (a shrunk deployment) are ignored; missing rows count as empty. Negative
        # counts (drift not yet reconciled) are clamped to 0 so they do not attract every connect.
        view = [0] * partition_count
        for pid, count in counts.items():
            if 0 <= pid < partition_count:
                view[pid] = max(0, int(count))
        return cls(view, loaded_at)

    def is_stale(self, now: float, ttl: float) -> bool:
        return now - self.loaded_at >= ttl or now < self.loaded_at

    def least_loaded(self, candidates: list[int]) -> int:
        """The candidate with the lowest count; ties go to the earliest candidate (they are random)."""
        best = candidates[0]
        best_count = self.counts[best]
        for pid in candidates[1:]:
            if self.counts[pid] < best_count:
                best, best_count = pid, self.counts[pid]
        return best

    def bump(self, partition_id: int, by: int = 1) -> None:
        self.counts[partition_id] += by


def pick(view: PartitionView, choices: int, rng: random.Random) -> int:
    """The least loaded of `choices` distinct random partitions of the view (all when d >= N)."""
    n = len(view.counts)
    if n == 0:
        raise ValueError("no partitions")
    d = min(choices, n)
    candidates = rng.sample(range(n), d)
    return view.least_loaded(candidates)


@dataclass
class PartitionChooser:
    """One per container: `choose()` returns a partition id and counts it in the local view.

    `loader()` is called when the view is older than `ttl_seconds` (and on first use); it is the
    only I/O, so the reads per connect are `pages per load / connects per TTL`, which is O(1)
    amortized and well under 1 at any real connect rate.
    """

    loader: Callable[[], ViewLoad]
    partition_count: int
    choices: int = 3
    ttl_seconds: float = 3.0
    clock: Callable[[], float] = field(default=lambda: 0.0)
    rng: random.Random = field(default_factory=random.Random)
    view: PartitionView | None = None
    stats: ChooserStats = field(default_factory=ChooserStats)

    def __post_init__(self) -> None:
        if self.partition_count < 1:
            raise ValueError("partition_count must be at least 1")
        if self.choices < 1:
            raise ValueError("choices must be at least 1")

    def refresh(self) -> PartitionView:
        load = self.loader()
        self.stats.loads += 1
        self.stats.pages += load.pages
        self.view = PartitionView.from_counts(load.counts, self.partition_count, self.clock())
        return self.view

    def current_view(self) -> PartitionView:
        if self.view is None:
            return self.refresh()  # nothing to fall back on: a failed first load fails the connect
        if self.view.is_stale(self.clock(), self.ttl_seconds):
            try:
                return self.refresh()
            except Exception:
                # The partitions table is throttled or unreachable: keep connecting on the stale
                # view (it still has this container's own bumps) and try again after one TTL.
                self.stats.failed_loads += 1
                self.view.loaded_at = self.clock()
        return self.view

    def choose(self) -> int:
        view = self.current_view()
        pid = pick(view, self.choices, self.rng)
        view.bump(pid)
        self.stats.choices += 1
        return pid
