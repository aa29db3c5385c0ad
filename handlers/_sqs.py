"""The one skeleton of the SQS batch handlers (query, post): parse each record into its model, run the
stage on the container's loop, report partial batch failures.

Powertools' AsyncBatchProcessor runs the records of a batch concurrently on the container's event
loop (fanout.container); a record whose body does not parse, or whose stage raises, is reported in
`batchItemFailures` and comes back after the queue's visibility timeout.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from aws_lambda_powertools.utilities.batch import (
    AsyncBatchProcessor,
    EventType,
    async_process_partial_response,
)
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from fanout.container import Container
from fanout.models import PartitionTask, PostBatch
from fanout.stages import StageDeps, decode
from fanout.tracing import Annotation, span
from handlers._observability import logger, metrics, traced_spans, tracer

Message = TypeVar("Message", PartitionTask, PostBatch)
Result = TypeVar("Result")
Fields = Mapping[str, Annotation | None]
Handler = Callable[[dict[str, Any], LambdaContext], PartialItemFailureResponse]


def sqs_batch_handler(
    *,
    model: type[Message],
    stage: Callable[[StageDeps, Message], Awaitable[Result]],
    deps: Callable[[], Container],
    span_name: str,
    fields: Callable[[Message], Fields],
    result_fields: Callable[[Result], Fields],
    log: Callable[[Message, Result], None],
    before_batch: Callable[[Container], None] | None = None,
) -> Handler:
    """The Lambda handler of one SQS-triggered stage.

    `fields` name a message in its span; `result_fields` annotate the span with the stage's result;
    `log` writes the record's log line (or none); `before_batch` runs once per invocation, before the
    records (the post stage refreshes its signing credentials there, not per frame).
    """
    processor = AsyncBatchProcessor(event_type=EventType.SQS)

    async def record_handler(record: SQSRecord) -> Result:
        message = decode(record.body, model)
        with span(span_name, **fields(message)) as s:
            result = await stage(deps().deps, message)
            s.annotate(**result_fields(result))
        log(message, result)
        return result

    @logger.inject_lambda_context
    @tracer.capture_lambda_handler
    @metrics.log_metrics
    def handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
        container = deps()  # cold start: settings, loop and clients before the batch
        if before_batch is not None:
            before_batch(container)
        with traced_spans():
            return async_process_partial_response(
                event=event, record_handler=record_handler, processor=processor, context=context
            )

    return handler
