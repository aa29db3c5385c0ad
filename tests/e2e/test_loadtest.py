"""A tiny headless Locust run (50 WebSocket users, 1 broadcast) against the shared local stack."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from loadtest import run

pytestmark = pytest.mark.e2e

USERS = 50


def rows(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with path.open(newline="") as f:
        return {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}


def test_50_users_each_receive_the_broadcast_exactly_once(
    local_stack: dict[str, Any], tmp_path: Path
) -> None:
    # Given the running stack's local.json and an empty results directory
    state = tmp_path / "local.json"
    state.write_text(json.dumps(local_stack))
    results = tmp_path / "results"

    # When loadtest/run.py runs Locust headless: 50 users, 1 broadcast, short heartbeats
    code = run.main(
        [
            "--state", str(state), "--results", str(results), "--users", str(USERS),
            "--broadcasts", "1", "--settle", "1", "--grace", "2", "--ping-interval", "4",
        ]
    )  # fmt: skip

    # Then the CSV has one latency row for the broadcast, one receipt per user, and no failures
    stats = rows(results / "run_stats.csv")
    [broadcast] = json.loads((results / "broadcasts.json").read_text())
    bid = broadcast["broadcastId"]
    assert broadcast["status"] == "completed"
    assert broadcast["delivered"] == broadcast["targeted"] >= USERS
    deliver = stats[("deliver", bid)]
    assert int(deliver["Request Count"]) == USERS
    assert float(deliver["Max Response Time"]) >= float(deliver["Min Response Time"]) >= 0
    assert ("duplicate", bid) not in stats
    assert ("gap", bid) not in stats
    assert int(stats[("WS", "connect")]["Request Count"]) == USERS
    assert int(stats[("WS", "ping")]["Request Count"]) >= USERS
    assert int(stats[("operator", "complete broadcast")]["Request Count"]) == 1
    assert {k: r["Failure Count"] for k, r in stats.items() if r["Failure Count"] != "0"} == {}
    # and the reports exist
    assert code == 0
    assert (results / "latency.png").stat().st_size > 0
    assert "result: OK" in (results / "summary.txt").read_text()
    assert (results / "run.html").exists()


def test_channel_and_user_audiences_reach_exactly_the_connections_they_target(
    local_stack: dict[str, Any], tmp_path: Path
) -> None:
    # Given the running stack and 40 users, each in 2 of 4 channels
    state = tmp_path / "local.json"
    state.write_text(json.dumps(local_stack))
    results = tmp_path / "results"

    # When three broadcasts go to everyone, to some channels, then to some users
    code = run.main(
        [
            "--state", str(state), "--results", str(results), "--users", "40", "--broadcasts", "3",
            "--interval", "2", "--settle", "1", "--grace", "2", "--ping-interval", "4",
            "--channels", "4", "--channels-per-user", "2", "--audience", "mixed",
        ]
    )  # fmt: skip

    # Then every broadcast completed, every (connection, channel) frame expected arrived once,
    # and none arrived where it was not expected
    stats = rows(results / "run_stats.csv")
    broadcasts = json.loads((results / "broadcasts.json").read_text())
    assert [b["audience"] for b in broadcasts] == ["everyone", "channels", "users"]
    assert all(b["status"] == "completed" and b["delivered"] == b["targeted"] for b in broadcasts)
    assert broadcasts[1]["to"]["channels"] and broadcasts[2]["to"]["users"]
    for b in broadcasts:
        bid = b["broadcastId"]
        assert int(stats[("expected", bid)]["Request Count"]) == int(stats[("deliver", bid)]["Request Count"])
        assert not {("duplicate", bid), ("gap", bid), ("unexpected", bid)} & stats.keys()
    assert int(stats[("expected", broadcasts[0]["broadcastId"])]["Request Count"]) == 40
    summary = json.loads((results / "summary.json").read_text())
    assert (summary["duplicates"], summary["gaps"], summary["unexpected"]) == (0, 0, 0)
    assert set(summary["by_audience"]) == {"everyone", "channels", "users"}
    assert all(e["exact"] and e["expected"] > 0 for e in summary["by_audience"].values())
    assert code == 0
