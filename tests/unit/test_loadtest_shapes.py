"""loadtest/shapes.py: the broadcast ledger, gap judgement and the shape's phases (no network)."""

from __future__ import annotations

from argparse import Namespace
from random import Random
from typing import Any

import pytest

import loadtest.shapes as shapes
from loadtest.shapes import (
    BroadcastLedger,
    ShapePlan,
    ShapeSettings,
    expected_broadcasts,
    shape_settings,
)


def test_the_ledger_merges_started_and_completed_messages() -> None:
    ledger = BroadcastLedger()
    ledger.on_started({"broadcastId": "b1", "index": 1, "startedAtMs": 1000.0, "startLatencyMs": 12.0})
    assert not ledger.all_finished(1)
    ledger.on_completed(
        {"broadcastId": "b1", "index": 1, "status": "completed", "createdAt": 1005, "completedAt": 3000,
         "targeted": 10, "delivered": 10, "gone": 0, "failed": 0, "partitions": 3}
    )  # fmt: skip
    # a completion heard before its start (messages from two nodes) still makes one record
    ledger.on_completed({"broadcastId": "b2", "index": 2, "status": "failed", "createdAt": 5000})
    ledger.on_started({"broadcastId": "b2", "index": 2, "startedAtMs": 4990.0})
    assert ledger.all_finished(2)
    [b1, b2] = ledger.to_json()
    assert (b1["status"], b1["targeted"], b1["partitions"], b1["startLatencyMs"]) == (
        "completed",
        10,
        3,
        12.0,
    )
    assert (b2["status"], b2["createdAt"]) == ("failed", 5000)
    assert ledger.broadcasts["b1"].sent_at_ms == 1005


def judged(ledger: BroadcastLedger, session: float | None, now: float) -> list[str]:
    return expected_broadcasts(
        ledger, session_started_ms=session, now=now, settle_ms=2000, grace_ms=5000, timeout_ms=60_000
    )


def test_a_user_is_judged_only_for_broadcasts_it_was_there_for_after_the_grace() -> None:
    ledger = BroadcastLedger()
    ledger.on_completed(
        {"broadcastId": "b1", "index": 1, "status": "completed", "createdAt": 10_000, "completedAt": 12_000}
    )
    # connected long enough before: due once the grace has passed
    assert judged(ledger, 1_000, now=16_999) == []
    assert judged(ledger, 1_000, now=17_000) == ["b1"]
    # connected within the settle window before the broadcast, or after it: never judged
    assert judged(ledger, 8_500, now=100_000) == []
    assert judged(ledger, 11_000, now=100_000) == []
    # not connected at all (failed to connect, or dropped)
    assert judged(ledger, None, now=100_000) == []


def test_a_broadcast_that_never_finishes_is_judged_after_the_timeout_and_unstarted_ones_never() -> None:
    ledger = BroadcastLedger()
    ledger.on_started({"broadcastId": "slow", "index": 1, "startedAtMs": 10_000.0})
    ledger.on_completed({"broadcastId": "unstarted-1", "index": 2, "status": "unstarted"})
    assert judged(ledger, 0, now=69_999) == []
    assert judged(ledger, 0, now=70_000) == ["slow"]
    assert ledger.all_finished(1) and not ledger.all_finished(2)


