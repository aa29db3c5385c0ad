"""fanout-default: route `$default` (two-way): ping, subscribe and unsubscribe.

`{"action":"ping"}` → `{"type":"pong"}`; `{"action":"subscribe","channel":"a"}` →
`{"type":"subscribed","channel":"a"}`; `{"action":"unsubscribe","channel":"a"}` →
`{"type":"unsubscribed","channel":"a"}`; `{"action":"history","channel":"a","since":N,"epoch":"e"}` →
`{"type":"history","channel":"a","epoch":"e","messages":[...],"more":false}` (fanout.recovery), or
the error frame with code `recovery_impossible`. The rights come from the authorizer's context of the
connection and the connection from `requestContext.connectionId`, never from the frame, so no
connection can change another's subscriptions. Anything else gets an error frame
(`{"type":"error","action":...,"code":...,"message":...}`, fanout.protocol), never a crash:
unknown actions, non-JSON, binary frames, empty or oversized messages, even an unreadable event.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import boto3
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parser import parse
from aws_lambda_powertools.utilities.parser.models import (
    APIGatewayWebSocketMessageEventModel,
    APIGatewayWebSocketMessageEventRequestContext,
)
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import Field, ValidationError

from fanout.adapters.history import HistoryTable
from fanout.adapters.subscriptions import SubscriptionsTable
from fanout.history import history_frame
from fanout.protocol import (
    INVALID,
    PONG,
    ErrorReply,
    Grants,
    History,
    Ping,
    Subscribe,
    Unsubscribe,
    answer,
    error_frame,
    expires_at,
    grants_of,
    internal_error,
    read_message,
    recovery_error_frame,
)
from fanout.recovery import RecoveryImpossible, read_page
from fanout.settings import DefaultSettings, load
from handlers._observability import logger, metrics, tracer


class MessageRequestContext(APIGatewayWebSocketMessageEventRequestContext):
    authorizer: dict[str, Any] | None = None


class MessageEvent(APIGatewayWebSocketMessageEventModel):
    request_context: MessageRequestContext = Field(alias="requestContext")


@dataclass(frozen=True)
class Deps:
    subscriptions: SubscriptionsTable
    ttl_seconds: int
    max_subscriptions: int
    history: HistoryTable
    history_keep: int
    history_page_size: int


@lru_cache(maxsize=1)
def deps() -> Deps:
    """Built once per container, at the first subscribe or unsubscribe (a ping needs no table)."""
    settings = load(DefaultSettings)
    client = boto3.client("dynamodb", region_name=settings.region)
    return Deps(
        SubscriptionsTable(
            client, settings.subscriptions_table, connections_table=settings.connections_table
        ),
        settings.connection_ttl_seconds,
        settings.max_subscriptions,
        HistoryTable(
            client,
            settings.history_table,
            keep=settings.history_keep,
            ttl_seconds=settings.history_ttl_seconds,
            meta_ttl_seconds=settings.history_meta_ttl_seconds,
        ),
        settings.history_keep,
        settings.history_page_size,
    )


def _frame(body: str) -> dict[str, Any]:
    return {"statusCode": 200, "body": body}


def _history(command: History) -> str:
    d = deps()
    if not d.history.table:
        raise RuntimeError("the history action needs FANOUT_HISTORY_TABLE")
    try:
        found = read_page(
            d.history,
            command.channel,
            command.since,
            command.epoch,
            keep=d.history_keep,
            limit=d.history_page_size,
        )
    except RecoveryImpossible as exc:
        metrics.add_metric(name="HistoryImpossible", unit=MetricUnit.Count, value=1)
        return recovery_error_frame("history", exc.channel, str(exc), exc.epoch)
    return history_frame(found.channel, found.epoch, found.messages, found.more)


def _run(command: Subscribe | Unsubscribe, request: MessageEvent, grants: Grants | None) -> str:
    """Subscribe or unsubscribe this connection (the I/O between the two pure halves)."""
    ctx = request.request_context
    d = deps()
    if isinstance(command, Subscribe):
        assert grants is not None  # read_message refuses a subscribe without rights
        outcome = d.subscriptions.subscribe(
            ctx.connection_id,
            grants.user_id,
            command.channel,
            expires_at=expires_at(ctx.connected_at, d.ttl_seconds),
            limit=d.max_subscriptions,
        )
    else:
        outcome = d.subscriptions.unsubscribe(ctx.connection_id, command.channel)
    logger.info(
        "subscriptions changed", connectionId=ctx.connection_id, channel=command.channel, outcome=outcome
    )
    return answer(command, outcome, limit=d.max_subscriptions)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        request = parse(event=event, model=MessageEvent)
    except ValidationError:
        logger.warning("unreadable $default event")
        return _frame(error_frame(None, INVALID, "unreadable request"))
    except Exception:  # never crash on a client message: answer, and log for the operator
        logger.exception("unexpected error reading a $default event")
        return _frame(internal_error(None))
    ctx = request.request_context
    action: str | None = None
    try:
        grants = grants_of(ctx.authorizer)
        body = request.body if isinstance(request.body, str) else None
        command = read_message(body, is_base64=request.is_base64_encoded, grants=grants)
        if isinstance(command, ErrorReply):
            logger.info(
                "client message refused",
                connectionId=ctx.connection_id,
                action=command.action,
                code=command.code,
                problem=command.message,
            )
            metrics.add_metric(name="ClientMessagesRefused", unit=MetricUnit.Count, value=1)
            return _frame(command.frame)
        if isinstance(command, Ping):
            metrics.add_metric(name="Pings", unit=MetricUnit.Count, value=1)
            return _frame(PONG)
        if isinstance(command, History):
            action = "history"
            metrics.add_metric(name="HistoryReads", unit=MetricUnit.Count, value=1)
            return _frame(_history(command))
        action = "subscribe" if isinstance(command, Subscribe) else "unsubscribe"
        reply = _run(command, request, grants)
        metrics.add_metric(
            name="Subscribes" if action == "subscribe" else "Unsubscribes", unit=MetricUnit.Count, value=1
        )
        return _frame(reply)
    except Exception:  # never crash on a client message: answer, and log for the operator
        logger.exception(
            "unexpected error answering a client message", connectionId=ctx.connection_id, action=action
        )
        metrics.add_metric(name="ClientMessagesFailed", unit=MetricUnit.Count, value=1)
        return _frame(internal_error(action))
