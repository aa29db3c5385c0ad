"""Pure sizing rules of the stack, read by fanout.topology: no CDK, no AWS SDK, unit-tested alone.

The post stage is the one place where a budget applies: every PostToConnection counts against the
account's API Gateway throttle (10,000 requests/s by default, per account and Region). The SQS event
source mappings' ``MaximumConcurrency`` caps how many post workers run at once, and each worker paces
itself (``FANOUT_POST_RATE_PER_WORKER``) so that all of them together stay under the budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Lambda's limits on an SQS event source mapping's MaximumConcurrency.
SQS_MIN_MAXIMUM_CONCURRENCY = 2
SQS_MAX_MAXIMUM_CONCURRENCY = 1000
# SQS's largest visibility timeout (12 hours).
SQS_MAX_VISIBILITY_TIMEOUT_SECONDS = 12 * 3600
# AWS: "set the source queue's visibility timeout to at least six times the timeout that you
# configure on your function" (plus the batching window), so that retries after throttling of the
# function do not make the message visible again while a batch is still being processed.
VISIBILITY_TIMEOUT_FACTOR = 6


@dataclass(frozen=True)
class PostConcurrencyPlan:
    """How many post workers run at once and how fast each one posts."""

    max_concurrency_per_shard: int
    """MaximumConcurrency of each post queue's event source mapping."""
    total_workers: int
    """max_concurrency_per_shard x shards: the reserved concurrency of the post function."""
    rate_per_worker: float
    """posts/s per worker, so that total_workers x rate_per_worker <= the budget."""


def post_rate_per_worker(post_rate_budget: float, max_concurrency: int) -> float:
    """``FANOUT_POST_RATE_PER_WORKER``: the budget divided over the post function's maximum concurrency.

    The one formula of the pacing, used by the CDK app (over the reserved concurrency of the post
    function) and by the local stack (over its post workers), so both pace alike.
    """
    if post_rate_budget <= 0 or max_concurrency < 1:
        raise ValueError("the post rate budget must be positive and the concurrency at least 1")
    return round(post_rate_budget / max_concurrency, 3)


def post_concurrency_plan(
    post_rate_budget: float, shards: int, worker_capacity_per_second: float
) -> PostConcurrencyPlan:
    """Derive the post stage's concurrency from the post rate budget.

    ``post_rate_budget``: PostToConnection calls/s the account allows this stack (the quota).
    ``worker_capacity_per_second``: posts/s one post worker sustains (CPU-bound: docs/benchmarks.md).

    Enough workers to reach the budget: ceil(budget / capacity), spread over the Q shards (each shard
    has its own mapping, so each gets ceil(workers / Q), within Lambda's 2..1000). Each worker is
    then paced at budget / total so that rounding up never lets the whole fleet exceed the budget.
    """
    if post_rate_budget <= 0 or worker_capacity_per_second <= 0:
        raise ValueError("the post rate budget and the worker capacity must be positive")
    if shards < 1:
        raise ValueError("at least one shard")
    workers = math.ceil(post_rate_budget / worker_capacity_per_second)
    per_shard = math.ceil(workers / shards)
    per_shard = max(SQS_MIN_MAXIMUM_CONCURRENCY, min(SQS_MAX_MAXIMUM_CONCURRENCY, per_shard))
    total = per_shard * shards
    return PostConcurrencyPlan(
        max_concurrency_per_shard=per_shard,
        total_workers=total,
        rate_per_worker=post_rate_per_worker(post_rate_budget, total),
    )


def visibility_timeout_seconds(function_timeout_seconds: int, batching_window_seconds: int = 0) -> int:
    """A consumer queue's visibility timeout: 6 x the function timeout + the batching window."""
    if function_timeout_seconds <= 0 or batching_window_seconds < 0:
        raise ValueError("the function timeout must be positive and the batching window non-negative")
    seconds = VISIBILITY_TIMEOUT_FACTOR * function_timeout_seconds + batching_window_seconds
    if seconds > SQS_MAX_VISIBILITY_TIMEOUT_SECONDS:
        raise ValueError(f"visibility timeout {seconds}s exceeds SQS's 12 hours")
    return seconds
