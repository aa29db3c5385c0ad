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
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import aioboto3
from botocore.config import Config

from fanout.delivery import RateLimiter
from fanout.postclient import ConnectionsClient, new_session
from fanout.settings import PipelinePart
from fanout.stages import MetricsSink, StageDeps, stage_deps
from fanout.tracing import instrument

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb.client import DynamoDBClient
    from types_aiobotocore_sqs.client import SQSClient

T = TypeVar("T")


@dataclass(frozen=True, init=False)
class Container:
    """The loop, the clients and the stages' deps of one container (frozen once built)."""

    settings: PipelinePart
    loop: asyncio.AbstractEventLoop
    deps: StageDeps
    _stack: AsyncExitStack

    def __init__(
        self, settings: PipelinePart, *, metrics: MetricsSink | None = None, poster: bool = False
    ) -> None:
        loop = thread_loop(use_uvloop=settings.uvloop)
        stack = AsyncExitStack()
        deps = loop.run_until_complete(_open(stack, settings, metrics, poster))
        object.__setattr__(self, "settings", settings)
        object.__setattr__(self, "loop", loop)
        object.__setattr__(self, "deps", deps)
        object.__setattr__(self, "_stack", stack)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        """Close the clients; the loop belongs to the thread and stays open."""
        self.loop.run_until_complete(self._stack.aclose())


async def _open(
    stack: AsyncExitStack, s: PipelinePart, metrics: MetricsSink | None, poster: bool
) -> StageDeps:
    config = Config(
        max_pool_connections=max(16, s.swarm_send_concurrency, s.post_concurrency // 4),
        retries={"mode": "standard", "max_attempts": 5},
    )
    session = aioboto3.Session()
    dynamodb: DynamoDBClient = await stack.enter_async_context(session.client("dynamodb", config=config))
    sqs: SQSClient = await stack.enter_async_context(session.client("sqs", config=config))
    for client in (dynamodb, sqs):
        instrument(client)  # a span per call, for the trace of a sampled invocation
    if not poster:
        return stage_deps(s, dynamodb, sqs, metrics=metrics)
    http = await stack.enter_async_context(new_session(s.post_concurrency))
    poster_client = ConnectionsClient(
        http, s.connections_endpoint, region=s.region, timeout=s.post_timeout_seconds
    )
    limiter = RateLimiter(s.post_rate_per_worker) if s.post_rate_per_worker > 0 else None
    return stage_deps(s, dynamodb, sqs, poster=poster_client, metrics=metrics, limiter=limiter)


def new_loop(use_uvloop: bool) -> asyncio.AbstractEventLoop:
    """A new event loop: uvloop's if asked for and importable, else asyncio's."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            # uvloop rather than asyncio's loop: less CPU per delivered frame, measured side by side by
            # loadtest/bench_post.py (FANOUT_UVLOOP=false for asyncio's; docs/benchmarks.md).
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
