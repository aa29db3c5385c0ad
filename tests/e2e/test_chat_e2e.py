"""Client messages on the whole local stack, as the chat systems this engine grew from do them: real
WebSocket clients send on $default, and the frames arrive through the pipeline, once each, from the
sender's token's user."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from fanout.tokens import issue_token
from fanout.tools.operator_client import OperatorClient
from infra.local.clients import Client, ClientSwarm
from infra.local.demo import registered_connections, wait_registered

pytestmark = pytest.mark.e2e


async def wait_for(check: Callable[[], bool], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def answer(client: Client, frame: dict[str, Any]) -> dict[str, Any]:
    """Send one frame and wait for the answer that names its id (an ack or an error)."""
    seen = len(client.other_frames)
    await client.ws.send_str(json.dumps(frame))

    def answered() -> list[Any]:
        return [f for f in client.other_frames[seen:] if isinstance(f, dict) and f.get("id") == frame["id"]]

    assert await wait_for(lambda: bool(answered()), timeout=20), f"no answer to {frame}"
    (reply,) = answered()
    return dict(reply)


def senders(swarm: ClientSwarm, broadcast_id: str) -> Counter[tuple[int, str | None]]:
    """(client index, from) of every frame of that broadcast."""
    return Counter(
        (c.index, r.sender) for c in swarm.clients for r in c.receipts if r.broadcast_id == broadcast_id
    )


async def test_dynamowave_chat_sendmessage_relays_to_every_connection(local_stack: dict[str, Any]) -> None:
    """DynamoWave chat: a client sends {"action":"sendmessage","message":...} and every connected client
    receives it (here: once each, its sender named from the token, behind the authorizer)."""
    secret = local_stack["tokenSecret"]
    api = OperatorClient(local_stack["httpApiUrl"], bearer_token=local_stack["operatorToken"])
    base = await asyncio.to_thread(registered_connections, local_stack)
    async with ClientSwarm(local_stack["websocketUrl"], local_stack["connectToken"]) as swarm:
        clients = await swarm.open(
            30, token_for=lambda i: issue_token(secret, f"chatter-{i}", 3600, publish=["$all"])
        )
        assert len(clients) == 30
        await wait_registered(local_stack, base + 30)

        # Given 30 chatters, when chatter 7 sends a message with neither "to" nor "channel"
        sender = clients[7]
        mid = str(uuid.uuid4())
        ack = await answer(sender, {"action": "sendmessage", "message": {"text": "hello, all"}, "id": mid})

        # Then it is acknowledged, and every connection (the sender's own too) gets it once, from it
        assert ack == {"type": "ack", "id": mid, "broadcastId": ack["broadcastId"]}
        bid = ack["broadcastId"]
        view = await asyncio.to_thread(api.wait, bid, timeout=120, interval=0.05)
        assert (view["status"], view["targeted"], view["delivered"]) == ("completed", base + 30, base + 30)
        want = Counter({(c.index, f"chatter-{sender.index}"): 1 for c in clients})
        assert await wait_for(lambda: senders(swarm, bid) == want)

        # the same id again is the same message: the first ack, nothing sent twice
        again = await answer(sender, {"action": "sendmessage", "message": {"text": "hello, all"}, "id": mid})
        assert again == ack
        # a client whose token lacks $all cannot relay to everyone
        mute = await swarm.try_open(issue_token(secret, "mute", 3600, publish=["room:*"]))
        assert mute is not None
        refused = await answer(mute, {"action": "sendmessage", "message": "x", "id": "m-1"})
        assert (refused["type"], refused["code"], refused["action"]) == ("error", "forbidden", "sendmessage")
        assert senders(swarm, bid) == want
    await wait_registered(local_stack, base)


async def test_serverless_websockets_direct_message_to_another_player(local_stack: dict[str, Any]) -> None:
    """serverless-websockets: one player's message reaches the other player (every connection of
    theirs) and no one else; the sender is who the token says, not who the frame claims."""
    secret = local_stack["tokenSecret"]
    api = OperatorClient(local_stack["httpApiUrl"], bearer_token=local_stack["operatorToken"])
    base = await asyncio.to_thread(registered_connections, local_stack)
    players = ["player-1", "player-1", "player-2", "player-2", "player-3"]  # two devices for 1 and 2
    async with ClientSwarm(local_stack["websocketUrl"], local_stack["connectToken"]) as swarm:
        clients = await swarm.open(
            len(players), token_for=lambda i: issue_token(secret, players[i], 3600, publish=["$user"])
        )
        assert len(clients) == len(players)
        await wait_registered(local_stack, base + len(players))
        by_index = {c.index: players[c.index] for c in clients}
        p1 = next(c for c in clients if by_index[c.index] == "player-1")

        # a frame claiming another sender is refused, and sends nothing
        spoof = {"action": "sendmessage", "to": "player-2", "message": "x", "id": "spoof", "from": "player-3"}
        refused = await answer(p1, spoof)
        assert (refused["type"], refused["code"], refused["id"]) == ("error", "invalid", "spoof")

        # player 1 moves: player 2's two connections get it, from player 1; no one else does
        ack = await answer(
            p1, {"action": "sendmessage", "to": "player-2", "message": {"move": "e4"}, "id": "mv-1"}
        )
        assert ack["type"] == "ack"
        bid = ack["broadcastId"]
        view = await asyncio.to_thread(api.wait, bid, timeout=120, interval=0.05)
        assert (view["status"], view["targeted"], view["delivered"]) == ("completed", 2, 2)
        want = Counter({(c.index, "player-1"): 1 for c in clients if by_index[c.index] == "player-2"})
        assert await wait_for(lambda: senders(swarm, bid) == want)
        assert len(want) == 2
        # nothing else arrived anywhere: the spoofed frame started no broadcast
        assert all(len(c.receipts) == (1 if by_index[c.index] == "player-2" else 0) for c in clients)
    await wait_registered(local_stack, base)
