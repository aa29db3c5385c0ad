"""fanout-partition-counter: the connections table's stream → one net ADD per touched partition.

Partial batch failures (ReportBatchItemFailures). A record that cannot be counted is reported as
failed. Lambda then redelivers from the lowest failed sequence number, so the records after it
come back even if they succeeded: only the records *before* the first failure are counted now, the
rest when they are redelivered. If an ADD fails, the first record touching that partition is also
reported, and the ADDs that landed are compensated for the records that will come back. Counting is
then exactly once as long as the compensating ADDs land; if they do not (or a retry after a timeout
repeats an ADD), the counters drift by a little and the reconciler corrects them within a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import boto3
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from fanout.adapters.partitions import PartitionsTable
from fanout.settings import PartitionCounterSettings, load
from handlers._observability import logger, metrics, tracer
from partitions.counting import StreamChange, change_from_record
from partitions.lifecycle import count_batch

processor = BatchProcessor(event_type=EventType.DynamoDBStreams)


@dataclass(frozen=True)
class Deps:
    partitions: PartitionsTable


@lru_cache(maxsize=1)
def deps() -> Deps:
    """Built once per container, at the first invocation."""
    settings = load(PartitionCounterSettings)
    return Deps(
        PartitionsTable(boto3.client("dynamodb", region_name=settings.region), settings.partitions_table)
    )


def record_handler(record: DynamoDBRecord) -> StreamChange:
    """Validate one record (raises partitions.counting.MalformedRecord if it cannot be counted)."""
    return change_from_record(record.raw_event)


def _sequence(record: dict[str, Any]) -> str:
    return str((record.get("dynamodb") or {}).get("SequenceNumber", ""))


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    response = process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
    records: list[dict[str, Any]] = event.get("Records") or []
    failed = {str(f["itemIdentifier"]) for f in response.get("batchItemFailures", [])}
    # Stream order; a failed record ends the prefix that is counted now.
    changes = [None if _sequence(r) in failed else change_from_record(r) for r in records]
    outcome = count_batch(changes, deps().partitions)
    if outcome.retry_from is not None:
        sequence = _sequence(records[outcome.retry_from])
        if sequence not in failed:
            response["batchItemFailures"].append({"itemIdentifier": sequence})
    logger.info(
        "stream batch counted",
        records=len(records),
        counted=outcome.records_counted,
        malformed=len(failed),
        expired=outcome.expired,
        deltas={str(k): v for k, v in outcome.deltas.items()},
        failedAdds={str(k): str(v) for k, v in outcome.failed_adds.items()},
        compensation={str(k): v for k, v in outcome.compensation.items()},
        compensationFailed={str(k): str(v) for k, v in outcome.compensation_failed.items()},
    )
    metrics.add_metric(name="StreamRecordsCounted", unit=MetricUnit.Count, value=outcome.records_counted)
    metrics.add_metric(name="ConnectionsExpired", unit=MetricUnit.Count, value=outcome.expired)
    metrics.add_metric(name="PartitionsTouched", unit=MetricUnit.Count, value=len(outcome.deltas))
    if failed:
        metrics.add_metric(name="StreamRecordsMalformed", unit=MetricUnit.Count, value=len(failed))
    if outcome.failed_adds or outcome.compensation_failed:
        metrics.add_metric(
            name="CounterAddsFailed",
            unit=MetricUnit.Count,
            value=len(outcome.failed_adds) + len(outcome.compensation_failed),
        )
    return response
