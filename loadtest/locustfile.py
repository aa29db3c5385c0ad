"""Locust load test of fanout: real WebSocket users, one operator user, and the `FanoutShape`.

Run it through `loadtest/run.py` (`make loadtest`), or directly against a running stack::

    .venv/bin/locust -f loadtest/locustfile.py --headless -u 1000 --processes 2 \\
        --broadcasts 3 --csv loadtest/results/run --html loadtest/results/run.html

Targets come from the options / environment variables below, else from `.fanout/local.json`:
`FANOUT_WS_URL`, `FANOUT_CONNECT_TOKEN` (or `FANOUT_TOKEN_SECRET` to issue one token per user),
`FANOUT_API_URL`, `FANOUT_OPERATOR_TOKEN` (bearer, local stack; without it the operator API is called
with SigV4 and the ambient AWS credentials), `FANOUT_API_REGION`.

What each user records, as Locust request events (type / name):

- `WS` / `connect`: handshake time (authorizer + `$connect`); a refused or failed handshake is a failure.
- `WS` / `ping`: round trip of `{"action":"ping"}` → `{"type":"pong"}` (the heartbeat, every
  `--ping-interval` s, below API Gateway's 10-minute idle timeout).
- `WS` / `disconnected`: a failure each time the server closed a connection the user did not close.
- `deliver` / `<broadcastId>`: delivery latency, receive time - envelope `sentAt`, one per
  (connection, channel): a connection in two targeted channels receives, and counts, two frames.
- `duplicate` / `<broadcastId>`: a failure per extra frame of a (broadcast, channel) already received.
- `expected` / `<broadcastId>`: one per frame a judged connection should receive: per targeted channel
  it subscribed to, one if its user was targeted, one for a broadcast to everyone (`--audience`).
- `gap` / `<broadcastId>`: a failure per expected frame of a connection that was connected before the
  broadcast was sent and never received it, judged `--grace` s after the broadcast completed, and
  again when the user stops.
- `unexpected` / `<broadcastId>`: a failure per (broadcast, channel) received that was not expected.
- `operator` / `start broadcast`, `status`, `complete broadcast`: the operator API's answer time, each
  status poll, and the broadcast's completion time (engine's `completedAt - createdAt`).

With `--chat-users N`, N `ChatUser`s come on top: each joins `--rooms-per-user` of `--rooms` rooms,
publishes `--publish-rate` messages/s, drops its socket every `--reconnect-every` on average and
reconnects with `?recover=`. They record `chat` / `connect`, `reconnect`, `disconnected`,
`recovery_impossible`, `epoch changed`, `error frame`; and per room `publish` (publish → ack),
`receive` (publish → receive, once per offset), `recovered`, `chat duplicate`, `chat judged` and
`chat gap` (`loadtest/chat_report.py` judges; the publishers' acks travel in `fanout_chat_acks`).

Distributed runs: the operator user (one, `fixed_count`) announces each broadcast with the Locust
custom messages `fanout_started` / `fanout_completed`; the master relays them to every worker, so
every process knows every broadcast and judges the gaps of its own users. Totals only ever come from
Locust's aggregated stats: no process counts anything for the others.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import random
import socket
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlencode, urlsplit

import gevent
import gevent.event
import locust.runners
import websocket
from locust import LoadTestShape, User, events, task
from locust.env import Environment
from locust.runners import MasterRunner

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fanout.tools.operator_client import OperatorClient  # noqa: E402
from loadtest.chat_report import (  # noqa: E402
    CHAT_TYPE,
    DUPLICATE_TYPE,
    GAP_TYPE,
    JUDGED_TYPE,
    MSG_CHAT_ACKS,
    PUBLISH_TYPE,
    RECEIVE_TYPE,
    RECOVERED_TYPE,
    ROOM_PATTERN,
    AckLedger,
    RoomTrack,
    expected_span,
    is_recovered,
    judge_room,
    parse_duration,
    recover_param,
    recover_positions,
    room_names,
)
from loadtest.shapes import (  # noqa: E402
    AUDIENCES,
    CHANNEL_PREFIX,
    CONNECT_NAME,
    CONNECT_TYPE,
    MSG_COMPLETED,
    MSG_GO,
    MSG_STARTED,
    MSG_USER,
    NO_CHANNEL,
    BroadcastLedger,
    ShapePlan,
    audience_of,
    channel_names,
    expected_broadcasts,
    expected_frames,
    judge_frames,
    ledger_of,
    now_ms,
    pick_to,
    shape_settings,
)

__all__ = ["ChatUser", "FanoutShape", "OperatorUser", "WebSocketUser"]

log = logging.getLogger("fanout.loadtest")


class DuplicateFrame(Exception):
    """The same broadcast arrived more than once on one connection."""


class Gap(Exception):
    """A broadcast this connection should have received never arrived."""


class UnexpectedFrame(Exception):
    """A broadcast reached this connection (on a channel, or without one) that it was not targeted by."""


class Disconnected(Exception):
    """The server closed the connection."""


class BroadcastIncomplete(Exception):
    """The broadcast ended in another state than completed with no failed post."""


# -- options ----------------------------------------------------------------------------------------
@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    g = parser  # Locust's own add_argument (is_secret, env_var); argument groups lack them
    g.add_argument("--fanout-ws-url", env_var="FANOUT_WS_URL", default="", help="WebSocket URL")
    g.add_argument(
        "--fanout-connect-token", env_var="FANOUT_CONNECT_TOKEN", default="", is_secret=True, help="token"
    )
    g.add_argument(
        "--fanout-token-secret",
        env_var="FANOUT_TOKEN_SECRET",
        default="",
        is_secret=True,
        help="issue one token per user with this HS256 secret instead of sharing the connect token",
    )
    g.add_argument("--fanout-api-url", env_var="FANOUT_API_URL", default="", help="operator API URL")
    g.add_argument(
        "--fanout-operator-token",
        env_var="FANOUT_OPERATOR_TOKEN",
        default="",
        is_secret=True,
        help="bearer token of the local operator API (none: SigV4 with the AWS credentials)",
    )
    g.add_argument("--fanout-region", env_var="FANOUT_API_REGION", default="", help="region for SigV4")
    g.add_argument(
        "--fanout-state", env_var="FANOUT_LOCAL_STATE", default=".fanout/local.json", help="local.json"
    )
    g.add_argument(
        "--fanout-results",
        env_var="FANOUT_RESULTS_DIR",
        default="",
        help="directory where the master writes broadcasts.json",
    )
    g.add_argument(
        "--source-ips",
        env_var="FANOUT_SOURCE_IPS",
        default="",
        help="comma-separated local addresses to spread sockets over (~28k ports per address pair)",
    )
    g.add_argument("--broadcasts", env_var="FANOUT_BROADCASTS", type=int, default=1)
    g.add_argument("--broadcast-interval", env_var="FANOUT_BROADCAST_INTERVAL", type=float, default=10.0)
    g.add_argument("--payload-bytes", env_var="FANOUT_PAYLOAD_BYTES", type=int, default=64)
    g.add_argument("--ramp-rate", env_var="FANOUT_RAMP_RATE", type=float, default=500.0)
    g.add_argument("--ramp-down-rate", env_var="FANOUT_RAMP_DOWN_RATE", type=float, default=1000.0)
    g.add_argument("--settle", env_var="FANOUT_SETTLE", type=float, default=3.0)
    g.add_argument("--grace", env_var="FANOUT_GRACE", type=float, default=5.0)
    g.add_argument("--ping-interval", env_var="FANOUT_PING_INTERVAL", type=float, default=300.0)
    g.add_argument("--ws-timeout", env_var="FANOUT_WS_TIMEOUT", type=float, default=30.0)
    g.add_argument(
        "--heartbeat-liveness",
        env_var="FANOUT_HEARTBEAT_LIVENESS",
        type=int,
        default=locust.runners.HEARTBEAT_LIVENESS,
        help="seconds without a worker heartbeat before the master marks the worker missing",
    )
    g.add_argument("--connect-timeout", env_var="FANOUT_CONNECT_TIMEOUT", type=float, default=120.0)
    g.add_argument("--broadcast-timeout", env_var="FANOUT_BROADCAST_TIMEOUT", type=float, default=300.0)
    g.add_argument(
        "--channels",
        env_var="FANOUT_CHANNELS",
        type=int,
        default=0,
        help="channels lt:0..lt:C-1 the WebSocket users subscribe to (0: none)",
    )
    g.add_argument(
        "--channels-per-user",
        env_var="FANOUT_CHANNELS_PER_USER",
        type=int,
        default=2,
        help="distinct channels each WebSocket user subscribes to at connect",
    )
    g.add_argument(
        "--audience",
        env_var="FANOUT_AUDIENCE",
        default="everyone",
        choices=list(AUDIENCES),
        help="what the broadcasts target; mixed cycles everyone, channels, users",
    )
    g.add_argument(
        "--chat-users",
        env_var="FANOUT_CHAT_USERS",
        type=int,
        default=0,
        help="chat users (on top of -u): join rooms, publish, reconnect with recover",
    )
    g.add_argument("--rooms", env_var="FANOUT_ROOMS", type=int, default=5, help="rooms room:lt-0..R-1")
    g.add_argument(
        "--rooms-per-user",
        env_var="FANOUT_ROOMS_PER_USER",
        type=int,
        default=1,
        help="rooms each chat user joins",
    )
    g.add_argument(
        "--publish-rate",
        env_var="FANOUT_PUBLISH_RATE",
        type=float,
        default=1.0,
        help="messages per second each chat user publishes, to its rooms in turn (0: none)",
    )
    g.add_argument(
        "--reconnect-every",
        env_var="FANOUT_RECONNECT_EVERY",
        default="3m",
        help="mean time between a chat user's deliberate drops (90s, 3m, 1h; 0: never)",
    )


class Target:
    """Where to connect and how to authenticate, from the options, else from local.json."""

    def __init__(self, o: Any) -> None:
        state: dict[str, Any] = {}
        path = Path(o.fanout_state)
        for candidate in (path, ROOT / path):
            if candidate.exists():
                state = json.loads(candidate.read_text())
                break
        self.ws_url: str = o.fanout_ws_url or state.get("websocketUrl", "")
        self.connect_token: str = o.fanout_connect_token or state.get("connectToken", "")
        self.channels = int(getattr(o, "channels", 0) or 0)
        self.audience = str(getattr(o, "audience", "everyone") or "everyone")
        self.chat_users = int(getattr(o, "chat_users", 0) or 0)
        self.per_user_tokens = self.channels > 0 or self.audience != "everyone" or self.chat_users > 0
        # Channels and users broadcasts need a token per user (its own `sub`, a `channels` claim): the
        # local stack's secret serves when no other target was given.
        self.token_secret: str = o.fanout_token_secret or (
            state.get("tokenSecret", "") if self.per_user_tokens and not o.fanout_ws_url else ""
        )
        self.api_url: str = o.fanout_api_url or state.get("httpApiUrl", "")
        self.operator_token: str = o.fanout_operator_token or (
            state.get("operatorToken", "") if not o.fanout_api_url else ""
        )
        self.region: str | None = o.fanout_region or None
        self.source_ips = [ip.strip() for ip in o.source_ips.split(",") if ip.strip()]
        if not self.ws_url or not self.api_url:
            raise SystemExit(
                "no target: set FANOUT_WS_URL and FANOUT_API_URL, "
                "or start the local stack (.fanout/local.json)"
            )
        if self.per_user_tokens and not self.token_secret:
            raise SystemExit(
                "--channels / --audience / --chat-users need FANOUT_TOKEN_SECRET (--fanout-token-secret): "
                "each user's token must carry its own subject and channels (and publish) claims, which a "
                "shared token cannot"
            )
        if self.audience in ("channels", "mixed") and self.channels <= 0:
            raise SystemExit(f"--audience {self.audience} needs --channels > 0")

    def token(self, user_id: str, *, with_channels: bool = False) -> str:
        if self.token_secret:
            from fanout.tokens import issue_token

            claim = [f"{CHANNEL_PREFIX}*"] if with_channels else None
            return issue_token(self.token_secret, user_id, ttl_seconds=24 * 3600, channels=claim)
        return self.connect_token

    def chat_token(self, user_id: str) -> str:
        from fanout.tokens import issue_token

        rooms = [ROOM_PATTERN]
        return issue_token(self.token_secret, user_id, ttl_seconds=24 * 3600, channels=rooms, publish=rooms)

    def chat_url(self, user_id: str, rooms: list[str], recover: str = "") -> str:
        sep = "&" if "?" in self.ws_url else "?"
        query = {"token": self.chat_token(user_id), "channels": ",".join(rooms)}
        if recover:
            query["recover"] = recover
        return f"{self.ws_url}{sep}{urlencode(query)}"

    def url_for(self, user_id: str, channels: list[str] | None = None) -> str:
        sep = "&" if "?" in self.ws_url else "?"
        query = {"token": self.token(user_id, with_channels=bool(channels))}
        if channels:
            query["channels"] = ",".join(channels)
        return f"{self.ws_url}{sep}{urlencode(query)}"

    def operator(self) -> OperatorClient:
        if self.operator_token:
            return OperatorClient(self.api_url, bearer_token=self.operator_token)
        return OperatorClient.for_deployed(self.api_url, region=self.region)


def target_of(environment: Environment) -> Target:
    target = getattr(environment, "fanout_target", None)
    if target is None:
        target = Target(environment.parsed_options)
        environment.fanout_target = target  # type: ignore[attr-defined]
    return target


# -- messages: the operator announces, the master relays, every process records ----------------------
@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    runner = environment.runner
    if runner is None:
        return
    o = environment.parsed_options
    if o is not None and (
        int(getattr(o, "channels", 0) or 0) > 0 or getattr(o, "audience", "everyone") != "everyone"
    ):
        target_of(environment)  # fail fast on options the users could not honour
    chat_users = int(getattr(o, "chat_users", 0) or 0) if o is not None else 0
    if chat_users > 0:
        target_of(environment)
        try:
            parse_duration(str(getattr(o, "reconnect_every", "3m")))
        except ValueError as exc:
            raise SystemExit(f"--reconnect-every: {exc}") from None
        # Locust drops classes of weight 0 when it builds the environment, before this event: the chat
        # user joins the run only when asked for, as many as asked for, on top of -u
        ChatUser.fixed_count = chat_users
        if ChatUser not in environment.user_classes:
            environment.user_classes.append(ChatUser)
    if isinstance(runner, MasterRunner) and environment.parsed_options:
        # Locust reads this module constant whenever a worker reports; it has no option of its own.
        # Raise it where the workers share their cores with the system under test: a worker whose
        # heartbeat is late is marked missing and its users are spawned again on the others.
        locust.runners.HEARTBEAT_LIVENESS = int(environment.parsed_options.heartbeat_liveness)
    ledger = ledger_of(environment)
    apply = {
        MSG_GO: ledger.on_go,
        MSG_STARTED: ledger.on_started,
        MSG_COMPLETED: ledger.on_completed,
        MSG_USER: ledger.on_user,
        MSG_CHAT_ACKS: chat_ledger_of(environment).on_acks,
    }

    def listener_for(kind: str) -> Any:
        def listener(environment: Environment, msg: Any, **_: Any) -> None:
            apply[kind](msg.data)
            if isinstance(runner, MasterRunner):
                runner.send_message(kind, msg.data)  # to every worker, the sender included

        return listener

    for kind in apply:
        runner.register_message(kind, listener_for(kind))


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_: Any) -> None:
    ledger = ledger_of(environment)
    ledger.broadcasts.clear()
    ledger.users.clear()
    ledger.go = None
    chat = chat_ledger_of(environment)
    chat.acks.clear()
    chat.outbox.clear()


@events.test_stop.add_listener
def _on_test_stop(environment: Environment, **_: Any) -> None:
    flusher = getattr(environment, "fanout_chat_flusher", None)
    if flusher is not None:
        flusher.kill(block=False)
        environment.fanout_chat_flusher = None  # type: ignore[attr-defined]
    o = environment.parsed_options
    if o is None or getattr(o, "worker", False):
        return
    ledger = ledger_of(environment)
    for b in sorted(ledger.broadcasts.values(), key=lambda b: b.index):
        took = (b.completedAt - b.createdAt) / 1000 if b.completedAt and b.createdAt else None
        log.info(
            "broadcast %d %s (%s%s): %s, targeted %s, delivered %s, gone %s, failed %s, %s s",
            b.index,
            b.broadcastId,
            b.audience,
            f" {b.to}" if b.to else "",
            b.status,
            b.targeted,
            b.delivered,
            b.gone,
            b.failed,
            f"{took:.2f}" if took is not None else "-",
        )
    if o.fanout_results:
        out = Path(o.fanout_results)
        out.mkdir(parents=True, exist_ok=True)
        (out / "broadcasts.json").write_text(json.dumps(ledger.to_json(), indent=2))
        # Locust's own response-time buckets of each broadcast, every worker merged: the full
        # distribution behind the CSV's percentiles, for loadtest/report.py's chart.
        latency = {
            name: {str(ms): n for ms, n in sorted(entry.response_times.items())}
            for (name, method), entry in environment.stats.entries.items()
            if method == "deliver"
        }
        (out / "latency.json").write_text(json.dumps(latency))
        chat_latency = {
            name: {str(ms): n for ms, n in sorted(entry.response_times.items())}
            for (name, method), entry in environment.stats.entries.items()
            if method == RECEIVE_TYPE
        }
        if chat_latency:
            (out / "chat_latency.json").write_text(json.dumps(chat_latency))


def _fire(
    user: User,
    request_type: str,
    name: str,
    response_time: float,
    *,
    length: int = 0,
    exception: Exception | None = None,
) -> None:
    user.environment.events.request.fire(
        request_type=request_type,
        name=name,
        response_time=response_time,
        response_length=length,
        exception=exception,
        context={},
    )


# -- the WebSocket user -----------------------------------------------------------------------------
_source_ip_turn = itertools.count()  # round robin over --source-ips in this process only


class WebSocketUser(User):
    """One real WebSocket connection: connect, heartbeat, receive, and judge its own gaps."""

    def wait_time(self) -> float:
        # the task pings every --ping-interval and judges gaps; each run costs worker CPU, which
        # on one machine is taken from the stack under test (5,000 users: ~2,000 runs/s at 2 s)
        return random.uniform(4.0, 6.0)

    def on_start(self) -> None:
        o = self.environment.parsed_options
        self.target = target_of(self.environment)
        self.ledger: BroadcastLedger = ledger_of(self.environment)
        self.user_id = f"loadtest-{uuid.uuid4().hex[:12]}"
        self.ping_interval = float(o.ping_interval) if o else 300.0
        self.ws_timeout = float(o.ws_timeout) if o else 30.0
        # The shape broadcasts `--settle` s after every user connected: a connection younger than that
        # when a broadcast was sent (a reconnect) may rightly be missed by it, and is not judged.
        self.settle_ms = (float(o.settle) if o else 3.0) * 1000
        self.grace_ms = (float(o.grace) if o else 5.0) * 1000
        self.timeout_ms = (float(o.broadcast_timeout) if o else 300.0) * 1000
        self.ws: websocket.WebSocket | None = None
        self.receiver: gevent.Greenlet | None = None
        self.closing = False
        self.session_started_ms: float | None = None
        self.channels: list[str] = []
        count = int(getattr(o, "channels", 0) or 0) if o else 0
        if count > 0:
            k = max(1, min(int(getattr(o, "channels_per_user", 2)), count))
            self.channels = sorted(random.sample(channel_names(count), k))
        # frames per (broadcastId, channel or NO_CHANNEL): one frame per targeted channel is a delivery
        self.received: Counter[tuple[str, str]] = Counter()
        self.judged: set[str] = set()
        self.ping_sent: float | None = None
        self.next_ping = time.monotonic() + random.uniform(0.2, 1.0) * self.ping_interval
        self.next_connect = 0.0
        self.failures_in_a_row = 0
        if o is not None and getattr(o, "audience", "everyone") in ("users", "mixed"):
            runner = self.environment.runner
            assert runner is not None
            runner.send_message(MSG_USER, {"userId": self.user_id})  # users broadcasts target known users
        self.connect()

    # connection ------------------------------------------------------------------------------------
    def _socket(self) -> socket.socket | None:
        if not self.target.source_ips:
            return None
        parts = urlsplit(self.target.ws_url)
        port = parts.port or (443 if parts.scheme == "wss" else 80)
        ip = self.target.source_ips[next(_source_ip_turn) % len(self.target.source_ips)]
        return socket.create_connection(
            (parts.hostname or "127.0.0.1", port), timeout=self.ws_timeout, source_address=(ip, 0)
        )

    def connect(self) -> bool:
        t0 = time.perf_counter()
        try:
            ws = websocket.create_connection(
                self.target.url_for(self.user_id, self.channels),
                timeout=self.ws_timeout,
                socket=self._socket(),
                skip_utf8_validation=True,
            )
        except Exception as exc:
            self.failures_in_a_row += 1
            self.next_connect = time.monotonic() + min(30.0, 2.0**self.failures_in_a_row)
            _fire(self, CONNECT_TYPE, CONNECT_NAME, (time.perf_counter() - t0) * 1000, exception=exc)
            return False
        ws.settimeout(None)
        _fire(self, CONNECT_TYPE, CONNECT_NAME, (time.perf_counter() - t0) * 1000)
        self.failures_in_a_row = 0
        self.ws = ws
        self.closing = False
        self.session_started_ms = now_ms()
        self.ping_sent = None
        self.receiver = gevent.spawn(self.receive, ws)
        return True

    def receive(self, ws: websocket.WebSocket) -> None:
        while True:
            try:
                raw = ws.recv()
            except Exception as exc:
                if not self.closing and self.ws is ws:
                    _fire(self, CONNECT_TYPE, "disconnected", 0, exception=Disconnected(str(exc) or "closed"))
                    self.ws = None
                    self.session_started_ms = None
                return
            if not raw:
                continue
            self.on_frame(raw)

    def on_frame(self, raw: str | bytes) -> None:
        received_at = now_ms()
        try:
            frame = json.loads(raw)
        except ValueError:
            _fire(self, CONNECT_TYPE, "frame", 0, exception=ValueError("not JSON"))
            return
        if not isinstance(frame, dict):
            return
        kind = frame.get("type")
        if kind == "broadcast":
            bid = str(frame.get("broadcastId"))
            channel = str(frame.get("channel") or NO_CHANNEL)
            latency = max(0.0, received_at - float(frame.get("sentAt") or received_at))
            self.received[(bid, channel)] += 1
            n = self.received[(bid, channel)]
            if n == 1:
                _fire(self, "deliver", bid, latency, length=len(raw))
            else:
                where = f" on {channel}" if channel else ""
                _fire(self, "duplicate", bid, latency, exception=DuplicateFrame(f"frame {n} of {bid}{where}"))
        elif kind == "pong":
            if self.ping_sent is not None:
                _fire(self, CONNECT_TYPE, "ping", (time.perf_counter() - self.ping_sent) * 1000)
                self.ping_sent = None
        elif kind == "error":
            _fire(self, CONNECT_TYPE, "error frame", 0, exception=ValueError(str(frame.get("error"))))

    # heartbeat and judgement -----------------------------------------------------------------------
    @task
    def heartbeat(self) -> None:
        if self.ws is None:
            if time.monotonic() >= self.next_connect:
                self.connect()
            return
        if time.monotonic() >= self.next_ping:
            self.ping()
        self.judge()

    def ping(self) -> None:
        assert self.ws is not None
        if self.ping_sent is not None:
            waited = (time.perf_counter() - self.ping_sent) * 1000
            _fire(self, CONNECT_TYPE, "ping", waited, exception=TimeoutError("no pong before the next ping"))
        try:
            self.ping_sent = time.perf_counter()
            self.ws.send('{"action":"ping"}')
        except Exception as exc:
            _fire(self, CONNECT_TYPE, "ping", 0, exception=exc)
            self.ping_sent = None
        self.next_ping = time.monotonic() + self.ping_interval

    def judge(self) -> None:
        """For each due broadcast: an `expected` event per frame this connection should have received
        (one per targeted channel it subscribed to, one if its user or everyone was targeted), a gap
        failure per expected frame that never arrived, an `unexpected` failure per frame key received
        that it was not targeted by."""
        due = expected_broadcasts(
            self.ledger,
            session_started_ms=self.session_started_ms,
            now=now_ms(),
            settle_ms=self.settle_ms,
            grace_ms=self.grace_ms,
            timeout_ms=self.timeout_ms,
        )
        for bid in due:
            if bid in self.judged:
                continue
            self.judged.add(bid)
            record = self.ledger.broadcasts[bid]
            expected = expected_frames(record, channels=self.channels, user_id=self.user_id)
            got = {ch: n for (b, ch), n in self.received.items() if b == bid}
            verdict = judge_frames(expected, got)
            for _ in verdict.expected:
                _fire(self, "expected", bid, 0)
            for ch in sorted(verdict.missing):
                where = f" on {ch}" if ch else ""
                _fire(self, "gap", bid, 0, exception=Gap(f"{bid}{where} never arrived"))
            for ch in sorted(verdict.unexpected):
                where = f" on {ch}" if ch else ""
                _fire(
                    self,
                    "unexpected",
                    bid,
                    0,
                    exception=UnexpectedFrame(f"{bid}{where} was not for {self.user_id}"),
                )

    def on_stop(self) -> None:
        self.judge()
        self.closing = True
        ws, self.ws = self.ws, None
        if self.receiver is not None:
            self.receiver.kill(block=False)
        if ws is not None:
            with contextlib.suppress(Exception):
                ws.send_close()
            with contextlib.suppress(Exception):
                ws.shutdown()


# -- the chat user ---------------------------------------------------------------------------------
class RecoveryImpossible(Exception):
    """The engine could not recover a room's missed messages (history gone, or another epoch)."""


