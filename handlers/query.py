"""fanout-query: SQS partition tasks → post batches of B connection ids (records of a batch concurrently)."""

from __future__ import annotations

from functools import lru_cache

from fanout.container import Container
from fanout.models import PartitionTask
from fanout.settings import QuerySettings, load
from fanout.stages import QueryResult, run_partition_task
from handlers._observability import logger, metrics
from handlers._sqs import Fields, sqs_batch_handler


@lru_cache(maxsize=1)
def deps() -> Container:
    """Built once per container, at the first invocation: settings, event loop, clients."""
    return Container(load(QuerySettings), metrics=metrics)


def fields(task: PartitionTask) -> Fields:
    return {"broadcastId": task.broadcast_id, "partitionId": task.partition_id}


def result_fields(result: QueryResult) -> Fields:
    return {"targeted": result.targeted, "batches": result.batches, "replayed": result.replayed}


def log(task: PartitionTask, result: QueryResult) -> None:
    logger.debug(
        "partition queried",
        broadcastId=task.broadcast_id,
        partitionId=task.partition_id,
        targeted=result.targeted,
        batches=result.batches,
        replayed=result.replayed,
    )


handler = sqs_batch_handler(
    model=PartitionTask,
    stage=run_partition_task,
    deps=deps,
    span_name="query.partition",
    fields=fields,
    result_fields=result_fields,
    log=log,
)
