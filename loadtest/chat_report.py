"""The chat load test's bookkeeping and judgement: plain functions over plain data, no I/O, no Locust.

A chat user (the locustfile's `ChatUser`) is one *lineage*: the chain of WebSocket connections it opens,
each reconnect asking with `?recover=` for what it missed. For each room it keeps a `RoomTrack`: the
offsets it received in the room's current epoch and how often. From those:

- `recover_param` builds the `?recover=room:1:N:epoch,...` value from each room's position, the end of
  the run of offsets received without a hole since the run began (`contiguous_end`), so that a message
  still in flight at the drop is asked for again rather than lost;
- `judge_room` finds the gaps (offsets the lineage should have received and never did) and the
  duplicates (a second receipt of one offset) of one (lineage, room), across every reconnect;
- `expected_span` says which offsets the lineage should have received: from the first one acknowledged
  to a publisher after the lineage had joined (and settled) to the last one acknowledged a grace period
  before it stopped. Offsets are strictly increasing per room with no gaps, so every offset in the span
  is a message every member must receive, whoever published it;
- `summarize_chat` / `render_chat` turn the run's Locust rows (request type / room name) into the
  report's chat section.

The request types the chat user fires, each named by room, are the constants below.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

ROOM_PREFIX = "room:lt-"
# What a chat user's token lets it subscribe to and publish to
ROOM_PATTERN = "room:*"

# Request types (the name is the room), and the type of connection-level events (name: what happened)
PUBLISH_TYPE = "publish"  # publish → ack time; a failure for an error frame answering a publish
RECEIVE_TYPE = "receive"  # publish → receive time, once per (lineage, offset) of a load-test message
RECOVERED_TYPE = "recovered"  # a message received through recovery (sent before its connection opened)
JUDGED_TYPE = "chat judged"  # one per (lineage, room) judged when the chat user stops
GAP_TYPE = "chat gap"  # a failure per offset of the span never received
DUPLICATE_TYPE = "chat duplicate"  # a failure per extra receipt of an offset
CHAT_TYPE = "chat"  # names: connect, reconnect, disconnected, recovery_impossible, epoch changed, error frame
CHAT_TYPES = frozenset(
    {PUBLISH_TYPE, RECEIVE_TYPE, RECOVERED_TYPE, JUDGED_TYPE, GAP_TYPE, DUPLICATE_TYPE, CHAT_TYPE}
)

# The custom message carrying acknowledged offsets between Locust processes (relayed by the master)
MSG_CHAT_ACKS = "fanout_chat_acks"

_DURATION = re.compile(r"^(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m)?(?:(?P<s>\d+(?:\.\d+)?)s)?$")


def room_names(count: int) -> list[str]:
    return [f"{ROOM_PREFIX}{i}" for i in range(max(0, count))]


def parse_duration(text: str) -> float:
    """Seconds of a Locust-style duration: `90`, `90s`, `3m`, `1h30m`, `2m30s` (decimals allowed)."""
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        match = _DURATION.match(value)
        if not value or match is None:
            raise ValueError(f"not a duration: {text!r} (e.g. 90, 90s, 3m, 1h30m)") from None
        h, m, s = (float(match.group(k) or 0) for k in ("h", "m", "s"))
        seconds = h * 3600 + m * 60 + s
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative: {text!r}")
    return seconds


def contiguous_end(offsets: Collection[int], start: int) -> int:
    """The last offset of the run `start`, `start + 1`, ... present in `offsets` (`start` must be in it)."""
    end = start
    while end + 1 in offsets:
        end += 1
    return end


def encodable_epoch(epoch: str) -> bool:
    return bool(epoch) and ":" not in epoch and "," not in epoch


def recover_param(positions: Mapping[str, tuple[int, str]]) -> str:
    """`room:1:5:e1,room:2:9:e2` from {channel: (offset, epoch)}: the engine reads each item from the right
    (offset and epoch are the last two fields), so a channel name may hold `:`; an epoch may not."""
    items = []
    for channel in sorted(positions):
        offset, epoch = positions[channel]
        if not encodable_epoch(epoch):
            raise ValueError(f"epoch {epoch!r} of {channel} cannot be put in ?recover=")
        items.append(f"{channel}:{int(offset)}:{epoch}")
    return ",".join(items)


@dataclass
class RoomTrack:
    """One lineage's receipts in one room, in the room's current epoch."""

    epoch: str | None = None
    counts: Counter[int] = field(default_factory=Counter)
    run_start: int | None = None  # where the position's run begins (None: at the next receipt)
    epoch_changes: int = 0

    def record(self, offset: int, epoch: str) -> int:
        """Count one receipt; the number of times this offset has now been received (1: new). Another
        epoch means the room's history was reset: what was received before no longer counts."""
        if self.epoch is not None and epoch != self.epoch:
            self.epoch_changes += 1
            self.counts.clear()
            self.run_start = None
        self.epoch = epoch
        self.counts[offset] += 1
        if self.run_start is None:
            self.run_start = offset
        return self.counts[offset]

    def position(self) -> int | None:
        if self.run_start is None:
            return None
        return contiguous_end(self.counts, self.run_start)

    def forget(self) -> None:
        """Recovery from the position is impossible: the next connection joins afresh, and the next
        receipt starts a new run (the counts stay: what was lost is still judged)."""
        self.run_start = None


