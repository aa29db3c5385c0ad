"""fanout-operator-api: the operator HTTP API (payload 2.0), IAM-authorized.

POST /broadcasts {"message": <any JSON>, "to"?: {...}} [Idempotency-Key] → 202 {"broadcastId"}
GET  /broadcasts/{broadcastId}                             → 200 {state and counts}
GET  /channels/{name}                                      → 200 {"channel","connections","users"}
GET  /channels/{name}/history?since=N[&epoch=E]            → 200 {"channel","epoch","messages","more"}
                                                             410 {"code":"recovery_impossible",...}

"to" is one of {"channels": [...]}, {"users": [...]}, {"connections": [...]}; without it, everyone.

In AWS the route is IAM-authorized; the only thing this handler trusts is the IAM principal that API
Gateway puts in requestContext.authorizer.iam. A request without it is refused with 403.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any

import boto3
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.middlewares import NextMiddleware
from aws_lambda_powertools.event_handler.openapi.params import Header, Path, Query
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.idempotency import (
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyValidationError,
)
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from fanout.adapters.broadcasts import BroadcastsTable
from fanout.adapters.channels import ChannelsTable
from fanout.adapters.history import HistoryTable
from fanout.adapters.lambdas import SwarmLauncher
from fanout.broadcasts import Started, get_broadcast, message_digest, start_broadcast
from fanout.channels import MAX_CHANNEL_CHARS, channel_problem
from fanout.errors import BroadcastNotFound, InvalidInput, PayloadTooLarge, RetryableError
from fanout.history import MAX_OFFSET, RECOVERY_IMPOSSIBLE, epoch_problem
from fanout.models import Audience
from fanout.recovery import RecoveryImpossible, read_page
from fanout.settings import OperatorApiSettings, load
from fanout.store import BroadcastRequests
from handlers._idempotency import idempotency_store
from handlers._observability import logger, metrics, tracer

app = APIGatewayHttpResolver(enable_validation=True)

# The largest request body read at all; a frame above 128 KB is refused later with the exact limit.
MAX_BODY_BYTES = 1024 * 1024


class BroadcastRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message: JsonValue = Field(description="Any JSON value; delivered as the envelope's `data`")
    to: Audience | None = Field(default=None, description="channels, users or connections; none: everyone")


class ChannelView(BaseModel):
    channel: str
    connections: int
    users: int


class BroadcastAccepted(BaseModel):
    broadcastId: str
    # a channel broadcast's place in each channel's history
    offsets: dict[str, int] | None = None
    epochs: dict[str, str] | None = None


class BroadcastView(BaseModel):
    broadcastId: str
    status: str
    partitions: int
    targeted: int
    delivered: int
    gone: int
    failed: int
    createdAt: int
    completedAt: int | None
    # why a failed broadcast failed (or, while it is pending, why its last attempt failed)
    error: str | None = None
    to: dict[str, list[str]] | None = None
    channels: dict[str, dict[str, int]] | None = None


@dataclass(frozen=True)
class Deps:
    broadcasts: BroadcastsTable
    swarm: SwarmLauncher
    max_frame_bytes: int
    idempotency: IdempotencyConfig
    # start(message, key) under Powertools' idempotency: one broadcast per Idempotency-Key
    start_once: Callable[..., dict[str, Any]]

    channels: ChannelsTable
    history: HistoryTable
    history_keep: int
    history_page_size: int

    def start(self, message: Any, key: str | None, audience: Audience | None = None) -> Started:
        return start_broadcast(
            self.broadcasts,
            self.swarm,
            message,
            max_frame_bytes=self.max_frame_bytes,
            idempotency_key=key,
            audience=audience,
            history=self.history,
        )


@lru_cache(maxsize=1)
def deps() -> Deps:
    """Built once per container, at the first invocation."""
    settings = load(OperatorApiSettings)
    requests = BroadcastRequests(settings.broadcasts_table, settings.idempotency_table)
    client = boto3.client("dynamodb")
    broadcasts = BroadcastsTable(client, requests)
    swarm = SwarmLauncher(boto3.client("lambda"), settings.swarm_function_name)
    persistence, config = idempotency_store(settings.idempotency_table, settings.idempotency_ttl_seconds)

    history = HistoryTable.of(
        client,
        settings,
        on_conflict=lambda: metrics.add_metric(name="HistoryConflicts", unit=MetricUnit.Count, value=1),
    )

    @idempotent_function(data_keyword_argument="request", config=config, persistence_store=persistence)
    def start_once(request: dict[str, Any], message: Any, audience: Audience | None) -> dict[str, Any]:
        started = start_broadcast(
            broadcasts,
            swarm,
            message,
            max_frame_bytes=settings.max_frame_bytes,
            idempotency_key=request["key"],
            audience=audience,
            history=history,
        )
        return _accepted(started).model_dump(exclude_none=True)

    channels = ChannelsTable(client, settings.channels_table)
    return Deps(
        broadcasts,
        swarm,
        settings.max_frame_bytes,
        config,
        start_once,
        channels,
        history,
        settings.history_keep,
        settings.history_page_size,
    )


def _accepted(started: Started) -> BroadcastAccepted:
    return BroadcastAccepted(
        broadcastId=started.broadcast_id, offsets=started.offsets or None, epochs=started.epochs or None
    )


def _error(status: int, message: str, **extra: Any) -> Response[Any]:
    return Response(status, "application/json", {"message": message, **extra})


def require_iam(app: APIGatewayHttpResolver, next_middleware: NextMiddleware) -> Response[Any]:
    iam = ((app.current_event.raw_event.get("requestContext") or {}).get("authorizer") or {}).get("iam") or {}
    if not iam.get("userArn") and not iam.get("callerId"):
        return _error(403, "IAM authorization is required")
    logger.append_keys(caller=iam.get("userArn") or iam.get("callerId"))
    body = app.current_event.raw_event.get("body") or ""
    if len(body) > MAX_BODY_BYTES * (4 / 3 if app.current_event.is_base64_encoded else 1):
        return _error(
            413, f"request body too large; the message frame limit is {deps().max_frame_bytes} bytes"
        )
    return next_middleware(app)


app.use(middlewares=[require_iam])


@app.exception_handler(PayloadTooLarge)
def _too_large(exc: PayloadTooLarge) -> Response[Any]:
    return _error(413, str(exc), field="message", limit=exc.limit, size=exc.size)


@app.exception_handler(InvalidInput)
def _invalid(exc: InvalidInput) -> Response[Any]:
    return _error(400, str(exc), field=exc.field)


# Powertools' body parsing (run by the validation middleware, before ours) raises these two instead
# of a JSON error for a base64 body that is not UTF-8 and for nesting past the recursion limit.
@app.exception_handler(UnicodeDecodeError)
def _not_utf8(exc: UnicodeDecodeError) -> Response[Any]:
    return _error(400, "request body is not valid UTF-8")


@app.exception_handler(RecursionError)
def _too_deep(exc: RecursionError) -> Response[Any]:
    return _error(400, "request body is nested too deeply")


@app.exception_handler(BroadcastNotFound)
def _not_found(exc: BroadcastNotFound) -> Response[Any]:
    return _error(404, str(exc))


@app.exception_handler(IdempotencyValidationError)
def _key_reused(exc: IdempotencyValidationError) -> Response[Any]:
    return _error(
        422, "this Idempotency-Key was already used with a different message", field="idempotency-key"
    )


@app.exception_handler(IdempotencyAlreadyInProgressError)
def _key_in_progress(exc: IdempotencyAlreadyInProgressError) -> Response[Any]:
    return _error(409, "a broadcast with this Idempotency-Key is being started; retry shortly")


@app.exception_handler(RetryableError)
def _unavailable(exc: RetryableError) -> Response[Any]:
    return _error(503, str(exc))


@app.post("/broadcasts")
def post_broadcast(
    body: BroadcastRequest,
    idempotency_key: Annotated[str | None, Header(alias="idempotency-key", max_length=256)] = None,
) -> Response[dict[str, Any]]:
    d = deps()
    if idempotency_key:
        d.idempotency.register_lambda_context(app.lambda_context)
        request = {"key": idempotency_key, "digest": message_digest(body.message, body.to)}
        accepted = BroadcastAccepted(**d.start_once(request=request, message=body.message, audience=body.to))
    else:
        accepted = _accepted(d.start(body.message, None, body.to))
    broadcast_id = accepted.broadcastId
    logger.append_keys(broadcastId=broadcast_id)
    logger.info(
        "broadcast accepted",
        idempotencyKey=idempotency_key,
        audience=body.to.kind.value if body.to is not None else "everyone",
    )
    metrics.add_metric(name="BroadcastsStarted", unit=MetricUnit.Count, value=1)
    return Response(202, "application/json", accepted.model_dump(exclude_none=True))


@app.get("/broadcasts/<broadcast_id>")
def read_broadcast(broadcast_id: Annotated[str, Path(max_length=64)]) -> Response[dict[str, Any]]:
    record = get_broadcast(deps().broadcasts, broadcast_id)
    view = BroadcastView(**record.public())
    # an everyone-broadcast's view is as it was before audiences: no "to", no "channels"
    absent = {name for name in ("to", "channels") if getattr(view, name) is None}
    return Response(200, "application/json", view.model_dump(exclude=absent))


def _channel_name(name: str) -> str:
    # A client may percent-encode the name (":" as %3A); "%" is no channel character, so decoding
    # cannot turn one valid name into another.
    name = urllib.parse.unquote(name)
    problem = channel_problem(name)
    if problem is not None:
        raise InvalidInput(problem, field="name")
    return name


@app.exception_handler(RecoveryImpossible)
def _impossible(exc: RecoveryImpossible) -> Response[Any]:
    return _error(410, str(exc), code=RECOVERY_IMPOSSIBLE, channel=exc.channel, epoch=exc.epoch)


@app.get("/channels/<name>/history")
def read_history(
    name: Annotated[str, Path(max_length=MAX_CHANNEL_CHARS * 3)],
    since: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    epoch: Annotated[str | None, Query(max_length=64)] = None,
) -> Response[dict[str, Any]]:
    """The channel's envelopes after offset `since` (of `epoch`; none: the current one), a page."""
    name = _channel_name(name)
    if epoch is not None and epoch_problem(epoch) is not None:
        raise InvalidInput(str(epoch_problem(epoch)), field="epoch")
    d = deps()
    found = read_page(d.history, name, since, epoch, keep=d.history_keep, limit=d.history_page_size)
    body = {
        "channel": found.channel,
        "epoch": found.epoch,
        "messages": [json.loads(row.envelope) for row in found.messages],
        "more": found.more,
    }
    return Response(200, "application/json", body)


@app.get("/channels/<name>")
def read_channel(name: Annotated[str, Path(max_length=MAX_CHANNEL_CHARS * 3)]) -> ChannelView:
    name = _channel_name(name)
    connections, users = deps().channels.occupancy(name)
    return ChannelView(channel=name, connections=connections, users=users)


@logger.inject_lambda_context(correlation_id_path="requestContext.requestId")
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