@pytest.fixture
def wall(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The wall clock (epoch ms) the plan sees for the grace period."""
    now = [1_000_000.0]
    monkeypatch.setattr(shapes, "now_ms", lambda: now[0])
    return now


def settings(**kw: Any) -> ShapeSettings:
    base: dict[str, Any] = dict(
        users=10, ramp_rate=5.0, ramp_down_rate=40.0, settle_seconds=2.0, hold_seconds=0.0, broadcasts=1,
        broadcast_interval=10.0, grace_seconds=3.0, connect_timeout_seconds=60.0,
        broadcast_timeout_seconds=120.0,
    )  # fmt: skip
    return ShapeSettings(**{**base, **kw})


def test_settings_come_from_locusts_options_and_ignore_the_spawn_rate() -> None:
    env = Namespace(
        parsed_options=Namespace(
            num_users=5000,
            run_time=30,
            spawn_rate=1,
            ramp_rate=250.0,
            ramp_down_rate=2000.0,
            settle=4.0,
            broadcasts=3,
            broadcast_interval=20.0,
            grace=6.0,
            connect_timeout=90.0,
            broadcast_timeout=200.0,
        )
    )
    s = shape_settings(env)
    assert (s.users, s.ramp_rate, s.ramp_down_rate, s.hold_seconds, s.broadcasts) == (
        5000,
        250.0,
        2000.0,
        30.0,
        3,
    )
    assert shape_settings(Namespace(parsed_options=None)).users == 1


def test_the_plan_ramps_waits_for_connects_broadcasts_holds_and_ramps_down(wall: list[float]) -> None:
    plan, ledger, s = ShapePlan(), BroadcastLedger(), settings()
    gos: list[dict[str, Any]] = []

    def tick(t: float, connected: int = 10, users_now: int = 11) -> tuple[int, float] | None:
        return plan.tick(t, s, connected=connected, users_now=users_now, ledger=ledger, send_go=gos.append)

    # ramp at the configured rate, operator user included, until every user connected
    assert tick(0.0, connected=0) == (11, 5.0)
    assert tick(2.0, connected=9) == (11, 5.0)
    assert plan.phase == "ramp"
    assert tick(2.5) == (11, 5.0)
    assert plan.phase == "settle" and gos == []

    # after the settle time: go, once
    assert tick(3.0) == (11, 5.0) and gos == []
    assert tick(4.5) == (11, 5.0)
    assert [g["count"] for g in gos] == [1]

    # hold while the broadcast runs, and for the grace (+ a stats flush) after it finished
    assert tick(10.0) == (11, 5.0)
    ledger.on_completed(
        {"broadcastId": "b", "index": 1, "status": "completed", "createdAt": 1, "completedAt": 2}
    )
    wall[0] += (3.0 + shapes.STATS_FLUSH_SECONDS) * 1000 - 1
    assert tick(12.0) == (11, 5.0)
    wall[0] += 1
    assert tick(12.5) == (0, 40.0)
    assert plan.phase == "ramp_down"

    # stop once every user is gone and the last stats had time to arrive
    assert tick(13.0, users_now=3) == (0, 40.0)
    assert tick(14.0, users_now=0) == (0, 40.0)
    assert tick(14.0 + shapes.STATS_FLUSH_SECONDS, users_now=0) is None
    assert len(gos) == 1


def test_the_plan_broadcasts_anyway_when_users_cannot_all_connect(wall: list[float]) -> None:
    plan, ledger, s = ShapePlan(), BroadcastLedger(), settings(settle_seconds=0.0)
    kw: dict[str, Any] = dict(connected=7, users_now=11, ledger=ledger, send_go=lambda _: None)
    plan.tick(1.0, s, **kw)
    assert plan.phase == "ramp"
    plan.tick(3.0 + 60.0 + 1, s, **kw)  # ceil(11 users / 5 per s) + the connect timeout
    assert plan.phase == "settle"


def test_the_plan_holds_at_least_the_run_time(wall: list[float]) -> None:
    plan, ledger, s = ShapePlan(), BroadcastLedger(), settings(users=1, hold_seconds=60.0, settle_seconds=0.0)
    kw: dict[str, Any] = dict(connected=1, users_now=2, ledger=ledger, send_go=lambda _: None)
    plan.tick(0.0, s, **kw)
    plan.tick(0.5, s, **kw)  # settle 0: go
    assert plan.phase == "hold"
    ledger.on_completed(
        {"broadcastId": "b", "index": 1, "status": "completed", "createdAt": 1, "completedAt": 2}
    )
    wall[0] += 100_000
    assert plan.tick(30.0, s, **kw) == (2, 5.0)
    assert plan.tick(61.0, s, **kw) == (0, 40.0)


def test_the_plan_gives_up_waiting_for_a_stuck_broadcast(wall: list[float]) -> None:
    plan, ledger, s = ShapePlan(), BroadcastLedger(), settings(users=1, settle_seconds=0.0)
    kw: dict[str, Any] = dict(connected=1, users_now=2, ledger=ledger, send_go=lambda _: None)
    plan.tick(0.0, s, **kw)
    plan.tick(0.5, s, **kw)
    ledger.on_started({"broadcastId": "stuck", "index": 1, "startedAtMs": 0.0})
    assert plan.tick(100.0, s, **kw) == (2, 5.0)
    assert plan.tick(0.5 + 10.0 + 120.0 + 1, s, **kw) == (0, 40.0)


def test_mixed_audiences_cycle_everyone_channels_users() -> None:
    assert [shapes.audience_of(i, "mixed") for i in range(1, 7)] == [
        "everyone", "channels", "users", "everyone", "channels", "users",
    ]  # fmt: skip
    assert shapes.audience_of(5, "users") == "users"


def test_pick_to_targets_existing_channels_and_known_users() -> None:
    rng = Random(7)
    for _ in range(50):
        to = shapes.pick_to("channels", rng, channels=5, users=[])
        assert to is not None and 1 <= len(to["channels"]) <= 3
        assert set(to["channels"]) <= set(shapes.channel_names(5)) and len(set(to["channels"])) == len(
            to["channels"]
        )
    users = [f"u{i}" for i in range(40)]
    to = shapes.pick_to("users", rng, channels=0, users=users)
    assert to is not None and len(to["users"]) == 10 and set(to["users"]) <= set(users)
    assert shapes.pick_to("users", rng, channels=0, users=["only"]) == {"users": ["only"]}
    assert shapes.pick_to("everyone", rng, channels=5, users=users) is None
    with pytest.raises(ValueError):
        shapes.pick_to("channels", rng, channels=0, users=users)
    with pytest.raises(ValueError):
        shapes.pick_to("users", rng, channels=5, users=[])


def test_a_connection_expects_one_frame_per_targeted_channel_it_joined_its_user_or_everyone() -> None:
    ledger = BroadcastLedger()
    everyone = ledger.on_started({"broadcastId": "e", "index": 1, "audience": "everyone"})
    rooms = ledger.on_started(
        {"broadcastId": "c", "index": 2, "audience": "channels", "to": {"channels": ["lt:0", "lt:1", "lt:2"]}}
    )
    users = ledger.on_started({"broadcastId": "u", "index": 3, "audience": "users", "to": {"users": ["me"]}})
    mine = ["lt:1", "lt:2", "lt:4"]

    def expect(record: shapes.BroadcastRecord, user: str = "me") -> set[str]:
        return shapes.expected_frames(record, channels=mine, user_id=user)

    assert expect(everyone) == {shapes.NO_CHANNEL}
    assert expect(rooms) == {"lt:1", "lt:2"}
    assert expect(users) == {shapes.NO_CHANNEL} and expect(users, "other") == set()
    assert rooms.audience == "channels" and ledger.to_json()[1]["to"] == {
        "channels": ["lt:0", "lt:1", "lt:2"]
    }


def test_judging_frames_finds_missing_and_unexpected_keys() -> None:
    verdict = shapes.judge_frames({"lt:1", "lt:2"}, {"lt:1": 2, "lt:3": 1, "lt:2": 0})
    assert verdict.missing == {"lt:2"} and verdict.unexpected == {"lt:3"}
    assert shapes.judge_frames(set(), {}) == shapes.Judgement(expected=set(), missing=set(), unexpected=set())
    clean = shapes.judge_frames({shapes.NO_CHANNEL}, {shapes.NO_CHANNEL: 1})
    assert not clean.missing and not clean.unexpected


def test_the_ledger_learns_the_users_from_their_messages() -> None:
    ledger = BroadcastLedger()
    ledger.on_user({"userId": "a"})
    ledger.on_user({"userId": "a"})
    ledger.on_user({"userId": "b"})
    assert ledger.users == {"a", "b"}


def test_chat_users_come_on_top_and_a_chat_run_may_have_no_websocket_user(wall: list[float]) -> None:
    options = dict(num_users=0, run_time=0, ramp_rate=50.0, chat_users=30)
    s = shape_settings(Namespace(parsed_options=Namespace(**options)))
    assert (s.users, s.chat_users) == (0, 30)
    assert shape_settings(Namespace(parsed_options=Namespace(**{**options, "chat_users": 0}))).users == 1
    plan, ledger = ShapePlan(), BroadcastLedger()
    # 0 WebSocket users + the operator + 30 chat users; nothing to wait for before settling
    assert plan.tick(0.0, s, connected=0, users_now=0, ledger=ledger, send_go=lambda _: None) == (31, 50.0)
    assert plan.phase == "settle"
