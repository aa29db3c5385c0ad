"""Active X-Ray tracing, as the functions deploy with it: what a sampled invocation sends to the daemon.

The functions run with `Tracing.ACTIVE`: Lambda sets `_X_AMZN_TRACE_ID` for each invocation
(Root=...;Parent=<the function's segment>;Sampled=1|0) and the SDK sends subsegments over UDP to
`AWS_XRAY_DAEMON_ADDRESS`
(https://docs.aws.amazon.com/lambda/latest/dg/services-xray.html,
https://docs.aws.amazon.com/xray/latest/devguide/xray-api-sendingdata.html). A local UDP sink stands in
for the daemon. The X-Ray SDK keeps one subsegment stack per thread, so concurrent aioboto3 calls on one
event loop must not each open a subsegment on it (they end out of order: AlreadyEndedException); the
asynchronous stages' work must still arrive as subsegments with their own times and annotations.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from infra.local.xray import XRaySink, new_trace_header, trace_root, walk
from tests.events import LambdaContextStub, sqs_event
from tests.integration.pipeline_harness import Pipeline, pipeline

PARTITIONS = 100


@pytest.fixture
def pipe(dynamodb_local: str, local_sqs: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pipeline]:
    with pipeline(dynamodb_local, local_sqs, monkeypatch, partition_count=PARTITIONS, shard_count=4) as p:
        yield p


class Invocations:
    """Runs handlers as Lambda does with active tracing: a fresh trace header per invocation."""

    def __init__(self, sink: XRaySink, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sink = sink
        self.monkeypatch = monkeypatch

    def run(
        self, handler: Callable[..., Any], event: Any, name: str, *, sampled: bool = True
    ) -> tuple[Any, str]:
        header = new_trace_header(sampled=sampled)
        self.monkeypatch.setenv("_X_AMZN_TRACE_ID", header)
        return handler(event, LambdaContextStub(name)), str(trace_root(header))

    def trace(self, root: str) -> dict[str, dict[str, Any]]:
        """Every entity of one trace by id, once the handler's subsegment (sent last) has arrived."""
        docs = self.sink.wait_for(
            lambda ds: any(e.get("name") == "## handler" for d in ds for e in walk(d)), trace_id=root
        )
        return {e["id"]: e for d in docs for e in walk(d)}


@pytest.fixture
def invocations(xray_sink: XRaySink, monkeypatch: pytest.MonkeyPatch) -> Invocations:
    return Invocations(xray_sink, monkeypatch)


def children(entities: dict[str, dict[str, Any]], parent: dict[str, Any], name: str | None = None) -> list:
    return [
        e
        for e in entities.values()
        if e.get("parent_id") == parent["id"] and (name is None or e["name"] == name)
    ]


def check_well_formed(entities: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Closed, sane times, every child within its parent, no fault; returns the handler's subsegment."""
    (handler,) = [e for e in entities.values() if e["name"] == "## handler"]
    assert not handler.get("fault") and "cause" not in handler, handler.get("cause")
    for e in entities.values():
        assert not e.get("in_progress"), e
        assert e["end_time"] >= e["start_time"], e
        parent = entities.get(e.get("parent_id", ""))
        if parent is not None:
            within = parent["start_time"] <= e["start_time"] and e["end_time"] <= parent["end_time"]
            assert within, (e, parent)
    return handler


def receive(pipe: Pipeline, url: str, count: int) -> list[dict[str, Any]]:
    """`count` messages of one queue, as one SQS event of that queue."""
    msgs: list[dict[str, Any]] = []
    while len(msgs) < count:
        got = pipe.sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=count - len(msgs), AttributeNames=["All"], WaitTimeSeconds=1
        ).get("Messages", [])
        assert got, f"{url} holds fewer than {count} messages"
        msgs.extend(got)
    return msgs


def queue_arn(pipe: Pipeline, url: str) -> str:
    attributes = pipe.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
    return str(attributes["QueueArn"])


