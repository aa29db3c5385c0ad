"""Per-container state of the asynchronous functions: one event loop and its long-lived clients.

A Lambda container serves one invocation at a time and is frozen between them; the loop, the aioboto3
clients and the aiohttp session live across invocations (created at cold start), which is what makes
the post stage cheap. Powertools' AsyncBatchProcessor runs on this loop: in Lambda (LAMBDA_TASK_ROOT set)
it takes the thread's current loop with asyncio.get_event_loop(), which thread_loop() sets.

The loop is uvloop's when importable, unless FANOUT_UVLOOP=false (Settings.uvloop).
"""

from __future__ import annotations

import asyncio
import threading
from contextlib import AsyncExitStack
from typing import Any

import aioboto3
from botocore.config import Config

from fanout.delivery import RateLimiter
from fanout.postclient import ConnectionsClient, new_session
from fanout.settings import PipelinePart
from fanout.stages import MetricsSink, NullMetrics, StageDeps
from fanout.tracing import instrument


class Container:
    def __init__(
        self, settings: PipelinePart, *, metrics: MetricsSink | None = None, poster: bool = False
    ) -> None:
        self.settings = settings
        self.loop = thread_loop(use_uvloop=settings.uvloop)
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
        for client in (dynamodb, sqs):
            instrument(client)  # a span per call, for the trace of a sampled invocation
        deps = StageDeps(settings=s, dynamodb=dynamodb, sqs=sqs, metrics=metrics)
        if poster:
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


def new_loop(use_uvloop: bool) -> asyncio.AbstractEventLoop:
    """A new event loop: uvloop's if asked for and importable, else asyncio's."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            # uvloop rather than asyncio's loop: measured side by side (loadtest/bench_post.py workers, 9
            # rounds) 301 -> 276 us CPU per delivered frame; 540k -> 492k instructions (cachegrind).
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


_thread = threading.local()


def thread_loop(*, use_uvloop: bool = False) -> asyncio.AbstractEventLoop:
    """This thread's event loop, created once (by the first container of the thread, whose settings choose
    the loop) and made the thread's current loop, so that Powertools' AsyncBatchProcessor runs on it.

    Shared by every container of the thread: in Lambda there is one function per process, but tests and the
    local runtime may host several.
    """
    loop: asyncio.AbstractEventLoop | None = getattr(_thread, "loop", None)
    if loop is None or loop.is_closed():
        loop = new_loop(use_uvloop)
        _thread.loop = loop
    asyncio.set_event_loop(loop)
    return loop