class EpochChanged(Exception):
    """A room's history was reset during the run: its offsets started again."""


class PublishRefused(Exception):
    """The engine answered a publish with an error frame."""


class NoAck(Exception):
    """A publish was never acknowledged."""


CHAT_FLUSH_SECONDS = 0.5
MAX_RESENDS = 2


def chat_ledger_of(environment: Any) -> AckLedger:
    """The acks of this process (one ledger per process, fed by `fanout_chat_acks` messages)."""
    ledger = getattr(environment, "fanout_chat_ledger", None)
    if ledger is None:
        ledger = AckLedger()
        environment.fanout_chat_ledger = ledger
    return ledger


def flush_chat_acks(environment: Environment) -> None:
    """Announce this process's new acks to every process (itself included), through the master."""
    out = chat_ledger_of(environment).take_outbox()
    if out and environment.runner is not None:
        environment.runner.send_message(MSG_CHAT_ACKS, {"acks": out})


def _chat_flusher(environment: Environment) -> None:
    while True:
        gevent.sleep(CHAT_FLUSH_SECONDS)
        flush_chat_acks(environment)


class ChatUser(User):
    """A chat client, one *lineage* of connections: joins `--rooms-per-user` of `--rooms` rooms with
    `?channels=`, publishes `--publish-rate` messages/s to them in turn, and every `--reconnect-every`
    (on average) drops its socket without a close frame and connects again with `?recover=` built from
    the end of the run of offsets it received in each room. It keeps every offset received per room
    across its connections and, when it stops, judges its gaps against the offsets acknowledged to the
    run's publishers (`loadtest.chat_report`)."""

    weight = 0  # only with --chat-users, which sets fixed_count (see _on_init)
    fixed_count = 0

    def wait_time(self) -> float:
        due = min(self.next_publish, self.next_reconnect, self.next_ping, self.next_connect_due())
        return min(5.0, max(0.01, due - time.monotonic()))

    def on_start(self) -> None:
        o = self.environment.parsed_options
        self.target = target_of(self.environment)
        self.acks = chat_ledger_of(self.environment)
        if getattr(self.environment, "fanout_chat_flusher", None) is None:
            self.environment.fanout_chat_flusher = gevent.spawn(_chat_flusher, self.environment)  # type: ignore[attr-defined]
        self.user_id = f"chat-{uuid.uuid4().hex[:12]}"
        rooms = room_names(int(getattr(o, "rooms", 5)) if o else 5)
        if not rooms:
            raise SystemExit("--chat-users needs --rooms > 0")
        k = max(1, min(int(getattr(o, "rooms_per_user", 1)) if o else 1, len(rooms)))
        self.rooms = sorted(random.sample(rooms, k))
        rate = float(getattr(o, "publish_rate", 1.0)) if o else 1.0
        self.publish_interval = 1.0 / rate if rate > 0 else float("inf")
        self.reconnect_every = parse_duration(str(getattr(o, "reconnect_every", "3m"))) if o else 0.0
        self.ping_interval = float(o.ping_interval) if o else 300.0
        self.ws_timeout = float(o.ws_timeout) if o else 30.0
        self.settle_ms = (float(o.settle) if o else 3.0) * 1000
        self.grace_ms = (float(o.grace) if o else 5.0) * 1000
        self.pad = "x" * max(0, int(o.payload_bytes) if o else 64)
        self.tracks: dict[str, RoomTrack] = {room: RoomTrack() for room in self.rooms}
        # publishes awaiting their ack: id -> (room, frame, perf_counter when first sent)
        self.pending: dict[str, tuple[str, str, float]] = {}
        self.resent: Counter[str] = Counter()
        self.seq = 0
        self.turn = itertools.cycle(self.rooms)
        self.ws: websocket.WebSocket | None = None
        self.receiver: gevent.Greenlet | None = None
        self.connects = 0
        self.joined_ms: float | None = None  # when the lineage's first connection was open
        self.lost_ms: float | None = None  # when the server dropped the current connection
        self.connection_started_ms = 0.0
        self.recovering: set[str] = set()
        self.failures_in_a_row = 0
        self.retry_at = 0.0
        self.frame_seen = gevent.event.Event()  # set after every frame handled (tests wait on it)
        now = time.monotonic()
        self.next_publish = now + random.uniform(0.0, min(self.publish_interval, 1.0))
        self.next_reconnect = self._next_drop(now)
        self.next_ping = now + self.ping_interval
        self.connect()

    def _next_drop(self, now: float) -> float:
        # spread over half to one and a half times the mean, so the users do not all drop together
        if self.reconnect_every <= 0:
            return float("inf")
        return now + random.uniform(0.5, 1.5) * self.reconnect_every

    def next_connect_due(self) -> float:
        return self.retry_at if self.ws is None else float("inf")

    # connection ------------------------------------------------------------------------------------
    def connect(self) -> bool:
        """Open the lineage's next connection, recovering every room whose position is known."""
        first = self.connects == 0
        positions = {} if first else recover_positions(self.tracks)
        name = "connect" if first else "reconnect"
        started_ms = now_ms()
        t0 = time.perf_counter()
        try:
            ws = websocket.create_connection(
                self.target.chat_url(self.user_id, self.rooms, recover_param(positions)),
                timeout=self.ws_timeout,
                skip_utf8_validation=True,
            )
        except Exception as exc:
            self.failures_in_a_row += 1
            self.retry_at = time.monotonic() + min(30.0, 2.0**self.failures_in_a_row)
            _fire(self, CHAT_TYPE, name, (time.perf_counter() - t0) * 1000, exception=exc)
            return False
        ws.settimeout(None)
        _fire(self, CHAT_TYPE, name, (time.perf_counter() - t0) * 1000)
        self.failures_in_a_row = 0
        self.connects += 1
        self.ws = ws
        self.lost_ms = None
        self.connection_started_ms = started_ms
        self.recovering = set(positions)
        if self.joined_ms is None:
            self.joined_ms = now_ms()
        self.receiver = gevent.spawn(self.receive, ws)
        # publishes whose ack went down with the last connection: the same id again, so the engine
        # answers with the first ack and sends nothing twice (a few times at most: an engine that never
        # answers must not see every reconnect repeat every publish so far)
        for mid, (_room, frame, _t) in list(self.pending.items()):
            if self.resent[mid] < MAX_RESENDS:
                self.resent[mid] += 1
                self._send(frame)
        return True

    def drop(self, *, reconnect: bool = True) -> None:
        """Lose the connection on purpose, without a close frame (as a network failure would), and
        connect again at once with `?recover=` (or at the next tick)."""
        ws, self.ws = self.ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                ws.shutdown()  # closes the socket; websocket-client sends no close frame here
        if self.receiver is not None:
            self.receiver.kill(block=False)
        self.next_reconnect = self._next_drop(time.monotonic())
        self.retry_at = time.monotonic()
        if reconnect:
            self.connect()

    def receive(self, ws: websocket.WebSocket) -> None:
        while True:
            try:
                raw = ws.recv()
            except Exception as exc:
                if self.ws is ws:
                    _fire(self, CHAT_TYPE, "disconnected", 0, exception=Disconnected(str(exc) or "closed"))
                    self.ws = None
                    self.lost_ms = now_ms()
                    self.retry_at = time.monotonic()
                    self.frame_seen.set()
                return
            if raw:
                self.on_frame(raw)
                self.frame_seen.set()

    def _send(self, frame: str) -> None:
        if self.ws is None:
            return
        try:
            self.ws.send(frame)
        except Exception as exc:
            _fire(self, CHAT_TYPE, "send", 0, exception=exc)

    # frames ----------------------------------------------------------------------------------------
    def on_frame(self, raw: str | bytes) -> None:
        received_ms = now_ms()
        try:
            frame = json.loads(raw)
        except ValueError:
            _fire(self, CHAT_TYPE, "frame", 0, exception=ValueError("not JSON"))
            return
        if not isinstance(frame, dict):
            return
        kind = frame.get("type")
        if kind == "broadcast":
            self.on_envelope(frame, received_ms)
        elif kind == "history":
            for message in frame.get("messages") or []:
                if isinstance(message, dict):
                    envelope = {"channel": frame.get("channel"), "epoch": frame.get("epoch"), **message}
                    self.on_envelope(envelope, received_ms)
        elif kind == "ack":
            self.on_ack(frame)
        elif kind == "error":
            self.on_error(frame)

    def on_envelope(self, frame: dict[str, Any], received_ms: float) -> None:
        channel, offset, epoch = frame.get("channel"), frame.get("offset"), frame.get("epoch")
        track = self.tracks.get(channel) if isinstance(channel, str) else None
        if track is None or not isinstance(offset, int) or not isinstance(epoch, str):
            return  # not one of its rooms' messages (an operator broadcast to everyone, a direct message)
        assert isinstance(channel, str)
        changes = track.epoch_changes
        n = track.record(offset, epoch)
        if track.epoch_changes != changes:
            _fire(self, CHAT_TYPE, "epoch changed", 0, exception=EpochChanged(f"{channel}: epoch {epoch}"))
        data = frame.get("data")
        sent = data.get("sentMs") if isinstance(data, dict) and data.get("lt") == "chat" else None
        sent_ms = float(sent) if isinstance(sent, int | float) else None
        latency = max(0.0, received_ms - sent_ms) if sent_ms is not None else 0.0
        if n > 1:
            _fire(
                self,
                DUPLICATE_TYPE,
                channel,
                latency,
                exception=DuplicateFrame(f"offset {offset} of {channel} received {n} times"),
            )
            return
        if sent_ms is not None:
            _fire(self, RECEIVE_TYPE, channel, latency)
        if is_recovered(
            sent_ms=sent_ms,
            connection_started_ms=self.connection_started_ms,
            recovering=channel in self.recovering,
        ):
            _fire(self, RECOVERED_TYPE, channel, latency)

    def on_ack(self, frame: dict[str, Any]) -> None:
        sent = self.pending.pop(str(frame.get("id")), None)
        self.resent.pop(str(frame.get("id")), None)
        offset = frame.get("offset")
        if sent is None:
            return  # the ack of a publish already acknowledged (an idempotent retry)
        room, _frame, t0 = sent
        _fire(self, PUBLISH_TYPE, room, (time.perf_counter() - t0) * 1000)
        if isinstance(offset, int):
            self.acks.record(room, offset, now_ms())

    def on_error(self, frame: dict[str, Any]) -> None:
        code = str(frame.get("code"))
        sent = self.pending.pop(str(frame.get("id")), None) if frame.get("action") == "publish" else None
        self.resent.pop(str(frame.get("id")), None)
        if sent is not None:
            room, _frame, t0 = sent
            refused = PublishRefused(f"{code}: {frame.get('message')}")
            _fire(self, PUBLISH_TYPE, room, (time.perf_counter() - t0) * 1000, exception=refused)
        elif code == "recovery_impossible":
            channel = frame.get("channel")
            rooms = (
                [channel] if isinstance(channel, str) and channel in self.tracks else sorted(self.recovering)
            )
            for room in rooms:
                self.tracks[room].forget()
                self.recovering.discard(room)
            what = RecoveryImpossible(f"{', '.join(rooms) or 'recover'}: {frame.get('message')}")
            _fire(self, CHAT_TYPE, "recovery_impossible", 0, exception=what)
        else:
            _fire(self, CHAT_TYPE, "error frame", 0, exception=ValueError(f"{code}: {frame.get('message')}"))

    # the schedule ----------------------------------------------------------------------------------
    @task
    def tick(self) -> None:
        now = time.monotonic()
        if self.ws is None:
            if now >= self.retry_at:
                self.connect()
            return
        if now >= self.next_reconnect:
            self.drop()
            return
        if now >= self.next_publish:
            self.publish()
            # at the rate, without a burst to catch up after a slow spell
            self.next_publish = max(self.next_publish + self.publish_interval, now)
        if now >= self.next_ping:
            self._send('{"action":"ping"}')
            self.next_ping = now + self.ping_interval

    def publish(self, room: str | None = None) -> str:
        """Publish one message (to the next room in turn); its id."""
        room = room or next(self.turn)
        self.seq += 1
        mid = f"{self.user_id}-{self.seq}"
        message = {"lt": "chat", "id": mid, "sentMs": now_ms(), "pad": self.pad}
        frame = json.dumps(
            {"action": "publish", "channel": room, "message": message, "id": mid}, separators=(",", ":")
        )
        self.pending[mid] = (room, frame, time.perf_counter())
        self._send(frame)
        return mid

    def judge(self, *, at_ms: float | None = None) -> None:
        """Per room: one `chat judged` event, and a `chat gap` failure per offset acknowledged to a
        publisher from `--settle` s after the lineage joined to `--grace` s before it stopped (or lost
        its connection) that it never received, on any of its connections."""
        if self.joined_ms is None:
            return
        until = (at_ms if at_ms is not None else now_ms()) if self.lost_ms is None else self.lost_ms
        for room, track in self.tracks.items():
            span = expected_span(
                self.acks.acks.get(room, []),
                since_ms=self.joined_ms + self.settle_ms,
                until_ms=until - self.grace_ms,
            )
            verdict = judge_room(track.counts, span)
            _fire(self, JUDGED_TYPE, room, 0)
            for offset in verdict.gaps:
                _fire(self, GAP_TYPE, room, 0, exception=Gap(f"offset {offset} of {room} never arrived"))

    def on_stop(self) -> None:
        self.judge()
        cutoff = time.perf_counter() - self.grace_ms / 1000
        for room, _frame, t0 in self.pending.values():
            if t0 < cutoff:
                _fire(self, PUBLISH_TYPE, room, 0, exception=NoAck(f"{room}: no ack"))
        ws, self.ws = self.ws, None
        if self.receiver is not None:
            self.receiver.kill(block=False)
        if ws is not None:
            with contextlib.suppress(Exception):
                ws.send_close()
            with contextlib.suppress(Exception):
                ws.shutdown()


