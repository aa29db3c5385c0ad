"""Dead letters are recoverable: `fanout dlq list` / `fanout dlq redrive`.

Through the pipeline harness (the real handlers, DynamoDB Local, the project's SQS server, a fake
`@connections` API): ids that keep answering 500 past the last attempt are dead-lettered and counted failed;
once the API is healthy, a redrive moves them back to the post queues and the broadcast's failed count goes
to 0, while no connection that was already served gets a second frame.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fanout.tools import dlq
from tests.integration.pipeline_harness import Pipeline, pipeline

MAX_ATTEMPTS = 2


@pytest.fixture
def pipe(dynamodb_local: str, local_sqs: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pipeline]:
    with pipeline(
        dynamodb_local,
        local_sqs,
        monkeypatch,
        partition_count=4,
        shard_count=2,
        post_batch_size=10,
        max_post_attempts=MAX_ATTEMPTS,
        post_in_call_retries=0,
    ) as p:
        yield p


def ids_for(partitions: int, per_partition: int) -> dict[int, list[str]]:
    return {p: [f"d{p}x{i:02d}=" for i in range(per_partition)] for p in range(partitions)}


def dead_letter_queues(pipe: Pipeline) -> list[dlq.DeadLetterQueue]:
    partition_dlqs = [u + "-dlq" for u in pipe.settings.partition_queue_urls]
    sources = [*pipe.settings.partition_queue_urls, *pipe.settings.post_queue_urls]
    return dlq.pair_queues([*partition_dlqs, *pipe.dead_letter_urls], sources)


def write_local_state(pipe: Pipeline, tmp_path: Path, sqs_endpoint: str) -> Path:
    """A `.fanout/local.json` as `fanout local up` writes it, pointing at the harness's queues."""
    state = {
        "sqsUrl": sqs_endpoint,
        "partitionQueueUrls": pipe.settings.partition_queue_urls,
        "postQueueUrls": pipe.settings.post_queue_urls,
        "deadLetterQueueUrls": [u + "-dlq" for u in pipe.settings.partition_queue_urls]
        + pipe.dead_letter_urls,
    }
    path = tmp_path / "local.json"
    path.write_text(json.dumps(state))
    return path


def run_cli(argv: list[str]) -> int:
    root = argparse.ArgumentParser(prog="fanout")
    dlq.add_parser(root.add_subparsers(dest="command", required=True))
    args = root.parse_args(argv)
    return int(args.func(args))


def view_of(pipe: Pipeline, broadcast_id: str) -> dict[str, Any]:
    status, view, _ = pipe.api("GET", f"/broadcasts/{broadcast_id}")
    assert status == 200
    return view


def frames_per_connection(pipe: Pipeline) -> dict[str, int]:
    return {c: len(f) for c, f in pipe.connections.frames.items()}


def test_pairing_and_kinds_follow_the_queue_names() -> None:
    base = "http://127.0.0.1:1/000000000000/"
    queues = dlq.pair_queues(
        [
            base + "fanout-post-1-dlq",
            base + "fanout-partition-0-dlq",
            base + "fanout-partition-counter-failures",
        ],
        [base + "fanout-post-1", base + "fanout-partition-0"],
    )
    assert [(q.name, q.kind, q.source_url and dlq.queue_name(q.source_url)) for q in queues] == [
        ("fanout-post-1-dlq", "post", "fanout-post-1"),
        ("fanout-partition-0-dlq", "partition", "fanout-partition-0"),
        ("fanout-partition-counter-failures", "other", None),
    ]
    assert [q.name for q in dlq.select(queues, ["post"])] == ["fanout-post-1-dlq"]
    assert [q.name for q in dlq.select(queues, ["fanout-partition-0"])] == ["fanout-partition-0-dlq"]
    with pytest.raises(dlq.DeadLetterError, match="no dead-letter queue matches"):
        dlq.select(queues, ["nope"])
    with pytest.raises(dlq.DeadLetterError, match=r"source queue .* is unknown"):
        dlq.redrive(object(), queues[2])


