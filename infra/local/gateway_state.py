"""What the gateway emulator's parts share: its counters, a live WebSocket connection, and the error
answer of API Gateway's HTTP endpoints."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

from aiohttp import web

from infra.local.gateway_events import ConnectionInfo


class Counters:
    def __init__(self) -> None:
        self.connections_opened = 0
        self.connections_closed = 0
        self.handshakes_refused: dict[int, int] = {}
        self.messages_received = 0
        self.replies_sent = 0
        self.frames_sent = 0
        self.posts: dict[int, int] = {}
        self.post_bytes = 0
        self.broadcast_frames: dict[str, int] = {}
        self.disconnects: dict[int, int] = {}
        self.invocations: dict[str, dict[str, int]] = {}


@dataclass(slots=True, eq=False)
class Connection:
    info: ConnectionInfo
    ws: web.WebSocketResponse
    transport: asyncio.Transport | None
    last_active: float
    """Epoch seconds of the last data frame in either direction (idle timeout, GET lastActiveAt)."""
    closing: bool = False
    close_code: int | None = None
    close_reason: str = ""
    close_task: asyncio.Task[None] | None = None


def iso(epoch: float) -> str:
    """`connectedAt` / `lastActiveAt` of GetConnection: ISO 8601, milliseconds, UTC."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch * 1000) % 1000:03d}Z"


def aws_error(status: int, error_type: str, message: str) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps({"message": message}).encode(),
        content_type="application/json",
        headers={"x-amzn-ErrorType": error_type},
    )
