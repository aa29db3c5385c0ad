"""Many real WebSocket clients in one asyncio process, recording every broadcast frame they receive."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass
class Receipt:
    broadcast_id: str
    sent_at_ms: int
    received_at_ms: float
    channel: str | None = None  # the channel a channel broadcast's frame names
    sender: str | None = None  # the user a client's message is from (the envelope's "from")


@dataclass
class Client:
    index: int
    ws: aiohttp.ClientWebSocketResponse
    receipts: list[Receipt] = field(default_factory=list)
    other_frames: list[Any] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    reader: asyncio.Task[None] | None = None


USER_AGENT_PREFIX = "fanout-swarm/"


def client_index(user_agent: str) -> int | None:
    """The swarm client a connection belongs to, read from the User-Agent it connected with (what
    GetConnection returns as `identity.userAgent`); None for a connection no swarm opened."""
    if not user_agent.startswith(USER_AGENT_PREFIX):
        return None
    tail = user_agent[len(USER_AGENT_PREFIX) :]
    return int(tail) if tail.isdigit() else None


class ClientSwarm:
    """`await swarm.open(n)` opens n WebSockets with bounded concurrency; frames are recorded per client.

    Each client connects with the User-Agent `fanout-swarm/<index>`, so that a test can tell which
    connection id is which client through the @connections API's GetConnection."""

    def __init__(self, url: str, token: str, *, concurrency: int = 50) -> None:
        self.url = url
        self.token = token
        self.concurrency = concurrency
        self.clients: list[Client] = []
        self.refused = 0
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ClientSwarm:
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        self._session = aiohttp.ClientSession(connector=connector)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _open_one(
        self, index: int, token: str | None, extra: dict[str, str] | None = None
    ) -> Client | None:
        assert self._session is not None
        params = {"token": token} if token is not None else {}
        params.update(extra or {})
        try:
            ws = await self._session.ws_connect(
                self.url,
                params=params,
                headers={"User-Agent": f"{USER_AGENT_PREFIX}{index}"},
                heartbeat=None,
                autoping=True,
            )
        except aiohttp.WSServerHandshakeError:
            self.refused += 1
            return None
        client = Client(index, ws)
        client.reader = asyncio.create_task(self._read(client))
        return client

    async def _read(self, client: Client) -> None:
        try:
            async for msg in client.ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                now = time.time() * 1000
                try:
                    frame = json.loads(msg.data)
                except ValueError:
                    client.other_frames.append(msg.data)
                    continue
                if isinstance(frame, dict) and frame.get("type") == "broadcast":
                    channel = frame.get("channel")
                    sender = frame.get("from")
                    client.receipts.append(
                        Receipt(
                            str(frame["broadcastId"]),
                            int(frame["sentAt"]),
                            now,
                            str(channel) if channel is not None else None,
                            str(sender) if sender is not None else None,
                        )
                    )
                else:
                    client.other_frames.append(frame)
        finally:
            client.closed.set()

    async def open(
        self,
        n: int,
        *,
        on_progress: Callable[[int], None] | None = None,
        token_for: Callable[[int], str] | None = None,
        params_for: Callable[[int], dict[str, str]] | None = None,
    ) -> list[Client]:
        """Open n clients; `token_for(index)` and `params_for(index)` give a client its own token and
        URL parameters (``channels``), else every client uses the swarm's token."""
        semaphore = asyncio.Semaphore(self.concurrency)
        opened: list[Client] = []

        async def one(i: int) -> None:
            index = len(self.clients) + i
            token = token_for(index) if token_for is not None else self.token
            params = params_for(index) if params_for is not None else None
            async with semaphore:
                client = await self._open_one(index, token, params)
            if client is not None:
                opened.append(client)
                if on_progress:
                    on_progress(1)

        await asyncio.gather(*(one(i) for i in range(n)))
        self.clients.extend(opened)
        return opened

    async def try_open(self, token: str | None, params: dict[str, str] | None = None) -> Client | None:
        """Open one client with another token (None: no token); None when the handshake is refused."""
        client = await self._open_one(len(self.clients), token, params)
        if client is not None:
            self.clients.append(client)
        return client

    def live(self) -> list[Client]:
        return [c for c in self.clients if not c.closed.is_set()]

    def receipts_for(self, broadcast_id: str) -> Counter[int]:
        """How many frames of that broadcast each client got (client index → count)."""
        counts: Counter[int] = Counter()
        for c in self.clients:
            counts[c.index] = sum(1 for r in c.receipts if r.broadcast_id == broadcast_id)
        return counts

    def channel_receipts(self, broadcast_id: str) -> Counter[tuple[int, str | None]]:
        """How many frames of that broadcast each (client index, channel named) got."""
        counts: Counter[tuple[int, str | None]] = Counter()
        for c in self.clients:
            for r in c.receipts:
                if r.broadcast_id == broadcast_id:
                    counts[(c.index, r.channel)] += 1
        return counts

    def latencies_ms(self, broadcast_id: str) -> list[float]:
        return [
            r.received_at_ms - r.sent_at_ms
            for c in self.clients
            for r in c.receipts
            if r.broadcast_id == broadcast_id
        ]

    async def close(self) -> None:
        for c in self.clients:
            with contextlib.suppress(Exception):
                await c.ws.close()
        for c in self.clients:
            if c.reader is not None:
                c.reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await c.reader
        if self._session is not None:
            await self._session.close()
            self._session = None


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]
