"""Token buckets for client messages, as plain functions over plain data (no I/O).

A bucket of `burst` tokens refilled at `rate` tokens per second is kept as one number, its
*theoretical arrival time* (GCRA): the time at which the bucket would be full again. A message at
`now` is admitted when the bucket, after taking its token, would not hold a debt above the burst:

    next = max(tat, now) + interval            (interval = 1000 / rate ms)
    admitted  iff  next - now <= burst * interval

and then `tat` becomes `next`. When refused, the client may retry after
``next - now - burst * interval`` ms. One number per bucket means one conditional UpdateItem per
message in DynamoDB (fanout.adapters.ratelimits), shared by every Lambda container.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field


class BucketLimit(BaseModel):
    """`rate` messages per second on average, up to `burst` at once."""

    model_config = ConfigDict(frozen=True)

    rate: float = Field(gt=0, le=10_000, description="tokens refilled per second")
    burst: int = Field(ge=1, le=100_000, description="tokens a full bucket holds")

    @property
    def interval_ms(self) -> float:
        return 1000.0 / self.rate

    @property
    def tolerance_ms(self) -> float:
        """How far ahead of now a bucket's tat may be after a message is admitted."""
        return self.burst * self.interval_ms

    def idle_ms(self) -> int:
        """How long an untouched bucket takes to be full again: after that its row can go (TTL)."""
        return math.ceil(self.tolerance_ms)


@dataclass(frozen=True)
class Admitted:
    tat: float  # the bucket's new theoretical arrival time (epoch ms)


@dataclass(frozen=True)
class Limited:
    retry_after_ms: int


Decision = Admitted | Limited


def decide(tat: float | None, now_ms: float, limit: BucketLimit) -> Decision:
    """Whether a message at `now_ms` is admitted by a bucket whose tat is `tat` (None: no row yet,
    a full bucket)."""
    start = now_ms if tat is None else max(tat, now_ms)
    next_tat = start + limit.interval_ms
    excess = next_tat - now_ms - limit.tolerance_ms
    if excess <= 0:
        return Admitted(next_tat)
    return Limited(max(1, math.ceil(excess)))


def fresh(tat: float | None, now_ms: float) -> bool:
    """Whether the bucket is full at `now_ms` (no row, or a tat already past): the write that admits
    the message needs no knowledge of the old value, only the condition that it is still past."""
    return tat is None or tat <= now_ms


def connection_key(connection_id: str) -> str:
    """The bucket of one connection."""
    return f"c#{connection_id}"


def user_key(user_id: str) -> str:
    """The bucket of one user, every connection of theirs together."""
    return f"u#{user_id}"
