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
