"""The broadcast pipeline end to end through its real handlers: operator API → swarm → query → post.

DynamoDB Local holds the tables, SQS is an emulator, and the `@connections` API is a fake that answers
410, 429 and 500 on cue.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.integration.pipeline_harness import Pipeline, pipeline


@pytest.fixture
def pipe(dynamodb_local: str, local_sqs: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pipeline]:
    with pipeline(dynamodb_local, local_sqs, monkeypatch, partition_count=20, shard_count=4) as p:
        yield p


def ids_for(partitions: int, per_partition: int) -> dict[int, list[str]]:
    return {p: [f"c{p:02d}x{i:03d}=" for i in range(per_partition)] for p in range(partitions)}


def test_broadcast_to_2000_connections_delivers_once_prunes_gone_and_retries_throttled(
    pipe: Pipeline,
) -> None:
    # Given 2,000 connections over 20 partitions, of which 50 are gone, 100 throttled twice (retried in
    # the call), 30 throttled five times (re-enqueued), 20 answering 500 once
    per_partition = ids_for(20, 100)
    everyone = [c for ids in per_partition.values() for c in ids]
    gone = set(everyone[::40])
    live = [c for c in everyone if c not in gone]
    pipe.seed_connections(per_partition)
    pipe.connections.live.update(live)
    for c in live[:100]:
        pipe.connections.script[c] = [429, 429]
    for c in live[100:130]:
        pipe.connections.script[c] = [429] * 5
    for c in live[130:150]:
        pipe.connections.script[c] = [500]

    # When an operator broadcasts
    view = pipe.broadcast({"text": "hello", "n": 1})

    # Then every live connection got exactly one frame, the envelope around the message
    assert len(gone) == 50
    assert {c: len(f) for c, f in pipe.connections.frames.items() if len(f) != 1} == {}
    assert set(pipe.connections.frames) == set(live)
    frame = json.loads(pipe.connections.frames[live[0]][0])
    assert frame["type"] == "broadcast"
    assert frame["broadcastId"] == view["broadcastId"]
    assert frame["data"] == {"text": "hello", "n": 1}
    assert frame["sentAt"] == view["createdAt"]
    # every post was SigV4-signed
    assert pipe.connections.signed == sum(pipe.connections.answers.values())
    # and the counts are exact
    assert view["status"] == "completed"
    assert view["partitions"] == 20
    assert view["targeted"] == 2000
    assert view["delivered"] == 1950
    assert view["gone"] == 50
    assert view["failed"] == 0
    assert view["completedAt"] >= view["createdAt"]
    assert pipe.connections.answers[429] == 2 * 100 + 5 * 30
    # and the gone connections were pruned from the table
    assert pipe.connection_rows() == set(live)


def test_ids_still_failing_after_the_last_attempt_are_dead_lettered_and_counted_failed(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    per_partition = ids_for(2, 10)
    everyone = [c for ids in per_partition.values() for c in ids]
    pipe.seed_connections(per_partition)
    pipe.connections.live.update(everyone)
    stuck = everyone[:3]
    for c in stuck:
        pipe.connections.script[c] = [500] * 1000

    view = pipe.broadcast("ping")

    assert view["status"] == "completed"
    assert (view["targeted"], view["delivered"], view["gone"], view["failed"]) == (20, 17, 0, 3)
    dead = []
    for url in pipe.dead_letter_urls:
        for m in pipe.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
            dead.append(json.loads(m["Body"]))
    assert sorted(c for d in dead for c in d["connectionIds"]) == sorted(stuck)
    assert all(d["deadLettered"] and d["attempt"] == pipe.settings.max_post_attempts + 1 for d in dead)
    # and the re-enqueues waited out their DelaySeconds (base 1 s, doubling) before being received
    assert pipe.settings.requeue_base_delay_seconds == 1
    assert pipe.delayed_seen >= 1


def test_a_replayed_post_batch_is_neither_posted_nor_counted_twice(pipe: Pipeline) -> None:
    import handlers.post
    from fanout.models import PostBatch
    from tests.events import LambdaContextStub, sqs_event

    per_partition = ids_for(1, 5)
    pipe.seed_connections(per_partition)
    pipe.connections.live.update(per_partition[0])
    view = pipe.broadcast("once")
    assert view["delivered"] == 5

    # SQS delivers the same post batch again (at-least-once)
    batch = PostBatch(
        broadcast_id=view["broadcastId"],
        partition_id=0,
        batch_id="p0-b0",
        connection_ids=per_partition[0],
        **pipe.shape(view["broadcastId"]),
    )
    message = {"MessageId": "m1", "ReceiptHandle": "r1", "Body": batch.model_dump_json(by_alias=True)}
    out = handlers.post.handler(sqs_event([message], "arn:aws:sqs:us-east-1:0:q"), LambdaContextStub())

    assert out["batchItemFailures"] == []
    assert all(len(f) == 1 for f in pipe.connections.frames.values())
    _, again, _ = pipe.api("GET", f"/broadcasts/{view['broadcastId']}")
    assert again["delivered"] == 5


def test_a_replayed_partition_task_resends_the_same_plan_without_recounting(pipe: Pipeline) -> None:
    import handlers.query
    from fanout.models import PartitionTask
    from tests.events import LambdaContextStub, sqs_event

    per_partition = ids_for(1, 7)
    pipe.seed_connections(per_partition)
    pipe.connections.live.update(per_partition[0])
    view = pipe.broadcast("plan")
    assert view["targeted"] == 7

    task = PartitionTask(broadcast_id=view["broadcastId"], partition_id=0, **pipe.shape(view["broadcastId"]))
    message = {"MessageId": "m1", "ReceiptHandle": "r1", "Body": task.model_dump_json(by_alias=True)}
    handlers.query.handler(sqs_event([message], "arn:aws:sqs:us-east-1:0:q"), LambdaContextStub())
    pipe.drain()

    _, again, _ = pipe.api("GET", f"/broadcasts/{view['broadcastId']}")
    assert (again["targeted"], again["delivered"]) == (7, 7)
    assert all(len(f) == 1 for f in pipe.connections.frames.values())


def test_a_broadcast_with_no_connections_completes_with_zero_counts(pipe: Pipeline) -> None:
    view = pipe.broadcast({"nobody": "listens"})
    assert (view["status"], view["partitions"], view["targeted"]) == ("completed", 0, 0)


def test_a_large_message_travels_by_reference(pipe: Pipeline) -> None:
    per_partition = ids_for(3, 4)
    pipe.seed_connections(per_partition)
    pipe.connections.live.update(c for ids in per_partition.values() for c in ids)
    big = "x" * 20_000  # above the inline limit (4 KB), below 128 KB

    status, body, _ = pipe.api("POST", "/broadcasts", body={"message": big})
    assert status == 202
    pipe.run_swarms()
    for url in pipe.settings.partition_queue_urls:  # peek: the tasks carry no copy of the frame
        for m in pipe.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0).get(
            "Messages", []
        ):
            assert len(m["Body"]) < 500
    pipe.drain()
    _, view, _ = pipe.api("GET", f"/broadcasts/{body['broadcastId']}")
    assert view["delivered"] == 12
    assert all(json.loads(f[0])["data"] == big for f in pipe.connections.frames.values())