def test_dead_lettered_posts_are_listed_and_a_redrive_delivers_them_once(
    pipe: Pipeline, tmp_path: Path, local_sqs: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given 40 connections, of which 6 answer 500 beyond the last attempt
    per_partition = ids_for(4, 10)
    everyone = [c for ids in per_partition.values() for c in ids]
    pipe.seed_connections(per_partition)
    pipe.connections.live.update(everyone)
    stuck = everyone[::7]
    for c in stuck:
        pipe.connections.script[c] = [500] * 1000
    view = pipe.broadcast({"deploy": 42})
    assert (view["status"], view["delivered"], view["failed"]) == ("completed", 40 - len(stuck), len(stuck))
    served_before = frames_per_connection(pipe)
    assert set(served_before) == set(everyone) - set(stuck)

    # When `fanout dlq list` looks at the local stack's queues
    state = write_local_state(pipe, tmp_path, local_sqs)
    capsys.readouterr()  # (the handlers print their metrics to stdout)
    assert run_cli(["dlq", "list", "--local", str(state), "--peek", "10", "--json"]) == 0
    reports = json.loads(capsys.readouterr().out)
    post_reports = [r for r in reports if r["kind"] == "post"]
    assert {r["kind"] for r in reports} == {"post", "partition"}
    assert sum(r["visible"] for r in post_reports) >= 1
    sampled = [s for r in post_reports for s in r["sample"]]
    assert sampled and all(s["broadcastId"] == view["broadcastId"] and s["deadLettered"] for s in sampled)
    assert sum(s["connections"] for s in sampled) == len(stuck)
    assert all(s["attempt"] == MAX_ATTEMPTS + 1 for s in sampled)
    # (peeking left the messages where they were)
    assert sum(dlq.inspect(pipe.sqs, q).visible for q in dead_letter_queues(pipe)) == len(sampled)

    # And the API is healthy again, and `fanout dlq redrive --queue post` runs, then the pipeline drains
    pipe.connections.script.clear()
    capsys.readouterr()
    assert run_cli(["dlq", "redrive", "--local", str(state), "--queue", "post"]) == 0
    moved = json.loads(capsys.readouterr().out)
    assert sum(r["moved"] for r in moved) == len(sampled)
    assert all(r["broadcasts"] == {view["broadcastId"]: r["moved"]} for r in moved if r["moved"])
    pipe.drain()

    # Then the failed count went to 0 and delivered up, and every connection got exactly one frame
    after = view_of(pipe, view["broadcastId"])
    assert (after["targeted"], after["delivered"], after["gone"], after["failed"]) == (40, 40, 0, 0)
    assert frames_per_connection(pipe) == dict.fromkeys(everyone, 1)
    # and the dead-letter queues are empty
    assert all(
        r.visible + r.in_flight == 0
        for r in map(lambda q: dlq.inspect(pipe.sqs, q), dead_letter_queues(pipe))
    )


def test_a_redriven_batch_whose_connection_is_now_gone_counts_it_gone_and_prunes_it(pipe: Pipeline) -> None:
    per_partition = ids_for(1, 5)
    everyone = per_partition[0]
    pipe.seed_connections(per_partition)
    pipe.connections.live.update(everyone)
    pipe.connections.script[everyone[0]] = [500] * 1000
    pipe.connections.script[everyone[1]] = [500] * 1000
    view = pipe.broadcast("gone later")
    assert (view["delivered"], view["failed"]) == (3, 2)

    # one of the two left meanwhile (410), the other is reachable again
    pipe.connections.script.clear()
    pipe.connections.live.discard(everyone[0])
    results = [dlq.redrive(pipe.sqs, q) for q in dead_letter_queues(pipe) if q.kind == "post"]
    assert sum(r.moved for r in results) == 1
    pipe.drain()

    after = view_of(pipe, view["broadcastId"])
    assert (after["targeted"], after["delivered"], after["gone"], after["failed"]) == (5, 4, 1, 0)
    assert everyone[0] not in pipe.connection_rows()
    assert frames_per_connection(pipe) == dict.fromkeys(everyone[1:], 1)


def test_a_redriven_id_that_now_fails_permanently_is_not_counted_failed_twice(pipe: Pipeline) -> None:
    per_partition = ids_for(1, 4)
    everyone = per_partition[0]
    pipe.seed_connections(per_partition)
    pipe.connections.live.update(everyone)
    pipe.connections.script[everyone[0]] = [500] * 1000
    pipe.connections.script[everyone[1]] = [500] * 1000
    view = pipe.broadcast("forbidden later")
    assert (view["delivered"], view["failed"]) == (2, 2)

    # on redrive one is delivered, the other is refused for good (403: a permanent error)
    pipe.connections.script.clear()
    pipe.connections.script[everyone[0]] = [403] * 1000
    for q in dead_letter_queues(pipe):
        if q.kind == "post":
            dlq.redrive(pipe.sqs, q)
    pipe.drain()

    after = view_of(pipe, view["broadcastId"])
    assert (after["targeted"], after["delivered"], after["gone"], after["failed"]) == (4, 3, 0, 1)


class DeleteFailsOnce:
    """An SQS client whose first DeleteMessageBatch raises: a redrive interrupted after its send."""

    def __init__(self, sqs: Any) -> None:
        self._sqs = sqs
        self.failed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sqs, name)

    def delete_message_batch(self, **kwargs: Any) -> Any:
        if not self.failed:
            self.failed = True
            raise KeyboardInterrupt("interrupted between send and delete")
        return self._sqs.delete_message_batch(**kwargs)


