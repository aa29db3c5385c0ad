"""fanout-default: route `$default` (two-way): ping, subscribe, unsubscribe, history, publish, sendmessage.

`{"action":"ping"}` → `{"type":"pong"}`; `{"action":"subscribe","channel":"a"}` →
`{"type":"subscribed","channel":"a"}`; `{"action":"unsubscribe","channel":"a"}` →
`{"type":"unsubscribed","channel":"a"}`; `{"action":"history","channel":"a","since":N,"epoch":"e"}` →
`{"type":"history","channel":"a","epoch":"e","messages":[...],"more":false}` (fanout.recovery), or
the error frame with code `recovery_impossible`. The rights come from the authorizer's context of the
connection and the connection from `requestContext.connectionId`, never from the frame, so no
connection can change another's subscriptions. Anything else gets an error frame
(`{"type":"error","action":...,"code":...,"message":...}`, fanout.protocol), never a crash:
unknown actions, non-JSON, binary frames, empty or oversized messages, even an unreadable event.

`{"action":"publish","channel":"room:1","message":...,"id":"m1"}` and
`{"action":"sendmessage","to"?:"bob","message":...,"id":"m1"}` → `{"type":"ack","id":"m1",
"broadcastId":...,"offset":N}` (offset: a channel message's; fanout.chat, docs/chat.md): after the
token's rights, the rate limits of the connection and of the user (fanout.messaging), a broadcast
through the pipeline whose envelope names the token's user as `from`. The same id from the same user
within the idempotency window answers the first ack again and sends nothing: Powertools' idempotency
over the idempotency table, as the operator API's Idempotency-Key (it fits here: $default is
synchronous, and the record guards one call, the start of a broadcast, whose own writes need no
atomicity with it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import boto3
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.idempotency import (
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyValidationError,
)
from aws_lambda_powertools.utilities.parser import parse
from aws_lambda_powertools.utilities.parser.models import (
    APIGatewayWebSocketMessageEventModel,
    APIGatewayWebSocketMessageEventRequestContext,
)
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import Field, ValidationError

from fanout.adapters.broadcasts import BroadcastsTable
from fanout.adapters.history import HistoryTable
from fanout.adapters.lambdas import SwarmLauncher
from fanout.adapters.ratelimits import RateLimitsTable
from fanout.adapters.subscriptions import SubscriptionsTable
from fanout.chat import FORBIDDEN as CHAT_FORBIDDEN
from fanout.chat import (
    IN_PROGRESS,
    RATE_LIMITED,
    UNAVAILABLE,
    ChatCommand,
    ChatRefusal,
    Publish,
    ack_frame,
    chat_error_frame,
    command_digest,
    idempotency_key,
)
from fanout.chat import INVALID as CHAT_INVALID
from fanout.chat import TOO_LARGE as CHAT_TOO_LARGE
from fanout.errors import PayloadTooLarge, RetryableError
from fanout.history import history_frame
from fanout.messaging import RateLimited, send_client_message
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
from fanout.ratelimit import BucketLimit
from fanout.recovery import RecoveryImpossible, read_page
from fanout.settings import DefaultSettings, load
from fanout.store import BroadcastRequests
from handlers._idempotency import idempotency_store
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
    idempotency: IdempotencyConfig
    # send(request={"key","digest"}, command, grants, connection_id) under Powertools' idempotency
    send_once: Callable[..., dict[str, Any]]
    history: HistoryTable
    history_keep: int
    history_page_size: int


@lru_cache(maxsize=1)
def deps() -> Deps:
    """Built once per container, at the first message that needs a table (a ping needs none)."""
    settings = load(DefaultSettings)
    client = boto3.client("dynamodb", region_name=settings.region)
    broadcasts = BroadcastsTable(
        client, BroadcastRequests(settings.broadcasts_table, settings.idempotency_table)
    )
    swarm = SwarmLauncher(boto3.client("lambda", region_name=settings.region), settings.swarm_function_name)
    buckets = RateLimitsTable(client, settings.rate_limits_table)
    connection_limit = BucketLimit(
        rate=settings.connection_message_rate, burst=settings.connection_message_burst
    )
    user_limit = BucketLimit(rate=settings.user_message_rate, burst=settings.user_message_burst)
    persistence, config = idempotency_store(
        settings.idempotency_table, settings.message_idempotency_seconds, settings.region
    )

    history = HistoryTable.of(
        client,
        settings,
        on_conflict=lambda: metrics.add_metric(name="HistoryConflicts", unit=MetricUnit.Count, value=1),
    )

    @idempotent_function(data_keyword_argument="request", config=config, persistence_store=persistence)
    def send_once(
        request: dict[str, str], command: ChatCommand, user_id: str, connection_id: str
    ) -> dict[str, Any]:
        # An exception (rate limited, too large, the swarm down) deletes the record: the client may
        # send the same id again, and it is a new attempt.
        started = send_client_message(
            command,
            user_id=user_id,
            connection_id=connection_id,
            buckets=buckets,
            connection_limit=connection_limit,
            user_limit=user_limit,
            broadcasts=broadcasts,
            swarm=swarm,
            max_frame_bytes=settings.max_frame_bytes,
            history=history if history.table else None,
        )
        sent: dict[str, Any] = {"broadcastId": started.broadcast_id}
        if isinstance(command, Publish) and command.channel in started.offsets:
            sent["offset"] = started.offsets[command.channel]
        return sent

    return Deps(
        SubscriptionsTable(
            client, settings.subscriptions_table, connections_table=settings.connections_table
        ),
        settings.connection_ttl_seconds,
        settings.max_subscriptions,
        config,
        send_once,
        history,
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


def _send(
    command: ChatCommand, request: MessageEvent, grants: Grants, context: LambdaContext
) -> tuple[str, str]:
    """Publish or send a client's message; (the frame answered, the metric counting it)."""
    ctx = request.request_context
    d = deps()
    action, mid = command.action, command.id
    d.idempotency.register_lambda_context(context)
    key = {"key": idempotency_key(grants.user_id, mid), "digest": command_digest(command)}
    try:
        sent = d.send_once(
            request=key, command=command, user_id=grants.user_id, connection_id=ctx.connection_id
        )
    except RateLimited as exc:
        return chat_error_frame(
            action, mid, RATE_LIMITED, str(exc), exc.retry_after_ms
        ), "RateLimitRejections"
    except PayloadTooLarge as exc:
        return chat_error_frame(action, mid, CHAT_TOO_LARGE, str(exc)), "ClientMessagesRefused"
    except IdempotencyValidationError:
        message = "this id was already used for a different message; choose a new id"
        return chat_error_frame(action, mid, CHAT_INVALID, message), "ClientMessagesRefused"
    except IdempotencyAlreadyInProgressError:
        message = "a message with this id is being sent; wait for its ack"
        return chat_error_frame(action, mid, IN_PROGRESS, message), "ClientMessagesRefused"
    except RetryableError as exc:
        logger.warning(
            "client message not started", connectionId=ctx.connection_id, action=action, problem=str(exc)
        )
        return chat_error_frame(
            action, mid, UNAVAILABLE, "the message could not be sent; retry"
        ), "ClientMessagesFailed"
    broadcast_id = sent["broadcastId"]
    logger.info(
        "client message sent",
        connectionId=ctx.connection_id,
        action=action,
        broadcastId=broadcast_id,
        channel=command.channel if isinstance(command, Publish) else None,
        to=None if isinstance(command, Publish) else command.to or "$all",
    )
    return ack_frame(mid, broadcast_id, offset=sent.get("offset")), "Publishes" if isinstance(
        command, Publish
    ) else "DirectMessages"


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
        if isinstance(command, ChatRefusal | ErrorReply):
            logger.info(
                "client message refused",
                connectionId=ctx.connection_id,
                action=command.action,
                code=command.code,
                problem=command.message,
            )
            metrics.add_metric(name="ClientMessagesRefused", unit=MetricUnit.Count, value=1)
            if isinstance(command, ChatRefusal) and command.code == CHAT_FORBIDDEN:
                metrics.add_metric(name="ForbiddenSends", unit=MetricUnit.Count, value=1)
            return _frame(command.frame)
        if isinstance(command, Ping):
            metrics.add_metric(name="Pings", unit=MetricUnit.Count, value=1)
            return _frame(PONG)
        if isinstance(command, History):
            action = "history"
            metrics.add_metric(name="HistoryReads", unit=MetricUnit.Count, value=1)
            return _frame(_history(command))
        if not isinstance(command, Subscribe | Unsubscribe):
            action = command.action
            assert grants is not None  # read_message refuses a message to others without rights
            reply, metric = _send(command, request, grants, context)
            metrics.add_metric(name=metric, unit=MetricUnit.Count, value=1)
            return _frame(reply)
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
