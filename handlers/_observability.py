"""Powertools Logger, Metrics (EMF) and Tracer for service "fanout", shared by the handlers.

The metrics namespace comes from POWERTOOLS_METRICS_NAMESPACE. Nothing here reads settings.

Tracing (the functions deploy with active X-Ray tracing): the X-Ray SDK keeps one stack of open
subsegments per thread. The asynchronous functions (swarm, query, post) run many aioboto3 calls at
once on one event loop, one thread; with aiobotocore patched, each call pushes and pops a subsegment on
that shared stack, they end out of order and the SDK raises AlreadyEndedException in every sampled
invocation. So the Tracer patches botocore only (the synchronous boto3 handlers keep their
per-call subsegments; the patch also stamps the trace header on aiobotocore's requests, a read of the
stack, not a change), never aiobotocore; the asynchronous work is recorded as plain spans
(fanout/tracing.py) and turned into subsegments here, from the handler's thread once the loop has
returned: `traced_spans()`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer

from fanout import tracing

SERVICE = "fanout"

# Every handler shares this one Tracer: Powertools patches at construction, and a Tracer built
# elsewhere without patch_modules would patch every supported module, aiobotocore included.
PATCHED_MODULES = ("botocore",)

logger = Logger(service=SERVICE)
metrics = Metrics(service=SERVICE)
tracer = Tracer(service=SERVICE, patch_modules=PATCHED_MODULES)


@contextmanager
def traced_spans() -> Iterator[tracing.Collector | None]:
    """Collect the spans of the asynchronous work run inside (sampled invocations only) and attach
    them as subsegments of the current one (the handler's) when the block ends, even if it raised."""
    recorder: Any = tracer.provider  # the X-Ray SDK's recorder (BaseProvider does not declare is_sampled)
    if tracer.disabled or not recorder.is_sampled():
        yield None
        return
    collector = tracing.Collector()
    token = tracing.activate(collector)
    try:
        yield collector
    finally:
        tracing.deactivate(token)
        attach_spans(collector)


def attach_spans(collector: tracing.Collector) -> int:
    """Turn finished spans into X-Ray subsegments with their own start and end times, under the current
    subsegment; returns how many were attached.

    Each subsegment is closed as soon as its children are and streamed out on its own (the recorder's
    streaming, which Powertools sets to send every closed subsegment), so a large tree never becomes
    one UDP datagram above the daemon's 64 KB limit.
    """
    from aws_xray_sdk.core.models.subsegment import Subsegment

    recorder: Any = tracer.provider
    root = recorder.current_subsegment()
    if root is None or not root.sampled:
        return 0
    segment = root.parent_segment
    children: dict[int, list[tracing.Span]] = {}
    top: list[tracing.Span] = []
    kept = {id(s) for s in collector.spans}
    for s in collector.spans:  # children end before their parents: reverse for start order
        if s.parent is not None and id(s.parent) in kept:
            children.setdefault(id(s.parent), []).append(s)
        else:
            top.append(s)
    attached = 0

    def attach(s: tracing.Span, parent: Any) -> None:
        nonlocal attached
        sub = Subsegment(s.name, s.namespace, segment)
        sub.start_time = s.start
        parent.add_subsegment(sub)
        for key, value in s.annotations.items():
            sub.put_annotation(key, value)
        for key, value in s.metadata.items():
            sub.put_metadata(key, value, SERVICE)
        if s.aws:
            sub.set_aws({k: v for k, v in s.aws.items() if v is not None})
        if s.status is not None:
            sub.put_http_meta("status", s.status)  # also flags 4xx as error, 429 throttle, 5xx fault
        if s.error is not None:
            sub.add_exception(s.error, _stack(s.error, recorder.max_trace_back))
        for child in sorted(children.get(id(s), []), key=lambda c: c.start):
            attach(child, sub)
        sub.close(s.end if s.end is not None else s.start)
        attached += 1
        recorder.stream_subsegments()

    for s in sorted(top, key=lambda t: t.start):
        attach(s, root)
    if collector.dropped:
        root.put_metadata("spansDropped", collector.dropped, SERVICE)
    return attached


def _stack(error: BaseException, limit: int) -> list[Any]:
    import traceback

    return list(traceback.extract_tb(error.__traceback__, limit=limit))
