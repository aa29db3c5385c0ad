"""No one in where they don't belong, through the whole local stack: real sockets,
the gateway emulator, the runtime.

- the operator API refuses calls without the operator's bearer token (locally; IAM in AWS);
- a WebSocket without a valid token is refused at the handshake and leaves no row;
- a connection cannot make the engine broadcast, and cannot disconnect or address another connection;
  the `@connections` API cannot be reached as a WebSocket.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from typing import Any

import aiohttp
import jwt
import pytest

from infra.local.clients import ClientSwarm
from infra.local.demo import table_rows

pytestmark = pytest.mark.e2e


def count(state: dict[str, Any], table: str) -> int:
    return table_rows(state, table)


def operator(
    state: dict[str, Any], method: str, path: str, body: Any, headers: dict[str, str]
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        state["httpApiUrl"] + path,
        data=data,
        method=method,
        headers={"Content-Type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": "Basic b3BlcmF0b3I6cGFzc3dvcmQ="},
        {"Authorization": "AWS4-HMAC-SHA256 Credential=AKIA/20261122/us-east-1/execute-api/aws4_request"},
    ],
    ids=["none", "empty bearer", "wrong bearer", "basic", "forged sigv4"],
)
def test_the_operator_api_refuses_calls_without_the_operator_token(
    local_stack: dict[str, Any], headers: dict[str, str]
) -> None:
    before = count(local_stack, "fanout-broadcasts")
    status, body = operator(local_stack, "POST", "/broadcasts", {"message": "let me in"}, headers)
    assert status == 401, body
    status, _ = operator(
        local_stack, "GET", "/broadcasts/00000000-0000-0000-0000-000000000000", None, headers
    )
    assert status == 401
    assert count(local_stack, "fanout-broadcasts") == before
    # and the right token works (the refusals above were about the token)
    ok = {"Authorization": f"Bearer {local_stack['operatorToken']}"}
    assert (
        operator(local_stack, "GET", "/broadcasts/00000000-0000-0000-0000-000000000000", None, ok)[0] == 404
    )


async def test_websockets_without_a_valid_token_are_refused_and_leave_no_row(
    local_stack: dict[str, Any],
) -> None:
    now = int(time.time())
    good = local_stack["connectToken"]
    claims = jwt.decode(good, options={"verify_signature": False})
    bad = [
        None,
        "",
        "garbage",
        good[:-3] + ("AAA" if not good.endswith("AAA") else "BBB"),
        jwt.encode({**claims, "exp": now - 10}, local_stack["tokenSecret"], algorithm="HS256"),
        jwt.encode({**claims, "sub": "admin"}, "not-the-secret-0123456789abcdef012", algorithm="HS256"),
        jwt.encode(claims, local_stack["tokenSecret"], algorithm="HS512"),
        jwt.encode(claims, None, algorithm="none"),
        "A" * 20_000,
    ]
    rows = count(local_stack, "fanout-connections")
    async with ClientSwarm(local_stack["websocketUrl"], good) as swarm:
        for token in bad:
            assert await swarm.try_open(token) is None, token
        assert swarm.refused == len(bad)
    assert count(local_stack, "fanout-connections") == rows


async def test_the_connections_api_cannot_be_reached_as_a_websocket(local_stack: dict[str, Any]) -> None:
    async with ClientSwarm(local_stack["websocketUrl"], local_stack["connectToken"]) as swarm:
        [victim] = await swarm.open(1)
        target = local_stack["websocketUrl"] + "/@connections/anything"
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await session.ws_connect(target, params={"token": local_stack["connectToken"]})
        assert not victim.closed.is_set()


async def test_a_connection_cannot_broadcast_post_to_or_disconnect_another(
    local_stack: dict[str, Any],
) -> None:
    async with ClientSwarm(local_stack["websocketUrl"], local_stack["connectToken"]) as swarm:
        mallory, victim = await swarm.open(2)
        connections = json.loads(
            await asyncio.to_thread(
                lambda: urllib.request.urlopen(local_stack["adminUrl"] + "/connections").read()
            )
        )
        other = connections["connectionIds"][-1]  # a real id of another live connection
        broadcasts = count(local_stack, "fanout-broadcasts")
        attempts = [
            {"action": "broadcast", "message": "hi all"},
            {"action": "sendmessage", "message": "hi all", "id": "m1"},  # known, but the token lacks $all
            {"action": "postToConnection", "connectionId": other, "data": "psst"},
            {"action": "disconnect", "connectionId": other},
            {"action": "deleteConnection", "connectionId": other},
            {"action": "$disconnect", "connectionId": other},
            {"action": "$connect"},
        ]
        for a in attempts:
            await mallory.ws.send_str(json.dumps(a))
        await mallory.ws.send_str('{"action":"ping"}')
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(mallory.other_frames) < len(attempts) + 1:
            await asyncio.sleep(0.05)
        frames = mallory.other_frames
        assert len(frames) == len(attempts) + 1, frames
        errors = {f["action"]: f for f in frames[:-1] if f["type"] == "error"}
        assert set(errors) == {a["action"] for a in attempts}, frames
        assert errors["sendmessage"]["code"] == "forbidden" and errors["sendmessage"]["id"] == "m1"
        assert all("unknown action" in f["message"] for a, f in errors.items() if a != "sendmessage")
        assert frames[-1] == {"type": "pong"}
        await asyncio.sleep(0.5)
        assert not victim.closed.is_set() and not mallory.closed.is_set()
        assert victim.receipts == [] and victim.other_frames == []
        assert count(local_stack, "fanout-broadcasts") == broadcasts
