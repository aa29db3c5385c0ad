"""fanout-reconciler: scheduled → recount every partition, correct drifted counters, publish skew.

Metrics: `PartitionSkew` (largest partition / mean, 1.0 = perfectly balanced), `Connections`,
`PartitionsCorrected`, `PartitionsSkipped` (changed by the stream lately or under us: next run), `DriftTotal`
(sum of |stored - counted| corrected).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import boto3
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from fanout.adapters.connections import ConnectionsTable
from fanout.adapters.partitions import PartitionsTable
from fanout.settings import ReconcilerSettings, load
from handlers._observability import logger, metrics, tracer
from partitions.lifecycle import reconcile

MAX_LOGGED_CORRECTIONS = 100


@dataclass(frozen=True)
class Deps:
    connections: ConnectionsTable
    partitions: PartitionsTable
    partition_count: int
    quiet_ms: int
    per_run: int


@lru_cache(maxsize=1)
def deps() -> Deps:
    """Built once per container, at the first invocation."""
    settings = load(ReconcilerSettings)
    client = boto3.client("dynamodb", region_name=settings.region)
    return Deps(
        ConnectionsTable(
            client,
            settings.connections_table,
            index=settings.connections_index,
            ttl_seconds=settings.connection_ttl_seconds,
            max_workers=8,
        ),
        PartitionsTable(client, settings.partitions_table),
        settings.partition_count,
        int(settings.reconcile_quiet_seconds * 1000),
        settings.reconcile_partitions_per_run,
    )


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    d = deps()
    now_ms = int(time.time() * 1000)
    result = reconcile(
        d.connections,
        d.partitions,
        partition_count=d.partition_count,
        now_ms=now_ms,
        quiet_ms=d.quiet_ms,
        per_run=d.per_run,
        # The schedule runs it once a minute: the minute picks the slice, so no state is kept.
        run_index=now_ms // 60_000,
    )
    plan = result.plan
    drift = sum(abs(c.drift) for c in result.corrected)
    logger.info(
        "partitions reconciled",
        partitions=d.partition_count,
        connections=plan.total,
        largest=plan.largest,
        mean=round(plan.mean, 3),
        skew=round(plan.skew, 4),
        queries=result.queries,
        recounted=result.recounted,
        corrected=[
            {"partitionId": c.partition_id, "stored": c.stored, "counted": c.counted}
            for c in result.corrected[:MAX_LOGGED_CORRECTIONS]
        ],
        correctedCount=len(result.corrected),
        skipped=[c.partition_id for c in result.skipped[:MAX_LOGGED_CORRECTIONS]],
        drift=drift,
    )
    metrics.add_metric(name="PartitionSkew", unit=MetricUnit.NoUnit, value=plan.skew)
    metrics.add_metric(name="Connections", unit=MetricUnit.Count, value=plan.total)
    metrics.add_metric(name="PartitionsCorrected", unit=MetricUnit.Count, value=len(result.corrected))
    metrics.add_metric(name="PartitionsSkipped", unit=MetricUnit.Count, value=len(result.skipped))
    metrics.add_metric(name="DriftTotal", unit=MetricUnit.Count, value=drift)
    return {
        "connections": plan.total,
        "skew": plan.skew,
        "corrected": len(result.corrected),
        "skipped": len(result.skipped),
    }