def recover_positions(tracks: Mapping[str, RoomTrack]) -> dict[str, tuple[int, str]]:
    """The rooms a reconnect can recover, with their positions: those with a run and an epoch that
    `?recover=` can carry (an engine breaking that rule gets no recovery, and the losses show as gaps)."""
    out = {}
    for channel, track in tracks.items():
        position = track.position()
        if position is not None and track.epoch is not None and encodable_epoch(track.epoch):
            out[channel] = (position, track.epoch)
    return out


def is_recovered(*, sent_ms: float | None, connection_started_ms: float, recovering: bool) -> bool:
    """A message received on a connection that asked to recover its room, and published before that
    connection's handshake began, can only have come through recovery."""
    return recovering and sent_ms is not None and sent_ms < connection_started_ms


def expected_span(
    acks: Sequence[tuple[float, int]], *, since_ms: float, until_ms: float
) -> tuple[int, int] | None:
    """The offsets (first, last) a member of the room from `since_ms` to `until_ms` must have received,
    from the acks (time acknowledged, offset) of the room's publishers: from the lowest offset
    acknowledged at or after `since_ms` to the highest acknowledged at or before `until_ms`. None when
    no message falls in the window."""
    after = [offset for at, offset in acks if at >= since_ms]
    before = [offset for at, offset in acks if at <= until_ms]
    if not after or not before:
        return None
    lo, hi = min(after), max(before)
    return (lo, hi) if lo <= hi else None


@dataclass(frozen=True)
class RoomVerdict:
    expected: int
    received: int  # distinct offsets received (in the span or not)
    gaps: tuple[int, ...]
    duplicates: int

    @property
    def exact(self) -> bool:
        return not self.gaps and self.duplicates == 0


def judge_room(counts: Mapping[int, int], span: tuple[int, int] | None) -> RoomVerdict:
    """Gaps: offsets of `span` never received. Duplicates: every receipt of an offset beyond its first."""
    got = {offset for offset, n in counts.items() if n > 0}
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    if span is None:
        return RoomVerdict(expected=0, received=len(got), gaps=(), duplicates=duplicates)
    lo, hi = span
    gaps = tuple(o for o in range(lo, hi + 1) if o not in got)
    return RoomVerdict(expected=hi - lo + 1, received=len(got), gaps=gaps, duplicates=duplicates)


