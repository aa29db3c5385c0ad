"""When a broadcast that never finished is re-driven, and when it is given up (pure).

The swarm is invoked asynchronously: when its invocation and Lambda's two retries fail, the event goes
to the on-failure destination and the broadcast would stay queued or running for ever. The sweeper
looks at every pending broadcast each minute and decides with `decide`:

- younger than `after_ms` since it was created or last swept: wait;
- progress (partitions counted + connections accounted) moved since the last sweep: it is slow, not
  stuck; note the progress and wait again;
- otherwise re-drive it (invoke the swarm again: a queued broadcast starts, a running one re-sends the
  partition tasks not yet counted), up to `attempts` times; then mark it failed with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from fanout.models import BroadcastRecord


class Action(StrEnum):
    WAIT = "wait"
    PROGRESSING = "progressing"
    REDRIVE = "redrive"
    FAIL = "fail"


@dataclass(frozen=True)
class Decision:
    action: Action
    progress: int
    reason: str | None = None


def decide(record: BroadcastRecord, *, now_ms: int, after_ms: int, attempts: int) -> Decision:
    """`record` carries its counts (the sum of its counter shards)."""
    progress = record.partitions_done + record.accounted
    since = record.swept_at if record.swept_at is not None else record.created_at
    if now_ms - since < after_ms:
        return Decision(Action.WAIT, progress)
    if record.swept_at is not None and progress > record.swept_progress:
        return Decision(Action.PROGRESSING, progress)
    if record.sweeps >= attempts:
        stalled = (
            f"{record.status.value} with no progress for {(now_ms - since) // 1000} s after "
            f"{record.sweeps} re-drive(s): {record.partitions_done} of {record.partitions} partitions "
            f"counted, {record.accounted} of {record.targeted} connections accounted"
        )
        reason = f"{stalled}; last error: {record.error}" if record.error else stalled
        return Decision(Action.FAIL, progress, reason)
    return Decision(Action.REDRIVE, progress)
