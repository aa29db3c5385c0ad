"""Retry schedules: exponential backoff with full jitter (pure; the random source is passed in)."""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_delay(
    attempt: int, *, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """Delay before retry number `attempt` (1-based): uniform in [0, min(cap, base * 2**(attempt-1))]."""
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    ceiling = min(cap, base * (2 ** min(attempt - 1, 30)))
    return ceiling * rand()


def requeue_delay_seconds(
    attempt: int, *, base: int, cap: int = 900, rand: Callable[[], float] = random.random
) -> int:
    """SQS DelaySeconds for the re-enqueue after `attempt` failed deliveries: base*2**(attempt-1), jittered
    into [half, full], capped at SQS's 900 s maximum."""
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    full = min(cap, 900, base * (2 ** min(attempt - 1, 20)))
    return round(full / 2 + (full / 2) * rand())
