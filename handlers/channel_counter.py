"""fanout-channel-counter: the subscriptions table's stream → channel occupancy (fanout.presence).

One presence ADD per touched (channel, user), then one counter ADD per touched channel. Partial batch
failures (ReportBatchItemFailures): an unreadable record is reported, and only the records before it
are counted now; Lambda redelivers from it, the records after it included. A presence ADD that fails
reports the first record touching it, and the landed ADDs are compensated for the records that come
back, so a redelivery counts nothing twice.

Replays: a batch applied twice (an invocation that timed out after its ADDs landed, a compensation that
did not land) counts its records twice, and a counter ADD that failed leaves its channel behind; either
way the counters drift by a little, and the channel reconciler (handlers/channel_reconciler.py)
recounts every channel from its subscription rows and corrects them within a run.
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

from fanout.adapters.channels import ChannelsTable
from fanout.occupancy import SubscriptionChange, change_from_record
from fanout.presence import count_batch
from fanout.settings import ChannelCounterSettings, load
from handlers._observability import logger, metrics, tracer

processor = BatchProcessor(event_type=EventType.DynamoDBStreams)
MAX_LOGGED = 50


@dataclass(frozen=True)
class Deps:
    channels: ChannelsTable


@lru_cache(maxsize=1)
def deps() -> Deps:
    """Built once per container, at the first invocation."""
    settings = load(ChannelCounterSettings)
    return Deps(ChannelsTable(boto3.client("dynamodb", region_name=settings.region), settings.channels_table))


def record_handler(record: DynamoDBRecord) -> SubscriptionChange:
    """Validate one record (raises fanout.occupancy.MalformedRecord if it cannot be counted)."""
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
    outcome = count_batch(changes, deps().channels)
    if outcome.retry_from is not None:
        sequence = _sequence(records[outcome.retry_from])
        if sequence not in failed:
            response["batchItemFailures"].append({"itemIdentifier": sequence})
    logger.info(
        "subscription batch counted",
        records=len(records),
        counted=outcome.records_counted,
        malformed=len(failed),
        expired=outcome.expired,
        channels={
            ch: {"connections": d.connections, "users": d.users}
            for ch, d in list(outcome.counters.items())[:MAX_LOGGED]
        },
        channelsTouched=len(outcome.counters),
        failedPresence={f"{ch}/{u}": str(e) for (ch, u), e in outcome.failed_presence.items()},
        compensationFailed={f"{ch}/{u}": str(e) for (ch, u), e in outcome.compensation_failed.items()},
        failedCounters={ch: str(e) for ch, e in outcome.failed_counters.items()},
    )
    metrics.add_metric(
        name="SubscriptionRecordsCounted", unit=MetricUnit.Count, value=outcome.records_counted
    )
    metrics.add_metric(name="SubscriptionsExpired", unit=MetricUnit.Count, value=outcome.expired)
    metrics.add_metric(name="ChannelsTouched", unit=MetricUnit.Count, value=len(outcome.counters))
    if failed:
        metrics.add_metric(name="SubscriptionRecordsMalformed", unit=MetricUnit.Count, value=len(failed))
    adds_failed = (
        len(outcome.failed_presence) + len(outcome.compensation_failed) + len(outcome.failed_counters)
    )
    if adds_failed:
        metrics.add_metric(name="ChannelCounterAddsFailed", unit=MetricUnit.Count, value=adds_failed)
    return response
