"""loadtest/report.py: summary and chart from a sample of Locust's CSV (no network, no stack)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from loadtest.report import histogram_percentile, read_stats, render_text, summarize, write_reports

HEADER = [
    "Type", "Name", "Request Count", "Failure Count", "Median Response Time", "Average Response Time",
    "Min Response Time", "Max Response Time", "Average Content Size", "Requests/s", "Failures/s",
    "50%", "66%", "75%", "80%", "90%", "95%", "98%", "99%", "99.9%", "99.99%", "100%",
]  # fmt: skip


def _row(kind: str, name: str, count: int, failures: int, p50: float, p95: float, p99: float) -> list[str]:
    pct = [p50, p50, p50, p50, p95, p95, p99, p99, p99, p99, p99]
    return [kind, name, str(count), str(failures), str(p50), str(p50), "1", str(p99), "90", "1.0", "0.0"] + [
        str(v) for v in pct
    ]


def write_csv(path: Path, rows: list[list[str]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        w.writerows(rows)
        w.writerow(["", "Aggregated", "999", "0"] + ["N/A"] * (len(HEADER) - 4))


BROADCASTS = [
    {
        "broadcastId": "b-1",
        "index": 1,
        "status": "completed",
        "createdAt": 1_000,
        "completedAt": 3_500,
        "targeted": 1050,
        "delivered": 1050,
        "gone": 0,
        "failed": 0,
        "startLatencyMs": 40.0,
    },
    {
        "broadcastId": "b-2",
        "index": 2,
        "status": "completed",
        "createdAt": 10_000,
        "completedAt": 11_000,
        "targeted": 1050,
        "delivered": 1050,
        "gone": 0,
        "failed": 0,
    },
]
SIMULATED = {
    "registered": 1000,
    "live": 1000,
    "frames": 2000,
    "broadcasts": {
        "b-1": {"frames": 1000, "ids": 1000, "duplicates": 0},
        "b-2": {"frames": 1000, "ids": 1000, "duplicates": 0},
    },
}


def test_a_clean_run_is_ok_with_real_and_simulated_counts(tmp_path: Path) -> None:
    # Given a run of 50 users and 1,000 simulated connections, two broadcasts, nothing lost
    write_csv(
        tmp_path / "run_stats.csv",
        [
            _row("WS", "connect", 50, 0, 30, 60, 90),
            _row("deliver", "b-1", 50, 0, 200, 400, 450),
            _row("deliver", "b-2", 50, 0, 100, 150, 160),
            _row("operator", "complete broadcast", 2, 0, 2500, 2500, 2500),
        ],
    )
    (tmp_path / "broadcasts.json").write_text(json.dumps(BROADCASTS))
    (tmp_path / "simulated.json").write_text(json.dumps(SIMULATED))

    # When the reports are written
    summary, paths = write_reports(tmp_path, "run")

    # Then the figures add up and the files exist
    assert summary.ok
    assert (summary.real_connections, summary.simulated_connections) == (50, 1000)
    assert summary.real_received == 100 and summary.simulated_received == 2000
    assert summary.delivered == 2100
    assert (summary.duplicates, summary.gaps) == (0, 0)
    assert [b.engine_seconds for b in summary.broadcasts] == [2.5, 1.0]
    assert summary.broadcasts[0].p99_ms == 450
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = paths["txt"].read_text()
    assert "50 real" in text and "1000 simulated" in text and "result: OK" in text
    assert json.loads(paths["json"].read_text())["ok"] is True


def test_duplicates_gaps_and_short_deliveries_make_the_run_fail(tmp_path: Path) -> None:
    path = tmp_path / "run_stats.csv"
    write_csv(
        path,
        [
            _row("WS", "connect", 50, 0, 30, 60, 90),
            _row("deliver", "b-1", 48, 0, 200, 400, 450),
            _row("duplicate", "b-1", 1, 1, 200, 200, 200),
            _row("gap", "b-1", 2, 2, 0, 0, 0),
        ],
    )
    broadcasts = [dict(BROADCASTS[0], delivered=1040)]
    simulated = dict(SIMULATED, broadcasts={"b-1": {"frames": 999, "ids": 997, "duplicates": 1}})

    summary = summarize(read_stats(path), broadcasts, simulated)

    [b] = summary.broadcasts
    assert (b.real_received, b.real_duplicates, b.real_gaps) == (48, 1, 2)
    assert (b.simulated_received, b.simulated_duplicates, b.simulated_gaps) == (997, 1, 3)
    assert summary.duplicates == 2 and summary.gaps == 5
    assert not b.complete and not summary.ok
    assert "PROBLEMS" in render_text(summary)


def test_latency_histograms_give_exact_percentiles_and_a_run_wide_figure(tmp_path: Path) -> None:
    write_csv(
        tmp_path / "run_stats.csv",
        [_row("deliver", "b-1", 100, 0, 1, 1, 1), _row("deliver", "b-2", 100, 0, 1, 1, 1)],
    )
    (tmp_path / "broadcasts.json").write_text(json.dumps(BROADCASTS))
    # b-1: 1..100 ms once each; b-2: 100 frames at 1000 ms
    (tmp_path / "latency.json").write_text(
        json.dumps({"b-1": {str(i): 1 for i in range(1, 101)}, "b-2": {"1000": 100}})
    )

    summary, _ = write_reports(tmp_path, "run")

    assert [(b.p50_ms, b.p99_ms) for b in summary.broadcasts] == [(50, 99), (1000, 1000)]
    assert (summary.p50_ms, summary.p95_ms) == (100, 1000)


def test_histogram_percentile_is_nearest_rank() -> None:
    assert histogram_percentile({}, 50) is None
    assert histogram_percentile({10.0: 1, 20.0: 1, 30.0: 1, 40.0: 1}, 50) == 20
    assert histogram_percentile({10.0: 1, 20.0: 1, 30.0: 1, 40.0: 1}, 51) == 30
    assert histogram_percentile({5.0: 3}, 100) == 5


def test_broadcasts_known_only_from_the_csv_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "run_stats.csv"
    write_csv(path, [_row("deliver", "other", 10, 0, 5, 6, 7)])
    summary = summarize(read_stats(path), [])
    assert [(b.broadcast_id, b.status, b.real_received) for b in summary.broadcasts] == [
        ("other", "unknown", 10)
    ]


def test_a_run_where_nothing_happened_is_not_ok(tmp_path: Path) -> None:
    path = tmp_path / "run_stats.csv"
    write_csv(path, [])
    summary = summarize(read_stats(path), [])
    assert not summary.ok
    assert "PROBLEMS" in render_text(summary)


MIXED = [
    dict(BROADCASTS[0], broadcastId="e-1", index=1, audience="everyone", to=None),
    dict(BROADCASTS[0], broadcastId="c-2", index=2, audience="channels", to={"channels": ["lt:0", "lt:3"]}),
    dict(BROADCASTS[0], broadcastId="u-3", index=3, audience="users", to={"users": ["loadtest-a"]}),
    dict(BROADCASTS[0], broadcastId="c-4", index=4, audience="channels", to={"channels": ["lt:1"]}),
]


def test_exactness_is_counted_per_connection_and_channel_for_each_audience(tmp_path: Path) -> None:
    # Given 50 users; a channels broadcast expected on 40 (connection, channel) pairs of which 39 arrived,
    # one twice, and one frame where no connection expected it; a users broadcast to 3 connections
    path = tmp_path / "run_stats.csv"
    write_csv(
        path,
        [
            _row("WS", "connect", 50, 0, 30, 60, 90),
            _row("expected", "e-1", 50, 0, 0, 0, 0),
            _row("deliver", "e-1", 50, 0, 100, 150, 160),
            _row("expected", "c-2", 40, 0, 0, 0, 0),
            _row("deliver", "c-2", 40, 0, 100, 150, 160),
            _row("duplicate", "c-2", 1, 1, 100, 100, 100),
            _row("gap", "c-2", 1, 1, 0, 0, 0),
            _row("unexpected", "c-2", 1, 1, 0, 0, 0),
            _row("expected", "u-3", 3, 0, 0, 0, 0),
            _row("deliver", "u-3", 3, 0, 100, 150, 160),
            _row("expected", "c-4", 20, 0, 0, 0, 0),
            _row("deliver", "c-4", 20, 0, 100, 150, 160),
        ],
    )

    summary = summarize(read_stats(path), MIXED)

    # Then each broadcast keeps its audience and counts; the kinds add their broadcasts up
    assert [(b.audience, b.real_expected, b.real_missing, b.real_unexpected) for b in summary.broadcasts] == [
        ("everyone", 50, 0, 0),
        ("channels", 40, 1, 1),
        ("users", 3, 0, 0),
        ("channels", 20, 0, 0),
    ]
    by = summary.by_audience
    assert list(by) == ["everyone", "channels", "users"]
    assert (by["channels"].broadcasts, by["channels"].expected, by["channels"].received) == (2, 60, 60)
    assert (by["channels"].duplicates, by["channels"].missing, by["channels"].unexpected) == (1, 1, 1)
    assert by["everyone"].exact and by["users"].exact and not by["channels"].exact
    # and an unexpected frame alone fails the run; the judged rows are not "other failures"
    assert (summary.duplicates, summary.gaps, summary.unexpected, summary.other_failures) == (1, 1, 1, 0)
    assert not summary.ok
    text = render_text(summary)
    assert "unexpected: 1" in text and "NOT EXACT" in text and "channels (2: lt:0,lt:3)" in text
    assert summary.to_json()["by_audience"]["users"] == {
        "broadcasts": 1, "expected": 3, "received": 3, "duplicates": 0, "missing": 0, "unexpected": 0,
        "exact": True,
    }  # fmt: skip


def test_an_exact_mixed_run_is_ok_and_old_results_read_as_everyone(tmp_path: Path) -> None:
    path = tmp_path / "run_stats.csv"
    write_csv(
        path,
        [
            _row("WS", "connect", 10, 0, 30, 60, 90),
            _row("expected", "c-2", 4, 0, 0, 0, 0),
            _row("deliver", "c-2", 4, 0, 100, 150, 160),
            _row("deliver", "b-1", 10, 0, 100, 150, 160),
        ],
    )

    # b-1 comes from a broadcasts.json written before audiences existed
    summary = summarize(read_stats(path), [BROADCASTS[0], dict(MIXED[1], index=2)])

    assert summary.ok and summary.by_audience["channels"].exact
    assert [b.audience for b in summary.broadcasts] == ["everyone", "channels"]
    everyone = summary.by_audience["everyone"]
    assert (everyone.expected, everyone.received, everyone.exact) == (0, 10, True)


def chat_csv(path: Path, *extra: list[str]) -> None:
    write_csv(
        path,
        [
            _row("chat", "connect", 20, 0, 30, 60, 90),
            _row("chat", "reconnect", 8, 0, 30, 60, 90),
            _row("publish", "room:lt-0", 100, 0, 5, 8, 9),
            _row("publish", "room:lt-1", 100, 0, 5, 8, 9),
            _row("receive", "room:lt-0", 1000, 0, 40, 70, 90),
            _row("receive", "room:lt-1", 1000, 0, 45, 75, 95),
            _row("recovered", "room:lt-0", 30, 0, 300, 400, 500),
            _row("chat judged", "room:lt-0", 10, 0, 0, 0, 0),
            _row("chat judged", "room:lt-1", 10, 0, 0, 0, 0),
            *extra,
        ],
    )


def test_a_chat_run_without_broadcasts_reports_each_room_and_is_ok(tmp_path: Path) -> None:
    # Given a run of chat users only: no broadcast, no WebSocket user, two rooms, nothing lost
    chat_csv(tmp_path / "run_stats.csv")
    (tmp_path / "chat_latency.json").write_text(json.dumps({"room:lt-0": {"20": 500, "40": 450, "80": 50}}))

    # When the reports are written
    summary, paths = write_reports(tmp_path, "run")

    # Then the chat section has each room, the histogram's percentiles where there is one
    assert summary.ok and summary.chat is not None
    first, second = summary.chat.rooms
    assert (first.room, first.published, first.received, first.recovered, first.judged) == (
        "room:lt-0",
        100,
        1000,
        30,
        10,
    )
    assert (first.p50_ms, first.p95_ms, first.p99_ms) == (20.0, 40.0, 80.0)
    assert (second.p50_ms, second.p99_ms) == (45.0, 95.0)
    assert (summary.chat.connects, summary.chat.reconnects) == (20, 8)
    text = paths["txt"].read_text()
    assert "chat per room" in text and "chat result: OK" in text and "result: OK" in text
    saved = json.loads(paths["json"].read_text())
    assert saved["ok"] is True and saved["chat"]["ok"] is True
    assert [r["room"] for r in saved["chat"]["rooms"]] == ["room:lt-0", "room:lt-1"]


def test_a_chat_gap_or_duplicate_fails_the_run_and_is_not_counted_twice(tmp_path: Path) -> None:
    chat_csv(
        tmp_path / "run_stats.csv",
        _row("chat gap", "room:lt-1", 2, 2, 0, 0, 0),
        _row("chat duplicate", "room:lt-0", 1, 1, 0, 0, 0),
    )
    summary, paths = write_reports(tmp_path, "run")
    assert summary.chat is not None and not summary.ok
    assert [(r.gaps, r.duplicates) for r in summary.chat.rooms] == [(0, 1), (2, 0)]
    assert summary.other_failures == 0  # the chat section's own, not "other" failures
    assert "PROBLEMS" in paths["txt"].read_text()
    assert json.loads(paths["json"].read_text())["chat"]["rooms"][1]["ok"] is False


def test_a_broadcast_run_has_no_chat_section(tmp_path: Path) -> None:
    write_csv(
        tmp_path / "run_stats.csv",
        [_row("WS", "connect", 5, 0, 1, 2, 3), _row("deliver", "b", 5, 0, 1, 2, 3)],
    )
    summary, paths = write_reports(tmp_path, "run")
    assert summary.chat is None and "chat" not in paths["txt"].read_text()
