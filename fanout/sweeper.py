"""The sweeper's operation: find pending broadcasts, re-drive the stuck ones, fail the hopeless ones.

The decision is fanout.sweeping.decide (pure); this module runs it over the adapters passed in
(fanout.adapters.broadcasts.BroadcastsTable, fanout.adapters.lambdas.SwarmLauncher). Synchronous: the
sweeper runs once a minute; nothing here is on a hot path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from fanout.broadcasts import Broadcasts, Launcher, get_broadcast
from fanout.errors import BroadcastNotFound
from fanout.models import BroadcastStatus
from fanout.store import now_ms as clock_ms
from fanout.sweeping import Action, decide


class SweptBroadcasts(Broadcasts, Protocol):
    def pending_ids(self) -> list[str]: ...
    def swept(
        self, broadcast_id: str, *, sweeps: int, next_sweeps: int, progress: int, at_ms: int
    ) -> bool: ...


@dataclass
class SweepReport:
    pending: int = 0
    redriven: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    progressing: list[str] = field(default_factory=list)


def sweep(
    broadcasts: SweptBroadcasts,
    swarm: Launcher,
    *,
    after_ms: int,
    attempts: int,
    now_ms: int | None = None,
    clock: Callable[[], int] = clock_ms,
) -> SweepReport:
    """One pass over every pending broadcast; `now_ms` fixes the time of the whole pass (tests)."""
    report = SweepReport()
    ids = broadcasts.pending_ids()
    report.pending = len(ids)
    for broadcast_id in ids:
        at = clock() if now_ms is None else now_ms
        try:
            record = get_broadcast(broadcasts, broadcast_id)
        except BroadcastNotFound:
            continue
        decision = decide(record, now_ms=at, after_ms=after_ms, attempts=attempts)
        if decision.action == Action.WAIT:
            continue
        if decision.action == Action.FAIL:
            if broadcasts.finish(broadcast_id, BroadcastStatus.FAILED, at, error=decision.reason):
                report.failed.append(broadcast_id)
            continue  # else another sweeper, or the pipeline, ended it meanwhile
        redrive = decision.action == Action.REDRIVE
        recorded = broadcasts.swept(
            broadcast_id,
            sweeps=record.sweeps,
            next_sweeps=record.sweeps + (1 if redrive else 0),
            progress=decision.progress,
            at_ms=at,
        )
        if not recorded:
            continue
        if redrive:
            swarm.launch(broadcast_id)
            report.redriven.append(broadcast_id)
        else:
            report.progressing.append(broadcast_id)
    return report
