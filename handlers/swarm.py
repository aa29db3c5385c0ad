"""fanout-swarm: async-invoked by the operator API with {"broadcastId"}; queues one task per partition."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from fanout.container import Container
from fanout.errors import BroadcastNotFound
from fanout.models import SwarmRequest
from fanout.settings import SwarmSettings, load
from fanout.stages import StageDeps, SwarmResult, run_swarm
from fanout.tracing import span
from handlers._observability import logger, metrics, traced_spans, tracer


@lru_cache(maxsize=1)
def deps() -> Container:
    """Built once per container, at the first invocation: settings, event loop, clients."""
    return Container(load(SwarmSettings), metrics=metrics)


async def swarm(deps: StageDeps, broadcast_id: str) -> SwarmResult:
    with span("swarm", broadcastId=broadcast_id) as s:
        result = await run_swarm(deps, broadcast_id)
        s.annotate(partitions=result.partitions, tasksSent=result.tasks_sent)
    return result


@logger.inject_lambda_context(correlation_id_path="broadcastId")
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = SwarmRequest.model_validate(event)
    logger.append_keys(broadcastId=request.broadcast_id)
    c = deps()
    try:
        with traced_spans():
            result = c.run(swarm(c.deps, request.broadcast_id))
    except BroadcastNotFound:
        logger.error("swarm for a broadcast that does not exist")
        return {"broadcastId": request.broadcast_id, "partitions": 0, "tasksSent": 0, "error": "not found"}
    metrics.add_metric(name="PartitionTasks", unit=MetricUnit.Count, value=result.tasks_sent)
    logger.info("swarm queued partition tasks", partitions=result.partitions, tasks=result.tasks_sent)
    return {
        "broadcastId": result.broadcast_id,
        "partitions": result.partitions,
        "tasksSent": result.tasks_sent,
    }
