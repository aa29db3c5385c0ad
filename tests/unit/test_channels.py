"""Channels as plain data: names, patterns, member keys and bucket ranges, work units, frames, counts."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from fanout.accounting import sum_shards
from fanout.broadcasts import message_digest
from fanout.channels import (
    BUCKETS,
    allows,
    bucket_of,
    bucket_ranges,
    channel_problem,
    connection_of,
    counter_name,
    member_key,
    member_range,
    namespace,
    parse_channel_list,
    pattern_problem,
    split_counter,
    unit_id,
    unit_parts,
    with_channel,
    with_channel_counts,
)
from fanout.frames import build_frame
from fanout.models import Audience, AudienceKind, PartitionTask
from fanout.querying import query_counts
from fanout.swarming import audience_plan, runs_in_swarm, unit_channel


@pytest.mark.parametrize("name", ["a", "room:1", "A-Z_0.9", "x" * 128, "ns:sub:deeper"])
def test_valid_channel_names(name: str) -> None:
    assert channel_problem(name) is None


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "empty"),
        ("x" * 129, "at most 128"),
        ("room 1", "' '"),
        ("room/1", "'/'"),
        ("caf\u00e9", "'\u00e9'"),
        (7, "string"),
    ],
)
def test_invalid_channel_names_say_why(name: object, why: str) -> None:
    problem = channel_problem(name)
    assert problem is not None and why in problem


def test_namespace_is_what_comes_before_the_first_colon() -> None:
    assert namespace("room:1:a") == "room"
    assert namespace("lobby") is None


def test_patterns_are_exact_names_or_prefixes() -> None:
    patterns = ["room:*", "lobby"]
    assert allows(patterns, "room:1")
    assert allows(patterns, "lobby")
    assert not allows(patterns, "lobby2")
    assert not allows(patterns, "roomy")
    assert not allows([], "lobby")
    assert allows(["*"], "anything")
    assert pattern_problem("room:*") is None
    assert pattern_problem("ro*om") is not None
    assert pattern_problem("bad name*") is not None


def test_the_channels_parameter_is_split_trimmed_and_deduplicated() -> None:
    assert parse_channel_list("a, b,,a,c") == ["a", "b", "c"]
    assert parse_channel_list(None) == []


@given(st.text(alphabet="abcdefABCDEF0123456789=+/", min_size=1, max_size=20))
def test_a_member_key_names_its_connection_and_sorts_inside_its_bucket(connection_id: str) -> None:
    member = member_key(connection_id)
    assert connection_of(member) == connection_id
    bucket = bucket_of(connection_id)
    lo, hi = member_range(bucket, bucket)
    assert lo <= member <= hi
    if bucket > 0:
        assert not (member_range(0, bucket - 1)[0] <= member <= member_range(0, bucket - 1)[1])


@given(st.integers(min_value=0, max_value=5_000_000), st.integers(min_value=1, max_value=100_000))
def test_bucket_ranges_cover_every_bucket_once(members: int, per_task: int) -> None:
    ranges = bucket_ranges(members, per_task)
    covered = [b for lo, hi in ranges for b in range(lo, hi + 1)]
    assert covered == list(range(BUCKETS))
    assert 1 <= len(ranges) <= BUCKETS


def test_a_channel_is_split_in_proportion_to_its_members() -> None:
    assert len(bucket_ranges(0, 1000)) == 1
    assert len(bucket_ranges(1000, 1000)) == 1
    assert len(bucket_ranges(1001, 1000)) == 2
    assert len(bucket_ranges(50_000, 1000)) == 50
    assert len(bucket_ranges(10**9, 1000)) == BUCKETS


@given(st.integers(0, 99), st.integers(0, 999), st.integers(0, 999))
def test_unit_ids_round_trip(index: int, a: int, b: int) -> None:
    lo, hi = min(a, b), max(a, b)
    assert unit_parts(unit_id(index, lo, hi)) == (index, lo, hi)


def test_a_channel_frame_names_its_channel_before_the_data() -> None:
    frame = build_frame("b-1", 5, {"data": ',"data":'}, limit=10_000)
    named = with_channel(frame, "room:1")
    decoded = json.loads(named)
    assert decoded == {**json.loads(frame), "channel": "room:1"}
    assert list(decoded) == ["type", "broadcastId", "sentAt", "channel", "data"]
    assert with_channel(frame, None) == frame


def test_channel_counts_are_repeated_under_the_channel_and_summed_apart() -> None:
    assert split_counter(counter_name(7, "delivered")) == (7, "delivered")
    assert split_counter("delivered") is None
    assert split_counter("c/x/delivered") is None
    task = PartitionTask(
        broadcast_id="b", partition_id=unit_id(3, 0, 999), partitions=2, counter_shards=4, channel="room:1"
    )
    query = query_counts(["a", "b"], task)
    assert query == {"targeted": 2, "partitionsDone": 1, "c/3/targeted": 2}
    post = with_channel_counts({"delivered": 1, "gone": 1}, 0)
    totals = sum_shards([query, post, with_channel_counts({"delivered": 1}, 3)])
    assert (totals.targeted, totals.delivered, totals.gone) == (2, 2, 1)
    assert totals.channels == {
        3: {"targeted": 2, "delivered": 1, "gone": 0, "failed": 0},
        0: {"targeted": 0, "delivered": 1, "gone": 1, "failed": 0},
    }
    everyone = PartitionTask(broadcast_id="b", partition_id=5, partitions=9, counter_shards=4)
    assert query_counts(["a"], everyone) == {"targeted": 1, "partitionsDone": 1}


def test_an_audience_takes_exactly_one_list_and_counts_repeats_once() -> None:
    audience = Audience.model_validate({"channels": ["a", "b", "a"]})
    assert audience.kind == AudienceKind.CHANNELS
    assert audience.public() == {"channels": ["a", "b"]}
    for bad in ({}, {"channels": ["a"], "users": ["u"]}, {"channels": []}, {"channels": ["bad name"]},
                {"users": ["u"] * 1001}, {"everyone": True}):  # fmt: skip
        with pytest.raises(ValidationError):
            Audience.model_validate(bad)


def test_the_idempotency_digest_covers_the_audience() -> None:
    message = {"m": 1}
    assert message_digest(message) != message_digest(message, Audience(channels=["a"]))
    assert message_digest(message, Audience(channels=["a"])) != message_digest(message, Audience(users=["a"]))


def test_a_channel_plan_has_units_per_channel_and_small_ones_run_in_the_swarm() -> None:
    audience = Audience(channels=["big", "small", "empty"])
    plan = audience_plan(audience, {"big": 5_000, "small": 10}, per_task=1_000, batch_size=100, min_shards=4)
    assert len(plan.partition_ids) == 5 + 1 + 1
    assert len(set(plan.partition_ids)) == len(plan.partition_ids)
    channels = [unit_channel(audience, u) for u in plan.partition_ids]
    assert channels == ["big"] * 5 + ["small", "empty"]
    here = [unit_channel(audience, u) for u in plan.partition_ids if runs_in_swarm(audience, u)]
    assert here == ["small", "empty"]
    assert plan.shards >= 4


def test_users_and_connections_are_one_unit_read_by_the_swarm() -> None:
    for audience in (Audience(users=["u1", "u2"]), Audience(connections=["c1"])):
        plan = audience_plan(audience, {}, per_task=1_000, batch_size=100, min_shards=4)
        assert plan.partition_ids == [0]
        assert runs_in_swarm(audience, 0)
        assert unit_channel(audience, 0) is None
    assert not runs_in_swarm(None, 0)