# -- the operator user ------------------------------------------------------------------------------
class OperatorUser(User):
    """Starts `--broadcasts` broadcasts `--broadcast-interval` s apart once the shape says go."""

    fixed_count = 1

    def wait_time(self) -> float:
        return 0.2

    def on_start(self) -> None:
        o = self.environment.parsed_options
        self.api = target_of(self.environment).operator()
        self.ledger = ledger_of(self.environment)
        self.payload = "x" * max(0, int(o.payload_bytes) if o else 64)
        self.timeout = float(o.broadcast_timeout) if o else 300.0
        self.audience = str(getattr(o, "audience", "everyone")) if o else "everyone"
        self.channel_count = int(getattr(o, "channels", 0) or 0) if o else 0
        self.rng = random.Random()
        self.run_id = uuid.uuid4().hex[:8]
        self.sent = 0
        self.next_at = 0.0
        self.pollers: list[gevent.Greenlet] = []

    @task
    def broadcast(self) -> None:
        go = self.ledger.go
        if go is None or self.sent >= int(go["count"]) or time.monotonic() < self.next_at:
            return
        self.sent += 1
        self.next_at = time.monotonic() + float(go["interval"])
        self.start_one(self.sent)

    def start_one(self, index: int) -> None:
        runner = self.environment.runner
        assert runner is not None
        message = {"loadtest": self.run_id, "index": index, "pad": self.payload}
        kind = audience_of(index, self.audience)
        try:
            to = pick_to(kind, self.rng, channels=self.channel_count, users=sorted(self.ledger.users))
        except ValueError as exc:
            log.warning("broadcast %d: %s; sending it to everyone", index, exc)
            kind, to = "everyone", None
        started_ms = now_ms()
        t0 = time.perf_counter()
        try:
            # the key makes the client's retries (timeouts, 5xx, 409 in progress) start one broadcast
            bid = self.api.start(message, idempotency_key=f"loadtest-{self.run_id}-{index}", to=to)
        except Exception as exc:
            _fire(self, "operator", "start broadcast", (time.perf_counter() - t0) * 1000, exception=exc)
            runner.send_message(
                MSG_COMPLETED,
                {"broadcastId": f"unstarted-{self.run_id}-{index}", "index": index, "status": "unstarted"},
            )
            return
        latency = (time.perf_counter() - t0) * 1000
        _fire(self, "operator", "start broadcast", latency)
        # the audience travels with the announcement: every connection judges what it should receive
        announced = {
            "broadcastId": bid,
            "index": index,
            "startedAtMs": started_ms,
            "startLatencyMs": latency,
            "audience": kind,
            "to": to,
        }
        runner.send_message(MSG_STARTED, announced)
        self.pollers.append(gevent.spawn(self.follow, announced))

    def follow(self, announced: dict[str, Any]) -> None:
        """Poll the broadcast until it ends; fire its completion time; announce the final view."""
        runner = self.environment.runner
        assert runner is not None
        bid = str(announced["broadcastId"])
        t0 = time.perf_counter()
        deadline = time.monotonic() + self.timeout
        view: dict[str, Any] = {"status": "started"}
        while True:
            p0 = time.perf_counter()
            try:
                view = self.api.status(bid)
                _fire(self, "operator", "status", (time.perf_counter() - p0) * 1000)
            except Exception as exc:
                _fire(self, "operator", "status", (time.perf_counter() - p0) * 1000, exception=exc)
            if view.get("status") in ("completed", "failed"):
                break
            if time.monotonic() > deadline:
                view = {**view, "status": "timeout"}
                break
            gevent.sleep(0.25)
        created, completed = view.get("createdAt"), view.get("completedAt")
        took = float(completed - created) if created and completed else (time.perf_counter() - t0) * 1000
        problem = None
        if view.get("status") != "completed" or view.get("failed"):
            problem = BroadcastIncomplete(
                f"{bid}: {view.get('status')}, delivered {view.get('delivered')} of {view.get('targeted')}, "
                f"failed {view.get('failed')}"
            )
        _fire(self, "operator", "complete broadcast", took, exception=problem)
        runner.send_message(MSG_COMPLETED, {**announced, **view})

    def on_stop(self) -> None:
        gevent.killall(self.pollers, block=False)


# -- the shape --------------------------------------------------------------------------------------
class FanoutShape(LoadTestShape):
    """Ramp at `--ramp-rate`, wait for every connect, settle, broadcast, hold, ramp down, stop.

    `-u` is the number of WebSocket users (the operator user comes on top), `-t` the minimum hold at
    full load; the ramp rate is `--ramp-rate`, never `-r` (headless Locust defaults it to 1). Runs on
    the master (or the single local process); the phases are `loadtest.shapes.ShapePlan`.
    """

    use_common_options: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        self.plan = ShapePlan()

    def reset_time(self) -> None:
        super().reset_time()
        self.plan = ShapePlan()

    def tick(self) -> tuple[int, float] | None:
        runner = self.runner
        assert runner is not None
        env = runner.environment
        entry = env.stats.entries.get((CONNECT_NAME, CONNECT_TYPE))
        connected = int(entry.num_requests - entry.num_failures) if entry is not None else 0
        return self.plan.tick(
            self.get_run_time(),
            shape_settings(env),
            connected=connected,
            users_now=self.get_current_user_count(),
            ledger=ledger_of(env),
            send_go=lambda data: runner.send_message(MSG_GO, data),
        )
