"""fanout-sweeper: scheduled → re-drive broadcasts stuck queued or running, fail them after the last try.

Metrics: `BroadcastsRedriven`, `BroadcastsFailed`, `BroadcastsPending`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import boto3
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from fanout.adapters.broadcasts import BroadcastsTable
from fanout.adapters.lambdas import SwarmLauncher
from fanout.settings import SweeperSettings, load
from fanout.store import BroadcastRequests
from fanout.sweeper import sweep
from handlers._observability import logger, metrics, tracer


@dataclass(frozen=True)
class Deps:
    broadcasts: BroadcastsTable
    swarm: SwarmLauncher
    after_ms: int
    attempts: int


@lru_cache(maxsize=1)
def deps() -> Deps:
    """Built once per container, at the first invocation."""
    settings = load(SweeperSettings)
    requests = BroadcastRequests(settings.broadcasts_table, settings.idempotency_table)
    return Deps(
        BroadcastsTable(boto3.client("dynamodb", region_name=settings.region), requests),
        SwarmLauncher(boto3.client("lambda", region_name=settings.region), settings.swarm_function_name),
        after_ms=int(settings.sweep_after_seconds * 1000),
        attempts=settings.sweep_attempts,
    )


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    d = deps()
    report = sweep(d.broadcasts, d.swarm, after_ms=d.after_ms, attempts=d.attempts)
    if report.redriven or report.failed:
        logger.warning(
            "broadcasts swept", redriven=report.redriven, failed=report.failed, pending=report.pending
        )
    metrics.add_metric(name="BroadcastsRedriven", unit=MetricUnit.Count, value=len(report.redriven))
    metrics.add_metric(name="BroadcastsFailed", unit=MetricUnit.Count, value=len(report.failed))
    metrics.add_metric(name="BroadcastsPending", unit=MetricUnit.Count, value=report.pending)
    return {
        "pending": report.pending,
        "redriven": len(report.redriven),
        "failed": len(report.failed),
        "progressing": len(report.progressing),
    }
