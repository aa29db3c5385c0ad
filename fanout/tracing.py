"""Spans of the asynchronous stages, recorded as plain data while the event loop runs.

The X-Ray SDK keeps one stack of open subsegments per thread. Tasks running concurrently on one event
loop share that thread, so subsegments opened and closed by them (the SDK's aiobotocore patch does this
for every call) end out of order and the SDK raises. Here each task records its own spans instead: the
current span lives in a ContextVar, which asyncio copies into every task it creates, so concurrent tasks
never see each other's spans. The handler, once the loop has returned, turns the finished spans into
subsegments (handlers/_observability.py). Nothing here imports the X-Ray SDK.

`span(name, **annotations)` costs one ContextVar read when no collector is active (unsampled
invocations, tests of the stages alone).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any

Annotation = str | int | float | bool

# A broadcast's invocation records a few spans per record; past this, spans are counted, not kept, so
# that a huge batch cannot grow the trace (or the invocation's memory) without bound.
DEFAULT_SPAN_LIMIT = 1000


@dataclass
class Span:
    """One timed piece of work. Times are epoch seconds (time.time()), as X-Ray wants them."""

    name: str
    start: float
    end: float | None = None
    annotations: dict[str, Annotation] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None
    namespace: str = "local"  # "aws" for a call to an AWS service
    aws: dict[str, Any] = field(default_factory=dict)  # operation, region, request_id of an AWS call
    status: int | None = None  # the HTTP status of an AWS call
    parent: Span | None = None

    def annotate(self, **values: Annotation | None) -> None:
        self.annotations.update({k: v for k, v in values.items() if v is not None})

    def finish(self, end: float | None = None, error: BaseException | None = None) -> None:
        self.end = time.time() if end is None else end
        if error is not None:
            self.error = error


class Collector:
    """The finished spans of one invocation, in the order they ended (children before parents)."""

    def __init__(self, limit: int = DEFAULT_SPAN_LIMIT) -> None:
        self.limit = limit
        self.spans: list[Span] = []
        self.dropped = 0

    def add(self, s: Span) -> None:
        if len(self.spans) < self.limit:
            self.spans.append(s)
        else:
            self.dropped += 1


_collector: ContextVar[Collector | None] = ContextVar("fanout_span_collector", default=None)
_current: ContextVar[Span | None] = ContextVar("fanout_current_span", default=None)


def activate(collector: Collector) -> Token[Collector | None]:
    """Collect the spans of the code run from here (and of the tasks it creates) into `collector`."""
    return _collector.set(collector)


def deactivate(token: Token[Collector | None]) -> None:
    _collector.reset(token)


@contextmanager
def span(name: str, **annotations: Annotation | None) -> Iterator[Span]:
    """Time the enclosed block (which may await) as a child of the current task's span."""
    collector = _collector.get()
    s = Span(name=name, start=time.time(), parent=_current.get())
    s.annotate(**annotations)
    if collector is None:
        yield s
        return
    token = _current.set(s)
    try:
        yield s
    except BaseException as exc:
        s.finish(error=exc)
        raise
    else:
        s.finish()
    finally:
        _current.reset(token)
        collector.add(s)


_CONTEXT_KEY = "fanout_span"


def _before_call(model: Any, context: dict[str, Any], **_: Any) -> None:
    if _collector.get() is None:
        return  # must return None: botocore takes any other value as the call's response
    context[_CONTEXT_KEY] = Span(
        name=model.service_model.endpoint_prefix,
        start=time.time(),
        namespace="aws",
        aws={"operation": model.name, "region": context.get("client_region")},
        parent=_current.get(),
    )


def _after_call(context: dict[str, Any], parsed: dict[str, Any], **_: Any) -> None:
    s: Span | None = context.pop(_CONTEXT_KEY, None)
    if s is None:
        return
    meta = parsed.get("ResponseMetadata") or {}
    s.aws.update(request_id=meta.get("RequestId"), retries=meta.get("RetryAttempts", 0))
    s.status = meta.get("HTTPStatusCode")
    _end_call(s)


def _after_call_error(context: dict[str, Any], exception: BaseException, **_: Any) -> None:
    s: Span | None = context.pop(_CONTEXT_KEY, None)
    if s is not None:
        s.error = exception
        _end_call(s)


def _end_call(s: Span) -> None:
    s.finish()
    collector = _collector.get()
    if collector is not None:
        collector.add(s)


def instrument(client: Any) -> None:
    """Record a span for every call of a botocore or aiobotocore client while a collector is active.

    botocore's own event hooks (before-call, after-call, after-call-error) carry one request context
    per call, so concurrent calls on one loop never share state; the span's parent is the calling
    task's current span. This stands in for the X-Ray SDK's aiobotocore patch, which keeps its open
    subsegments on the thread's stack.
    """
    events = client.meta.events
    events.register("before-call", _before_call, unique_id="fanout-tracing-before-call")
    events.register("after-call", _after_call, unique_id="fanout-tracing-after-call")
    events.register("after-call-error", _after_call_error, unique_id="fanout-tracing-after-call-error")
