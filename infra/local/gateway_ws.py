"""The gateway emulator's WebSocket endpoint, `ws://host:W/{stage}`, and its registry of live
connections: handshake → REQUEST authorizer → `$connect`; messages routed on `$request.body.action`
(else `$default`), the function's `body` sent back (two-way routes); close, idle timeout, maximum
duration, DELETE and vanished clients (TCP close, unanswered pings) → `$disconnect`."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import Coroutine
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web
from aiohttp.http import WebSocketError

from infra.local.gateway_config import GatewayConfig
from infra.local.gateway_events import (
    ClientRequest,
    ConnectionInfo,
    authorizer_event,
    connect_event,
    disconnect_event,
    evaluate_authorizer,
    message_event,
    method_arn,
    new_connection_id,
    select_route,
)
from infra.local.gateway_invoke import FunctionError, InvokeError, LambdaInvoker
from infra.local.gateway_state import Connection, Counters
from infra.local.logs import log_fields

log = logging.getLogger("fanout.gateway")


class WebSocketEndpoint:
    """The live connections (`connections`, by id) and everything that happens on their sockets."""

    def __init__(self, cfg: GatewayConfig, counters: Counters, invoker: LambdaInvoker) -> None:
        self.cfg = cfg
        self.counters = counters
        self.invoker = invoker
        self.connections: dict[str, Connection] = {}
        self.port = 0  # the listening port, once bound (the Host of clients that send none)
        self.stopping = False
        self._selection_path = cfg.selection_path
        self._tasks: set[asyncio.Task[Any]] = set()
        self._handlers: set[asyncio.Future[None]] = set()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close_all(self, grace: float) -> None:
        """Close every socket (1001 Going away) and give their `$disconnect` invocations `grace` seconds."""
        self.stopping = True
        for conn in list(self.connections.values()):
            self.close(conn, 1001, "Going away")
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=grace)

    async def cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)

    # -- the handshake and the connection's life ----------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        cfg = self.cfg
        if self.stopping:
            return web.json_response({"message": "Service Unavailable"}, status=503)
        probe = web.WebSocketResponse()
        if not probe.can_prepare(request).ok:
            return web.json_response({"message": "Upgrade Required"}, status=426)

        now = time.time()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        source_ip = str(peer[0]) if peer else "127.0.0.1"
        user_agent = request.headers.get("User-Agent", "")
        host = request.headers.get("Host", f"{cfg.host}:{self.port}")
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
            port=self.port,
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
                log_fields(
                    log, logging.WARNING, "$connect failed", connectionId=info.connection_id, error=str(exc)
                )
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
            log_fields(log, logging.DEBUG, "connected", connectionId=info.connection_id, sourceIp=source_ip)
            if self.stopping:
                self.close(conn, 1001, "Going away")
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
            log_fields(
                log, logging.DEBUG, "disconnected", connectionId=info.connection_id, code=code, reason=reason
            )
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
            log_fields(
                log, logging.WARNING, "authorizer failed", connectionId=info.connection_id, error=str(exc)
            )
            return self._refuse(500, "Internal server error")
        except InvokeError as exc:
            log_fields(
                log,
                logging.WARNING,
                "authorizer invoke failed",
                connectionId=info.connection_id,
                error=str(exc),
            )
            return self._refuse(500, "Internal server error")
        decision = evaluate_authorizer(answer, method_arn(self.cfg))
        if decision.status != 200:
            if decision.status == 500:
                log_fields(log, logging.WARNING, "authorizer answer invalid", reason=decision.reason)
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
            log_fields(
                log,
                logging.WARNING,
                "route failed",
                route=route,
                connectionId=info.connection_id,
                error=str(exc),
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
                await self.send(conn, base64.b64decode(str(body)))
            except ValueError:
                return
        else:
            await self.send(conn, body if isinstance(body, str) else json.dumps(body))
        self.counters.replies_sent += 1

    async def _reply(self, conn: Connection, obj: dict[str, Any]) -> None:
        await self.send(conn, json.dumps(obj))

    async def send(self, conn: Connection, payload: str | bytes) -> bool:
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

    def close(self, conn: Connection, code: int, reason: str) -> None:
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
            log_fields(
                log,
                logging.WARNING,
                "$disconnect failed",
                connectionId=conn.info.connection_id,
                error=str(exc),
            )

    async def sweep(self, interval: float) -> None:
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
                    self.close(conn, 1001, "Going away")
