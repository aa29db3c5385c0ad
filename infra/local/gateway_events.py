"""Event shapes of the gateway emulator, built as plain dicts (no I/O): the WebSocket API's REQUEST
authorizer, `$connect`, MESSAGE and `$disconnect` events (this module is their one source), the
operator API's HTTP API payload 2.0 event (bound to the gateway's configuration here, built by
`infra/local/events.py`, which the tests share), plus the pure decisions around them (authorizer
policy, route selection, HTTP route matching).

Shapes follow the API Gateway developer guide's examples and parse with Powertools'
`APIGatewayWebSocket{Connect,Message,Disconnect}EventModel` (tests/integration/test_gateway.py).
"""

from __future__ import annotations

import base64
import fnmatch
import json
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from infra.local import events
from infra.local.events import encode_body, iam_authorizer, request_time
from infra.local.gateway_config import GatewayConfig

JsonDict = dict[str, Any]


def new_connection_id() -> str:
    """An id shaped like AWS's: 16 base64 characters ending in '=' (may hold '+' and '/': URL-encode it)."""
    return base64.b64encode(os.urandom(11)).decode()


def _token(n: int = 12) -> str:
    return base64.b64encode(os.urandom(n)).decode()


@dataclass(slots=True)
class ClientRequest:
    """What the gateway saw of the client's upgrade request."""

    headers: list[tuple[str, str]]
    query: list[tuple[str, str]]
    source_ip: str
    user_agent: str
    host: str
    port: int = 0


@dataclass(slots=True)
class ConnectionInfo:
    """The per-connection part of every WebSocket event."""

    connection_id: str
    connected_at_ms: int
    domain_name: str
    source_ip: str
    user_agent: str
    authorizer: JsonDict | None = None
    extra_headers: JsonDict = field(default_factory=dict)


def _single_and_multi(pairs: list[tuple[str, str]]) -> tuple[JsonDict, dict[str, list[str]]]:
    single: JsonDict = {}
    multi: dict[str, list[str]] = {}
    for k, v in pairs:
        single[k] = v  # the last value wins, as in API Gateway's single-value maps
        multi.setdefault(k, []).append(v)
    return single, multi


def _ws_context(
    cfg: GatewayConfig, conn: ConnectionInfo, route_key: str, event_type: str, now: float
) -> JsonDict:
    ctx: JsonDict = {
        "routeKey": route_key,
        "eventType": event_type,
        "extendedRequestId": _token(6),
        "requestTime": request_time(now),
        "messageDirection": "IN",
        "stage": cfg.stage,
        "connectedAt": conn.connected_at_ms,
        "requestTimeEpoch": int(now * 1000),
        "identity": {"sourceIp": conn.source_ip, "userAgent": conn.user_agent},
        "requestId": _token(6),
        "domainName": conn.domain_name,
        "connectionId": conn.connection_id,
        "apiId": cfg.api_id,
    }
    if conn.authorizer is not None:
        ctx["authorizer"] = conn.authorizer
    return ctx


def _connect_headers(req: ClientRequest) -> list[tuple[str, str]]:
    headers = list(req.headers)
    present = {k.lower() for k, _ in headers}
    if "x-forwarded-for" not in present:
        headers.append(("X-Forwarded-For", req.source_ip))
    if "x-forwarded-port" not in present:
        headers.append(("X-Forwarded-Port", str(req.port)))
    if "x-forwarded-proto" not in present:
        headers.append(("X-Forwarded-Proto", "http"))
    if "x-amzn-trace-id" not in present:
        headers.append(("X-Amzn-Trace-Id", f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]}"))
    return headers


def method_arn(cfg: GatewayConfig, route_key: str = "$connect") -> str:
    return f"arn:aws:execute-api:{cfg.region}:{cfg.account_id}:{cfg.api_id}/{cfg.stage}/{route_key}"


def authorizer_event(cfg: GatewayConfig, conn: ConnectionInfo, req: ClientRequest, now: float) -> JsonDict:
    headers, multi_headers = _single_and_multi(_connect_headers(req))
    query, multi_query = _single_and_multi(req.query)
    ctx = _ws_context(cfg, conn, "$connect", "CONNECT", now)
    ctx.pop("authorizer", None)
    return {
        "type": "REQUEST",
        "methodArn": method_arn(cfg),
        "headers": headers,
        "multiValueHeaders": multi_headers,
        "queryStringParameters": query,
        "multiValueQueryStringParameters": multi_query,
        "stageVariables": {},
        "requestContext": ctx,
    }


