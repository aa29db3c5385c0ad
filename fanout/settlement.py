"""What a post batch's outcome means: what counts, what is re-enqueued, what is dead-lettered (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fanout.models import PostBatch
from fanout.retry import requeue_delay_seconds


@dataclass(frozen=True)
class PostOutcome:
    """What posting a batch gave, after pruning: every id of the batch is in exactly one list."""

    delivered: Sequence[str]
    gone: Sequence[str]  # 410 on a connection old enough to be believed: its row was deleted
    retry: Sequence[str]  # 429/5xx still failing after the in-call retries
    failed: Sequence[str]  # refused for good (403, 413, ...)
    # 410 on a connection whose row is younger than the prune grace: its $connect may not have finished
    # (API Gateway answers 410 until it has), so it is tried again after the grace, not pruned
    connecting: Sequence[str] = ()


@dataclass(frozen=True)
class Settlement:
    counts: dict[str, int]  # the non-zero deltas to add to the broadcast's counters
    requeue: PostBatch | None = None
    requeue_delay: int = 0
    dead_letter: PostBatch | None = None

    @property
    def requeued(self) -> int:
        return len(self.requeue.connection_ids) if self.requeue else 0


def settle(
    batch: PostBatch,
    outcome: PostOutcome,
    *,
    max_attempts: int,
    requeue_base_delay: int,
    connecting_delay: int = 0,
) -> Settlement:
    """Decide the counts and the follow-up batch of one post attempt.

    - ids still failing are re-enqueued as the next attempt, with a growing delay, until
      `max_attempts`; then they go to the dead-letter queue and count as failed;
    - a batch redriven from the dead-letter queue already counts its ids as failed: what it delivers
      or finds gone now moves out of `failed`, and what fails again stays failed (dead-lettered anew);
    - a 410 on a connection still connecting is tried again no sooner than `connecting_delay`; on the
      last attempt it is believed (counted gone; its row expires with its TTL or its $disconnect).
    """
    failed = len(outcome.failed)
    gone = len(outcome.gone)
    retry = list(outcome.retry)
    last = batch.attempt >= max_attempts or batch.dead_lettered
    if last:
        gone += len(outcome.connecting)
    else:
        retry.extend(outcome.connecting)
    requeue = dead = None
    delay = 0
    if retry:
        nxt = batch.model_copy(update={"connection_ids": retry, "attempt": batch.attempt + 1, "retry": True})
        if not last:
            requeue = nxt
            delay = requeue_delay_seconds(batch.attempt, base=requeue_base_delay)
            if outcome.connecting:
                delay = max(delay, connecting_delay)
        else:
            dead = nxt.model_copy(update={"dead_lettered": True})
            if not batch.dead_lettered:
                failed += len(retry)
    counts = {"delivered": len(outcome.delivered), "gone": gone, "failed": failed}
    if batch.dead_lettered:
        counts["failed"] = -(len(outcome.delivered) + gone)
    return Settlement(
        counts={k: v for k, v in counts.items() if v},
        requeue=requeue,
        requeue_delay=delay,
        dead_letter=dead,
    )