def percentile(hist: Mapping[float, int], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of a {value: count} histogram."""
    total = sum(hist.values())
    if total == 0:
        return None
    rank = max(1, min(total, -(-q * total // 100)))
    seen = 0
    for value in sorted(hist):
        seen += hist[value]
        if seen >= rank:
            return float(value)
    return float(max(hist))


def room_percentiles(
    hist: Mapping[float, int], qs: Iterable[float] = (50, 95, 99)
) -> dict[float, float | None]:
    return {float(q): percentile(hist, q) for q in qs}


@dataclass
class AckLedger:
    """The offsets acknowledged to the run's publishers, per room, with when (epoch ms). Each process
    records its own publishers' acks in `outbox`; they reach every process's `acks` only through the
    custom message `MSG_CHAT_ACKS` (relayed by the master), so every process judges with the same acks."""

    acks: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    outbox: dict[str, list[list[float]]] = field(default_factory=dict)

    def record(self, room: str, offset: int, at_ms: float) -> None:
        self.outbox.setdefault(room, []).append([at_ms, offset])

    def take_outbox(self) -> dict[str, list[list[float]]]:
        out, self.outbox = self.outbox, {}
        return out

    def on_acks(self, data: Mapping[str, Any]) -> None:
        for room, items in dict(data.get("acks") or {}).items():
            self.acks.setdefault(str(room), []).extend((float(at), int(offset)) for at, offset in items)


# -- the report's chat section ----------------------------------------------------------------------
class Row(Protocol):
    """What the chat section reads of one Locust stats row (loadtest.report.StatsRow)."""

    type: str
    name: str
    requests: int
    failures: int

    def p(self, q: float) -> float | None: ...


@dataclass
class ChatRoomSummary:
    room: str
    published: int
    publish_failures: int
    received: int
    judged: int  # (lineage, room) pairs judged for gaps
    gaps: int
    duplicates: int
    recovered: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    ack_p50_ms: float | None = None
    ack_p99_ms: float | None = None

    @property
    def ok(self) -> bool:
        return (
            self.published > 0
            and self.received > 0
            and self.publish_failures == 0
            and self.gaps == 0
            and self.duplicates == 0
        )


@dataclass
class ChatSummary:
    rooms: list[ChatRoomSummary]
    connects: int = 0
    connect_failures: int = 0
    reconnects: int = 0
    reconnect_failures: int = 0
    disconnects: int = 0
    recovery_impossible: int = 0
    epoch_changes: int = 0
    error_frames: int = 0

    @property
    def ok(self) -> bool:
        return (
            bool(self.rooms)
            and all(r.ok for r in self.rooms)
            and self.connect_failures == 0
            and self.reconnect_failures == 0
            and self.recovery_impossible == 0
            and self.epoch_changes == 0
            and self.error_frames == 0
        )

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        for room, r in zip(out["rooms"], self.rooms, strict=True):
            room["ok"] = r.ok
        return out


def summarize_chat(
    rows: Iterable[Row], latency: Mapping[str, Mapping[float, int]] | None = None
) -> ChatSummary | None:
    """The chat section from the run's rows (None when no chat user ran); `latency` is the full
    publish→receive histogram per room (ms → receipts), else the rows' percentiles are used."""
    by_key = {(r.type, r.name): r for r in rows}
    rooms = sorted(
        {name for kind, name in by_key if kind in (PUBLISH_TYPE, RECEIVE_TYPE, JUDGED_TYPE, GAP_TYPE)},
        key=_room_order,
    )
    chat_rows = {name: r for (kind, name), r in by_key.items() if kind == CHAT_TYPE}
    if not rooms and not chat_rows:
        return None

    def count(kind: str, room: str) -> int:
        r = by_key.get((kind, room))
        return r.requests if r else 0

    out = []
    for room in rooms:
        publish, receive = by_key.get((PUBLISH_TYPE, room)), by_key.get((RECEIVE_TYPE, room))
        hist = (latency or {}).get(room)
        if hist:
            p50, p95, p99 = (percentile(hist, q) for q in (50, 95, 99))
        else:
            p50, p95, p99 = (receive.p(q) if receive else None for q in (50.0, 95.0, 99.0))
        out.append(
            ChatRoomSummary(
                room=room,
                published=(publish.requests - publish.failures) if publish else 0,
                publish_failures=publish.failures if publish else 0,
                received=receive.requests if receive else 0,
                judged=count(JUDGED_TYPE, room),
                gaps=count(GAP_TYPE, room),
                duplicates=count(DUPLICATE_TYPE, room),
                recovered=count(RECOVERED_TYPE, room),
                p50_ms=p50,
                p95_ms=p95,
                p99_ms=p99,
                ack_p50_ms=publish.p(50.0) if publish else None,
                ack_p99_ms=publish.p(99.0) if publish else None,
            )
        )

    def chat(name: str) -> tuple[int, int]:
        r = chat_rows.get(name)
        return (r.requests, r.failures) if r else (0, 0)

    connects, connect_failures = chat("connect")
    reconnects, reconnect_failures = chat("reconnect")
    return ChatSummary(
        rooms=out,
        connects=connects - connect_failures,
        connect_failures=connect_failures,
        reconnects=reconnects - reconnect_failures,
        reconnect_failures=reconnect_failures,
        disconnects=chat("disconnected")[0],
        recovery_impossible=chat("recovery_impossible")[0],
        epoch_changes=chat("epoch changed")[0],
        error_frames=chat("error frame")[0],
    )


def _room_order(name: str) -> tuple[int, int | str]:
    tail = name.removeprefix(ROOM_PREFIX)
    return (0, int(tail)) if name.startswith(ROOM_PREFIX) and tail.isdigit() else (1, name)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def render_chat(s: ChatSummary) -> list[str]:
    lines = [
        f"chat: {s.connects} connects ({s.connect_failures} failed), {s.reconnects} reconnects with recover "
        f"({s.reconnect_failures} failed), {s.disconnects} dropped by the server, "
        f"{s.recovery_impossible} recovery_impossible, {s.epoch_changes} epoch changes, "
        f"{s.error_frames} other error frames",
        "chat per room (gaps and duplicates per (connection lineage, room), across reconnects):",
        f"{'room':<14} {'published':>9} {'pub fail':>8} {'judged':>7} {'received':>9} {'p50':>6} "
        f"{'p95':>6} {'p99':>6} {'ack p50':>7} {'gaps':>5} {'dup':>5} {'recovered':>9}",
    ]
    for r in s.rooms:
        lines.append(
            f"{r.room:<14} {r.published:>9} {r.publish_failures:>8} {r.judged:>7} {r.received:>9} "
            f"{_ms(r.p50_ms):>6} {_ms(r.p95_ms):>6} {_ms(r.p99_ms):>6} {_ms(r.ack_p50_ms):>7} {r.gaps:>5} "
            f"{r.duplicates:>5} {r.recovered:>9}  {'OK' if r.ok else 'PROBLEMS'}"
        )
    lines.append("chat result: " + ("OK" if s.ok else "PROBLEMS"))
    return lines
