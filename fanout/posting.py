"""What the post stage reports for one post batch (pure), around fanout.settlement's `settle`.

The batch's outcome is decided by `settle` (counts, re-enqueue, dead letter); this module turns it into
the stage's result and the per-batch figures its metrics publish. Everything here runs once per batch,
never per frame.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from fanout.models import PostBatch
from fanout.settlement import Settlement


@dataclass(frozen=True)
class PostResult:
    delivered: int
    gone: int
    failed: int
    requeued: int
    duplicate: bool = False
    last_error: str | None = None
    throttled: int = 0


DUPLICATE = PostResult(0, 0, 0, 0, duplicate=True)


def connecting_delay(prune_grace_seconds: float) -> int:
    """The SQS delay (whole seconds, rounded up) before a 410 on a young row is tried again."""
    return math.ceil(prune_grace_seconds)


def failed_now(batch: PostBatch, counts: Mapping[str, int]) -> int:
    """Ids that failed for good in this attempt. A batch redriven from the dead-letter queue already
    counted its ids as failed: its `failed` delta is what leaves that count, not a new failure."""
    return 0 if batch.dead_lettered else counts.get("failed", 0)


def post_result(
    batch: PostBatch,
    settlement: Settlement,
    *,
    delivered: int,
    throttled: int,
    counted: bool,
    last_error: str | None,
) -> PostResult:
    """The stage's answer for the batch; `counted` is False when its entry had been applied (a replay
    that raced its original past the ledger check)."""
    counts = settlement.counts
    return PostResult(
        delivered,
        counts.get("gone", 0),
        failed_now(batch, counts),
        settlement.requeued,
        duplicate=not counted,
        last_error=last_error,
        throttled=throttled,
    )


def checks_completion(settlement: Settlement, counted: bool) -> bool:
    """Only a batch that added counts can be the one that completes the broadcast."""
    return counted and bool(settlement.counts)
