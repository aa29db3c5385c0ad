"""Test doubles for AWS endpoints that no emulator here offers with the behaviour a test needs:
an `@connections` API that answers 410/429/500 on cue, and a Lambda Invoke API that records calls."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter, defaultdict
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from infra.local.procs import free_port


class _ThreadedApp:
    def __init__(self) -> None:
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        raise NotImplementedError

    def start(self) -> _ThreadedApp:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


class FakeConnectionsApi(_ThreadedApp):
    """`POST /{stage}/@connections/{id}`: 410 for unknown ids; scripted 429/500 answers before success."""

    def __init__(self, stage: str = "test") -> None:
        super().__init__()
        self.stage = stage
        self.live: set[str] = set()
        self.script: dict[str, list[int]] = defaultdict(list)  # id -> statuses to answer before 200
        self.frames: dict[str, list[bytes]] = defaultdict(list)
        self.answers: Counter[int] = Counter()
        self.signed = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.stage}"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(f"/{self.stage}/@connections/{{id}}", self._post)
        return app

    async def _post(self, request: web.Request) -> web.Response:
        conn = unquote(request.match_info["id"])
        if request.headers.get("Authorization", "").startswith("AWS4-HMAC-SHA256 Credential="):
            self.signed += 1
        body = await request.read()
        if conn not in self.live:
            self.answers[410] += 1
            return web.json_response(
                {"message": "Gone"}, status=410, headers={"x-amzn-ErrorType": "GoneException"}
            )
        if self.script[conn]:
            status = self.script[conn].pop(0)
            self.answers[status] += 1
            kind = "LimitExceededException" if status == 429 else "InternalServerErrorException"
            return web.json_response({"message": kind}, status=status, headers={"x-amzn-ErrorType": kind})
        self.answers[200] += 1
        self.frames[conn].append(body)
        return web.Response(status=200)


class FakeLambdaApi(_ThreadedApp):
    """`POST /2015-03-31/functions/{name}/invocations`: records each invocation's payload."""

    def __init__(self) -> None:
        super().__init__()
        self.invocations: list[tuple[str, str, Any]] = []

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/2015-03-31/functions/{name}/invocations", self._invoke)
        return app

    async def _invoke(self, request: web.Request) -> web.Response:
        kind = request.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        self.invocations.append(
            (request.match_info["name"], kind, json.loads(await request.read() or b"null"))
        )
        return web.Response(status=202 if kind == "Event" else 200, body=b"")