def connect_event(cfg: GatewayConfig, conn: ConnectionInfo, req: ClientRequest, now: float) -> JsonDict:
    headers, multi_headers = _single_and_multi(_connect_headers(req))
    event: JsonDict = {
        "headers": headers,
        "multiValueHeaders": multi_headers,
        "requestContext": _ws_context(cfg, conn, "$connect", "CONNECT", now),
        "isBase64Encoded": False,
    }
    if req.query:
        query, multi_query = _single_and_multi(req.query)
        event["queryStringParameters"] = query
        event["multiValueQueryStringParameters"] = multi_query
    return event


def message_event(
    cfg: GatewayConfig, conn: ConnectionInfo, route_key: str, data: str | bytes, now: float
) -> JsonDict:
    ctx = _ws_context(cfg, conn, route_key, "MESSAGE", now)
    ctx["messageId"] = _token(6)
    if isinstance(data, bytes):
        return {"requestContext": ctx, "body": base64.b64encode(data).decode(), "isBase64Encoded": True}
    return {"requestContext": ctx, "body": data, "isBase64Encoded": False}


def disconnect_event(
    cfg: GatewayConfig, conn: ConnectionInfo, status_code: int, reason: str, now: float
) -> JsonDict:
    ctx = _ws_context(cfg, conn, "$disconnect", "DISCONNECT", now)
    ctx["disconnectStatusCode"] = status_code
    ctx["disconnectReason"] = reason
    headers = {"Host": conn.domain_name, "X-Forwarded-For": conn.source_ip, "x-api-key": "", "x-restapi": ""}
    return {
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "requestContext": ctx,
        "isBase64Encoded": False,
    }


# ---------------------------------------------------------------------------------------------------
# Authorizer decision


@dataclass(slots=True, frozen=True)
class AuthDecision:
    status: Literal[200, 401, 403, 500]
    """200 allowed; 401 Unauthorized; 403 explicit Deny / no Allow; 500 malformed authorizer answer."""
    context: JsonDict | None = None
    """requestContext.authorizer of the connection's later events (principalId + context fields)."""
    reason: str = ""


def _resource_matches(pattern: str, arn: str) -> bool:
    return fnmatch.fnmatchcase(arn, pattern) if ("*" in pattern or "?" in pattern) else pattern == arn


def evaluate_authorizer(response: Any, arn: str) -> AuthDecision:
    """Apply a REQUEST authorizer's answer to `arn` as API Gateway does: an explicit Deny wins, then an
    Allow covering the ARN; anything else is 403. A malformed answer is a 500
    (AuthorizerConfigurationException)."""
    if not isinstance(response, dict):
        return AuthDecision(500, reason="authorizer returned no object")
    doc = response.get("policyDocument")
    principal = response.get("principalId")
    if not isinstance(doc, dict) or principal is None:
        return AuthDecision(500, reason="authorizer answer lacks principalId or policyDocument")
    statements = doc.get("Statement", [])
    if isinstance(statements, dict):
        statements = [statements]
    allowed = False
    for st in statements:
        if not isinstance(st, dict):
            return AuthDecision(500, reason="malformed policy statement")
        actions = st.get("Action", [])
        actions = [actions] if isinstance(actions, str) else actions
        if not any(_resource_matches(a, "execute-api:Invoke") for a in actions):
            continue
        resources = st.get("Resource", [])
        resources = [resources] if isinstance(resources, str) else resources
        if not any(_resource_matches(str(r), arn) for r in resources):
            continue
        effect = str(st.get("Effect", "")).lower()
        if effect == "deny":
            return AuthDecision(403, reason="explicit deny")
        if effect == "allow":
            allowed = True
    if not allowed:
        return AuthDecision(403, reason="no statement allows the method ARN")
    context = response.get("context") or {}
    if not isinstance(context, dict):
        return AuthDecision(500, reason="authorizer context is not an object")
    for key, value in context.items():
        if isinstance(value, (dict, list)):
            return AuthDecision(
                500, reason=f"authorizer context value {key!r} is not a string, number or boolean"
            )
    return AuthDecision(200, context={**context, "principalId": principal})


