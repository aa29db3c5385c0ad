"""Per-container state of the asynchronous functions: one event loop and its long-lived clients.

A Lambda container serves one invocation at a time and is frozen between them; the loop, the aioboto3
clients and the aiohttp session live across invocations (created at cold start), which is what makes
the post stage cheap. Powertools' AsyncBatchProcessor runs on this loop (it uses the thread's loop).
"""

from __future__ import annotations

import asyncio
import contextlib
from contextlib import AsyncExitStack
from typing import Any

import aioboto3
from botocore.config import Config

from fanout.delivery import RateLimiter
from fanout.postclient import ConnectionsClient, new_session
from fanout.settings import Settings
from fanout.stages import MetricsSink, NullMetrics, StageDeps


class Container:
    def __init__(
        self, settings: Settings, *, metrics: MetricsSink | None = None, poster: bool = False
    ) -> None:
        self.settings = settings
        self.loop = thread_loop()
        self._stack = AsyncExitStack()
        self.deps: StageDeps = self.loop.run_until_complete(self._open(metrics or NullMetrics(), poster))

    async def _open(self, metrics: MetricsSink, poster: bool) -> StageDeps:
        s = self.settings
        config = Config(
            max_pool_connections=max(16, s.swarm_send_concurrency, s.post_concurrency // 4),
            retries={"mode": "standard", "max_attempts": 5},
        )
        session = aioboto3.Session()
        dynamodb = await self._stack.enter_async_context(session.client("dynamodb", config=config))
        sqs = await self._stack.enter_async_context(session.client("sqs", config=config))
        deps = StageDeps(settings=s, dynamodb=dynamodb, sqs=sqs, metrics=metrics)
        if poster:
            s.require("connections_endpoint")
            http = await self._stack.enter_async_context(new_session(s.post_concurrency))
            deps.poster = ConnectionsClient(
                http, s.connections_endpoint, region=s.region, timeout=s.post_timeout_seconds
            )
            if s.post_rate_per_worker > 0:
                deps.limiter = RateLimiter(s.post_rate_per_worker)
        return deps

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        """Close the clients; the loop belongs to the thread and stays open."""
        self.loop.run_until_complete(self._stack.aclose())


def thread_loop() -> asyncio.AbstractEventLoop:
    """This thread's event loop, created once; shared by every container in the process (in Lambda there
    is one function per process, but tests and the local runtime may host several)."""
    with contextlib.suppress(RuntimeError):
        loop = asyncio.get_event_loop_policy().get_event_loop()
        if not loop.is_closed():
            return loop
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop
