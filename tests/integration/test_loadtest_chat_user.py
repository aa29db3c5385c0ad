"""The locustfile's ChatUser end to end against a scripted chat engine: publish and ack with offsets,
room envelopes, `?recover=` at reconnect, and the bookkeeping the load test reports from them (receipts,
recovered messages, gaps and duplicates per (lineage, room) across the reconnect).

The engine is a small aiohttp WebSocket server in a thread of this process that implements only what
the chat user relies on; the users run in a process of their own (`chat_user_driver.py`: Locust patches
its process with gevent), step by step, waiting on frames, never on the clock.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSMsgType, web

from fanout.tokens import TokenClaims, verify_token
from infra.local.procs import free_port

DRIVER = Path(__file__).with_name("chat_user_driver.py")
SECRET = "chat-user-test-secret-0123456789abcdef"
EPOCH = "e1"
ROOMS = ("room:lt-0", "room:lt-1")


@dataclass
class Script:
    """How the engine misbehaves at recovery, per room."""

    skip: dict[str, int] = field(default_factory=dict)  # leave out the n-th replayed message (1-based)
    replay_again: set[str] = field(default_factory=set)  # replay from one offset too early
    impossible: bool = False  # answer every recover item with recovery_impossible


class ScriptedChat:
    """Just enough of the chat contract: `?channels=`, publish → ack with an offset and an envelope to
    every member (the sender included), idempotent ids per user, `?recover=` replayed right after the
    connect and before anything new."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.history: dict[str, list[dict[str, Any]]] = {}
        self.members: dict[str, set[asyncio.Queue[str | None]]] = {}
        self.acks: dict[tuple[str, str], str] = {}
        self.connects: list[tuple[TokenClaims, list[str], str]] = []
        self.publishes = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        claims = verify_token(SECRET, request.query.get("token"))
        channels = [c for c in request.query.get("channels", "").split(",") if c]
        recover = request.query.get("recover", "")
        self.connects.append((claims, channels, recover))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        outbox: asyncio.Queue[str | None] = asyncio.Queue()
        # in one step, with no await: what was missed, then membership, so nothing new comes first
        for item in [i for i in recover.split(",") if i]:
            channel, offset, epoch = item.rsplit(":", 2)
            self.replay(outbox, channel, int(offset), epoch)
        for channel in channels:
            self.members.setdefault(channel, set()).add(outbox)
        writer = asyncio.create_task(self.write(ws, outbox))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self.on_frame(claims.sub, outbox, json.loads(msg.data))
        finally:
            for channel in channels:
                self.members[channel].discard(outbox)
            outbox.put_nowait(None)
            await writer
        return ws

    def replay(self, outbox: asyncio.Queue[str | None], channel: str, after: int, epoch: str) -> None:
        if self.script.impossible or epoch != EPOCH:
            error = {"type": "error", "action": None, "code": "recovery_impossible", "channel": channel,
                     "message": "the missed messages are no longer kept"}  # fmt: skip
            outbox.put_nowait(json.dumps(error))
            return
        since = after - 1 if channel in self.script.replay_again else after
        missed = [e for e in self.history.get(channel, []) if e["offset"] > since]
        skip = self.script.skip.get(channel)
        for n, envelope in enumerate(missed, start=1):
            if n != skip:
                outbox.put_nowait(json.dumps(envelope))

    def on_frame(self, sub: str, outbox: asyncio.Queue[str | None], frame: dict[str, Any]) -> None:
        if frame.get("action") != "publish":
            return
        key = (sub, str(frame["id"]))
        if key in self.acks:  # the same id again: the first ack, nothing sent twice
            outbox.put_nowait(self.acks[key])
            return
        channel = str(frame["channel"])
        log = self.history.setdefault(channel, [])
        self.publishes += 1
        envelope = {
            "type": "broadcast", "broadcastId": str(uuid.uuid4()), "sentAt": 0, "channel": channel,
            "offset": len(log) + 1, "epoch": EPOCH, "from": sub, "data": frame["message"],
        }  # fmt: skip
        log.append(envelope)
        ack = json.dumps(
            {
                "type": "ack",
                "id": frame["id"],
                "broadcastId": envelope["broadcastId"],
                "offset": envelope["offset"],
            }
        )
        self.acks[key] = ack
        for member in self.members.get(channel, set()):
            member.put_nowait(json.dumps(envelope))
        outbox.put_nowait(ack)

    async def write(self, ws: web.WebSocketResponse, outbox: asyncio.Queue[str | None]) -> None:
        while (text := await outbox.get()) is not None:
            try:
                await ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return  # the peer is gone (a drop without a close frame): what it missed stays missed


