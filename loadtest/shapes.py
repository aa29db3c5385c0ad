"""The load shape and the broadcast ledger shared by the locustfile's users.

`BroadcastLedger` is what one Locust process knows about the broadcasts of the run. It is fed only by
Locust custom messages (`fanout_go`, `fanout_started`, `fanout_completed`), which the master relays to
every worker, so every process holds the same ledger whether the run is local, `--processes N` or
master/workers on many machines; nothing in it is counted per process. Users judge their own gaps
against it (`expected_broadcasts`), and the shape (on the master) reads it to know when the broadcasts
are done.

`ShapePlan` (wrapped by the locustfile's `FanoutShape`) ramps the WebSocket users at no more than
`--ramp-rate` connections per second (API Gateway's default quota for new connections is 500/s),
waits until Locust's aggregated `connect` row shows every user connected, lets the partition counters
settle, tells the operator user to start the broadcasts (`fanout_go`), holds at least `--run-time`
and until every broadcast completed plus the gap grace period, then ramps down and stops.

This module does not import Locust (importing it monkey-patches the process with gevent), so it can be
unit-tested in the ordinary test process.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from random import Random
from typing import Any

log = logging.getLogger("fanout.loadtest")

MSG_GO = "fanout_go"
MSG_STARTED = "fanout_started"
MSG_COMPLETED = "fanout_completed"
MSG_USER = "fanout_user"

AUDIENCES = ("everyone", "channels", "users", "mixed")
CHANNEL_PREFIX = "lt:"
# The key of a frame that names no channel (a broadcast to everyone or to users)
NO_CHANNEL = ""

CONNECT_TYPE = "WS"
CONNECT_NAME = "connect"

# Workers report their stats to the master every 3 s (locust.runners.WORKER_REPORT_INTERVAL): the shape
# waits a bit more than that whenever it needs the aggregated figures to include an event.
STATS_FLUSH_SECONDS = 4.0


def now_ms() -> float:
    return time.time() * 1000.0


@dataclass
class BroadcastRecord:
    """One broadcast of the run, as the operator user saw it (times in epoch ms, engine clock)."""

    broadcastId: str
    index: int
    startedAtMs: float
    startLatencyMs: float | None = None
    status: str = "started"
    createdAt: int | None = None
    completedAt: int | None = None
    targeted: int | None = None
    delivered: int | None = None
    gone: int | None = None
    failed: int | None = None
    partitions: int | None = None
    audience: str = "everyone"
    to: dict[str, list[str]] | None = None
    seenAtMs: float = field(default_factory=now_ms)

    @property
    def sent_at_ms(self) -> float:
        """The envelope's `sentAt` (= createdAt) once known, else when the operator asked."""
        return float(self.createdAt) if self.createdAt is not None else self.startedAtMs

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "failed", "timeout", "unstarted")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BroadcastLedger:
    """Broadcasts announced by the operator user, and whether the shape said "go"."""

    broadcasts: dict[str, BroadcastRecord] = field(default_factory=dict)
    go: dict[str, Any] | None = None
    users: set[str] = field(default_factory=set)  # user ids of the WebSocket users, for users broadcasts

    def on_user(self, data: dict[str, Any]) -> None:
        self.users.add(str(data["userId"]))

    def on_go(self, data: dict[str, Any]) -> None:
        if self.go is None:
            self.go = dict(data)

    def on_started(self, data: dict[str, Any]) -> BroadcastRecord:
        bid = str(data["broadcastId"])
        record = self.broadcasts.get(bid)
        if record is None:
            record = BroadcastRecord(
                broadcastId=bid,
                index=int(data.get("index", len(self.broadcasts) + 1)),
                startedAtMs=float(data.get("startedAtMs", now_ms())),
                startLatencyMs=data.get("startLatencyMs"),
                audience=str(data.get("audience") or "everyone"),
                to=data.get("to"),
            )
            self.broadcasts[bid] = record
        return record

    def on_completed(self, data: dict[str, Any]) -> BroadcastRecord:
        record = self.on_started(data)
        for key in ("status", "createdAt", "completedAt", "targeted", "delivered", "gone", "failed"):
            if data.get(key) is not None:
                setattr(record, key, data[key])
        if data.get("partitions") is not None:
            record.partitions = int(data["partitions"])
        record.seenAtMs = now_ms()
        return record

    @property
    def finished(self) -> list[BroadcastRecord]:
        return [b for b in self.broadcasts.values() if b.finished]

    def all_finished(self, expected: int) -> bool:
        return len(self.finished) >= expected

    def last_finished_at(self) -> float | None:
        """Local time (epoch ms) the last finished broadcast was heard of."""
        done = self.finished
        return max(b.seenAtMs for b in done) if done else None

    def to_json(self) -> list[dict[str, Any]]:
        return [b.to_json() for b in sorted(self.broadcasts.values(), key=lambda b: b.index)]


