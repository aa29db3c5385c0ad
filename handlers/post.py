"""fanout-post: SQS post batches → PostToConnection to every id, with bounded concurrency."""

from __future__ import annotations

from functools import lru_cache

from fanout.container import Container
from fanout.models import PostBatch
from fanout.settings import PostSettings, load
from fanout.stages import PostResult, run_post_batch
from handlers._observability import logger, metrics
from handlers._sqs import Fields, sqs_batch_handler


@lru_cache(maxsize=1)
def deps() -> Container:
    """Built once per container, at the first invocation: settings, event loop, clients, poster."""
    return Container(load(PostSettings), metrics=metrics, poster=True)


def refresh_credentials(container: Container) -> None:
    if container.deps.poster is not None:
        container.deps.poster.refresh_credentials()


def fields(batch: PostBatch) -> Fields:
    return {
        "broadcastId": batch.broadcast_id,
        "partitionId": batch.partition_id,
        "batchId": batch.batch_id,
        "attempt": batch.attempt,
        "connections": len(batch.connection_ids),
    }


def result_fields(result: PostResult) -> Fields:
    return {
        "delivered": result.delivered,
        "gone": result.gone,
        "failed": result.failed,
        "requeued": result.requeued,
        "duplicate": result.duplicate,
    }


def log(batch: PostBatch, result: PostResult) -> None:
    # Only the batches that did something unusual: a log line per clean batch would cost per batch at
    # the post rate and tell nothing the metrics do not.
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


handler = sqs_batch_handler(
    model=PostBatch,
    stage=run_post_batch,
    deps=deps,
    span_name="post.batch",
    fields=fields,
    result_fields=result_fields,
    log=log,
    before_batch=refresh_credentials,
)
