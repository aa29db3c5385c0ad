"""loadtest/chat_report.py: recover positions, gaps and duplicates across reconnects, percentiles, the
report's chat section (no network, no Locust)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadtest.chat_report import (
    CHAT_TYPE,
    DUPLICATE_TYPE,
    GAP_TYPE,
    JUDGED_TYPE,
    PUBLISH_TYPE,
    RECEIVE_TYPE,
    RECOVERED_TYPE,
    AckLedger,
    RoomTrack,
    contiguous_end,
    expected_span,
    is_recovered,
    judge_room,
    parse_duration,
    percentile,
    recover_param,
    recover_positions,
    render_chat,
    room_names,
    room_percentiles,
    summarize_chat,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("3m", 180), ("1h30m", 5400), ("2m30s", 150), ("0.5", 0.5), ("1.5m", 90)],
)
def test_durations_read_like_locusts(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "3x", "m", "-5", "1m-2s"])
def test_a_duration_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_rooms_are_named_under_the_room_prefix() -> None:
    assert room_names(3) == ["room:lt-0", "room:lt-1", "room:lt-2"]
    assert room_names(0) == []


def test_the_recover_parameter_lists_each_room_with_its_offset_and_epoch() -> None:
    assert recover_param({"room:lt-1": (9, "e2"), "room:lt-0": (5, "e1")}) == "room:lt-0:5:e1,room:lt-1:9:e2"
    # a channel name may hold ':' (the engine reads from the right); an epoch may not
    assert recover_param({"room:a:b": (1, "x")}) == "room:a:b:1:x"
    with pytest.raises(ValueError):
        recover_param({"room:1": (1, "bad:epoch")})
    assert recover_param({}) == ""


def test_the_position_is_the_end_of_the_run_without_a_hole() -> None:
    track = RoomTrack()
    for offset in (1, 2, 4):  # 3 still in flight
        track.record(offset, "e1")
    assert track.position() == 2  # a reconnect asks again for 3 (and 4, dropped as a duplicate)
    track.record(3, "e1")
    assert track.position() == 4
    assert contiguous_end({7, 8, 9, 11}, 7) == 9


def test_rooms_without_a_receipt_are_not_recovered() -> None:
    seen, empty = RoomTrack(), RoomTrack()
    seen.record(3, "e1")
    odd = RoomTrack()
    odd.record(1, "bad:epoch")
    assert recover_positions({"room:lt-0": seen, "room:lt-1": empty, "room:lt-2": odd}) == {
        "room:lt-0": (3, "e1")
    }


def test_a_receipt_counts_how_often_its_offset_came() -> None:
    track = RoomTrack()
    assert track.record(1, "e1") == 1
    assert track.record(1, "e1") == 2


def test_another_epoch_resets_the_room_and_is_counted() -> None:
    track = RoomTrack()
    for offset in (5, 6):
        track.record(offset, "e1")
    assert track.record(1, "e2") == 1
    assert (track.epoch, track.position(), track.epoch_changes, dict(track.counts)) == ("e2", 1, 1, {1: 1})


def test_after_recovery_impossible_the_next_receipt_starts_a_new_run_and_the_hole_is_still_judged() -> None:
    track = RoomTrack()
    for offset in (1, 2):
        track.record(offset, "e1")
    track.forget()
    assert track.position() is None
    assert recover_positions({"room:lt-0": track}) == {}
    for offset in (6, 7):  # 3..5 were lost while the history no longer held them
        track.record(offset, "e1")
    assert track.position() == 7
    assert judge_room(track.counts, (1, 7)).gaps == (3, 4, 5)


def test_across_a_reconnect_recovered_and_live_messages_leave_no_gap_and_no_duplicate() -> None:
    # Given a lineage that received 1..4 of a room, 5 in flight when it dropped
    track = RoomTrack()
    for offset in (1, 2, 3, 4):
        track.record(offset, "e1")
    param = recover_param(recover_positions({"room:lt-0": track}))
    assert param == "room:lt-0:4:e1"
    # When the new connection recovers 5..7 (sent meanwhile) and then receives 8..9 live
    for offset in (5, 6, 7, 8, 9):
        assert track.record(offset, "e1") == 1
    # Then the span 1..9 the publishers were acknowledged is exact
    verdict = judge_room(track.counts, (1, 9))
    assert (verdict.expected, verdict.received, verdict.gaps, verdict.duplicates) == (9, 9, (), 0)
    assert verdict.exact


def test_a_recovery_that_misses_a_message_is_a_gap() -> None:
    track = RoomTrack()
    for offset in (1, 2, 3, 4, 5, 7, 8):  # recovery from 3 sent 4, 5 and 7, never 6
        track.record(offset, "e1")
    verdict = judge_room(track.counts, (1, 8))
    assert verdict.gaps == (6,) and verdict.duplicates == 0 and not verdict.exact


def test_a_message_received_on_both_sides_of_the_boundary_is_a_duplicate() -> None:
    track = RoomTrack()
    for offset in (1, 2, 3):
        track.record(offset, "e1")
    # an engine that replays from an offset too early sends 3 again after the reconnect
    for offset in (3, 4):
        track.record(offset, "e1")
    verdict = judge_room(track.counts, (1, 4))
    assert verdict.gaps == () and verdict.duplicates == 1


def test_offsets_outside_the_span_are_received_but_never_gaps() -> None:
    # received before the lineage had settled in the room, and after the last judged ack
    verdict = judge_room({2: 1, 3: 1, 4: 1, 9: 1}, (3, 4))
    assert (verdict.expected, verdict.received, verdict.gaps) == (2, 4, ())
    assert judge_room({1: 2}, None).duplicates == 1 and judge_room({}, None).expected == 0


def test_the_span_runs_from_the_first_ack_after_joining_to_the_last_before_the_grace() -> None:
    acks = [(1000.0, 7), (2000.0, 8), (3000.0, 10), (3100.0, 9), (9000.0, 11)]
    assert expected_span(acks, since_ms=1500, until_ms=5000) == (8, 10)
    assert expected_span(acks, since_ms=0, until_ms=10_000) == (7, 11)
    assert expected_span(acks, since_ms=9500, until_ms=10_000) is None  # nothing acked after joining
    assert expected_span(acks, since_ms=1500, until_ms=500) is None
    assert expected_span([], since_ms=0, until_ms=1) is None


def test_only_messages_sent_before_a_recovering_connection_opened_count_as_recovered() -> None:
    assert is_recovered(sent_ms=900, connection_started_ms=1000, recovering=True)
    assert not is_recovered(sent_ms=1000, connection_started_ms=1000, recovering=True)
    assert not is_recovered(sent_ms=900, connection_started_ms=1000, recovering=False)
    assert not is_recovered(sent_ms=None, connection_started_ms=1000, recovering=True)


@given(st.sets(st.integers(1, 60), min_size=1), st.integers(1, 60), st.integers(0, 60))
def test_gaps_are_exactly_the_span_minus_what_arrived(got: set[int], lo: int, width: int) -> None:
    hi = lo + width
    verdict = judge_room(dict.fromkeys(got, 1), (lo, hi))
    assert set(verdict.gaps) == set(range(lo, hi + 1)) - got
    assert verdict.duplicates == 0 and verdict.received == len(got)


def test_percentiles_are_nearest_rank_over_the_histogram() -> None:
    hist = {10.0: 50, 20.0: 45, 100.0: 4, 500.0: 1}
    assert room_percentiles(hist) == {50.0: 10.0, 95.0: 20.0, 99.0: 100.0}
    assert percentile(hist, 100) == 500.0
    assert percentile({}, 50) is None


@dataclass
class FakeRow:
    type: str
    name: str
    requests: int
    failures: int = 0
    percentiles: dict[float, float] = field(default_factory=dict)

    def p(self, q: float) -> float | None:
        return self.percentiles.get(q)


def chat_rows(**over: int) -> list[FakeRow]:
    room = "room:lt-0"
    return [
        FakeRow(PUBLISH_TYPE, room, 20, over.get("publish_failures", 0), {50.0: 4.0, 99.0: 9.0}),
        FakeRow(RECEIVE_TYPE, room, 200, 0, {50.0: 30.0, 95.0: 60.0, 99.0: 80.0}),
        FakeRow(JUDGED_TYPE, room, 10),
        FakeRow(RECOVERED_TYPE, room, 12),
        *([FakeRow(GAP_TYPE, room, over["gaps"], over["gaps"])] if over.get("gaps") else []),
        FakeRow(CHAT_TYPE, "connect", 10),
        FakeRow(CHAT_TYPE, "reconnect", 6),
        FakeRow("WS", "connect", 3),
    ]


def test_the_chat_section_per_room() -> None:
    s = summarize_chat(chat_rows(), latency={"room:lt-0": {25.0: 100, 35.0: 90, 70.0: 10}})
    assert s is not None
    [room] = s.rooms
    assert (room.published, room.received, room.judged, room.recovered, room.gaps, room.duplicates) == (
        20,
        200,
        10,
        12,
        0,
        0,
    )
    assert (room.p50_ms, room.p95_ms, room.p99_ms) == (25.0, 35.0, 70.0)  # the histogram wins
    assert (room.ack_p50_ms, room.ack_p99_ms) == (4.0, 9.0)
    assert (s.connects, s.reconnects) == (10, 6)
    assert s.ok and s.to_json()["ok"] and s.to_json()["rooms"][0]["ok"]
    text = "\n".join(render_chat(s))
    assert "room:lt-0" in text and "chat result: OK" in text
    # without the histogram, the rows' percentiles
    assert summarize_chat(chat_rows()).rooms[0].p50_ms == 30.0  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "problem",
    [
        {"gaps": 2},
        {"publish_failures": 1},
    ],
)
def test_a_gap_or_a_failed_publish_makes_the_room_a_problem(problem: dict[str, int]) -> None:
    s = summarize_chat(chat_rows(**problem))
    assert s is not None and not s.ok and not s.rooms[0].ok
    assert "PROBLEMS" in "\n".join(render_chat(s))


def test_a_duplicate_or_a_failed_recovery_makes_the_run_a_problem() -> None:
    dup = summarize_chat([*chat_rows(), FakeRow(DUPLICATE_TYPE, "room:lt-0", 1, 1)])
    assert dup is not None and dup.rooms[0].duplicates == 1 and not dup.ok
    lost = summarize_chat([*chat_rows(), FakeRow(CHAT_TYPE, "recovery_impossible", 1, 1)])
    assert lost is not None and lost.recovery_impossible == 1 and not lost.ok


def test_acks_reach_the_ledger_only_through_the_message() -> None:
    mine, other = AckLedger(), AckLedger()
    mine.record("room:lt-0", 7, 1000.0)
    mine.record("room:lt-0", 8, 1001.0)
    assert mine.acks == {}
    data = {"acks": mine.take_outbox()}
    assert mine.take_outbox() == {}
    for ledger in (mine, other):  # the master relays to every process, the sender included
        ledger.on_acks(data)
    assert mine.acks == other.acks == {"room:lt-0": [(1000.0, 7), (1001.0, 8)]}


def test_no_chat_rows_no_chat_section() -> None:
    assert summarize_chat([FakeRow("WS", "connect", 3), FakeRow("deliver", "b1", 3)]) is None


def test_run_passes_the_chat_options_to_locust_only_with_chat_users() -> None:
    from pathlib import Path

    from loadtest import run

    args = run.parse(["--users", "0", "--chat-users", "20", "--rooms", "4", "--reconnect-every", "90s"])
    cmd = run.locust_command(args, Path("local.json"), Path("results"))
    at = cmd.index("--chat-users")
    assert cmd[at : at + 10] == [
        "--chat-users", "20", "--rooms", "4", "--rooms-per-user", "1", "--publish-rate", "1.0",
        "--reconnect-every", "90s",
    ]  # fmt: skip
    assert "--chat-users" not in run.locust_command(run.parse([]), Path("s"), Path("r"))
    with pytest.raises(SystemExit):
        run.parse(["--reconnect-every", "soon"])
