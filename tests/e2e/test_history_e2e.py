"""History and recovery on the whole local stack: a member drops without a close frame, misses
channel messages, reconnects with ``?recover=`` and gets exactly the missed ones, in offset order,
then the new ones; a wrong epoch is told it cannot recover; the operator reads the same history."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from fanout.tokens import issue_token
from fanout.tools.operator_client import OperatorApiError, OperatorClient

pytestmark = pytest.mark.e2e


async def wait_for(check: Callable[[], bool], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


class Member:
    """One WebSocket client on its own session (so that it can vanish without a close frame)."""

    def __init__(self, url: str, token: str, params: dict[str, str]) -> None:
        self.url, self.params = url, {"token": token, **params}
        self.frames: list[dict[str, Any]] = []
        self.session = aiohttp.ClientSession()
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.reader: asyncio.Task[None] | None = None

    async def open(self) -> Member:
        self.ws = await self.session.ws_connect(self.url, params=self.params, heartbeat=None)
        self.reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.frames.append(json.loads(msg.data))

    def channel_frames(self, channel: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f.get("type") == "broadcast" and f.get("channel") == channel]

    async def drop(self) -> None:
        """Gone without a close frame: the TCP connection is torn down under the WebSocket."""
        assert self.ws is not None
        sock = self.ws.get_extra_info("socket")
        assert sock is not None
        sock.shutdown(socket.SHUT_RDWR)
        if self.reader is not None:
            await asyncio.wait([self.reader], timeout=10)
        await self.session.close()

    async def close(self) -> None:
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()
        await self.session.close()


async def broadcast(api: OperatorClient, channel: str, message: Any) -> dict[str, Any]:
    bid = await asyncio.to_thread(api.start, message, to={"channels": [channel]})
    return await asyncio.to_thread(api.wait, bid, timeout=60, interval=0.05)


async def test_a_dropped_member_recovers_exactly_what_it_missed_then_takes_new_messages(
    local_stack: dict[str, Any],
) -> None:
    api = OperatorClient(local_stack["httpApiUrl"], bearer_token=local_stack["operatorToken"])
    url = local_stack["websocketUrl"]
    room = f"room:e2e-{uuid.uuid4().hex[:8]}"
    token = issue_token(local_stack["tokenSecret"], "e2e-history", 3600, channels=["room:*"])
    # Given a member and a witness of one room, who both got the room's first two messages
    member = await Member(url, token, {"channels": room}).open()
    witness = await Member(url, token, {"channels": room}).open()
    try:
        for n in range(2):
            await broadcast(api, room, {"n": n})
        assert await wait_for(lambda: len(member.channel_frames(room)) == 2)
        last = member.channel_frames(room)[-1]
        seen, epoch = last["offset"], last["epoch"]
        assert [f["offset"] for f in member.channel_frames(room)] == [1, 2]

        # When the member drops without a close frame and three messages are sent meanwhile
        await member.drop()
        for n in range(2, 5):
            await broadcast(api, room, {"n": n})
        assert await wait_for(lambda: len(witness.channel_frames(room)) == 5)

        # and it reconnects with ?recover=<room>:<offset>:<epoch> while two more are sent
        back = await Member(url, token, {"recover": f"{room}:{seen}:{epoch}"}).open()
        try:
            for n in range(5, 7):
                await broadcast(api, room, {"n": n})
            assert await wait_for(lambda: len(witness.channel_frames(room)) == 7)
            assert await wait_for(lambda: len(back.channel_frames(room)) >= 5)

            # Then it got 3..7 exactly once each, in offset order: the missed ones, then the new ones
            got = back.channel_frames(room)
            assert [f["offset"] for f in got] == [3, 4, 5, 6, 7]
            assert [f["data"] for f in got] == [{"n": n} for n in range(2, 7)]
            assert {f["epoch"] for f in got} == {epoch}
            assert got == witness.channel_frames(room)[2:]  # the very envelopes the others received
            assert not [f for f in back.frames if f.get("type") == "error"]

            # and the operator reads the same history
            page = await asyncio.to_thread(api.history, room, seen, epoch)
            assert page["epoch"] == epoch and page["more"] is False
            assert page["messages"] == got
        finally:
            await back.close()
    finally:
        await witness.close()
        await member.close()


async def test_recovering_with_a_wrong_epoch_is_refused_then_live(local_stack: dict[str, Any]) -> None:
    api = OperatorClient(local_stack["httpApiUrl"], bearer_token=local_stack["operatorToken"])
    room = f"room:e2e-{uuid.uuid4().hex[:8]}"
    token = issue_token(local_stack["tokenSecret"], "e2e-history", 3600, channels=["room:*"])
    await broadcast(api, room, "before")
    # a recover item with another epoch: an error frame saying so, with the channel's current epoch
    client = await Member(local_stack["websocketUrl"], token, {"recover": f"{room}:1:stale-epoch"}).open()
    try:
        assert await wait_for(lambda: any(f.get("type") == "error" for f in client.frames))
        (error,) = [f for f in client.frames if f.get("type") == "error"]
        assert error["code"] == "recovery_impossible" and error["channel"] == room
        current = error["epoch"]
        assert current and current != "stale-epoch"
        # then the connection takes the channel's new messages live
        await broadcast(api, room, "after")
        assert await wait_for(lambda: len(client.channel_frames(room)) == 1)
        assert [(f["offset"], f["data"]) for f in client.channel_frames(room)] == [(2, "after")]
        # the history action answers the same on the socket, and the operator API answers 410
        assert client.ws is not None
        await client.ws.send_str(json.dumps({"action": "history", "channel": room, "since": 0, "epoch": "x"}))
        assert await wait_for(lambda: sum(f.get("type") == "error" for f in client.frames) == 2)
        assert client.frames[-1]["code"] == "recovery_impossible"
        with pytest.raises(OperatorApiError) as gone:
            await asyncio.to_thread(api.history, room, 0, "stale-epoch")
        assert gone.value.status == 410 and gone.value.body["code"] == "recovery_impossible"
        # a recover item that is not channel:offset:epoch is refused at connect, with no socket
        bad = Member(local_stack["websocketUrl"], token, {"recover": f"{room}:x"})
        try:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await bad.open()
        finally:
            await bad.session.close()
        assert refused.value.status == 400
    finally:
        await client.close()