# ---------------------------------------------------------------------------------------------------
# Route selection


def select_route(data: str | bytes, path: tuple[str, ...], routes: dict[str, str]) -> str:
    """The route key for a message: the value at `path` in the JSON body when it names a custom route,
    else `$default` (binary frames, non-JSON, no such field, unknown route)."""
    if isinstance(data, bytes) or not routes:
        return "$default"
    stripped = data.lstrip()
    if not stripped.startswith("{"):
        return "$default"
    try:
        value: Any = json.loads(data)
    except ValueError:
        return "$default"
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return "$default"
        value = value[part]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return "$default"
    key = str(value)
    return key if key in routes else "$default"


# ---------------------------------------------------------------------------------------------------
# HTTP API (payload format 2.0)


@dataclass(slots=True, frozen=True)
class HttpRoute:
    route_key: str
    method: str
    regex: re.Pattern[str]

    @classmethod
    def parse(cls, route_key: str) -> HttpRoute:
        method, path = route_key.split(" ", 1)
        pattern = ""
        for seg in path.strip("/").split("/") if path != "/" else []:
            if seg.startswith("{") and seg.endswith("+}"):
                pattern += f"/(?P<{seg[1:-2]}>.+)"
            elif seg.startswith("{") and seg.endswith("}"):
                pattern += f"/(?P<{seg[1:-1]}>[^/]+)"
            else:
                pattern += "/" + re.escape(seg)
        return cls(route_key, method, re.compile(f"^{pattern or '/'}/?$"))


def match_http_route(routes: list[HttpRoute], method: str, path: str) -> tuple[str, dict[str, str] | None]:
    """(routeKey, pathParameters) of the first route matching; ("$default", None) when none does."""
    for route in routes:
        if route.method not in ("ANY", method):
            continue
        m = route.regex.match(path)
        if m:
            return route.route_key, (m.groupdict() or None)
    return "$default", None


def http_api_event(
    cfg: GatewayConfig,
    *,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: list[tuple[str, str]],
    query: list[tuple[str, str]],
    body: bytes,
    source_ip: str,
    route_key: str,
    path_parameters: dict[str, str] | None,
    domain_name: str,
    now: float,
) -> JsonDict:
    """The operator API's HTTP API payload 2.0 event (`infra/local/events.py` builds it) of an
    IAM-authorized route: the local bearer check stands in for IAM, so the caller is a local IAM user."""
    text, is_base64 = encode_body(body)
    return events.http_api_event(
        method=method,
        raw_path=raw_path,
        raw_query=raw_query,
        route_key=route_key,
        api_id=cfg.http_api_id,
        account_id=cfg.account_id,
        domain_name=domain_name,
        source_ip=source_ip,
        now=now,
        request_id=_token(6),
        headers=headers,
        query=query,
        body=text,
        is_base64_encoded=is_base64,
        path_parameters=path_parameters,
        authorizer=iam_authorizer(
            cfg.account_id,
            access_key="AKIALOCALOPERATOR000",
            user_id="AIDALOCALOPERATOR000",
            user_name="local-operator",
        ),
    )


def http_api_response(result: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    """Map a function's payload 2.0 answer to (status, headers, body) as HTTP APIs do: a dict with
    `statusCode` is taken as is; anything else is inferred as a 200 JSON body."""
    if isinstance(result, dict) and "statusCode" in result:
        status = int(result["statusCode"])
        headers = [(str(k), str(v)) for k, v in (result.get("headers") or {}).items()]
        for cookie in result.get("cookies") or []:
            headers.append(("Set-Cookie", str(cookie)))
        raw = result.get("body")
        if raw is None:
            body = b""
        elif result.get("isBase64Encoded"):
            body = base64.b64decode(str(raw))
        else:
            body = (raw if isinstance(raw, str) else json.dumps(raw)).encode()
        return status, headers, body
    return 200, [("Content-Type", "application/json")], json.dumps(result).encode()