def test_an_interrupted_redrive_loses_nothing_and_a_second_one_does_not_deliver_twice(
    pipe: Pipeline,
) -> None:
    per_partition = ids_for(2, 6)
    everyone = [c for ids in per_partition.values() for c in ids]
    pipe.seed_connections(per_partition)
    pipe.connections.live.update(everyone)
    stuck = [per_partition[0][0], per_partition[1][0]]
    for c in stuck:
        pipe.connections.script[c] = [500] * 1000
    view = pipe.broadcast("interrupted")
    assert view["failed"] == 2
    pipe.connections.script.clear()
    post_dlqs = [q for q in dead_letter_queues(pipe) if q.kind == "post"]
    loaded = [q for q in post_dlqs if dlq.inspect(pipe.sqs, q).visible]

    # When the first redrive is interrupted after sending and before deleting
    flaky = DeleteFailsOnce(pipe.sqs)
    with pytest.raises(KeyboardInterrupt):
        dlq.redrive(flaky, loaded[0], visibility_timeout=1)
    # Then the message is both back in its source queue and (once visible again) still dead-lettered
    pipe.drain()
    for q in post_dlqs:  # a complete second redrive, after the first one's visibility timeout
        dlq.redrive(pipe.sqs, q, wait_seconds=2, empty_receives=1)
    pipe.drain()

    after = view_of(pipe, view["broadcastId"])
    assert (after["targeted"], after["delivered"], after["failed"]) == (12, 12, 0)
    assert frames_per_connection(pipe) == dict.fromkeys(everyone, 1)


def test_a_dead_lettered_partition_task_is_redriven_and_the_broadcast_completes(pipe: Pipeline) -> None:
    # Given a broadcast whose partition tasks the query stage never managed to run (dead-lettered by SQS
    # after maxReceiveCount failed receives; moved here by hand, as SQS would)
    per_partition = ids_for(3, 4)
    everyone = [c for ids in per_partition.values() for c in ids]
    pipe.seed_connections(per_partition)
    pipe.connections.live.update(everyone)
    status, body, _ = pipe.api("POST", "/broadcasts", body={"message": "late"})
    assert status == 202
    pipe.run_swarms()
    moved = 0
    for url in pipe.settings.partition_queue_urls:
        while msgs := pipe.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
            for m in msgs:
                pipe.sqs.send_message(QueueUrl=url + "-dlq", MessageBody=m["Body"])
                pipe.sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
                moved += 1
    assert moved == 3
    pipe.drain()
    assert view_of(pipe, body["broadcastId"])["status"] == "running"

    # When the partition dead-letter queues are redriven
    results = [dlq.redrive(pipe.sqs, q) for q in dead_letter_queues(pipe) if q.kind == "partition"]
    assert sum(r.moved for r in results) == 3
    pipe.drain()

    # Then the broadcast completes with exact counts, each connection served once
    after = view_of(pipe, body["broadcastId"])
    assert (after["status"], after["targeted"], after["delivered"], after["failed"]) == (
        "completed",
        12,
        12,
        0,
    )
    assert frames_per_connection(pipe) == dict.fromkeys(everyone, 1)


def test_redrive_stops_at_max(pipe: Pipeline) -> None:
    url = pipe.dead_letter_urls[0]
    for i in range(7):
        pipe.sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"n": i}))
    [queue] = [q for q in dead_letter_queues(pipe) if q.url == url]
    result = dlq.redrive(pipe.sqs, queue, max_messages=5)
    assert result.moved == 5
    assert dlq.inspect(pipe.sqs, queue).visible == 2
    assert queue.source_url is not None
    source = pipe.sqs.get_queue_attributes(
        QueueUrl=queue.source_url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    assert int(source["ApproximateNumberOfMessages"]) == 5
