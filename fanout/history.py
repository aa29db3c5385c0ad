"""Channel history as plain functions over plain data: offsets, epochs, pages, recovery (no I/O).

Every message to a channel gets the channel's next offset (1, 2, 3, ... with no gap) and carries the
channel's epoch: the name of one unbroken run of offsets. A channel's history is one *meta* row
(offset 0: the head offset and the epoch) and one row per message (its envelope exactly as members
received it), in the history table (fanout.adapters.history). The last `keep` messages within
`ttl_seconds` are kept; when the meta row is gone (expired with the channel idle, or lost) the next
message starts a new epoch at offset 1, and a client holding the old epoch knows it cannot recover.

Recovery at reconnect (``?recover=room:1:N:epoch``) and the ``history`` action read the same rows;
docs/architecture.md has the boundary between recovered and live delivery (`delivers_live`).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fanout.channels import channel_problem
from fanout.errors import Refused

# An epoch is short, URL-safe and holds neither ":" nor "," (the ?recover= syntax relies on it).
EPOCH_CHARS = 12
MAX_EPOCH_CHARS = 64
_EPOCH = re.compile(r"[A-Za-z0-9_-]{1,64}")
# The largest offset a client may name (a JSON number every client parses exactly).
MAX_OFFSET = 2**53 - 1
# The offset stored on a subscription row while its connection is recovering: no live message is
# delivered to it until recovery hands over (fanout.adapters.history.HistoryTable.go_live).
RECOVERING = MAX_OFFSET
# A history frame's envelopes: the frame stays under API Gateway's 128 KB message limit.
PAGE_BYTES = 120 * 1024
RECOVERY_IMPOSSIBLE = "recovery_impossible"
INVALID_RECOVER = "invalid_recover"


def new_epoch() -> str:
    return secrets.token_urlsafe(9)[:EPOCH_CHARS]


def epoch_problem(epoch: object) -> str | None:
    if not isinstance(epoch, str) or _EPOCH.fullmatch(epoch) is None:
        return "an epoch is 1 to 64 of A-Z a-z 0-9 _ -"
    return None


@dataclass(frozen=True)
class Head:
    """A channel's meta row: the last offset given and the epoch it belongs to."""

    offset: int
    epoch: str


@dataclass(frozen=True)
class Stored:
    """One message row of a channel's history."""

    offset: int
    epoch: str
    envelope: str


def next_head(current: Head | None, make_epoch: Callable[[], str] = new_epoch) -> Head:
    """The head after one more message: the next offset, or offset 1 of a new epoch without history."""
    if current is None:
        return Head(1, make_epoch())
    return Head(current.offset + 1, current.epoch)


def trimmed(offset: int, keep: int) -> int | None:
    """The offset that leaves the history when `offset` is written (only `keep` are kept)."""
    old = offset - keep
    return old if old >= 1 else None


def oldest_kept(head: Head, keep: int) -> int:
    return max(1, head.offset - keep + 1)


def recovery_problem(head: Head | None, since: int, epoch: str | None, keep: int) -> str | None:
    """Why the messages after `since` of `epoch` cannot be given (None: they can, maybe none).

    No epoch (a client's first read) means the current one; `since` 0 then reads what is kept."""
    if head is None:
        if since == 0 and epoch is None:
            return None  # no history yet: nothing to give, nothing lost
        return "this channel has no history now; reload its state"
    if epoch is not None and epoch != head.epoch:
        return f"the channel's history was reset (epoch {head.epoch}, not {epoch}); reload its state"
    if since > head.offset:
        return f"offset {since} is beyond the channel's last offset {head.offset}"
    if epoch is None and since == 0:
        return None
    if since + 1 < oldest_kept(head, keep):
        return f"offset {since} is older than the history kept (from offset {oldest_kept(head, keep)})"
    return None


def start_after(head: Head | None, since: int, epoch: str | None, keep: int) -> int:
    """The offset to read after: `since`, or just before the oldest kept for a first read."""
    if head is not None and epoch is None and since == 0:
        return oldest_kept(head, keep) - 1
    return since


def page(
    rows: Sequence[Stored], after: int, head: Head, *, limit: int, budget: int = PAGE_BYTES
) -> tuple[list[Stored], bool]:
    """The next page after `after`: consecutive offsets of the head's epoch, at most `limit` and
    `budget` bytes of envelopes (at least one), and whether more follow. Raises LookupError when a
    kept offset is missing (it expired): the history has a hole, recovery is impossible."""
    out: list[Stored] = []
    size = 0
    expected = after + 1
    for row in rows:
        if row.offset > head.offset or row.epoch != head.epoch:
            continue  # written after the head was read, or left from an earlier epoch
        if row.offset < expected:
            continue
        if row.offset != expected:
            raise LookupError(f"offset {expected} is no longer kept")
        cost = len(row.envelope.encode("utf-8")) + 1
        if out and (len(out) >= limit or size + cost > budget):
            break
        out.append(row)
        size += cost
        expected += 1
    last = out[-1].offset if out else after
    if not out and after < head.offset:
        raise LookupError(f"offset {after + 1} is no longer kept")
    return out, last < head.offset


def history_frame(channel: str, epoch: str | None, rows: Sequence[Stored], more: bool) -> str:
    """``{"type":"history","channel","epoch","messages":[envelopes],"more"}``, the envelopes as they
    were sent (spliced in, not re-serialized)."""
    head = json.dumps(
        {"type": "history", "channel": channel, "epoch": epoch}, separators=(",", ":"), ensure_ascii=False
    )
    messages = ",".join(row.envelope for row in rows)
    return f'{head[:-1]},"messages":[{messages}],"more":{"true" if more else "false"}}}'


def delivers_live(live_from: int | None, offset: int | None) -> bool:
    """Whether a live channel message goes to a subscription row that starts at `live_from`: the
    messages up to it are recovery's (none is skipped for a row without one, or a message without)."""
    return live_from is None or offset is None or offset > live_from


# -- ?recover= -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RecoverFrom:
    channel: str
    since: int
    epoch: str


def parse_recover(value: str | None) -> list[RecoverFrom]:
    """The items of ``?recover=room:1:5:ep,...``, each read from the right (the last two fields are
    the offset and the epoch; the channel name may hold ':'). Raises Refused (400) on bad input."""
    if not value:
        return []
    out: dict[str, RecoverFrom] = {}
    for raw in value.split(","):
        item = raw.strip()
        if not item:
            continue
        parts = item.rsplit(":", 2)
        shown = item if len(item) <= 60 else item[:60] + "..."
        if len(parts) != 3:
            raise Refused(
                f"recover item {shown!r} is not channel:offset:epoch", code=INVALID_RECOVER, status=400
            )
        channel, offset, epoch = parts
        problem = channel_problem(channel) or epoch_problem(epoch)
        if problem is None and not (offset.isascii() and offset.isdigit() and int(offset) <= MAX_OFFSET):
            problem = "the offset is a whole number"
        if problem is not None:
            raise Refused(f"recover item {shown!r}: {problem}", code=INVALID_RECOVER, status=400)
        if channel in out:
            raise Refused(f"channel {channel!r} is named twice in recover", code=INVALID_RECOVER, status=400)
        out[channel] = RecoverFrom(channel, int(offset), epoch)
    return list(out.values())


def recover_param(query: dict[str, str] | None, multi: dict[str, list[str]] | None = None) -> str:
    """``?recover=`` (repeated parameters join, as ?channels= does)."""
    values = list((multi or {}).get("recover") or [])
    if not values and query and query.get("recover") is not None:
        values = [query["recover"]]
    return ",".join(values)
