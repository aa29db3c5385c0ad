"""The gateway emulator's @connections API, `http://host:W/{stage}/@connections/{id}` (URL-encoded id):
POST (PostToConnection), GET (GetConnection) and DELETE (DeleteConnection), with the errors of the
real API (410 GoneException, 413 PayloadTooLargeException, 429 LimitExceededException) and fault
injection. SigV4 `Authorization` headers are accepted unverified.

This is the broadcast's hot path: counters only, no per-request logging.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from infra.local.gateway_config import FaultConfig, GatewayConfig
from infra.local.gateway_sim import SimulatedConnections, broadcast_id_of
from infra.local.gateway_state import Counters, aws_error, iso
from infra.local.gateway_ws import WebSocketEndpoint

_FAULT_ERRORS = {
    410: ("GoneException", "The connection is gone (injected fault)"),
    429: ("LimitExceededException", "Rate exceeded (injected fault)"),
    500: ("InternalServerErrorException", "Internal server error (injected fault)"),
}
_OK = b""


class FaultInjector:
    """The faults in force (changed while running through the admin API) and their seeded draws."""

    def __init__(self, faults: FaultConfig) -> None:
        self.config = faults
        self._rng = random.Random(faults.seed)

    def update(self, patch: dict[str, Any]) -> FaultConfig:
        """Apply a partial update (camelCase keys); a `seed` in it restarts the draws."""
        faults = self.config.merged(patch)
        self.config = faults
        if "seed" in patch:
            self._rng = random.Random(faults.seed)
        return faults

    def draw(self) -> int:
        """The status one post is answered with by fault injection; 0 for none."""
        faults = self.config
        r = self._rng.random()
        if r < faults.rate410:
            return 410
        r -= faults.rate410
        if r < faults.rate429:
            return 429
        r -= faults.rate429
        if r < faults.rate500:
            return 500
        return 0


class ConnectionsApi:
    def __init__(
        self,
        cfg: GatewayConfig,
        counters: Counters,
        ws: WebSocketEndpoint,
        sim: SimulatedConnections,
        faults: FaultInjector,
    ) -> None:
        self.cfg = cfg
        self.counters = counters
        self.ws = ws
        self.sim = sim
        self.faults = faults
        self.prefix = f"/{cfg.stage}/@connections/"
        self.prefix_encoded = f"/{cfg.stage}/%40connections/"

    def owns(self, raw_path: str) -> bool:
        return raw_path.startswith(self.prefix) or raw_path.startswith(self.prefix_encoded)

    def _answer(self, status: int, error_type: str = "", message: str = "") -> web.Response:
        posts = self.counters.posts
        posts[status] = posts.get(status, 0) + 1
        if status == 200:
            return web.Response(status=200, body=_OK)
        return aws_error(status, error_type, message)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        raw = request.raw_path
        q = raw.find("?")
        if q >= 0:
            raw = raw[:q]
        if raw.startswith(self.prefix_encoded):  # botocore sends '@' encoded as %40; AWS takes both
            raw = self.prefix + raw[len(self.prefix_encoded) :]
        if not raw.startswith(self.prefix):
            return aws_error(403, "ForbiddenException", "Forbidden")
        cid = unquote(raw[len(self.prefix) :])
        method = request.method
        if method == "POST":
            return await self._post(cid, request)
        if method == "GET":
            return self._get(cid)
        if method == "DELETE":
            return self._delete(cid)
        return aws_error(403, "ForbiddenException", "Missing Authentication Token")

    async def _post(self, cid: str, request: web.BaseRequest) -> web.Response:
        limit = self.cfg.max_frame_bytes
        if (request.content_length or 0) > limit:
            return self._answer(413, "PayloadTooLargeException", "Message too long")
        body = await request.read()
        size = len(body)
        if size > limit:
            return self._answer(413, "PayloadTooLargeException", "Message too long")
        faults = self.faults.config
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        if faults.any_rate:
            status = self.faults.draw()
            if status:
                if status == 410 and faults.gone_closes:
                    self._make_gone(cid)
                error_type, message = _FAULT_ERRORS[status]
                return self._answer(status, error_type, message)
        conn = self.ws.connections.get(cid)
        if conn is not None:
            transport = conn.transport
            if transport is None or transport.is_closing():
                return self._answer(410, "GoneException", "The connection is gone")
            if transport.get_write_buffer_size() > self.cfg.max_send_buffer_bytes:
                return self._answer(429, "LimitExceededException", "The client's buffer is full")
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                sent = await self.ws.send(conn, body)
            else:
                sent = await self.ws.send(conn, text)
            if not sent:
                return self._answer(410, "GoneException", "The connection is gone")
            self.counters.frames_sent += 1
            bid = broadcast_id_of(body)
            if bid is not None:
                frames = self.counters.broadcast_frames
                frames[bid] = frames.get(bid, 0) + 1
        else:
            index = self.sim.lookup(cid)
            if index is None:
                return self._answer(410, "GoneException", "The connection is gone")
            self.sim.record(index, broadcast_id_of(body))
        self.counters.post_bytes += size
        return self._answer(200)

    def _make_gone(self, cid: str) -> None:
        conn = self.ws.connections.get(cid)
        if conn is not None:
            self.ws.close(conn, 1001, "Going away")
        else:
            self.sim.delete(cid)

    def _get(self, cid: str) -> web.Response:
        conn = self.ws.connections.get(cid)
        if conn is not None:
            info = conn.info
            body = {
                "connectedAt": iso(info.connected_at_ms / 1000),
                "identity": {"sourceIp": info.source_ip, "userAgent": info.user_agent},
                "lastActiveAt": iso(conn.last_active),
            }
            return web.json_response(body)
        if self.sim.lookup(cid) is not None:
            now = iso(time.time())
            body = {
                "connectedAt": now,
                "identity": {"sourceIp": "127.0.0.1", "userAgent": "simulated"},
                "lastActiveAt": now,
            }
            return web.json_response(body)
        return aws_error(410, "GoneException", "The connection is gone")

    def _delete(self, cid: str) -> web.Response:
        conn = self.ws.connections.get(cid)
        if conn is not None:
            self.ws.close(conn, 1000, "Connection closed by the @connections API")
            return web.Response(status=204)
        if self.sim.delete(cid):
            return web.Response(status=204)
        return aws_error(410, "GoneException", "The connection is gone")
