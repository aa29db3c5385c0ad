"""The HTTP API of the local Lambda runtime (aiohttp):

- `POST /2015-03-31/functions/{name}/invocations`: Lambda's Invoke API, `RequestResponse` / `Event` /
  `DryRun`, as boto3's `lambda` client speaks it (`AWS_ENDPOINT_URL_LAMBDA`); a caller's
  `X-Amzn-Trace-Id` is continued;
- `GET /_local/stats`: per-function and per-mapping counters, and the trace sink's;
- `GET /_local/health`: `warm` once the provisioned containers answered;
- `GET /_local/traces[?traceId=...]`: the segment documents the sink kept.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from infra.local.runtime_pool import FunctionPool
from infra.local.xray import XRaySink

if TYPE_CHECKING:
    from infra.local.runtime_config import RuntimeConfig

SYNC_PAYLOAD_LIMIT = 6 * 1024 * 1024
ASYNC_PAYLOAD_LIMIT = 1024 * 1024


class InvokeService(Protocol):
    """What the API needs of the runtime behind it."""

    @property
    def config(self) -> RuntimeConfig: ...

    @property
    def url(self) -> str: ...

    @property
    def xray(self) -> XRaySink: ...

    @property
    def warm(self) -> bool: ...

    def function(self, name_or_arn: str) -> FunctionPool | None: ...

    def invoke_async(
        self, name: str, event: Any, *, request_id: str | None = None, trace_header: str | None = None
    ) -> str: ...

    def stats(self) -> dict[str, Any]: ...


def error_response(status: int, code: str, message: str) -> web.Response:
    """An error of the Lambda API, as botocore parses it (`__type` and `x-amzn-ErrorType`)."""
    body = json.dumps({"Type": "User", "message": message, "__type": code})
    return web.Response(
        status=status, body=body, content_type="application/json", headers={"x-amzn-ErrorType": code}
    )


def build_app(service: InvokeService) -> web.Application:
    api = _Api(service)
    app = web.Application(client_max_size=SYNC_PAYLOAD_LIMIT + 1024)
    app.router.add_post("/2015-03-31/functions/{name}/invocations", api.invoke)
    app.router.add_get("/_local/stats", api.stats)
    app.router.add_get("/_local/health", api.health)
    app.router.add_get("/_local/traces", api.traces)
    return app


class _Api:
    def __init__(self, service: InvokeService) -> None:
        self.service = service

    async def invoke(self, request: web.Request) -> web.StreamResponse:
        service = self.service
        name = request.match_info["name"]
        pool = service.function(name)
        if pool is None:
            cfg = service.config
            arn = f"arn:aws:lambda:{cfg.region}:{cfg.account_id}:function:{name}"
            return error_response(404, "ResourceNotFoundException", f"Function not found: {arn}")
        body = await request.read()
        kind = request.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        limit = ASYNC_PAYLOAD_LIMIT if kind == "Event" else SYNC_PAYLOAD_LIMIT
        if len(body) > limit:
            return error_response(
                413,
                "RequestTooLargeException",
                f"Request must be smaller than {limit} bytes for the {kind} type",
            )
        try:
            event = json.loads(body) if body.strip() else {}
        except ValueError as exc:
            return error_response(
                400, "InvalidRequestContentException", f"Could not parse request body: {exc}"
            )
        request_id = str(uuid.uuid4())
        headers = {"x-amzn-RequestId": request_id, "X-Amz-Executed-Version": "$LATEST"}
        if kind == "DryRun":
            return web.Response(status=204, headers=headers)
        upstream = request.headers.get("X-Amzn-Trace-Id")
        if kind == "Event":
            service.invoke_async(pool.fn.name, event, request_id=request_id, trace_header=upstream)
            return web.Response(status=202, headers=headers)
        if kind != "RequestResponse":
            return error_response(400, "InvalidParameterValueException", f"Unknown invocation type {kind}")
        try:
            result = await pool.invoke(event, request_id=request_id, trace_header=upstream)
        except RuntimeError:
            return error_response(503, "ServiceException", "the runtime is stopping")
        if not result.ok:
            headers["X-Amz-Function-Error"] = "Unhandled"
        return web.Response(status=200, body=result.payload, content_type="application/json", headers=headers)

    async def stats(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.service.stats())

    async def traces(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"documents": self.service.xray.docs(request.query.get("traceId") or None)})

    async def health(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"ok": True, "url": self.service.url, "warm": self.service.warm})
