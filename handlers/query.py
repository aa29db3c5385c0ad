"""fanout-query: SQS partition tasks → post batches of B connection ids (records of a batch concurrently)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from aws_lambda_powertools.utilities.batch import (
    AsyncBatchProcessor,
    EventType,
    async_process_partial_response,
)
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from fanout.container import Container
from fanout.models import PartitionTask
from fanout.settings import QuerySettings, load
from fanout.stages import decode, run_partition_task
from fanout.tracing import span
from handlers._observability import logger, metrics, traced_spans, tracer

processor = AsyncBatchProcessor(event_type=EventType.SQS)


@lru_cache(maxsize=1)
def container() -> Container:
    return Container(load(QuerySettings), metrics=metrics)


async def record_handler(record: SQSRecord) -> dict[str, Any]:
    task: PartitionTask = decode(record.body, PartitionTask)
    with span("query.partition", broadcastId=task.broadcast_id, partitionId=task.partition_id) as s:
        result = await run_partition_task(container().deps, task)
        s.annotate(targeted=result.targeted, batches=result.batches, replayed=result.replayed)
    logger.debug(
        "partition queried",
        broadcastId=task.broadcast_id,
        partitionId=task.partition_id,
        targeted=result.targeted,
        batches=result.batches,
        replayed=result.replayed,
    )
    return {"targeted": result.targeted, "batches": result.batches}


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    container()  # cold start: settings, loop and clients before the batch
    with traced_spans():
        return async_process_partial_response(
            event=event, record_handler=record_handler, processor=processor, context=context
        )
