"""Counter aggregation: stream records → net deltas; partial batches never count a record twice."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fanout.adapters.partitions import AppliedDeltas
from fanout.errors import Throttled
from partitions.counting import (
    MalformedRecord,
    StreamChange,
    aggregate,
    change_from_record,
    plan_checkpoint,
    prefix_before_failure,
)
from partitions.lifecycle import count_batch


def image(pid: int | None, cid: str = "c1") -> dict[str, Any]:
    item: dict[str, Any] = {"connectionId": {"S": cid}, "userId": {"S": "u"}}
    if pid is not None:
        item["partitionId"] = {"N": str(pid)}
    return item


def record(
    name: str, *, old: int | None = None, new: int | None = None, seq: int = 1, ttl: bool = False
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "Keys": {"connectionId": {"S": "c1"}},
        "SequenceNumber": str(seq).zfill(21),
        "SizeBytes": 100,
        "StreamViewType": "NEW_AND_OLD_IMAGES",
    }
    if name in ("INSERT", "MODIFY"):
        body["NewImage"] = image(new)
    if name in ("REMOVE", "MODIFY"):
        body["OldImage"] = image(old)
    rec: dict[str, Any] = {
        "eventID": f"e{seq}",
        "eventName": name,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": body,
        "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/fanout-connections/stream/x",
    }
    if ttl:
        rec["userIdentity"] = {"type": "Service", "principalId": "dynamodb.amazonaws.com"}
    return rec


def test_insert_remove_modify() -> None:
    records = [
        record("INSERT", new=3, seq=1),
        record("INSERT", new=3, seq=2),
        record("REMOVE", old=5, seq=3),
        record("REMOVE", old=5, seq=4, ttl=True),
        record("MODIFY", old=7, new=8, seq=5),
        record("MODIFY", old=9, new=9, seq=6),  # e.g. a refreshed expiresAt: no move
        record("INSERT", new=9, seq=7),
        record("REMOVE", old=9, seq=8),  # cancels out: partition 9 untouched
    ]
    changes = [change_from_record(r) for r in records]
    assert aggregate(changes) == {3: 2, 5: -2, 7: -1, 8: 1}
    assert [c.expired for c in changes].count(True) == 1
    assert changes[3].expired and not changes[2].expired


def test_rows_without_partition_count_nothing() -> None:
    assert aggregate([change_from_record(record("INSERT", new=None))]) == {}


@pytest.mark.parametrize(
    "bad",
    [
        {**record("INSERT", new=1), "eventName": "TRUNCATE"},
        {k: v for k, v in record("INSERT", new=1).items() if k != "dynamodb"},
        record("INSERT", new=1) | {"dynamodb": {"SequenceNumber": "1", "Keys": {}}},
        record("REMOVE", old=1) | {"dynamodb": {"SequenceNumber": "1", "NewImage": image(1)}},
        record("INSERT", new=1)
        | {"dynamodb": {"SequenceNumber": "1", "NewImage": {"partitionId": {"N": "x"}}}},
        record("INSERT", new=1)
        | {"dynamodb": {"SequenceNumber": "1", "NewImage": {"partitionId": {"N": "-2"}}}},
    ],
)
def test_malformed_records(bad: dict[str, Any]) -> None:
    with pytest.raises(MalformedRecord):
        change_from_record(bad)


# Hypothesis: the net deltas equal the difference of per-partition populations ------------------

ops = st.lists(
    st.tuples(
        st.sampled_from(["INSERT", "REMOVE", "MODIFY"]), st.integers(0, 9), st.integers(0, 9), st.booleans()
    ),
    max_size=200,
)


def to_changes(batch: list[tuple[str, int, int, bool]]) -> list[StreamChange]:
    out = []
    for i, (name, a, b, ttl) in enumerate(batch):
        if name == "INSERT":
            out.append(change_from_record(record(name, new=a, seq=i)))
        elif name == "REMOVE":
            out.append(change_from_record(record(name, old=a, seq=i, ttl=ttl)))
        else:
            out.append(change_from_record(record(name, old=a, new=b, seq=i)))
    return out


def reference(batch: list[tuple[str, int, int, bool]]) -> Counter[int]:
    total: Counter[int] = Counter()
    for name, a, b, _ in batch:
        if name == "INSERT":
            total[a] += 1
        elif name == "REMOVE":
            total[a] -= 1
        else:
            total[a] -= 1
            total[b] += 1
    return total


@given(batch=ops)
def test_aggregate_matches_reference(batch: list[tuple[str, int, int, bool]]) -> None:
    expected = {k: v for k, v in reference(batch).items() if v}
    assert aggregate(to_changes(batch)) == expected


@given(batch=ops, cut=st.integers(0, 200))
def test_aggregate_is_additive(batch: list[tuple[str, int, int, bool]], cut: int) -> None:
    changes = to_changes(batch)
    whole = Counter(aggregate(changes))
    parts = Counter(aggregate(changes[:cut]))
    parts.update(aggregate(changes[cut:]))
    assert +whole == +parts and -whole == -parts


@given(batch=ops, failed_at=st.lists(st.integers(0, 199), max_size=5))
def test_prefix_stops_at_first_failure(batch: list[tuple[str, int, int, bool]], failed_at: list[int]) -> None:
    changes: list[StreamChange | None] = list(to_changes(batch))
    for i in failed_at:
        if i < len(changes):
            changes[i] = None
    first = min((i for i in failed_at if i < len(batch)), default=len(batch))
    assert prefix_before_failure(changes) == changes[:first]


class FakeCounters:
    """Partition counters whose ADD fails for chosen partitions (the first `fail_times` times)."""

    def __init__(self, failing: set[int], fail_times: int = 1) -> None:
        self.values: Counter[int] = Counter()
        self.failing = failing
        self.fail_times = fail_times
        self.calls = 0

    def apply_deltas(self, deltas: dict[int, int]) -> AppliedDeltas:
        self.calls += 1
        result = AppliedDeltas()
        for pid, d in deltas.items():
            if pid in self.failing and self.calls <= self.fail_times:
                result.failed[pid] = Throttled("throttled")
            else:
                self.values[pid] += d
                result.applied[pid] = d
        return result


def redeliver_until_done(
    changes: list[StreamChange], counters: FakeCounters, malformed: set[int]
) -> tuple[int, int]:
    """Play Lambda: retry from the lowest reported record until the batch is through (malformed
    records are fixed by the time they come back). Returns (invocations, records counted)."""
    start = 0
    invocations = counted = 0
    while start < len(changes):
        invocations += 1
        batch: list[StreamChange | None] = [
            None if (start + i) in malformed else c for i, c in enumerate(changes[start:])
        ]
        outcome = count_batch(batch, counters)
        counted += outcome.records_counted
        reported = [i for i, c in enumerate(batch) if c is None]
        if outcome.retry_from is not None:
            reported.append(outcome.retry_from)
        if not reported:
            break
        first = min(reported)
        malformed.discard(start + first)
        start += first
        assert invocations < 100
    return invocations, counted


@given(
    batch=ops,
    malformed=st.sets(st.integers(0, 199), max_size=3),
    failing=st.sets(st.integers(0, 9), max_size=3),
)
def test_redelivery_counts_every_record_exactly_once(
    batch: list[tuple[str, int, int, bool]], malformed: set[int], failing: set[int]
) -> None:
    # Given a batch where some records fail validation and some partitions' ADDs fail once
    changes = to_changes(batch)
    counters = FakeCounters(failing)
    # When Lambda redelivers from the lowest reported record until everything went through
    _, counted = redeliver_until_done(changes, counters, {m for m in malformed if m < len(batch)})
    # Then every partition holds exactly the net change: nothing was counted twice or lost
    assert {k: v for k, v in counters.values.items() if v} == {k: v for k, v in reference(batch).items() if v}
    assert counted == len(batch)


def test_checkpoint_compensates_partitions_that_landed() -> None:
    changes = [
        change_from_record(record("INSERT", new=1, seq=1)),
        change_from_record(record("INSERT", new=2, seq=2)),  # first touch of failing partition 2
        change_from_record(record("INSERT", new=1, seq=3)),
        change_from_record(record("MODIFY", old=2, new=3, seq=4)),
    ]
    checkpoint = plan_checkpoint(changes, failed_partitions={2})
    assert checkpoint.index == 1
    # records 1.. come back: undo their +1 on partition 1 and +1 on partition 3 (2 never landed)
    assert checkpoint.compensation == {1: -1, 3: -1}
    assert plan_checkpoint(changes, failed_partitions=set()).index is None
