"""The pipeline's pure core: frames, batching, retry schedules, delivery classification, pacing."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fanout.delivery import RateLimiter, deliver
from fanout.errors import (
    ConnectionGone,
    InvalidInput,
    PayloadTooLarge,
    PermanentError,
    RetryableError,
    Throttled,
)
from fanout.frames import build_frame
from fanout.planning import partition_shard, plan_batches
from fanout.retry import backoff_delay, requeue_delay_seconds

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
def test_frame_is_the_envelope_around_any_json_message(message: Any) -> None:
    frame = json.loads(build_frame("b-1", 1700000000000, message, limit=128 * 1024))
    assert frame == {"type": "broadcast", "broadcastId": "b-1", "sentAt": 1700000000000, "data": message}


def test_frame_limit_counts_utf8_bytes_not_characters() -> None:
    overhead = len(build_frame("b", 1, "", limit=10_000).encode())
    fits = "é" * ((1000 - overhead) // 2)
    build_frame("b", 1, fits, limit=1000)
    with pytest.raises(PayloadTooLarge) as info:
        build_frame("b", 1, fits + "é", limit=1000)
    assert info.value.limit == 1000
    assert "1000 bytes" in str(info.value)


def test_frame_refuses_values_json_cannot_carry() -> None:
    with pytest.raises(InvalidInput):
        build_frame("b", 1, float("nan"), limit=1000)


@given(st.lists(st.text(min_size=1, max_size=5), max_size=500), st.integers(1, 120), st.integers(0, 3000))
def test_batches_cover_every_id_once_in_order_with_stable_ids(
    ids: list[str], size: int, partition: int
) -> None:
    batches = plan_batches(ids, size, partition_id=partition)
    assert [c for _, chunk in batches for c in chunk] == ids
    assert all(0 < len(chunk) <= size for _, chunk in batches)
    assert len({b for b, _ in batches}) == len(batches)
    assert plan_batches(ids, size, partition_id=partition) == batches


@given(st.integers(0, 10**6), st.integers(1, 1000))
def test_a_partition_always_maps_to_the_same_valid_shard(partition: int, shards: int) -> None:
    assert 0 <= partition_shard(partition, shards) < shards
    assert partition_shard(partition, shards) == partition_shard(partition, shards)


@given(st.integers(1, 40), st.floats(0.001, 1), st.floats(0.01, 30), st.floats(0, 1))
def test_backoff_is_jittered_exponential_and_capped(attempt: int, base: float, cap: float, r: float) -> None:
    delay = backoff_delay(attempt, base=base, cap=cap, rand=lambda: r)
    assert 0 <= delay <= min(cap, base * 2 ** (attempt - 1)) + 1e-9


def test_backoff_grows_until_the_cap() -> None:
    full = [backoff_delay(a, base=0.1, cap=1.0, rand=lambda: 1.0) for a in range(1, 7)]
    assert full == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


@given(st.integers(1, 30), st.integers(0, 60), st.floats(0, 1))
def test_requeue_delay_stays_within_sqs_limits(attempt: int, base: int, r: float) -> None:
    delay = requeue_delay_seconds(attempt, base=base, rand=lambda: r)
    assert 0 <= delay <= 900
    assert isinstance(delay, int)


class ScriptedPoster:
    """Answers per connection id from a script of outcomes; records the frames posted."""

    def __init__(self, script: dict[str, list[str]]) -> None:
        self.script = script
        self.posted: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def post(self, connection_id: str, frame: bytes, frame_sha256: str) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        await asyncio.sleep(0)
        self.in_flight -= 1
        outcomes = self.script.get(connection_id, [])
        outcome = outcomes.pop(0) if outcomes else "ok"
        if outcome == "gone":
            raise ConnectionGone(connection_id)
        if outcome == "429":
            raise Throttled("slow down", status=429)
        if outcome == "500":
            raise RetryableError("oops", status=500)
        if outcome == "403":
            raise PermanentError("forbidden", status=403)
        self.posted.append(connection_id)


async def no_sleep(_: float) -> None:
    return None


async def test_delivery_sorts_every_id_into_exactly_one_outcome() -> None:
    poster = ScriptedPoster(
        {"g": ["gone"], "t1": ["429"], "t9": ["429"] * 9, "e": ["500", "500"], "p": ["403"], "ok": []}
    )
    ids = ["g", "t1", "t9", "e", "p", "ok", "ok"]  # a duplicate id is posted once
    out = await deliver(
        ids, b"f", "h", poster, concurrency=4, retries=2, base_delay=0.01, cap_delay=0.1, sleep=no_sleep
    )
    assert sorted(out.delivered) == ["e", "ok", "t1"]
    assert out.gone == ["g"]
    assert out.failed == ["p"]
    assert out.retry == ["t9"]
    assert out.throttled == 1 + 3
    assert poster.posted.count("ok") == 1


async def test_delivery_keeps_concurrency_bounded() -> None:
    poster = ScriptedPoster({})
    ids = [f"c{i}" for i in range(200)]
    out = await deliver(ids, b"f", "h", poster, concurrency=7, retries=0, base_delay=0, cap_delay=0)
    assert len(out.delivered) == 200
    assert 1 < poster.max_in_flight <= 7


async def test_delivery_posts_each_id_once_in_order_with_fewer_ids_than_workers() -> None:
    poster = ScriptedPoster({})
    ids = ["a", "b", "c"]
    out = await deliver(ids, b"f", "h", poster, concurrency=64, retries=1, base_delay=0, cap_delay=0)
    assert poster.posted == ids
    assert out.delivered == ids and out.retry == []


async def test_delivery_refuses_zero_concurrency() -> None:
    with pytest.raises(ValueError):
        await deliver(
            ["a"], b"f", "h", ScriptedPoster({}), concurrency=0, retries=0, base_delay=0, cap_delay=0
        )


def test_rate_limiter_paces_and_backs_off_on_throttling() -> None:
    now = [0.0]
    limiter = RateLimiter(100.0, clock=lambda: now[0])
    waits = [limiter.delay() for _ in range(5)]
    assert waits == pytest.approx([0, 0.01, 0.02, 0.03, 0.04])
    limiter.throttled()
    assert limiter.rate == pytest.approx(70.0)
    for _ in range(1000):
        limiter.throttled()
    assert limiter.rate == pytest.approx(10.0)  # never below the floor
    for _ in range(1000):
        limiter.succeeded()
    assert limiter.rate == pytest.approx(100.0)
