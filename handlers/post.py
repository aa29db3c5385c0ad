"""fanout-post: SQS post batches → PostToConnection to every id, with bounded concurrency."""

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
from fanout.models import PostBatch
from fanout.settings import PostSettings, load
from fanout.stages import decode, run_post_batch
from fanout.tracing import span
from handlers._observability import logger, metrics, traced_spans, tracer

processor = AsyncBatchProcessor(event_type=EventType.SQS)


@lru_cache(maxsize=1)
def container() -> Container:
    return Container(load(PostSettings), metrics=metrics, poster=True)


async def record_handler(record: SQSRecord) -> dict[str, Any]:
    batch: PostBatch = decode(record.body, PostBatch)
    with span(
        "post.batch",
        broadcastId=batch.broadcast_id,
        partitionId=batch.partition_id,
        batchId=batch.batch_id,
        attempt=batch.attempt,
        connections=len(batch.connection_ids),
    ) as s:
        result = await run_post_batch(container().deps, batch)
        s.annotate(
            delivered=result.delivered,
            gone=result.gone,
            failed=result.failed,
            requeued=result.requeued,
            duplicate=result.duplicate,
        )
    if result.gone or result.failed or result.requeued or result.duplicate:
        logger.info(
            "post batch done",
            broadcastId=batch.broadcast_id,
            batchId=batch.batch_id,
            attempt=batch.attempt,
            delivered=result.delivered,
            gone=result.gone,
            failed=result.failed,
            requeued=result.requeued,
            duplicate=result.duplicate,
            lastError=result.last_error,
        )
    return {"delivered": result.delivered, "gone": result.gone, "failed": result.failed}


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    c = container()
    if c.deps.poster is not None:
        c.deps.poster.refresh_credentials()  # type: ignore[attr-defined]
    with traced_spans():
        return async_process_partial_response(
            event=event, record_handler=record_handler, processor=processor, context=context
        )
