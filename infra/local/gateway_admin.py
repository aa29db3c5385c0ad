"""The gateway emulator's admin endpoints, local only, under `http://host:W/_local/`: `GET stats`,
`GET connections` (the live connection ids), `POST simulated {"connectionIds": [...]}` (socketless
connections whose frames the gateway counts), `GET simulated/stats`, `DELETE simulated`, `GET faults`,
`POST faults {"latencyMs", "rate410", ...}` (fault injection changed while running)."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from infra.local.gateway_connections import FaultInjector
from infra.local.gateway_sim import SimulatedConnections
from infra.local.gateway_state import Connection, Counters
from infra.local.logs import log_fields

log = logging.getLogger("fanout.gateway")

# Admin bodies list 100k+ simulated ids (~2 MB per 100k).
ADMIN_MAX_BODY = 64 * 1024 * 1024


class Admin:
    PREFIX = "/_local/"

    def __init__(
        self,
        counters: Counters,
        connections: dict[str, Connection],
        sim: SimulatedConnections,
        faults: FaultInjector,
    ) -> None:
        self.counters = counters
        self.connections = connections
        self.sim = sim
        self.faults = faults

    def stats(self) -> dict[str, Any]:
        c = self.counters
        return {
            "connectionsOpen": len(self.connections),
            "connectionsOpened": c.connections_opened,
            "connectionsClosed": c.connections_closed,
            "handshakesRefused": {str(k): v for k, v in c.handshakes_refused.items()},
            "disconnectsByCode": {str(k): v for k, v in c.disconnects.items()},
            "messagesReceived": c.messages_received,
            "repliesSent": c.replies_sent,
            "posts": {str(k): v for k, v in c.posts.items()},
            "postBytes": c.post_bytes,
            "framesSent": c.frames_sent,
            "broadcastFramesSent": dict(c.broadcast_frames),
            "simulatedFrames": self.sim.frames,
            "simulatedRegistered": self.sim.registered,
            "invocations": c.invocations,
            "faults": self.faults.config.model_dump(by_alias=True),
        }

    async def handle(self, request: web.BaseRequest, what: str) -> web.StreamResponse:
        method = request.method
        if what == "stats" and method == "GET":
            return web.json_response(self.stats())
        if what == "connections" and method == "GET":
            return web.json_response({"connectionIds": list(self.connections)})
        if what == "simulated" and method == "POST":
            try:
                payload = await request.json()
                ids = payload["connectionIds"]
                if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                return web.json_response({"message": 'expected {"connectionIds": ["...", ...]}'}, status=400)
            added = self.sim.register(ids)
            return web.json_response({"registered": len(ids), "new": added})
        if what == "simulated" and method == "DELETE":
            self.sim.clear()
            return web.Response(status=204)
        if what == "simulated/stats" and method == "GET":
            return web.json_response(self.sim.stats())
        if what == "faults" and method == "GET":
            return web.json_response(self.faults.config.model_dump(by_alias=True))
        if what == "faults" and method == "POST":
            try:
                patch = await request.json()
                if not isinstance(patch, dict):
                    raise TypeError
                faults = self.faults.update(patch)
            except (ValueError, TypeError, ValidationError) as exc:
                return web.json_response({"message": f"invalid faults: {exc}"}, status=400)
            log_fields(log, logging.INFO, "faults changed", **faults.model_dump(by_alias=True))
            return web.json_response(faults.model_dump(by_alias=True))
        return web.json_response({"message": "Not Found"}, status=404)
