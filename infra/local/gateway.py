"""WebSocket API Gateway emulator: one asyncio process on aiohttp.

Port W (`websocketPort`):
  - `ws://host:W/{stage}`: handshake → REQUEST authorizer → `$connect`; messages routed on
    `$request.body.action` (else `$default`), the function's `body` sent back (two-way routes); close,
    idle timeout, maximum duration, DELETE and vanished clients (TCP close, unanswered pings) → `$disconnect`.
  - `http://host:W/{stage}/@connections/{id}` (URL-encoded id): POST (PostToConnection), GET, DELETE,
    with the errors of the real API (410 GoneException, 413 PayloadTooLargeException, 429
    LimitExceededException) and fault injection. SigV4 `Authorization` headers are accepted unverified.
  - `http://host:W/_local/...`: `GET stats`, `GET connections`, `POST simulated {"connectionIds": [...]}`,
    `GET simulated/stats`, `DELETE simulated`, `GET faults`, `POST faults {"latencyMs", "rate410", ...}`.
Port H (`httpPort`): the operator HTTP API; any method/path, after an `Authorization: Bearer <token>`
check, invokes the operator API function with a payload 2.0 event carrying an IAM authorizer block.

Functions are invoked through the Lambda Invoke REST API of the local runtime (`lambdaUrl`).

    python -m infra.local.gateway --config gateway.json [--websocket-port 9010 --http-port 9011 ...]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hmac
import json
import logging
import random
import secrets
import signal
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import aiohttp
from aiohttp import WSMsgType, web
from aiohttp.http import WebSocketError
from multidict import CIMultiDict
from pydantic import SecretStr, ValidationError

from infra.local.gateway_config import FaultConfig, GatewayConfig
from infra.local.gateway_events import (
    ClientRequest,
    ConnectionInfo,
    HttpRoute,
    authorizer_event,
    connect_event,
    disconnect_event,
    evaluate_authorizer,
    http_api_event,
    http_api_response,
    match_http_route,
    message_event,
    method_arn,
    new_connection_id,
    select_route,
)
from infra.local.gateway_sim import SimulatedConnections, broadcast_id_of

log = logging.getLogger("fanout.gateway")


def _log(level: int, event: str, **fields: Any) -> None:
    if log.isEnabledFor(level):
        log.log(level, event, extra={"fields": fields})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, event and the record's `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            data.update(fields)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


# ---------------------------------------------------------------------------------------------------
# Lambda Invoke API client


class InvokeError(Exception):
    """The Invoke API itself failed (runtime unreachable, unknown function, throttled, timeout)."""


class FunctionError(Exception):
    """The function raised: the Invoke API answered 200 with `X-Amz-Function-Error`."""

    def __init__(self, kind: str, payload: Any) -> None:
        self.kind = kind
        self.payload = payload
        message = payload.get("errorMessage") if isinstance(payload, dict) else payload
        super().__init__(f"{kind}: {message}")

    @property
    def message(self) -> str:
        if isinstance(self.payload, dict):
            return str(self.payload.get("errorMessage", ""))
        return str(self.payload or "")


class LambdaInvoker:
    """Synchronous (`RequestResponse`) invocations:
    `POST {url}/2015-03-31/functions/{name}/invocations`."""

    def __init__(self, session: aiohttp.ClientSession, url: str, counters: Counters) -> None:
        self._session = session
        self._base = url.rstrip("/") + "/2015-03-31/functions/"
        self._counters = counters

    async def invoke(self, name: str, event: dict[str, Any]) -> Any:
        stats = self._counters.invocations.setdefault(name, {"ok": 0, "functionError": 0, "invokeError": 0})
        try:
            async with self._session.post(
                self._base + name + "/invocations",
                data=json.dumps(event).encode(),
                headers={"X-Amz-Invocation-Type": "RequestResponse", "Content-Type": "application/json"},
            ) as resp:
                raw = await resp.read()
                status = resp.status
                error = resp.headers.get("X-Amz-Function-Error")
        except (TimeoutError, aiohttp.ClientError) as exc:
            stats["invokeError"] += 1
            raise InvokeError(f"invoke {name}: {type(exc).__name__}: {exc}") from exc
        if status != 200:
            stats["invokeError"] += 1
            raise InvokeError(f"invoke {name}: HTTP {status}: {raw[:300]!r}")
        try:
            payload = json.loads(raw) if raw.strip() else None
        except ValueError:
            payload = raw.decode("utf-8", "replace")
        if error:
            stats["functionError"] += 1
            raise FunctionError(error, payload)
        stats["ok"] += 1
        return payload


# ---------------------------------------------------------------------------------------------------
# State


class Counters:
    def __init__(self) -> None:
        self.connections_opened = 0
        self.connections_closed = 0
        self.handshakes_refused: dict[int, int] = {}
        self.messages_received = 0
        self.replies_sent = 0
        self.frames_sent = 0
        self.posts: dict[int, int] = {}
        self.post_bytes = 0
        self.broadcast_frames: dict[str, int] = {}
        self.disconnects: dict[int, int] = {}
        self.invocations: dict[str, dict[str, int]] = {}


@dataclass(slots=True, eq=False)
class Connection:
    info: ConnectionInfo
    ws: web.WebSocketResponse
    transport: asyncio.Transport | None
    last_active: float
    """Epoch seconds of the last data frame in either direction (idle timeout, GET lastActiveAt)."""
    closing: bool = False
    close_code: int | None = None
    close_reason: str = ""
    close_task: asyncio.Task[None] | None = None


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch * 1000) % 1000:03d}Z"


def _aws_error(status: int, error_type: str, message: str) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps({"message": message}).encode(),
        content_type="application/json",
        headers={"x-amzn-ErrorType": error_type},
    )


_FAULT_ERRORS = {
    410: ("GoneException", "The connection is gone (injected fault)"),
    429: ("LimitExceededException", "Rate exceeded (injected fault)"),
    500: ("InternalServerErrorException", "Internal server error (injected fault)"),
}
_OK = b""
ADMIN_MAX_BODY = 64 * 1024 * 1024


class Gateway:
    def __init__(self, config: GatewayConfig) -> None:
        self.cfg = config
        self.counters = Counters()
        self.connections: dict[str, Connection] = {}
        self.sim = SimulatedConnections()
        self.faults = config.faults
        self._rng = random.Random(config.faults.seed)
        token = (
            config.operator_token.get_secret_value() if config.operator_token else secrets.token_urlsafe(24)
        )
        self.operator_token = token
        self._bearer = f"Bearer {token}".encode()
        self._conn_prefix = f"/{config.stage}/@connections/"
        self._stage_path = f"/{config.stage}"
        self._conn_prefix_encoded = f"/{config.stage}/%40connections/"
        self._selection_path = config.selection_path
        self._http_routes = [HttpRoute.parse(r) for r in config.http_routes]
        self._tasks: set[asyncio.Task[Any]] = set()
        self._handlers: set[asyncio.Future[None]] = set()
        self._runners: list[web.BaseRunner] = []
        self._session: aiohttp.ClientSession | None = None
        self._invoker: LambdaInvoker | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._stopping = False
        self.websocket_port = 0
        self.http_port = 0

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.cfg
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=cfg.invoke_concurrency),
            timeout=aiohttp.ClientTimeout(total=cfg.invoke_timeout_seconds),
        )
        self._invoker = LambdaInvoker(self._session, cfg.lambda_url, self.counters)

        # Port W is a low-level server with one dispatcher: no router on the @connections hot path
        # (measured: the Application router adds ~20 us of CPU per post).
        server = web.Server(self._dispatch, request_factory=self._make_request)
        ws_runner = web.ServerRunner(server, access_log=None, shutdown_timeout=1.0)
        http_app = web.Application(client_max_size=10 * 1024 * 1024)
        http_app.router.add_route("*", "/{tail:.*}", self._operator)
        http_runner = web.AppRunner(http_app, access_log=None, shutdown_timeout=1.0, handle_signals=False)

        try:
            self.websocket_port = await self._serve(ws_runner, cfg.websocket_port)
            self.http_port = await self._serve(http_runner, cfg.http_port)
        except BaseException:
            await self.stop()
            raise
        interval = max(0.05, min(5.0, min(cfg.idle_timeout_seconds, cfg.max_connection_seconds) / 4))
        self._sweeper = asyncio.create_task(self._sweep(interval))

    async def _serve(self, runner: web.BaseRunner, port: int) -> int:
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, self.cfg.host, port, backlog=1024)
        await site.start()
        return int(runner.addresses[-1][1])

    async def stop(self) -> None:
        """Close every socket (1001 Going away), give their `$disconnect` invocations the shutdown grace,
        then stop the servers and the invoke client."""
        self._stopping = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for conn in list(self.connections.values()):
            self._close(conn, 1001, "Going away")
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=self.cfg.shutdown_grace_seconds)
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
        if self._session is not None:
            await self._session.close()

    @property
    def websocket_url(self) -> str:
        return f"ws://{self.cfg.host}:{self.websocket_port}/{self.cfg.stage}"

    @property
    def connections_url(self) -> str:
        return f"http://{self.cfg.host}:{self.websocket_port}/{self.cfg.stage}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.cfg.host}:{self.websocket_port}/_local"

    @property
    def http_api_url(self) -> str:
        return f"http://{self.cfg.host}:{self.http_port}"

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def invoker(self) -> LambdaInvoker:
        assert self._invoker is not None, "call start() first"
        return self._invoker

    @staticmethod
    def _make_request(
        message: Any, payload: Any, protocol: Any, writer: Any, task: asyncio.Task[None]
    ) -> web.BaseRequest:
        # Admin bodies list 100k+ simulated ids (~2 MB per 100k); posts are capped at the frame limit
        # from Content-Length before any read.
        return web.BaseRequest(
            message,
            payload,
            protocol,
            writer,
            task,
            asyncio.get_running_loop(),
            client_max_size=ADMIN_MAX_BODY,
        )

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        raw = request.raw_path
        if raw.startswith(self._conn_prefix) or raw.startswith(self._conn_prefix_encoded):
            return await self._connections_api(request)
        path = request.path
        if path.startswith("/_local/"):
            return await self._admin(request, path[len("/_local/") :].strip("/"))
        if path == self._stage_path and request.method == "GET":
            return await self._websocket(request)
        # another stage, or a path API Gateway does not serve
        return _aws_error(403, "ForbiddenException", "Forbidden")

    # -- WebSocket endpoint -------------------------------------------------------------------------

    async def _websocket(self, request: web.BaseRequest) -> web.StreamResponse:
        cfg = self.cfg
        if self._stopping:
            return web.json_response({"message": "Service Unavailable"}, status=503)
        probe = web.WebSocketResponse()
        if not probe.can_prepare(request).ok:
            return web.json_response({"message": "Upgrade Required"}, status=426)

        now = time.time()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        source_ip = str(peer[0]) if peer else "127.0.0.1"
        user_agent = request.headers.get("User-Agent", "")
        host = request.headers.get("Host", f"{cfg.host}:{self.websocket_port}")
        info = ConnectionInfo(
            connection_id=new_connection_id(),
            connected_at_ms=int(now * 1000),
            domain_name=cfg.domain_name or host,
            source_ip=source_ip,
            user_agent=user_agent,
        )
        client = ClientRequest(
            headers=list(request.headers.items()),
            query=list(request.query.items()),
            source_ip=source_ip,
            user_agent=user_agent,
            host=host,
            port=self.websocket_port,
        )

        refused = await self._authorize(info, client, now)
        if refused is not None:
            return refused
        protocol: str | None = None
        if cfg.functions.connect:
            try:
                result = await self.invoker.invoke(
                    cfg.functions.connect, connect_event(cfg, info, client, now)
                )
            except (FunctionError, InvokeError) as exc:
                _log(logging.WARNING, "$connect failed", connectionId=info.connection_id, error=str(exc))
                return self._refuse(500, "Internal server error")
            status = 200
            if isinstance(result, dict):
                with contextlib.suppress(TypeError, ValueError):
                    status = int(result.get("statusCode", 200))
                headers = result.get("headers") or {}
                if isinstance(headers, dict):
                    protocol = next(
                        (str(v) for k, v in headers.items() if k.lower() == "sec-websocket-protocol"), None
                    )
            if not 200 <= status < 300:
                return self._refuse(status if 400 <= status < 600 else 500, "Forbidden")

        ws = web.WebSocketResponse(
            max_msg_size=cfg.max_frame_bytes,
            heartbeat=cfg.heartbeat_seconds,
            timeout=cfg.close_timeout_seconds,
            autoping=True,
            compress=False,
            protocols=(protocol,) if protocol else (),
        )
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._handlers.add(done)
        conn = Connection(info=info, ws=ws, transport=request.transport, last_active=now)
        code, reason = 1006, "Connection closed abnormally"
        try:
            await ws.prepare(request)
            self.connections[info.connection_id] = conn
            self.counters.connections_opened += 1
            _log(logging.DEBUG, "connected", connectionId=info.connection_id, sourceIp=source_ip)
            if self._stopping:
                self._close(conn, 1001, "Going away")
            code, reason = await self._receive_loop(conn)
        finally:
            if self.connections.get(info.connection_id) is conn:
                del self.connections[info.connection_id]
            if conn.close_code is not None:
                code, reason = conn.close_code, conn.close_reason
            conn.closing = True
            if conn.close_task is not None:
                await asyncio.wait([conn.close_task], timeout=cfg.close_timeout_seconds + 1)
            self.counters.connections_closed += 1
            self.counters.disconnects[code] = self.counters.disconnects.get(code, 0) + 1
            _log(logging.DEBUG, "disconnected", connectionId=info.connection_id, code=code, reason=reason)
            await self._invoke_disconnect(conn, code, reason)
            self._handlers.discard(done)
            done.set_result(None)
        return ws

    async def _authorize(
        self, info: ConnectionInfo, client: ClientRequest, now: float
    ) -> web.Response | None:
        """Invoke the REQUEST authorizer; None when allowed (info.authorizer set), else the refusal."""
        fn = self.cfg.functions.authorizer
        if not fn:
            return None
        started = time.monotonic()
        try:
            answer = await self.invoker.invoke(fn, authorizer_event(self.cfg, info, client, now))
        except FunctionError as exc:
            if exc.message == "Unauthorized":
                return self._refuse(401, "Unauthorized")
            _log(logging.WARNING, "authorizer failed", connectionId=info.connection_id, error=str(exc))
            return self._refuse(500, "Internal server error")
        except InvokeError as exc:
            _log(logging.WARNING, "authorizer invoke failed", connectionId=info.connection_id, error=str(exc))
            return self._refuse(500, "Internal server error")
        decision = evaluate_authorizer(answer, method_arn(self.cfg))
        if decision.status != 200:
            if decision.status == 500:
                _log(logging.WARNING, "authorizer answer invalid", reason=decision.reason)
            return self._refuse(
                decision.status, "Forbidden" if decision.status == 403 else "Internal server error"
            )
        latency = int((time.monotonic() - started) * 1000)
        info.authorizer = {**(decision.context or {}), "integrationLatency": latency}
        return None

    def _refuse(self, status: int, message: str) -> web.Response:
        refused = self.counters.handshakes_refused
        refused[status] = refused.get(status, 0) + 1
        return web.json_response({"message": message}, status=status)

    async def _receive_loop(self, conn: Connection) -> tuple[int, str]:
        ws = conn.ws
        counters = self.counters
        while True:
            msg = await ws.receive()
            kind = msg.type
            if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
                conn.last_active = time.time()
                counters.messages_received += 1
                self._spawn(self._on_message(conn, msg.data))
                continue
            if kind is WSMsgType.CLOSE:
                code = int(msg.data or 1005)
                reason = msg.extra or ("Client-side close frame status not set" if code == 1005 else "")
                return code, str(reason)
            if kind is WSMsgType.ERROR:
                exc = msg.data
                if isinstance(exc, WebSocketError) and exc.code == 1009:
                    return 1009, "Message too big"
                return 1006, "Connection closed abnormally"
            if kind in (WSMsgType.CLOSING, WSMsgType.CLOSED):
                return 1006, "Connection closed abnormally"

    async def _on_message(self, conn: Connection, data: str | bytes) -> None:
        cfg = self.cfg
        info = conn.info
        route = select_route(data, self._selection_path, cfg.routes)
        fn = cfg.functions.default if route == "$default" else cfg.routes[route]
        now = time.time()
        event = message_event(cfg, info, route, data, now)
        request_id = event["requestContext"]["requestId"]
        if not fn:
            await self._reply(
                conn, {"message": "Forbidden", "connectionId": info.connection_id, "requestId": request_id}
            )
            return
        try:
            result = await self.invoker.invoke(fn, event)
        except (FunctionError, InvokeError) as exc:
            _log(
                logging.WARNING, "route failed", route=route, connectionId=info.connection_id, error=str(exc)
            )
            error = {
                "message": "Internal server error",
                "connectionId": info.connection_id,
                "requestId": request_id,
            }
            await self._reply(conn, error)
            return
        if not isinstance(result, dict) or result.get("body") is None:
            return
        body = result["body"]
        if result.get("isBase64Encoded"):
            try:
                await self._send(conn, base64.b64decode(str(body)))
            except ValueError:
                return
        else:
            await self._send(conn, body if isinstance(body, str) else json.dumps(body))
        self.counters.replies_sent += 1

    async def _reply(self, conn: Connection, obj: dict[str, Any]) -> None:
        await self._send(conn, json.dumps(obj))

    async def _send(self, conn: Connection, payload: str | bytes) -> bool:
        ws = conn.ws
        if conn.closing or ws.closed:
            return False
        try:
            if isinstance(payload, str):
                await ws.send_str(payload)
            else:
                await ws.send_bytes(payload)
        except (ConnectionError, RuntimeError, aiohttp.ClientError):
            return False
        conn.last_active = time.time()
        return True

    def _close(self, conn: Connection, code: int, reason: str) -> None:
        """Gateway-initiated close: unregister now (posts answer 410), send the close frame in the
        background."""
        if conn.closing:
            return
        conn.closing = True
        conn.close_code, conn.close_reason = code, reason
        if self.connections.get(conn.info.connection_id) is conn:
            del self.connections[conn.info.connection_id]
        conn.close_task = self._spawn(self._close_ws(conn, code, reason))

    @staticmethod
    async def _close_ws(conn: Connection, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await conn.ws.close(code=code, message=reason.encode()[:123])

    async def _invoke_disconnect(self, conn: Connection, code: int, reason: str) -> None:
        fn = self.cfg.functions.disconnect
        if not fn:
            return
        event = disconnect_event(self.cfg, conn.info, code, reason, time.time())
        try:
            await self.invoker.invoke(fn, event)
        except (FunctionError, InvokeError) as exc:
            _log(logging.WARNING, "$disconnect failed", connectionId=conn.info.connection_id, error=str(exc))

    async def _sweep(self, interval: float) -> None:
        """Close connections idle for longer than the idle timeout, or older than the maximum duration."""
        idle = self.cfg.idle_timeout_seconds
        max_ms = self.cfg.max_connection_seconds * 1000
        while True:
            await asyncio.sleep(interval)
            now = time.time()
            idle_before = now - idle
            born_before_ms = now * 1000 - max_ms
            for conn in list(self.connections.values()):
                if conn.last_active < idle_before or conn.info.connected_at_ms < born_before_ms:
                    self._close(conn, 1001, "Going away")

    # -- @connections API (the broadcast's hot path: counters only, no per-request logging) -----------

    def _answer(self, status: int, error_type: str = "", message: str = "") -> web.Response:
        posts = self.counters.posts
        posts[status] = posts.get(status, 0) + 1
        if status == 200:
            return web.Response(status=200, body=_OK)
        return _aws_error(status, error_type, message)

    async def _connections_api(self, request: web.BaseRequest) -> web.StreamResponse:
        raw = request.raw_path
        q = raw.find("?")
        if q >= 0:
            raw = raw[:q]
        if raw.startswith(self._conn_prefix_encoded):  # botocore sends '@' encoded as %40; AWS takes both
            raw = self._conn_prefix + raw[len(self._conn_prefix_encoded) :]
        if not raw.startswith(self._conn_prefix):
            return _aws_error(403, "ForbiddenException", "Forbidden")
        cid = unquote(raw[len(self._conn_prefix) :])
        method = request.method
        if method == "POST":
            return await self._post(cid, request)
        if method == "GET":
            return self._get(cid)
        if method == "DELETE":
            return self._delete(cid)
        return _aws_error(403, "ForbiddenException", "Missing Authentication Token")

    async def _post(self, cid: str, request: web.BaseRequest) -> web.Response:
        limit = self.cfg.max_frame_bytes
        if (request.content_length or 0) > limit:
            return self._answer(413, "PayloadTooLargeException", "Message too long")
        body = await request.read()
        size = len(body)
        if size > limit:
            return self._answer(413, "PayloadTooLargeException", "Message too long")
        faults = self.faults
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        if faults.any_rate:
            status = self._draw_fault(faults)
            if status:
                if status == 410 and faults.gone_closes:
                    self._make_gone(cid)
                error_type, message = _FAULT_ERRORS[status]
                return self._answer(status, error_type, message)
        conn = self.connections.get(cid)
        if conn is not None:
            transport = conn.transport
            if transport is None or transport.is_closing():
                return self._answer(410, "GoneException", "The connection is gone")
            if transport.get_write_buffer_size() > self.cfg.max_send_buffer_bytes:
                return self._answer(429, "LimitExceededException", "The client's buffer is full")
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                sent = await self._send(conn, body)
            else:
                sent = await self._send(conn, text)
            if not sent:
                return self._answer(410, "GoneException", "The connection is gone")
            self.counters.frames_sent += 1
            bid = broadcast_id_of(body)
            if bid is not None:
                frames = self.counters.broadcast_frames
                frames[bid] = frames.get(bid, 0) + 1
        else:
            index = self.sim.lookup(cid)
            if index is None:
                return self._answer(410, "GoneException", "The connection is gone")
            self.sim.record(index, broadcast_id_of(body))
        self.counters.post_bytes += size
        return self._answer(200)

    def _draw_fault(self, faults: FaultConfig) -> int:
        r = self._rng.random()
        if r < faults.rate410:
            return 410
        r -= faults.rate410
        if r < faults.rate429:
            return 429
        r -= faults.rate429
        if r < faults.rate500:
            return 500
        return 0

    def _make_gone(self, cid: str) -> None:
        conn = self.connections.get(cid)
        if conn is not None:
            self._close(conn, 1001, "Going away")
        else:
            self.sim.delete(cid)

    def _get(self, cid: str) -> web.Response:
        conn = self.connections.get(cid)
        if conn is not None:
            info = conn.info
            body = {
                "connectedAt": _iso(info.connected_at_ms / 1000),
                "identity": {"sourceIp": info.source_ip, "userAgent": info.user_agent},
                "lastActiveAt": _iso(conn.last_active),
            }
            return web.json_response(body)
        if self.sim.lookup(cid) is not None:
            now = _iso(time.time())
            body = {
                "connectedAt": now,
                "identity": {"sourceIp": "127.0.0.1", "userAgent": "simulated"},
                "lastActiveAt": now,
            }
            return web.json_response(body)
        return _aws_error(410, "GoneException", "The connection is gone")

    def _delete(self, cid: str) -> web.Response:
        conn = self.connections.get(cid)
        if conn is not None:
            self._close(conn, 1000, "Connection closed by the @connections API")
            return web.Response(status=204)
        if self.sim.delete(cid):
            return web.Response(status=204)
        return _aws_error(410, "GoneException", "The connection is gone")

    # -- admin endpoints ----------------------------------------------------------------------------

    async def _admin(self, request: web.BaseRequest, what: str) -> web.StreamResponse:
        method = request.method
        if what == "stats" and method == "GET":
            return web.json_response(self.stats())
        if what == "connections" and method == "GET":
            return web.json_response({"connectionIds": list(self.connections)})
        if what == "simulated" and method == "POST":
            try:
                payload = await request.json()
                ids = payload["connectionIds"]
                if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                return web.json_response({"message": 'expected {"connectionIds": ["...", ...]}'}, status=400)
            added = self.sim.register(ids)
            return web.json_response({"registered": len(ids), "new": added})
        if what == "simulated" and method == "DELETE":
            self.sim.clear()
            return web.Response(status=204)
        if what == "simulated/stats" and method == "GET":
            return web.json_response(self.sim.stats())
        if what == "faults" and method == "GET":
            return web.json_response(self.faults.model_dump(by_alias=True))
        if what == "faults" and method == "POST":
            try:
                patch = await request.json()
                if not isinstance(patch, dict):
                    raise TypeError
                faults = self.faults.merged(patch)
            except (ValueError, TypeError, ValidationError) as exc:
                return web.json_response({"message": f"invalid faults: {exc}"}, status=400)
            self.faults = faults
            if "seed" in patch:
                self._rng = random.Random(faults.seed)
            _log(logging.INFO, "faults changed", **faults.model_dump(by_alias=True))
            return web.json_response(faults.model_dump(by_alias=True))
        return web.json_response({"message": "Not Found"}, status=404)

    def stats(self) -> dict[str, Any]:
        c = self.counters
        return {
            "connectionsOpen": len(self.connections),
            "connectionsOpened": c.connections_opened,
            "connectionsClosed": c.connections_closed,
            "handshakesRefused": {str(k): v for k, v in c.handshakes_refused.items()},
            "disconnectsByCode": {str(k): v for k, v in c.disconnects.items()},
            "messagesReceived": c.messages_received,
            "repliesSent": c.replies_sent,
            "posts": {str(k): v for k, v in c.posts.items()},
            "postBytes": c.post_bytes,
            "framesSent": c.frames_sent,
            "broadcastFramesSent": dict(c.broadcast_frames),
            "simulatedFrames": self.sim.frames,
            "simulatedRegistered": self.sim.registered,
            "invocations": c.invocations,
            "faults": self.faults.model_dump(by_alias=True),
        }

    # -- operator HTTP API --------------------------------------------------------------------------

    async def _operator(self, request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(auth, self._bearer):
            return web.json_response({"message": "Unauthorized"}, status=401)
        fn = self.cfg.functions.operator_api
        if not fn:
            return web.json_response({"message": "Not Found"}, status=404)
        body = await request.read()
        now = time.time()
        route_key, params = match_http_route(self._http_routes, request.method, request.path)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        event = http_api_event(
            self.cfg,
            method=request.method,
            raw_path=request.raw_path.split("?", 1)[0],
            raw_query=request.rel_url.raw_query_string,
            headers=list(request.headers.items()),
            query=list(request.query.items()),
            body=body,
            source_ip=str(peer[0]) if peer else "127.0.0.1",
            route_key=route_key,
            path_parameters=params,
            domain_name=request.headers.get("Host", f"{self.cfg.host}:{self.http_port}"),
            now=now,
        )
        try:
            result = await self.invoker.invoke(fn, event)
        except (FunctionError, InvokeError) as exc:
            _log(logging.WARNING, "operator API failed", routeKey=route_key, error=str(exc))
            return web.json_response({"message": "Internal Server Error"}, status=500)
        try:
            status, headers, payload = http_api_response(result)
        except (TypeError, ValueError) as exc:
            _log(logging.WARNING, "operator API answer invalid", routeKey=route_key, error=str(exc))
            return web.json_response({"message": "Internal Server Error"}, status=500)
        return web.Response(status=status, headers=CIMultiDict(headers), body=payload)


# ---------------------------------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m infra.local.gateway", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--config", type=Path, help="JSON file (camelCase keys, see infra/local/gateway_config.py)"
    )
    p.add_argument("--host")
    p.add_argument("--websocket-port", type=int)
    p.add_argument("--http-port", type=int)
    p.add_argument("--stage")
    p.add_argument("--lambda-url")
    p.add_argument("--operator-token")
    p.add_argument("--idle-timeout", type=float, dest="idle_timeout_seconds")
    p.add_argument("--max-duration", type=float, dest="max_connection_seconds")
    p.add_argument("--heartbeat", type=float, dest="heartbeat_seconds")
    p.add_argument("--latency-ms", type=float)
    p.add_argument("--rate-410", type=float, dest="rate410")
    p.add_argument("--rate-429", type=float, dest="rate429")
    p.add_argument("--rate-500", type=float, dest="rate500")
    p.add_argument("--seed", type=int)
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def config_from_args(argv: list[str] | None = None) -> GatewayConfig:
    args = _parser().parse_args(argv)
    data: dict[str, Any] = json.loads(args.config.read_text()) if args.config else {}
    base = GatewayConfig.model_validate(data)
    top = {
        k: getattr(args, k)
        for k in (
            "host",
            "websocket_port",
            "http_port",
            "stage",
            "lambda_url",
            "idle_timeout_seconds",
            "max_connection_seconds",
            "heartbeat_seconds",
            "log_level",
        )
        if getattr(args, k) is not None
    }
    if args.operator_token is not None:
        top["operator_token"] = SecretStr(args.operator_token)
    fault_patch = {
        k: getattr(args, k)
        for k in ("latency_ms", "rate410", "rate429", "rate500", "seed")
        if getattr(args, k) is not None
    }
    if fault_patch:
        top["faults"] = base.faults.merged(fault_patch)
    return GatewayConfig.model_validate({**base.model_dump(), **top})


async def serve(config: GatewayConfig) -> None:
    """Run until SIGTERM/SIGINT, then stop cleanly."""
    gateway = Gateway(config)
    await gateway.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    fields: dict[str, Any] = {
        "websocketUrl": gateway.websocket_url,
        "connectionsUrl": gateway.connections_url,
        "httpApiUrl": gateway.http_api_url,
        "adminUrl": gateway.admin_url,
        "lambdaUrl": config.lambda_url,
    }
    if config.operator_token is None:
        fields["operatorToken"] = gateway.operator_token  # generated: the only way to learn it
    _log(logging.INFO, "gateway ready", **fields)
    try:
        await stop.wait()
    finally:
        _log(logging.INFO, "gateway stopping", connectionsOpen=len(gateway.connections))
        await gateway.stop()
        _log(logging.INFO, "gateway stopped")


def main(argv: list[str] | None = None) -> int:
    try:
        config = config_from_args(argv)
    except (ValidationError, OSError, ValueError) as exc:
        print(f"invalid gateway configuration: {exc}", file=sys.stderr)
        return 2
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    log.setLevel(config.log_level)
    asyncio.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
