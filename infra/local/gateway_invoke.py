"""The gateway emulator's Lambda client: synchronous (`RequestResponse`) invocations through the local
runtime's Invoke API, `POST {url}/2015-03-31/functions/{name}/invocations`, as API Gateway invokes its
integrations."""

from __future__ import annotations

import json
from typing import Any

import aiohttp


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
    """Invocations on one kept-alive session (`start()` opens it, `close()` closes it); per function,
    the counts of answers in `stats` (`ok`, `functionError`, `invokeError`)."""

    def __init__(
        self, url: str, *, concurrency: int, timeout: float, stats: dict[str, dict[str, int]]
    ) -> None:
        self._base = url.rstrip("/") + "/2015-03-31/functions/"
        self._concurrency = concurrency
        self._timeout = timeout
        self._stats = stats
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._concurrency),
            timeout=aiohttp.ClientTimeout(total=self._timeout),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def invoke(self, name: str, event: dict[str, Any]) -> Any:
        assert self._session is not None, "call start() first"
        stats = self._stats.setdefault(name, {"ok": 0, "functionError": 0, "invokeError": 0})
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
