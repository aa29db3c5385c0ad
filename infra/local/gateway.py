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

The parts: the WebSocket endpoint and its connection registry (`gateway_ws.py`), the @connections API
(`gateway_connections.py`), the admin endpoints (`gateway_admin.py`), the Lambda client
(`gateway_invoke.py`), the events (`gateway_events.py`); here, the servers, the operator HTTP API and
the CLI.

    python -m infra.local.gateway --config gateway.json [--websocket-port 9010 --http-port 9011 ...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from multidict import CIMultiDict
from pydantic import SecretStr, ValidationError

from infra.local.gateway_admin import ADMIN_MAX_BODY, Admin
from infra.local.gateway_config import GatewayConfig
from infra.local.gateway_connections import ConnectionsApi, FaultInjector
from infra.local.gateway_events import HttpRoute, http_api_event, http_api_response, match_http_route
from infra.local.gateway_invoke import FunctionError, InvokeError, LambdaInvoker
from infra.local.gateway_sim import SimulatedConnections
from infra.local.gateway_state import Connection, Counters, aws_error
from infra.local.gateway_ws import WebSocketEndpoint
from infra.local.logs import json_stderr_handler, log_fields

log = logging.getLogger("fanout.gateway")


class Gateway:
    def __init__(self, config: GatewayConfig) -> None:
        self.cfg = config
        self.counters = Counters()
        self.sim = SimulatedConnections()
        self.faults = FaultInjector(config.faults)
        self.invoker = LambdaInvoker(
            config.lambda_url,
            concurrency=config.invoke_concurrency,
            timeout=config.invoke_timeout_seconds,
            stats=self.counters.invocations,
        )
        self.ws = WebSocketEndpoint(config, self.counters, self.invoker)
        self.connections_api = ConnectionsApi(config, self.counters, self.ws, self.sim, self.faults)
        self.admin = Admin(self.counters, self.ws.connections, self.sim, self.faults)
        token = (
            config.operator_token.get_secret_value() if config.operator_token else secrets.token_urlsafe(24)
        )
        self.operator_token = token
        self._bearer = f"Bearer {token}".encode()
        self._stage_path = f"/{config.stage}"
        self._http_routes = [HttpRoute.parse(r) for r in config.http_routes]
        self._runners: list[web.BaseRunner] = []
        self._sweeper: asyncio.Task[None] | None = None
        self.websocket_port = 0
        self.http_port = 0

    @property
    def connections(self) -> dict[str, Connection]:
        """The live connections by id (the WebSocket endpoint's registry)."""
        return self.ws.connections

    def stats(self) -> dict[str, Any]:
        return self.admin.stats()

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.cfg
        self.invoker.start()

        # Port W is a low-level server with one dispatcher: no router on the @connections hot path,
        # where the Application router's matching would add CPU to every post.
        server = web.Server(self._dispatch, request_factory=self._make_request)
        ws_runner = web.ServerRunner(server, access_log=None, shutdown_timeout=1.0)
        http_app = web.Application(client_max_size=10 * 1024 * 1024)
        http_app.router.add_route("*", "/{tail:.*}", self._operator)
        http_runner = web.AppRunner(http_app, access_log=None, shutdown_timeout=1.0, handle_signals=False)

        try:
            self.websocket_port = await self._serve(ws_runner, cfg.websocket_port)
            self.ws.port = self.websocket_port
            self.http_port = await self._serve(http_runner, cfg.http_port)
        except BaseException:
            await self.stop()
            raise
        interval = max(0.05, min(5.0, min(cfg.idle_timeout_seconds, cfg.max_connection_seconds) / 4))
        self._sweeper = asyncio.create_task(self.ws.sweep(interval))

    async def _serve(self, runner: web.BaseRunner, port: int) -> int:
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, self.cfg.host, port, backlog=1024)
        await site.start()
        return int(runner.addresses[-1][1])

    async def stop(self) -> None:
        """Close every socket (1001 Going away), give their `$disconnect` invocations the shutdown grace,
        then stop the servers and the invoke client."""
        self.ws.stopping = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.ws.close_all(self.cfg.shutdown_grace_seconds)
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        await self.ws.cancel_tasks()
        await self.invoker.close()

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

    @staticmethod
    def _make_request(
        message: Any, payload: Any, protocol: Any, writer: Any, task: asyncio.Task[None]
    ) -> web.BaseRequest:
        # The admin bodies' limit; posts are capped at the frame limit from Content-Length before any read.
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
        if self.connections_api.owns(request.raw_path):
            return await self.connections_api.handle(request)
        path = request.path
        if path.startswith(Admin.PREFIX):
            return await self.admin.handle(request, path[len(Admin.PREFIX) :].strip("/"))
        if path == self._stage_path and request.method == "GET":
            return await self.ws.handle(request)
        # another stage, or a path API Gateway does not serve
        return aws_error(403, "ForbiddenException", "Forbidden")

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
            log_fields(log, logging.WARNING, "operator API failed", routeKey=route_key, error=str(exc))
            return web.json_response({"message": "Internal Server Error"}, status=500)
        try:
            status, headers, payload = http_api_response(result)
        except (TypeError, ValueError) as exc:
            log_fields(
                log, logging.WARNING, "operator API answer invalid", routeKey=route_key, error=str(exc)
            )
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
    log_fields(log, logging.INFO, "gateway ready", **fields)
    try:
        await stop.wait()
    finally:
        log_fields(log, logging.INFO, "gateway stopping", connectionsOpen=len(gateway.connections))
        await gateway.stop()
        log_fields(log, logging.INFO, "gateway stopped")


def main(argv: list[str] | None = None) -> int:
    try:
        config = config_from_args(argv)
    except (ValidationError, OSError, ValueError) as exc:
        print(f"invalid gateway configuration: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, handlers=[json_stderr_handler()], force=True)
    log.setLevel(config.log_level)
    asyncio.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
