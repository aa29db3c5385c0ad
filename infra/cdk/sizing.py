"""The stack's sizing rules live in ``fanout.sizing`` (pure, read by the topology); re-exported here."""

from __future__ import annotations

from fanout.sizing import (
    SQS_MAX_MAXIMUM_CONCURRENCY,
    SQS_MAX_VISIBILITY_TIMEOUT_SECONDS,
    SQS_MIN_MAXIMUM_CONCURRENCY,
    VISIBILITY_TIMEOUT_FACTOR,
    PostConcurrencyPlan,
    post_concurrency_plan,
    post_rate_per_worker,
    visibility_timeout_seconds,
)

__all__ = [
    "SQS_MAX_MAXIMUM_CONCURRENCY",
    "SQS_MAX_VISIBILITY_TIMEOUT_SECONDS",
    "SQS_MIN_MAXIMUM_CONCURRENCY",
    "VISIBILITY_TIMEOUT_FACTOR",
    "PostConcurrencyPlan",
    "post_concurrency_plan",
    "post_rate_per_worker",
    "visibility_timeout_seconds",
]
