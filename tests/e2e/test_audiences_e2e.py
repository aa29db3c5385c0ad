"""Audiences on the whole local stack: 1,000 real WebSocket clients over 10 channels, channel
broadcasts, a user-targeted send and an everyone-broadcast, each frame exactly once where it belongs
and nowhere else, with exact counts; refusals at connect and at run time."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from fanout.tokens import issue_token
from fanout.tools.operator_client import OperatorClient
from infra.local.clients import Client, ClientSwarm
from infra.local.demo import registered_connections, table_rows, wait_registered

pytestmark = pytest.mark.e2e

CLIENTS = 1_000
CHANNELS = [f"ch:{n}" for n in range(10)]
SUBSCRIPTIONS = "fanout-subscriptions"


def channels_of(index: int) -> list[str]:
    """1 to 3 overlapping channels per client, spread over the 10."""
    return [CHANNELS[(index + k * 3) % 10] for k in range(1 + index % 3)]


def user_of(index: int) -> str:
    return f"e2e-user-{index // 2}"  # two connections per user


async def wait_for(check: Callable[[], bool], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def frames_of(client: Client, n: int) -> list[Any]:
    await wait_for(lambda: len(client.other_frames) >= n, timeout=10)
    return client.other_frames[:n]


async def send(
    api: OperatorClient, swarm: ClientSwarm, expected: Counter[tuple[int, str | None]], **to: list[str]
) -> tuple[dict[str, Any], Counter[tuple[int, str | None]]]:
    """Start a broadcast, wait for it to complete and for the expected frames (no more may come: a
    frame that should not arrive would have been posted before the counts completed)."""
    bid = await asyncio.to_thread(api.start, {"to": to or "everyone"}, to=to or None)
    view = await asyncio.to_thread(api.wait, bid, timeout=120, interval=0.05)
    await wait_for(lambda: sum(swarm.channel_receipts(bid).values()) >= sum(expected.values()))
    return view, swarm.channel_receipts(bid)


async def test_1000_clients_in_10_channels_get_each_frame_once_where_it_belongs(
    local_stack: dict[str, Any],
) -> None:
    secret = local_stack["tokenSecret"]
    api = OperatorClient(local_stack["httpApiUrl"], bearer_token=local_stack["operatorToken"])
    base = await asyncio.to_thread(registered_connections, local_stack)
    rows_before = await asyncio.to_thread(table_rows, local_stack, SUBSCRIPTIONS)
    async with ClientSwarm(local_stack["websocketUrl"], local_stack["connectToken"]) as swarm:
        clients = await swarm.open(
            CLIENTS,
            token_for=lambda i: issue_token(secret, user_of(i), 3600, channels=["ch:*"]),
            params_for=lambda i: {"channels": ",".join(channels_of(i))},
        )
        assert len(clients) == CLIENTS
        await wait_registered(local_stack, base + CLIENTS)
        indexes = [c.index for c in clients]
        members = {name: [i for i in indexes if name in channels_of(i)] for name in CHANNELS}

        # three channel broadcasts: one frame per (member, targeted channel), naming the channel
        for targets in (["ch:0"], ["ch:1", "ch:2"], ["ch:3", "ch:4", "ch:5", "ch:3"]):
            want = Counter({(i, name): 1 for name in dict.fromkeys(targets) for i in members[name]})
            view, got = await send(api, swarm, want, channels=targets)
            assert got == want
            assert view["status"] == "completed"
            assert view["to"] == {"channels": list(dict.fromkeys(targets))}
            assert (view["targeted"], view["delivered"]) == (sum(want.values()), sum(want.values()))
            assert (view["gone"], view["failed"]) == (0, 0)
            counts = {name: len(members[name]) for name in dict.fromkeys(targets)}
            assert view["channels"] == {
                name: {"targeted": n, "delivered": n, "gone": 0, "failed": 0} for name, n in counts.items()
            }

        # a user-targeted send: both connections of each of five users, no channel named
        users = [user_of(i) for i in (10, 11, 200, 201, 560, 999, 998, 42, 7)]
        want = Counter({(i, None): 1 for i in indexes if user_of(i) in users})
        assert len(want) == 12  # six users, two connections each
        view, got = await send(api, swarm, want, users=users)
        assert got == want
        assert (view["status"], view["targeted"], view["delivered"]) == ("completed", 12, 12)

        # an everyone-broadcast: every client once
        want = Counter({(i, None): 1 for i in indexes})
        view, got = await send(api, swarm, want)
        assert got == want
        assert (view["status"], view["delivered"]) == ("completed", base + CLIENTS)

        # occupancy follows the subscriptions (stream-fed)
        expected = {"channel": "ch:7", "connections": len(members["ch:7"]), "users": len(
            {user_of(i) for i in members["ch:7"]}
        )}  # fmt: skip
        assert await wait_for(lambda: api.channel("ch:7") == expected)
    # closing the sockets runs $disconnect: every subscription row goes with its connection
    assert await wait_for(lambda: table_rows(local_stack, SUBSCRIPTIONS) == rows_before, timeout=60)
    await wait_registered(local_stack, base)


async def test_subscriptions_the_token_does_not_allow_are_refused_at_connect_and_at_run_time(
    local_stack: dict[str, Any],
) -> None:
    secret = local_stack["tokenSecret"]
    rows = await asyncio.to_thread(table_rows, local_stack, "fanout-connections")
    subscriptions = await asyncio.to_thread(table_rows, local_stack, SUBSCRIPTIONS)
    room_token = issue_token(secret, "e2e-refusals", 3600, channels=["room:*", "lobby"])
    async with ClientSwarm(local_stack["websocketUrl"], local_stack["connectToken"]) as swarm:
        # at connect: a channel outside the token's patterns, a token without the claim, a bad name
        assert await swarm.try_open(room_token, {"channels": "room:1,secret"}) is None
        assert await swarm.try_open(local_stack["connectToken"], {"channels": "lobby"}) is None
        assert await swarm.try_open(room_token, {"channels": "room 1"}) is None
        assert swarm.refused == 3
        assert await asyncio.to_thread(table_rows, local_stack, "fanout-connections") == rows
        assert await asyncio.to_thread(table_rows, local_stack, SUBSCRIPTIONS) == subscriptions

        # at run time
        client = await swarm.try_open(room_token, {"channels": "lobby"})
        assert client is not None
        for frame in (
            {"action": "subscribe", "channel": "secret"},
            {"action": "subscribe", "channel": "bad name"},
            {"action": "subscribe", "channel": "room:7"},
            {"action": "unsubscribe", "channel": "lobby"},
        ):
            await client.ws.send_str(json.dumps(frame))
        answers = await frames_of(client, 4)
        assert [(a["type"], a.get("code"), a.get("channel")) for a in answers] == [
            ("error", "forbidden", None),
            ("error", "invalid_channel", None),
            ("subscribed", None, "room:7"),
            ("unsubscribed", None, "lobby"),
        ]
        assert all(a["action"] == "subscribe" and a["message"] for a in answers[:2])

        # what it subscribed to at run time reaches it; what it left does not
        api = OperatorClient(local_stack["httpApiUrl"], bearer_token=local_stack["operatorToken"])
        want = Counter({(client.index, "room:7"): 1})
        view, got = await send(api, swarm, want, channels=["room:7", "lobby"])
        assert got == want
        assert view["channels"]["lobby"]["targeted"] == 0