@pytest.fixture
def engine(request: pytest.FixtureRequest) -> Iterator[tuple[str, ScriptedChat]]:
    chat = ScriptedChat(getattr(request, "param", Script()))
    port = free_port()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    runner: list[web.AppRunner] = []

    async def start() -> None:
        app = web.Application()
        app.router.add_get("/", chat.handle)
        r = web.AppRunner(app)
        await r.setup()
        await web.TCPSite(r, "127.0.0.1", port).start()
        runner.append(r)
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()))
    thread.start()
    assert ready.wait(10)
    try:
        yield f"ws://127.0.0.1:{port}/", chat
    finally:
        asyncio.run_coroutine_threadsafe(runner[0].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def drive(url: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(DRIVER), url, SECRET], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-4000:]
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def counts(out: dict[str, Any], *, failed: bool | None = None) -> dict[tuple[str, str], int]:
    return {(t, n): c for t, n, f, c in out["events"] if failed is None or f == failed}


def test_a_reconnect_recovers_what_was_missed_with_no_gap_and_no_duplicate(
    engine: tuple[str, ScriptedChat],
) -> None:
    url, chat = engine
    # When two chat users exchange messages in two rooms and one drops and reconnects with recover
    out = drive(url)

    # Then their tokens let them join and publish to the rooms, and the reconnect asked to recover
    # each room from the end of what it had received (offset 4: b's 3 and a's own)
    claims = [c for c, _, _ in chat.connects]
    assert all(c.channels == ("room:*",) and c.publish == ("room:*",) for c in claims)
    assert [sorted(ch) for _, ch, _ in chat.connects] == [list(ROOMS)] * 3
    assert [r for _, _, r in chat.connects] == ["", "", f"{ROOMS[0]}:4:{EPOCH},{ROOMS[1]}:4:{EPOCH}"]
    assert out["positionsBefore"] == dict.fromkeys(ROOMS, 4)
    # and the publish a sent just before the drop was answered once: sent again with its id, not twice
    assert chat.publishes == 2 * 9 + 1
    assert out["acked"] == {ROOMS[0]: 10, ROOMS[1]: 9}

    ok, failed = counts(out, failed=False), counts(out, failed=True)
    # every member received every message of its rooms once, a's missed ones through recovery
    assert ok[("receive", ROOMS[0])] == 2 * 10 and ok[("receive", ROOMS[1])] == 2 * 9
    assert ok[("recovered", ROOMS[0])] == 4 and ok[("recovered", ROOMS[1])] == 3  # its own, b's 3
    assert ok[("publish", ROOMS[0])] == 10 and ok[("publish", ROOMS[1])] == 9
    assert ok[("chat judged", ROOMS[0])] == ok[("chat judged", ROOMS[1])] == 2
    assert (ok[("chat", "connect")], ok[("chat", "reconnect")]) == (2, 1)
    assert failed == {}


@pytest.mark.parametrize("engine", [Script(skip={ROOMS[0]: 2})], indirect=True)
def test_a_recovery_that_leaves_one_out_is_a_gap(engine: tuple[str, ScriptedChat]) -> None:
    out = drive(engine[0])
    failed = counts(out, failed=True)
    assert failed == {("chat gap", ROOMS[0]): 1}
    assert counts(out, failed=False)[("receive", ROOMS[0])] == 2 * 10 - 1


@pytest.mark.parametrize("engine", [Script(replay_again={ROOMS[1]})], indirect=True)
def test_a_recovery_that_replays_a_message_already_received_is_a_duplicate(
    engine: tuple[str, ScriptedChat],
) -> None:
    out = drive(engine[0])
    assert counts(out, failed=True) == {("chat duplicate", ROOMS[1]): 1}


@pytest.mark.parametrize("engine", [Script(impossible=True)], indirect=True)
def test_recovery_impossible_is_reported_and_what_it_lost_counts_as_gaps(
    engine: tuple[str, ScriptedChat],
) -> None:
    out = drive(engine[0])
    failed = counts(out, failed=True)
    # one error frame per room; a missed b's 3 in each room and (in room 0) its own last message
    assert failed == {
        ("chat", "recovery_impossible"): 2,
        ("chat gap", ROOMS[0]): 4,
        ("chat gap", ROOMS[1]): 3,
    }
