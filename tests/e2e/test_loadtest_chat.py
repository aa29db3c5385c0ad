"""A short headless Locust run of chat users on the shared local stack: rooms, publishes at a rate,
deliberate drops without a close frame, reconnects with `?recover=`, and the report's chat section."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from loadtest import run

pytestmark = pytest.mark.e2e

CHAT_USERS = 10
ROOMS = ("room:lt-0", "room:lt-1")


def rows(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with path.open(newline="") as f:
        return {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}


def test_chat_users_reconnect_and_recover_with_no_gap_and_no_duplicate(
    local_stack: dict[str, Any], tmp_path: Path
) -> None:
    # Given the running stack's local.json and an empty results directory
    state = tmp_path / "local.json"
    state.write_text(json.dumps(local_stack))
    results = tmp_path / "results"

    # When 10 chat users in 2 rooms publish a message every 2 s for 20 s, each dropping every ~6 s
    # (every publish is a broadcast: 5 a second is what the local stack carries on 2 shared cores)
    code = run.main(
        [
            "--state", str(state), "--results", str(results), "--users", "0", "--broadcasts", "0",
            "--chat-users", str(CHAT_USERS), "--rooms", "2", "--rooms-per-user", "1",
            "--publish-rate", "0.5", "--reconnect-every", "6s", "--duration", "20",
            "--settle", "1", "--grace", "5",
        ]
    )  # fmt: skip

    # Then every user reconnected with recover at least once, and every room's messages reached every
    # member once: no gap, no duplicate, no refused publish, no failed recovery
    stats = rows(results / "run_stats.csv")
    assert int(stats[("chat", "connect")]["Request Count"]) == CHAT_USERS
    assert int(stats[("chat", "reconnect")]["Request Count"]) >= CHAT_USERS
    summary = json.loads((results / "summary.json").read_text())
    chat = summary["chat"]
    assert [r["room"] for r in chat["rooms"]] == list(ROOMS)
    for room in chat["rooms"]:
        assert room["published"] > 0 and room["received"] >= room["published"]
        assert (room["gaps"], room["duplicates"], room["publish_failures"]) == (0, 0, 0)
        assert room["p50_ms"] is not None and room["p99_ms"] >= room["p50_ms"]
    assert (chat["recovery_impossible"], chat["connect_failures"], chat["reconnect_failures"]) == (0, 0, 0)
    assert chat["ok"] and summary["ok"]
    assert "chat result: OK" in (results / "summary.txt").read_text()
    assert code == 0