def test_sampled_swarm_query_and_post_invocations_succeed_and_send_their_spans(
    pipe: Pipeline, invocations: Invocations
) -> None:
    import handlers.post
    import handlers.query
    import handlers.swarm

    # Given one connection in each of 100 partitions, and a broadcast accepted by the operator API
    per_partition = {p: [f"c{p:03d}="] for p in range(PARTITIONS)}
    pipe.seed_connections(per_partition)
    pipe.connections.live.update(c for ids in per_partition.values() for c in ids)
    status, body, _ = pipe.api("POST", "/broadcasts", body={"message": {"hello": "traced"}})
    assert status == 202, body
    broadcast_id = body["broadcastId"]
    ((_, _, swarm_event),) = pipe.lambdas.invocations
    pipe.lambdas.invocations.clear()

    # When a sampled swarm invocation queues the 100 partition tasks
    out, root = invocations.run(handlers.swarm.handler, swarm_event, "fanout-swarm")

    # Then it succeeds, and its trace holds a swarm span with the counts, over the SQS calls it made
    assert out["tasksSent"] == PARTITIONS
    entities = invocations.trace(root)
    handler = check_well_formed(entities)
    assert handler["annotations"]["Service"] == "fanout"
    (swarm,) = children(entities, handler, "swarm")
    assert swarm["annotations"] == {
        "broadcastId": broadcast_id,
        "partitions": PARTITIONS,
        "tasksSent": PARTITIONS,
    }
    sends = [e for e in children(entities, swarm, "sqs") if e["aws"]["operation"] == "SendMessageBatch"]
    assert len(sends) >= PARTITIONS // 10
    assert all(e["namespace"] == "aws" and e["http"]["response"]["status"] == 200 for e in sends)
    assert {e["aws"]["operation"] for e in children(entities, swarm, "dynamodb")} >= {"GetItem", "Scan"}

    # When a sampled query invocation handles a batch of 10 partition tasks of one queue
    url = pipe.settings.partition_queue_urls[0]
    msgs = receive(pipe, url, 10)
    out, root = invocations.run(handlers.query.handler, sqs_event(msgs, queue_arn(pipe, url)), "fanout-query")

    # Then every record succeeds, each with its own span, annotated, over its own calls
    assert out["batchItemFailures"] == []
    entities = invocations.trace(root)
    handler = check_well_formed(entities)
    tasks = children(entities, handler, "query.partition")
    assert sorted(t["annotations"]["partitionId"] for t in tasks) == sorted(
        int(json.loads(m["Body"])["partitionId"]) for m in msgs
    )
    for t in tasks:
        assert t["annotations"]["broadcastId"] == broadcast_id
        a = t["annotations"]
        assert (a["targeted"], a["batches"], a["replayed"]) == (1, 1, False)
        calls = {e["aws"]["operation"] for e in children(entities, t)}
        assert calls >= {"GetItem", "Query", "PutItem", "UpdateItem", "SendMessageBatch"}

    # When the other partition tasks are queried too, and a sampled post invocation handles 10 post batches
    pipe._drain_once(pipe.settings.partition_queue_urls, handlers.query.handler, "fanout-query")
    pipe._drain_once(pipe.settings.partition_queue_urls, handlers.query.handler, "fanout-query")
    pipe._drain_once(pipe.settings.partition_queue_urls, handlers.query.handler, "fanout-query")
    url = pipe.settings.post_queue_urls[0]
    msgs = receive(pipe, url, 10)
    out, root = invocations.run(handlers.post.handler, sqs_event(msgs, queue_arn(pipe, url)), "fanout-post")

    # Then every batch is delivered, each with a span carrying its ids and counts
    assert out["batchItemFailures"] == []
    entities = invocations.trace(root)
    handler = check_well_formed(entities)
    batches = children(entities, handler, "post.batch")
    assert len(batches) == 10
    for b in batches:
        a = b["annotations"]
        assert a["broadcastId"] == broadcast_id and a["batchId"] and isinstance(a["partitionId"], int)
        counts = (a["connections"], a["delivered"], a["gone"], a["failed"], a["duplicate"])
        assert counts == (1, 1, 0, 0, False)
        # the shard read, the counting update and the completion check's read of the shards
        calls = {e["aws"]["operation"] for e in children(entities, b)}
        assert calls >= {"GetItem", "UpdateItem", "BatchGetItem"}


def test_unsampled_invocations_succeed_and_send_nothing(pipe: Pipeline, invocations: Invocations) -> None:
    import handlers.query
    import handlers.swarm

    # Given a broadcast to 100 partitions
    pipe.seed_connections({p: [f"u{p:03d}="] for p in range(PARTITIONS)})
    status, body, _ = pipe.api("POST", "/broadcasts", body={"message": "quiet"})
    assert status == 202, body
    ((_, _, swarm_event),) = pipe.lambdas.invocations

    # When the swarm and a 10-record query batch run unsampled (Sampled=0)
    out, swarm_root = invocations.run(handlers.swarm.handler, swarm_event, "fanout-swarm", sampled=False)
    assert out["tasksSent"] == PARTITIONS
    url = pipe.settings.partition_queue_urls[1]
    event = sqs_event(receive(pipe, url, 10), queue_arn(pipe, url))
    out, query_root = invocations.run(handlers.query.handler, event, "fanout-query", sampled=False)
    assert out["batchItemFailures"] == []

    # Then, once a later sampled invocation's trace has arrived, nothing of theirs has
    _, marker = invocations.run(handlers.swarm.handler, swarm_event, "fanout-swarm")
    invocations.trace(marker)
    assert invocations.sink.docs(swarm_root) == [] and invocations.sink.docs(query_root) == []
