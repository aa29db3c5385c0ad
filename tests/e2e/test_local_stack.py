"""The whole local stack: real WebSocket clients, the gateway emulator, the runtime, the emulators."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from typing import Any

import pytest

from infra.local.clients import ClientSwarm
from infra.local.demo import registered_connections, run_broadcasts, table_rows, wait_registered

pytestmark = pytest.mark.e2e


def connection_rows(state: dict[str, Any]) -> int:
    return table_rows(state, "fanout-connections")


def traced_span_names(lambda_url: str, broadcast_id: str, timeout: float = 30) -> set[str]:
    """Names of the subsegments annotated with this broadcast that the runtime's X-Ray sink received,
    once the swarm, query and post stages have all sent theirs (they do as their invocations end)."""
    wanted = {"swarm", "query.partition", "post.batch"}
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(f"{lambda_url}/_local/traces") as resp:
            docs = json.load(resp)["documents"]
        names = {d["name"] for d in docs if (d.get("annotations") or {}).get("broadcastId") == broadcast_id}
        if wanted <= names or time.monotonic() > deadline:
            return names
        time.sleep(0.2)


async def test_200_clients_receive_a_broadcast_exactly_once_with_exact_counts(
    local_stack: dict[str, Any],
) -> None:
    base = await asyncio.to_thread(registered_connections, local_stack)
    async with ClientSwarm(local_stack["websocketUrl"], local_stack["connectToken"]) as swarm:
        await swarm.open(200)
        assert len(swarm.live()) == 200
        await wait_registered(local_stack, base + 200)

        [report] = await run_broadcasts(local_stack, swarm, count=1)

        assert report.view["status"] == "completed"
        assert report.view["targeted"] == base + 200
        assert report.view["delivered"] == base + 200
        assert (report.view["gone"], report.view["failed"]) == (0, 0)
        assert report.missing == 0
        assert report.duplicates == 0
        assert report.received_once == 200
    # the runtime ran every invocation traced and sampled: each stage's spans reached its daemon sink
    bid = report.view["broadcastId"]
    names = await asyncio.to_thread(traced_span_names, local_stack["lambdaUrl"], bid)
    assert {"swarm", "query.partition", "post.batch"} <= names
    # closing the sockets runs $disconnect: the rows and the counters go back
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and connection_rows(local_stack) != base:
        await asyncio.sleep(0.2)
    assert connection_rows(local_stack) == base
    await wait_registered(local_stack, base)


KILLED_CLIENTS = textwrap.dedent(
    """
    import asyncio, sys
    from infra.local.clients import ClientSwarm

    async def main() -> None:
        async with ClientSwarm(sys.argv[1], sys.argv[2]) as swarm:
            await swarm.open(int(sys.argv[3]))
            print(len(swarm.live()), flush=True)
            await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


async def test_clients_killed_without_a_close_frame_end_gone_or_disconnected(
    local_stack: dict[str, Any],
) -> None:
    base = await asyncio.to_thread(registered_connections, local_stack)
    # Given 20 clients in another process, and 30 here
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            KILLED_CLIENTS,
            local_stack["websocketUrl"],
            local_stack["connectToken"],
            "20",
        ],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "20"
        async with ClientSwarm(local_stack["websocketUrl"], local_stack["connectToken"]) as swarm:
            await swarm.open(30)
            await wait_registered(local_stack, base + 50)

            # When the 20 are killed (no close frame) and a broadcast starts at once
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            [report] = await run_broadcasts(local_stack, swarm, count=1)

            # Then the live clients got it once, and the killed ones were never counted as delivered:
            # either the gateway had already run $disconnect (not targeted) or the post got 410 (gone)
            view = report.view
            assert view["status"] == "completed"
            assert view["delivered"] == base + 30
            assert view["failed"] == 0
            assert view["targeted"] == base + 30 + view["gone"]
            assert view["gone"] <= 20
            assert (report.received_once, report.duplicates, report.missing) == (30, 0, 0)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    # and in the end none of the killed connections is left in the table
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and connection_rows(local_stack) != base:
        await asyncio.sleep(0.2)
    assert connection_rows(local_stack) == base


async def test_a_client_without_a_valid_token_is_refused_and_leaves_no_row(
    local_stack: dict[str, Any],
) -> None:
    rows = connection_rows(local_stack)
    async with ClientSwarm(local_stack["websocketUrl"], local_stack["connectToken"]) as swarm:
        assert await swarm.try_open(None) is None
        assert await swarm.try_open(local_stack["connectToken"][:-4] + "AAAA") is None
        assert swarm.refused == 2
    assert connection_rows(local_stack) == rows


async def test_ping_gets_pong_and_unknown_actions_get_an_error_frame(local_stack: dict[str, Any]) -> None:
    async with ClientSwarm(local_stack["websocketUrl"], local_stack["connectToken"]) as swarm:
        [client] = await swarm.open(1)
        await client.ws.send_str('{"action":"ping"}')
        await client.ws.send_str('{"action":"launch-missiles"}')
        await client.ws.send_str("not json")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(client.other_frames) < 3:
            await asyncio.sleep(0.05)
        frames = client.other_frames
        assert frames[0] == {"type": "pong"}
        assert frames[1]["type"] == "error" and "launch-missiles" in frames[1]["error"]
        assert frames[2]["type"] == "error"
