"""The pure accounting, settlement and sweeping decisions (no emulator)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from fanout.accounting import (
    LEDGER_CHUNK_BYTES,
    MAX_COUNTER_SHARDS,
    chunk_ids,
    counter_shards,
    is_complete,
    post_entry,
    query_entry,
    shard_of,
    sum_shards,
)
from fanout.frames import build_frame
from fanout.models import BroadcastRecord, BroadcastStatus, PostBatch
from fanout.settlement import PostOutcome, settle
from fanout.store import BroadcastRequests
from fanout.sweeping import Action, decide
from tests.unit.post_batches import outcomes, post_batch

ids = st.lists(st.text("abcdefghijklmnopqrstuvwxyz0123456789=", min_size=1, max_size=20), unique=True)


@given(st.text(min_size=1, max_size=40), st.integers(1, MAX_COUNTER_SHARDS))
def test_an_entry_always_goes_to_the_same_shard_in_range(entry: str, shards: int) -> None:
    shard = shard_of(entry, shards)
    assert 0 <= shard < shards
    assert shard == shard_of(entry, shards)


def test_the_shard_of_an_entry_does_not_depend_on_the_process() -> None:
    # crc32, not hash() (salted per process): every worker must find a replayed entry in the same shard
    assert (post_entry("p7-b3", 2), query_entry(7)) == ("p7-b3.2", "q7")
    assert (shard_of("p7-b3.2", 16), shard_of("q7", 16)) == (8, 7)


@given(st.lists(st.integers(0, 5000), max_size=3000), st.integers(1, 500), st.integers(1, 100))
def test_counter_shards_stay_within_one_batch_get_and_above_the_minimum(
    counts: list[int], batch: int, minimum: int
) -> None:
    shards = counter_shards(counts, batch, minimum=minimum)
    assert minimum <= shards <= MAX_COUNTER_SHARDS


def test_counter_shards_grow_with_the_entries() -> None:
    assert counter_shards([100] * 10, 100, minimum=4) == 4
    # 2,500 partitions of 120 connections, batches of 100: 2,500 + 5,000 entries -> 30 shards
    assert counter_shards([120] * 2500, 100, minimum=4) == 30
    assert counter_shards([100] * 100_000, 100, minimum=4) == MAX_COUNTER_SHARDS


@given(
    st.lists(
        st.dictionaries(st.sampled_from(["targeted", "delivered", "gone", "failed"]), st.integers(0, 99))
    )
)
def test_sum_shards_adds_every_counter(items: list[dict[str, int]]) -> None:
    totals = sum_shards(items)
    assert totals.targeted == sum(i.get("targeted", 0) for i in items)
    assert totals.accounted == sum(i.get(k, 0) for i in items for k in ("delivered", "gone", "failed"))


def test_counted_partitions_come_from_the_query_entries() -> None:
    totals = sum_shards([{"applied": {"q1", "p1-b0.1"}}, {"applied": {"q12"}}, {}])
    assert totals.counted_partitions() == {1, 12}


def test_complete_once_every_partition_is_counted_and_every_target_accounted() -> None:
    done = sum_shards([{"targeted": 5, "partitionsDone": 2, "delivered": 3, "gone": 1, "failed": 1}])
    assert is_complete(2, done)
    assert not is_complete(3, done)
    assert not is_complete(2, sum_shards([{"targeted": 5, "partitionsDone": 2, "delivered": 4}]))
    assert is_complete(0, sum_shards([]))


@given(ids, st.integers(30, 400))
def test_ledger_chunks_keep_every_id_once_in_order_and_under_the_limit(
    connection_ids: list[str], limit: int
) -> None:
    chunks = chunk_ids(connection_ids, limit)
    assert [c for chunk in chunks for c in chunk] == connection_ids
    assert len(chunks) >= 1
    for chunk in chunks:
        assert len(chunk) == 1 or sum(len(c) + 4 for c in chunk) <= limit


def test_a_30000_connection_partition_needs_two_ledger_items() -> None:
    # API Gateway connection ids are 16 characters
    chunks = chunk_ids([f"{i:015d}=" for i in range(30_000)])
    assert len(chunks) == 2
    for chunk in chunks:
        item = json.dumps({"id": "query#" + "0" * 36 + "#1", "connectionIds": chunk})
        assert len(item) < 400 * 1024
    assert sum(len(c) + 4 for c in chunks[0]) <= LEDGER_CHUNK_BYTES


def test_the_count_request_records_its_entry_and_refuses_a_replay() -> None:
    request = BroadcastRequests("b", "l").count("B1", "p0-b0.1", {"delivered": 3, "gone": 1}, 8)
    assert request["Key"] == {"id": {"S": f"acct#B1#{shard_of('p0-b0.1', 8)}"}}
    assert request["ConditionExpression"] == "NOT contains(#ap, :e)"
    assert request["ExpressionAttributeValues"][":es"] == {"SS": ["p0-b0.1"]}
    assert "ADD #ap :es, #c0 :v0, #c1 :v1" in request["UpdateExpression"]


@given(outcomes())
def test_every_id_of_a_batch_is_counted_or_carried_on_exactly_once(
    case: tuple[PostBatch, PostOutcome],
) -> None:
    b, outcome = case
    s = settle(b, outcome, max_attempts=5, requeue_base_delay=1, connecting_delay=10)
    assert not (s.requeue and s.dead_letter)
    carried = list(s.requeue.connection_ids if s.requeue else []) + list(
        s.dead_letter.connection_ids if s.dead_letter else []
    )
    counted = s.counts.get("delivered", 0) + s.counts.get("gone", 0)
    if b.dead_lettered:
        # a redriven batch already counts every id as failed: what succeeds now leaves `failed`
        assert s.counts.get("failed", 0) == -counted
        assert s.requeue is None
    else:
        failed = s.counts.get("failed", 0)
        assert counted + failed + (len(carried) if s.requeue else 0) == len(b.connection_ids)
        if s.dead_letter:
            assert failed == len(outcome.failed) + len(carried)
    assert len(set(carried)) == len(carried)


def test_a_connection_still_connecting_is_retried_after_the_grace_not_counted() -> None:
    s = settle(
        post_batch(3),
        PostOutcome(["c0"], [], [], [], ["c1", "c2"]),
        max_attempts=5,
        requeue_base_delay=1,
        connecting_delay=10,
    )
    assert s.counts == {"delivered": 1}
    assert s.requeue is not None and s.requeue.connection_ids == ["c1", "c2"]
    assert s.requeue.attempt == 2 and s.requeue_delay >= 10


def test_on_the_last_attempt_a_410_is_believed() -> None:
    s = settle(
        post_batch(2, attempt=5),
        PostOutcome([], [], [], [], ["c0", "c1"]),
        max_attempts=5,
        requeue_base_delay=1,
    )
    assert s.counts == {"gone": 2}
    assert s.requeue is None and s.dead_letter is None


def record(**kw: object) -> BroadcastRecord:
    base = {"broadcastId": "b", "status": "queued", "createdAt": 0, "partitions": 4}
    return BroadcastRecord.model_validate({**base, **kw})


def test_the_sweeper_waits_then_redrives_then_fails_with_the_reason() -> None:
    args = {"after_ms": 300_000, "attempts": 2}
    assert decide(record(), now_ms=299_999, **args).action == Action.WAIT
    assert decide(record(), now_ms=300_000, **args).action == Action.REDRIVE
    swept = record(sweeps=1, sweptAt=300_000, sweptProgress=0)
    assert decide(swept, now_ms=500_000, **args).action == Action.WAIT
    assert decide(swept, now_ms=600_000, **args).action == Action.REDRIVE
    last = record(sweeps=2, sweptAt=600_000, error="swarm: Boom: dynamodb down")
    failed = decide(last, now_ms=900_000, **args)
    assert failed.action == Action.FAIL
    assert failed.reason is not None and "dynamodb down" in failed.reason and "2 re-drive" in failed.reason


def test_a_slow_broadcast_that_progresses_is_not_redriven() -> None:
    running = record(status=BroadcastStatus.RUNNING, sweeps=1, sweptAt=0, sweptProgress=10, delivered=500)
    decision = decide(running, now_ms=400_000, after_ms=300_000, attempts=3)
    assert decision.action == Action.PROGRESSING and decision.progress == 500


def test_characters_sqs_refuses_are_escaped_in_the_frame_and_decode_the_same() -> None:
    text = "a\uffffb\ufffec\u0001"
    frame = build_frame("b", 1, {"text": text}, limit=1000)
    assert "\uffff" not in frame and "\ufffe" not in frame
    assert json.loads(frame)["data"]["text"] == text