def expected_broadcasts(
    ledger: BroadcastLedger,
    *,
    session_started_ms: float | None,
    now: float,
    settle_ms: float,
    grace_ms: float,
    timeout_ms: float,
) -> list[str]:
    """The broadcasts a user connected since `session_started_ms` must have received by `now`.

    A broadcast counts when the connection was open `settle_ms` before the broadcast was sent (so the
    partition counters had seen it when the swarm enumerated partitions), and the broadcast finished at
    least `grace_ms` ago (frames can still be on the wire when the counters say "completed"), or was
    sent more than `timeout_ms` ago without finishing. A broadcast that failed is judged too: its
    connections missing it are real gaps.
    """
    if session_started_ms is None:
        return []
    out = []
    for b in ledger.broadcasts.values():
        if b.status == "unstarted" or session_started_ms > b.sent_at_ms - settle_ms:
            continue
        if b.completedAt is not None:
            due = b.completedAt + grace_ms <= now
        else:
            due = b.sent_at_ms + timeout_ms <= now
        if due:
            out.append(b.broadcastId)
    return out


def channel_names(count: int) -> list[str]:
    return [f"{CHANNEL_PREFIX}{i}" for i in range(max(0, count))]


def audience_of(index: int, audience: str) -> str:
    """What broadcast `index` (1-based) targets: `mixed` cycles everyone → channels → users."""
    if audience == "mixed":
        return ("everyone", "channels", "users")[(index - 1) % 3]
    return audience


