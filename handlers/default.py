"""fanout-default: route `$default` (two-way): `{"action":"ping"}` → `{"type":"pong"}`.

Anything else gets `{"type":"error","error":"<what is wrong>"}`, never a crash: unknown actions,
non-JSON, binary frames, empty or oversized messages, even an unreadable event.
"""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parser import parse
from aws_lambda_powertools.utilities.parser.models import APIGatewayWebSocketMessageEventModel
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, ConfigDict, ValidationError

from handlers._observability import logger, metrics, tracer

# Clients only ever send small control messages; anything bigger is refused unread.
MAX_MESSAGE_BYTES = 4096
PONG = json.dumps({"type": "pong"}, separators=(",", ":"))


class ClientMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    action: str


class ProtocolError(Exception):
    """What is wrong with a client message, in words the client can read."""


def _error(problem: str) -> dict[str, Any]:
    return {"statusCode": 200, "body": json.dumps({"type": "error", "error": problem}, separators=(",", ":"))}


def reply(body: str | None, *, is_base64: bool) -> str:
    """The answer to one client message; raises ProtocolError naming the problem."""
    if is_base64:
        raise ProtocolError("binary messages are not supported; send a JSON text message")
    if body is None or not body.strip():
        raise ProtocolError('empty message; send {"action":"ping"}')
    size = len(body.encode("utf-8", errors="surrogatepass"))
    if size > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message too large: {size} bytes; the limit is {MAX_MESSAGE_BYTES} bytes")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise ProtocolError("message is not valid JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError('message must be a JSON object with an "action"')
    try:
        message = ClientMessage.model_validate(data)
    except ValidationError:
        raise ProtocolError('message needs a string "action"') from None
    if message.action == "ping":
        return PONG
    shown = message.action if len(message.action) <= 40 else message.action[:40] + "..."
    raise ProtocolError(f'unknown action {shown!r}; supported: "ping"')


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    connection_id: str | None = None
    try:
        request = parse(event=event, model=APIGatewayWebSocketMessageEventModel)
        connection_id = request.request_context.connection_id
        body = request.body if isinstance(request.body, str) else None
        answer = reply(body, is_base64=request.is_base64_encoded)
    except ValidationError:
        logger.warning("unreadable $default event")
        return _error("unreadable request")
    except ProtocolError as exc:
        logger.info("client message refused", connectionId=connection_id, problem=str(exc))
        metrics.add_metric(name="ClientMessagesRefused", unit=MetricUnit.Count, value=1)
        return _error(str(exc))
    except Exception:  # never crash on a client message: answer, and log for the operator
        logger.exception("unexpected error answering a client message")
        return _error("internal error")
    metrics.add_metric(name="Pings", unit=MetricUnit.Count, value=1)
    return {"statusCode": 200, "body": answer}
