"""Channel occupancy decisions: stream records -> presence deltas -> counters; 0 <-> 1 crossings;
replays; the reconciler's fixes. Pure (fanout.occupancy) and the batch operation over a fake table."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fanout.adapters.channels import AppliedPresence
from fanout.errors import FanoutError, Throttled
from fanout.occupancy import (
    CountedOccupancy,
    CounterDelta,
    CounterFix,
    MalformedRecord,
    PresenceFix,
    PresenceKey,
    PresenceUpdate,
    StoredOccupancy,
    SubscriptionChange,
    aggregate,
    change_from_record,
    count_rows,
    counter_deltas,
    expired_members,
    is_busy,
    plan_checkpoint,
    plan_fix,
    presence_key,
    user_delta,
    user_of_presence,
)
from fanout.presence import count_batch


def image(channel: str, user: str, cid: str = "c1") -> dict[str, Any]:
    return {
        "channel": {"S": channel},
        "member": {"S": f"001#{cid}"},
        "connectionId": {"S": cid},
        "userId": {"S": user},
        "expiresAt": {"N": "2000000000"},
    }


def record(
    name: str,
    channel: str = "room:1",
    user: str = "alice",
    *,
    seq: int = 1,
    ttl: bool = False,
    new_user: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"SequenceNumber": str(seq).zfill(21), "StreamViewType": "NEW_AND_OLD_IMAGES"}
    if name in ("INSERT", "MODIFY"):
        body["NewImage"] = image(channel, new_user or user)
    if name in ("REMOVE", "MODIFY"):
        body["OldImage"] = image(channel, user)
    rec: dict[str, Any] = {
        "eventID": f"e{seq}",
        "eventName": name,
        "eventSource": "aws:dynamodb",
        "dynamodb": body,
    }
    if ttl:
        rec["userIdentity"] = {"type": "Service", "principalId": "dynamodb.amazonaws.com"}
    return rec


# -- records ---------------------------------------------------------------------------------------------
def test_insert_remove_modify() -> None:
    assert change_from_record(record("INSERT")).deltas() == {("room:1", "alice"): 1}
    assert change_from_record(record("REMOVE")).deltas() == {("room:1", "alice"): -1}
    assert change_from_record(record("MODIFY")).deltas() == {}  # an expiry renewed: nothing to count
    moved = change_from_record(record("MODIFY", new_user="bob"))
    assert moved.deltas() == {("room:1", "alice"): -1, ("room:1", "bob"): 1}


def test_ttl_removals_count_like_removals_and_are_reported_apart() -> None:
    change = change_from_record(record("REMOVE", ttl=True))
    assert change.expired and change.deltas() == {("room:1", "alice"): -1}
    assert not change_from_record(record("REMOVE")).expired


@pytest.mark.parametrize(
    "mutate",
    [
        lambda r: r.pop("dynamodb"),
        lambda r: r["dynamodb"].pop("NewImage"),
        lambda r: r["dynamodb"]["NewImage"].pop("userId"),
        lambda r: r["dynamodb"]["NewImage"].update(channel={"N": "1"}),
        lambda r: r.update(eventName="TRUNCATE"),
    ],
)
def test_unreadable_records_are_malformed(mutate: Any) -> None:
    rec = record("INSERT")
    mutate(rec)
    with pytest.raises(MalformedRecord):
        change_from_record(rec)


def test_aggregation_is_one_net_delta_per_channel_and_user() -> None:
    changes = [
        change_from_record(r)
        for r in (
            record("INSERT", "a", "u1", seq=1),
            record("INSERT", "a", "u1", seq=2),  # a second device
            record("INSERT", "a", "u2", seq=3),
            record("REMOVE", "a", "u2", seq=4),  # cancels out: no write
            record("INSERT", "b", "u1", seq=5),
            record("REMOVE", "b", "u3", seq=6),
        )
    ]
    assert aggregate(changes) == {("a", "u1"): 2, ("b", "u1"): 1, ("b", "u3"): -1}


def test_presence_keys() -> None:
    assert presence_key("alice") == "u#alice"
    assert user_of_presence("u#alice") == "alice"
    assert user_of_presence("#") is None


# -- crossings -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("before", "after", "users"),
    [(0, 1, 1), (0, 3, 1), (1, 2, 0), (2, 1, 0), (1, 0, -1), (3, 0, -1), (0, 0, 0), (-1, 0, 0), (-1, 1, 1),
     (1, -1, -1), (0, -1, 0)],
)  # fmt: skip
def test_a_user_arrives_when_its_presence_crosses_zero_and_leaves_when_it_falls_back(
    before: int, after: int, users: int
) -> None:
    assert user_delta(before, after) == users
    update = PresenceUpdate("c", "u", after - before, after)
    assert update.before == before and update.users == users
    assert update.vacated is (after <= 0)


def test_counter_deltas_sum_connections_and_crossings_per_channel() -> None:
    updates = [
        PresenceUpdate("a", "u1", 2, 2),  # arrives with 2 devices
        PresenceUpdate("a", "u2", 1, 3),  # a third device of a present user
        PresenceUpdate("a", "u3", -1, 0),  # leaves
        PresenceUpdate("b", "u1", 1, 1),
        PresenceUpdate("b", "u2", -1, 0),  # b: +1 -1 connections, +1 -1 users: no write
    ]
    assert counter_deltas(updates) == {"a": CounterDelta(2, 0)}
    assert counter_deltas([PresenceUpdate("a", "u1", 1, 1)]) == {"a": CounterDelta(1, 1)}


# -- the batch, over a fake channels table ---------------------------------------------------------------
class FakeChannels:
    """Presence ADDs as DynamoDB answers them (UPDATED_NEW; rows at or below 0 deleted), counters."""

    def __init__(self, fail: set[PresenceKey] | None = None, fail_counters: set[str] | None = None) -> None:
        self.presence: dict[PresenceKey, int] = {}
        self.counters: dict[str, list[int]] = {}
        self.fail = fail or set()
        self.fail_counters = fail_counters or set()
        self.calls: list[dict[PresenceKey, int]] = []

    def apply_presence(self, deltas: Mapping[PresenceKey, int]) -> AppliedPresence:
        self.calls.append(dict(deltas))
        out = AppliedPresence()
        for key, d in deltas.items():
            if key in self.fail:
                out.failed[key] = Throttled("slow down")
                continue
            after = self.presence.get(key, 0) + d
            self.presence[key] = after
            if after <= 0:
                del self.presence[key]
            out.landed.append(PresenceUpdate(*key, d, after))
        return out

    def apply_counters(self, deltas: Mapping[str, CounterDelta]) -> dict[str, FanoutError]:
        failed: dict[str, FanoutError] = {}
        for ch, d in deltas.items():
            if ch in self.fail_counters:
                failed[ch] = Throttled("slow down")
                continue
            row = self.counters.setdefault(ch, [0, 0])
            row[0] += d.connections
            row[1] += d.users
        return failed

    def occupancy(self, channel: str) -> tuple[int, int]:
        row = self.counters.get(channel, [0, 0])
        return row[0], row[1]


def changes_of(*records: dict[str, Any]) -> list[SubscriptionChange | None]:
    return [change_from_record(r) for r in records]


def test_a_batch_counts_connections_and_distinct_users() -> None:
    table = FakeChannels()
    outcome = count_batch(
        changes_of(
            record("INSERT", "a", "u1", seq=1),
            record("INSERT", "a", "u1", seq=2),
            record("INSERT", "a", "u2", seq=3),
        ),
        table,
    )
    assert table.occupancy("a") == (3, 2)
    assert outcome.records_counted == 3 and outcome.retry_from is None
    # one ADD per (channel, user), not per record
    assert table.calls == [{("a", "u1"): 2, ("a", "u2"): 1}]
    count_batch(changes_of(record("REMOVE", "a", "u1", seq=4)), table)
    assert table.occupancy("a") == (2, 2)  # u1 still has a device
    count_batch(changes_of(record("REMOVE", "a", "u1", seq=5, ttl=True)), table)
    assert table.occupancy("a") == (1, 1)
    assert ("a", "u1") not in table.presence  # the presence row back at 0 is deleted


def test_only_the_records_before_an_unreadable_one_are_counted() -> None:
    table = FakeChannels()
    changes = changes_of(record("INSERT", "a", "u1", seq=1), record("INSERT", "a", "u2", seq=2))
    outcome = count_batch([changes[0], None, changes[1]], table)
    assert outcome.records_counted == 1 and table.occupancy("a") == (1, 1)


def test_a_failed_presence_add_checkpoints_and_compensates_so_a_redelivery_counts_nothing_twice() -> None:
    table = FakeChannels(fail={("a", "u2")})
    records = [
        record("INSERT", "a", "u1", seq=1),
        record("INSERT", "a", "u2", seq=2),  # its ADD fails
        record("INSERT", "a", "u1", seq=3),  # landed with u1's ADD, but comes back with the redelivery
        record("INSERT", "b", "u3", seq=4),
    ]
    outcome = count_batch(changes_of(*records), table)
    assert outcome.retry_from == 1 and outcome.records_counted == 1
    assert set(outcome.failed_presence) == {("a", "u2")}
    table.fail.clear()
    count_batch(changes_of(*records[1:]), table)  # Lambda redelivers from the reported record
    assert table.occupancy("a") == (3, 2) and table.occupancy("b") == (1, 1)
    assert table.presence == {("a", "u1"): 2, ("a", "u2"): 1, ("b", "u3"): 1}


def test_a_failed_counter_add_is_reported_and_left_to_the_reconciler() -> None:
    table = FakeChannels(fail_counters={"a"})
    outcome = count_batch(changes_of(record("INSERT", "a", "u1"), record("INSERT", "b", "u1", seq=2)), table)
    assert outcome.retry_from is None  # a redelivery would count the presence rows twice
    assert set(outcome.failed_counters) == {"a"} and set(outcome.counters) == {"b"}


def test_a_replayed_batch_drifts_and_the_reconcilers_plan_restores_the_truth() -> None:
    table = FakeChannels()
    joins = changes_of(record("INSERT", "a", "u1", seq=1), record("INSERT", "a", "u2", seq=2))
    leave = changes_of(record("REMOVE", "a", "u2", seq=3))
    count_batch(joins, table)
    count_batch(leave, table)
    count_batch(leave, table)  # replayed: u2's presence would fall below 0, and is deleted instead
    # the connections drifted (u1 is still there); the users did not: u2 crossed 0 once
    assert table.occupancy("a") == (0, 1)
    count_batch(changes_of(record("INSERT", "a", "u2", seq=4)), table)
    assert table.occupancy("a") == (1, 2)  # u2 arrives again (no presence row stuck below 0)
    stored = StoredOccupancy(*table.occupancy("a"), None, {u: n for (c, u), n in table.presence.items()})
    fix = plan_fix("a", stored, count_rows(["u1", "u2"]))
    assert fix is not None and fix.counter == CounterFix((1, 2), (2, 2))
    assert fix.presence == ()  # the presence rows are right
    assert fix.drift == 1


@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b"]), st.sampled_from(["u1", "u2", "u3"]), st.booleans()),
        max_size=40,
    ),
    st.integers(min_value=1, max_value=7),
)
def test_any_valid_history_in_any_batching_counts_exactly(
    ops: list[tuple[str, str, bool]], size: int
) -> None:
    """Subscribe (True) / unsubscribe (False) of one more or one fewer device, never below 0."""
    live: Counter[PresenceKey] = Counter()
    records = []
    for seq, (channel, user, join) in enumerate(ops, start=1):
        if not join and live[(channel, user)] == 0:
            join = True
        live[(channel, user)] += 1 if join else -1
        records.append(record("INSERT" if join else "REMOVE", channel, user, seq=seq))
    table = FakeChannels()
    for start in range(0, len(records), size):
        count_batch(changes_of(*records[start : start + size]), table)
    for channel in ("a", "b"):
        devices = {u: n for (c, u), n in live.items() if c == channel and n > 0}
        assert table.occupancy(channel) == (sum(devices.values()), len(devices))


# -- the reconciler's decisions --------------------------------------------------------------------------
def test_plan_fix_leaves_a_channel_that_matches_alone() -> None:
    stored = StoredOccupancy(3, 2, 1, {"u1": 2, "u2": 1})
    assert plan_fix("a", stored, count_rows(["u1", "u2", "u1"])) is None
    # an empty channel needs no counter row
    assert plan_fix("a", StoredOccupancy(), CountedOccupancy()) is None
    assert plan_fix("a", StoredOccupancy(0, 0), CountedOccupancy()) is None


def test_plan_fix_sets_counter_and_presence_to_the_recount() -> None:
    stored = StoredOccupancy(9, 4, 1, {"u1": 5, "gone": 1, "zero": 0, "neg": -1})
    fix = plan_fix("a", stored, count_rows(["u1", "u2"]))
    assert fix is not None
    assert fix.counter == CounterFix((9, 4), (2, 2))
    assert fix.presence == (
        PresenceFix("gone", 1, 0),
        PresenceFix("neg", -1, 0),
        PresenceFix("u1", 5, 1),
        PresenceFix("u2", None, 1),
        PresenceFix("zero", 0, 0),
    )
    # no counter row, but members: the row is created
    created = plan_fix("b", StoredOccupancy(), count_rows(["u1"]))
    assert created is not None and created.counter == CounterFix(None, (1, 1))


def test_a_channel_the_stream_changed_lately_is_busy() -> None:
    assert is_busy(StoredOccupancy(1, 1, 10_000), now_ms=20_000, quiet_ms=15_000)
    assert not is_busy(StoredOccupancy(1, 1, 4_000), now_ms=20_000, quiet_ms=15_000)
    assert not is_busy(StoredOccupancy(), now_ms=20_000, quiet_ms=15_000)


def test_expired_members() -> None:
    rows = [("a", "1#x", 99), ("a", "2#y", 100), ("b", "3#z", 101), ("b", "4#w", None)]
    assert expired_members(rows, now_s=100) == [("a", "1#x")]


def test_plan_checkpoint_without_failures() -> None:
    changes = [c for c in changes_of(record("INSERT")) if c is not None]
    assert plan_checkpoint(changes, []).index is None


def test_recount_slices_cover_every_partition_once_in_turn() -> None:
    from partitions.reconcile import recount_slice

    ids = [5, *range(10), 12]  # a stored row beyond the count, and a duplicate
    runs = [recount_slice(ids, 4, i) for i in range(3)]
    assert runs == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 12]]
    assert recount_slice(ids, 4, 3) == runs[0]  # the fourth run starts over
    assert recount_slice(ids, 100, 7) == sorted(set(ids))  # few partitions: all, every run
    with pytest.raises(ValueError):
        recount_slice(ids, 0, 0)