def pick_to(
    kind: str,
    rng: Random,
    *,
    channels: int,
    users: Sequence[str],
    max_channels: int = 3,
    max_users: int = 100,
) -> dict[str, list[str]] | None:
    """The `to` of a broadcast of `kind`: a random subset of the channels (1..`max_channels`), or of the
    known users (a quarter of them, 1..`max_users`); None for everyone."""
    if kind == "channels":
        names = channel_names(channels)
        if not names:
            raise ValueError("a channels broadcast needs --channels > 0")
        return {"channels": sorted(rng.sample(names, rng.randint(1, min(max_channels, len(names)))))}
    if kind == "users":
        known = sorted(users)
        if not known:
            raise ValueError("no WebSocket user is known to target")
        return {"users": sorted(rng.sample(known, max(1, min(max_users, len(known) // 4))))}
    return None


def expected_frames(record: BroadcastRecord, *, channels: Collection[str], user_id: str) -> set[str]:
    """The frames one connection must receive of `record`, by channel (`NO_CHANNEL` when the frame names
    none): one per targeted channel it subscribed to, one if its user is targeted, one for everyone."""
    to = record.to or {}
    if "channels" in to:
        return {c for c in to["channels"] if c in channels}
    if "users" in to:
        return {NO_CHANNEL} if user_id in to["users"] else set()
    if "connections" in to:
        return set()  # the load test never targets connections; judged as nothing expected
    return {NO_CHANNEL}


@dataclass(frozen=True)
class Judgement:
    """One connection's exactness for one broadcast, per channel key."""

    expected: set[str]
    missing: set[str]
    unexpected: set[str]


def judge_frames(expected: set[str], received: Mapping[str, int]) -> Judgement:
    """Missing = expected keys never received; unexpected = keys received but not expected.
    (A second frame of one key is a duplicate, counted when it arrives.)"""
    got = {k for k, n in received.items() if n > 0}
    return Judgement(expected=set(expected), missing=expected - got, unexpected=got - expected)


def ledger_of(environment: Any) -> BroadcastLedger:
    """The ledger of this process, kept on the Locust environment (one per process, fed by messages)."""
    ledger = getattr(environment, "fanout_ledger", None)
    if ledger is None:
        ledger = BroadcastLedger()
        environment.fanout_ledger = ledger
    return ledger


@dataclass(frozen=True)
class ShapeSettings:
    users: int
    ramp_rate: float = 500.0
    # Closing is cheap for the system under test and slow ramp-downs only make runs longer
    ramp_down_rate: float = 1000.0
    settle_seconds: float = 3.0
    hold_seconds: float = 0.0
    broadcasts: int = 1
    broadcast_interval: float = 10.0
    grace_seconds: float = 5.0
    connect_timeout_seconds: float = 120.0
    broadcast_timeout_seconds: float = 300.0
    chat_users: int = 0  # on top of the WebSocket users and the operator


def shape_settings(environment: Any) -> ShapeSettings:
    """The shape's settings from Locust's parsed options (`-u`, `-r`, `-t` and the locustfile's own)."""
    o = environment.parsed_options
    if o is None:
        return ShapeSettings(users=1)
    # Not `-r`: headless Locust sets it to 1 when absent, so the shape could not tell "unset" from 1.
    ramp = float(getattr(o, "ramp_rate", 500.0))
    chat = int(getattr(o, "chat_users", 0) or 0)
    return ShapeSettings(
        # a chat run may have no WebSocket user at all (-u 0)
        users=int(o.num_users or 0) if chat > 0 else int(o.num_users or 1),
        chat_users=chat,
        ramp_rate=ramp,
        ramp_down_rate=float(getattr(o, "ramp_down_rate", 1000.0)),
        settle_seconds=float(getattr(o, "settle", 3.0)),
        hold_seconds=float(o.run_time or 0),
        broadcasts=int(getattr(o, "broadcasts", 1)),
        broadcast_interval=float(getattr(o, "broadcast_interval", 10.0)),
        grace_seconds=float(getattr(o, "grace", 5.0)),
        connect_timeout_seconds=float(getattr(o, "connect_timeout", 120.0)),
        broadcast_timeout_seconds=float(getattr(o, "broadcast_timeout", 300.0)),
    )


class ShapePlan:
    """The shape's state machine, free of Locust (so it can be tested without gevent's monkey patching).

    ramp → connected → settle → go (broadcasts) → hold → ramp down → stop. `tick` returns what
    `LoadTestShape.tick` returns: `(users, spawn rate)` or None to stop.
    """

    def __init__(self) -> None:
        self.phase = "ramp"
        self.phase_started = 0.0
        self.hold_started: float | None = None
        self.finished_at: float | None = None

    def tick(
        self,
        t: float,
        s: ShapeSettings,
        *,
        connected: int,
        users_now: int,
        ledger: BroadcastLedger,
        send_go: Callable[[dict[str, Any]], None],
    ) -> tuple[int, float] | None:
        total = s.users + 1 + s.chat_users  # the operator user, the chat users
        rate = max(1.0, s.ramp_rate)
        if self.phase == "ramp":
            ramp_seconds = math.ceil(total / rate)
            if connected >= s.users or t > ramp_seconds + s.connect_timeout_seconds:
                if connected < s.users:
                    log.warning("only %d of %d users connected: broadcasting anyway", connected, s.users)
                self._enter("settle", t)
            return total, rate
        if self.phase == "settle":
            if t - self.phase_started >= s.settle_seconds:
                log.info("users connected: starting %d broadcast(s)", s.broadcasts)
                send_go({"count": s.broadcasts, "interval": s.broadcast_interval, "atMs": now_ms()})
                self.hold_started = t
                self._enter("hold", t)
            return total, rate
        if self.phase == "hold":
            held = t - (self.hold_started or t)
            done = ledger.all_finished(s.broadcasts) or held > (
                s.broadcasts * s.broadcast_interval + s.broadcast_timeout_seconds
            )
            last = ledger.last_finished_at()
            graced = last is None or now_ms() - last >= (s.grace_seconds + STATS_FLUSH_SECONDS) * 1000
            if done and graced and held >= s.hold_seconds:
                self._enter("ramp_down", t)
                return 0, max(1.0, s.ramp_down_rate)
            return total, rate
        if self.phase == "ramp_down":
            if users_now == 0:
                if self.finished_at is None:
                    self.finished_at = t
                if t - self.finished_at >= STATS_FLUSH_SECONDS:
                    return None
            return 0, max(1.0, s.ramp_down_rate)
        return None

    def _enter(self, phase: str, t: float) -> None:
        log.info("shape: %s -> %s at %.1f s", self.phase, phase, t)
        self.phase = phase
        self.phase_started = t
