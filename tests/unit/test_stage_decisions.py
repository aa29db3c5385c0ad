"""The stages' decisions as plain functions (no emulator): what the swarm sends, what the query stage
counts and batches, what the post stage reports, when a broadcast is complete; and the adapters' edge,
where botocore errors become fanout.errors."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from hypothesis import given
from hypothesis import strategies as st

from fanout.accounting import MAX_COUNTER_SHARDS, sum_shards
from fanout.adapters.broadcasts import AsyncBroadcastsTable
from fanout.adapters.connections import AsyncConnectionsTable
from fanout.adapters.errors import is_condition_failure, is_conflict, translate
from fanout.completion import completion_ms, with_totals
from fanout.errors import MessageRefused, PermanentError, RetryableError, Throttled
from fanout.models import BroadcastRecord, BroadcastStatus, PartitionTask, PostBatch
from fanout.planning import partition_shard
from fanout.posting import checks_completion, connecting_delay, failed_now, post_result
from fanout.querying import ShardCycle, by_shard, post_batches, query_counts
from fanout.querying import checks_completion as query_checks_completion
from fanout.settlement import PostOutcome, settle
from fanout.store import BroadcastRequests, parse_broadcast, to_item
from fanout.swarming import (
    SQS_BATCH,
    StoredBroadcast,
    SwarmPlan,
    SwarmStep,
    attempt_error,
    first_plan,
    inline_frame,
    partition_tasks,
    refusal_reason,
    resumed_plan,
    send_batches_of,
    still_to_send,
    swarm_step,
    unsent,
)
from tests.unit.post_batches import outcomes, post_batch

counts_by_partition = st.dictionaries(st.integers(0, 5000), st.integers(0, 400), max_size=300)
connection_ids = st.lists(
    st.text("abcdefghij0123456789=", min_size=1, max_size=16), unique=True, max_size=700
)


def record(**kw: object) -> BroadcastRecord:
    base = {"broadcastId": "b", "status": "queued", "createdAt": 1_000, "partitions": 0}
    return BroadcastRecord.model_validate({**base, **kw})


# -- swarm ------------------------------------------------------------------------------------------
def test_the_swarm_starts_a_queued_broadcast_resumes_a_running_one_and_leaves_an_ended_one() -> None:
    assert swarm_step(BroadcastStatus.QUEUED) == SwarmStep.START
    assert swarm_step(BroadcastStatus.RUNNING) == SwarmStep.RESUME
    assert swarm_step(BroadcastStatus.COMPLETED) == SwarmStep.ENDED
    assert swarm_step(BroadcastStatus.FAILED) == SwarmStep.ENDED


@given(counts_by_partition, st.integers(1, 500), st.integers(1, 100))
def test_the_first_plan_targets_every_partition_with_connections_once_in_order(
    counts: dict[int, int], batch: int, minimum: int
) -> None:
    plan = first_plan(counts, batch_size=batch, min_shards=minimum)
    assert plan.partition_ids == sorted(p for p, c in counts.items() if c > 0)
    assert minimum <= plan.shards <= MAX_COUNTER_SHARDS
    assert plan.partitions == len(plan.partition_ids)


def test_a_resumed_plan_is_the_stored_one() -> None:
    stored = StoredBroadcast(record(status="running", counterShards=7), "f", (3, 1, 9))
    assert resumed_plan(stored) == SwarmPlan([3, 1, 9], 7)


@given(st.lists(st.integers(0, 200), unique=True, max_size=100), st.sets(st.integers(0, 200)))
def test_a_resumed_swarm_sends_only_the_partitions_not_counted_in_their_order(
    planned: list[int], counted: set[int]
) -> None:
    todo = unsent(planned, counted)
    assert todo == [p for p in planned if p not in counted]
    totals = sum_shards([{"applied": {f"q{p}" for p in counted} | {"p1-b0.1"}}])
    assert still_to_send(SwarmPlan(planned, 4), totals) == todo


@given(st.text(max_size=300), st.integers(0, 600))
def test_a_frame_travels_inline_only_within_the_limit_in_utf8_bytes(frame: str, limit: int) -> None:
    inline = inline_frame(frame, limit)
    assert inline == (frame if len(frame.encode()) <= limit else None)


@given(
    st.lists(st.integers(0, 10_000), unique=True, min_size=1, max_size=300),
    st.integers(1, 16),
    st.sampled_from([None, '{"type":"broadcast"}']),
)
def test_every_partition_task_goes_once_to_its_partitions_shard_with_the_broadcasts_shape(
    partitions: list[int], queue_shards: int, frame: str | None
) -> None:
    plan = SwarmPlan(partitions, 5)
    tasks = partition_tasks("b", partitions[::2], plan, frame=frame, queue_shards=queue_shards)
    sent = {
        PartitionTask.model_validate_json(body).partition_id: shard
        for shard, bodies in tasks.items()
        for body in bodies
    }
    assert sorted(sent) == sorted(partitions[::2])
    assert sum(len(b) for b in tasks.values()) == len(partitions[::2])
    assert all(shard == partition_shard(pid, queue_shards) for pid, shard in sent.items())
    task = PartitionTask.model_validate_json(next(iter(tasks.values()))[0])
    assert (task.partitions, task.counter_shards, task.frame) == (len(partitions), 5, frame)


@given(st.dictionaries(st.integers(0, 8), st.lists(st.text(max_size=3), max_size=45), max_size=8))
def test_sends_are_sqs_batches_that_keep_every_body_on_its_shard(by: dict[int, list[str]]) -> None:
    batches = send_batches_of(by)
    assert all(0 < len(bodies) <= SQS_BATCH for _, bodies in batches)
    regrouped: dict[int, list[str]] = {}
    for shard, bodies in batches:
        regrouped.setdefault(shard, []).extend(bodies)
    assert regrouped == {s: b for s, b in by.items() if b}


def test_what_a_failed_swarm_records_names_the_cause() -> None:
    refused = MessageRefused("InvalidParameterValue: too long", code="InvalidParameterValue")
    assert (
        refusal_reason(refused) == "the partition tasks were refused by SQS: InvalidParameterValue: too long"
    )
    assert attempt_error(RetryableError("queue throttled")) == "swarm: RetryableError: queue throttled"


# -- query ------------------------------------------------------------------------------------------
def task(partition: int = 3, frame: str | None = "f") -> PartitionTask:
    return PartitionTask(
        broadcast_id="b", partition_id=partition, partitions=9, counter_shards=4, frame=frame
    )


@given(connection_ids, st.integers(1, 120))
def test_post_batches_carry_every_id_once_with_the_tasks_shape_and_stable_ids(
    ids: list[str], size: int
) -> None:
    batches = post_batches(task(), ids, size)
    assert [c for b in batches for c in b.connection_ids] == ids
    assert all(len(b.connection_ids) <= size for b in batches)
    assert all((b.partitions, b.counter_shards, b.frame, b.attempt) == (9, 4, "f", 1) for b in batches)
    assert [b.batch_id for b in batches] == [b.batch_id for b in post_batches(task(), ids, size)]
    assert query_counts(ids, task()) == {"targeted": len(ids), "partitionsDone": 1}


@given(st.integers(1, 12), st.integers(0, 11), st.integers(1, 60))
def test_the_shard_cycle_spreads_batches_evenly_from_its_start(shards: int, start: int, n: int) -> None:
    cycle = ShardCycle(shards, rand=lambda k: start % k)
    picks = [cycle() for _ in range(n)]
    assert picks[0] == start % shards
    spread = Counter(picks)
    assert max(spread.values()) - min(spread.get(s, 0) for s in range(shards)) <= 1


def test_the_shard_cycle_refuses_no_shards() -> None:
    with pytest.raises(ValueError):
        ShardCycle(0)


def test_post_batch_bodies_are_compact_and_go_to_the_shards_in_turn() -> None:
    batches = post_batches(task(frame=None), [f"c{i}" for i in range(25)], 10)
    bodies = by_shard(batches, ShardCycle(2, rand=lambda _: 1))
    assert {s: len(b) for s, b in bodies.items()} == {1: 2, 0: 1}
    first = json.loads(bodies[1][0])
    assert "attempt" not in first and "frame" not in first  # defaults left out of every message
    assert PostBatch.model_validate(first) == batches[0]


def test_only_an_empty_partition_counted_now_checks_completion_from_the_query_stage() -> None:
    assert query_checks_completion([], counted=True)
    assert not query_checks_completion([], counted=False)  # a replay: the first run checked
    assert not query_checks_completion(["c"], counted=True)  # its post batches will


# -- post -------------------------------------------------------------------------------------------
@given(outcomes(), st.booleans(), st.integers(0, 50))
def test_the_post_result_reports_the_settlement_and_a_redriven_batch_fails_nothing_new(
    case: tuple[PostBatch, PostOutcome], counted: bool, throttled: int
) -> None:
    b, outcome = case
    s = settle(b, outcome, max_attempts=5, requeue_base_delay=1, connecting_delay=10)
    result = post_result(
        b, s, delivered=len(outcome.delivered), throttled=throttled, counted=counted, last_error="x"
    )
    assert result.delivered == len(outcome.delivered)
    assert result.gone == s.counts.get("gone", 0)
    assert result.requeued == s.requeued
    assert result.duplicate is not counted
    assert result.failed == (0 if b.dead_lettered else s.counts.get("failed", 0))
    assert result.failed >= 0
    assert (result.throttled, result.last_error) == (throttled, "x")
    assert checks_completion(s, counted) == (counted and bool(s.counts))


def test_a_redriven_batch_that_delivers_moves_ids_out_of_failed_without_reporting_failures() -> None:
    b = post_batch(3, dead=True)
    s = settle(b, PostOutcome(["c0", "c1"], [], [], ["c2"]), max_attempts=5, requeue_base_delay=1)
    assert s.counts == {"delivered": 2, "failed": -2}
    assert failed_now(b, s.counts) == 0
    assert failed_now(post_batch(3), {"failed": 2}) == 2


@given(st.floats(0, 900))
def test_the_connecting_delay_is_the_grace_rounded_up_to_whole_seconds(grace: float) -> None:
    delay = connecting_delay(grace)
    assert isinstance(delay, int)
    assert delay - 1 < grace <= delay


# -- completion -------------------------------------------------------------------------------------
@given(
    st.dictionaries(
        st.sampled_from(["targeted", "partitionsDone", "delivered", "gone", "failed"]), st.integers(0, 99)
    )
)
def test_a_record_is_answered_with_the_sum_of_its_shards(counts: dict[str, int]) -> None:
    r = with_totals(record(status="running", partitions=3), sum_shards([counts, counts]))
    assert r.targeted == 2 * counts.get("targeted", 0)
    assert r.partitions_done == 2 * counts.get("partitionsDone", 0)
    assert r.accounted == 2 * sum(counts.get(k, 0) for k in ("delivered", "gone", "failed"))
    assert (r.broadcast_id, r.status, r.partitions) == ("b", BroadcastStatus.RUNNING, 3)


def test_the_duration_is_known_once_the_broadcast_ended() -> None:
    assert completion_ms(record()) is None
    assert completion_ms(record(status="completed", completedAt=3_500)) == 2_500


def test_a_stored_broadcast_parses_its_plan_and_frame() -> None:
    item = to_item(
        {
            "broadcastId": "b",
            "status": "running",
            "createdAt": 5,
            "partitions": 2,
            "partitionIds": [4, 2],
            "counterShards": 6,
            "frame": "{}",
        }
    )
    stored = parse_broadcast(item)
    assert (stored.partition_ids, stored.shards, stored.frame) == ((4, 2), 6, "{}")
    assert parse_broadcast(to_item({"broadcastId": "b", "status": "queued", "createdAt": 5})).frame is None


# -- the adapters' edge -----------------------------------------------------------------------------
def client_error(code: str, status: int = 400, reasons: list[str] | None = None) -> ClientError:
    response: dict = {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    if reasons is not None:
        response["CancellationReasons"] = [{"Code": r} for r in reasons]
    return ClientError(response, "Op")


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("ProvisionedThroughputExceededException", 400, Throttled),
        ("ThrottlingException", 400, Throttled),
        ("TooManyRequestsException", 429, Throttled),
        ("InternalServerError", 500, RetryableError),
        ("ServiceUnavailable", 503, RetryableError),
        ("AWS.SimpleQueueService.NonExistentQueue", 400, PermanentError),
        ("AccessDeniedException", 400, PermanentError),
    ],
)
def test_botocore_errors_become_the_engines_own_with_the_code_in_the_message(
    code: str, status: int, kind: type[Exception]
) -> None:
    error = translate(client_error(code, status), "send tasks")
    assert type(error) is kind
    assert code in str(error) and str(error).startswith("send tasks: ")


def test_a_transport_failure_is_retryable() -> None:
    error = translate(EndpointConnectionError(endpoint_url="http://x"), "get item")
    assert isinstance(error, RetryableError) and not isinstance(error, Throttled)


def test_conditions_and_conflicts_are_read_from_codes_and_cancellation_reasons() -> None:
    assert is_condition_failure(client_error("ConditionalCheckFailedException"))
    assert is_condition_failure(
        client_error("TransactionCanceledException", reasons=["None", "ConditionalCheckFailed"])
    )
    assert not is_condition_failure(
        client_error("TransactionCanceledException", reasons=["TransactionConflict"])
    )
    assert is_conflict(client_error("TransactionCanceledException", reasons=["TransactionConflict", "None"]))
    assert is_conflict(client_error("TransactionConflictException"))
    assert not is_conflict(client_error("ValidationException"))
    assert not is_conflict(RuntimeError("TransactionConflict"))


class FakeDynamoDB:
    """An aioboto3 DynamoDB client that answers each call from a script (an exception or a value)."""

    def __init__(self, **script: list[object]) -> None:
        self.script = script
        self.calls: list[tuple[str, dict]] = []

    def __getattr__(self, name: str) -> object:
        async def call(**kwargs: object) -> object:
            self.calls.append((name, kwargs))
            answer = self.script[name].pop(0) if self.script.get(name) else {}
            if isinstance(answer, BaseException):
                raise answer
            return answer

        return call


async def no_sleep(_: float) -> None:
    return None


async def test_a_write_that_conflicts_is_retried_and_counted_then_answers() -> None:
    conflict = client_error("TransactionCanceledException", reasons=["TransactionConflict"])
    client = FakeDynamoDB(update_item=[conflict, conflict, {}])
    conflicts: list[int] = []
    table = AsyncBroadcastsTable(
        client,  # type: ignore[arg-type]
        BroadcastRequests("b", "l"),
        on_conflict=lambda: conflicts.append(1),
        sleep=no_sleep,
    )
    assert await table.count("B1", "q1", {"targeted": 3}, 4)
    assert (len(client.calls), len(conflicts)) == (3, 2)


async def test_a_replayed_count_answers_false_and_a_throttle_raises_the_engines_error() -> None:
    client = FakeDynamoDB(
        update_item=[client_error("ConditionalCheckFailedException"), client_error("ThrottlingException")]
    )
    table = AsyncBroadcastsTable(client, BroadcastRequests("b", "l"), sleep=no_sleep)  # type: ignore[arg-type]
    assert not await table.count("B1", "q1", {"targeted": 3}, 4)
    with pytest.raises(Throttled):
        await table.count("B1", "q2", {"targeted": 3}, 4)


async def test_pruning_keeps_a_row_younger_than_the_grace_and_reports_it_connecting() -> None:
    client = FakeDynamoDB(delete_item=[{}, client_error("ConditionalCheckFailedException")])
    table = AsyncConnectionsTable(client, "connections", index="byPartition")  # type: ignore[arg-type]
    gone, connecting, _ = await table.prune(["old", "young"], now_ms=10_000, grace_ms=3_000)
    assert (gone, connecting) == (["old"], ["young"])
    assert client.calls[0][1]["ExpressionAttributeValues"] == {":cutoff": {"N": "7000"}}


async def test_a_partitions_ids_are_read_over_every_page_of_the_index() -> None:
    pages = [
        {"Items": [{"connectionId": {"S": "a"}}], "LastEvaluatedKey": {"k": 1}},
        {"Items": [{"connectionId": {"S": "b"}}]},
    ]
    client = FakeDynamoDB(query=pages)
    table = AsyncConnectionsTable(client, "connections", index="byPartition")  # type: ignore[arg-type]
    assert await table.partition_ids(7) == ["a", "b"]
    assert client.calls[1][1]["ExclusiveStartKey"] == {"k": 1}
    assert client.calls[0][1]["ExpressionAttributeValues"] == {":p": {"N": "7"}}
