"""Channels as plain functions over plain data: names, token patterns, subscription keys, task ranges.

A subscription is one row of the subscriptions table: partition key the channel, sort key the
*member* ``"<bucket>#<connectionId>"``, where the bucket (000-999) is a stable hash of the connection
id. The buckets spread a channel's members evenly over its key range, so a big channel is read by
many tasks at once, each a Query of one bucket range (``member BETWEEN "lo#" AND "hi$"``), and every
task reads only members: reads are O(members), never O(connections). docs/architecture.md has the
storage design and the alternatives.

A channel broadcast's work units are numbered like the partitions of an everyone-broadcast (the
ledger and the stages treat them alike): unit ``i * UNIT_STRIDE + lo * BUCKETS + hi`` is the bucket
range [lo, hi] of the i-th channel of the broadcast.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from collections.abc import Iterable, Sequence

MAX_CHANNEL_CHARS = 128
CHANNEL_CHARS = "A-Z a-z 0-9 _ : . -"
_NAME = re.compile(r"[A-Za-z0-9_:.\-]{1,128}")
_PREFIX = re.compile(r"[A-Za-z0-9_:.\-]{0,127}")
BUCKETS = 1000
UNIT_STRIDE = 1_000_000
# An everyone-broadcast's partitions and a channel broadcast's units share the ledger's numbering.
MAX_CHANNELS_PER_BROADCAST = 100
# Counter attributes of one channel in the ledger: "c/<index in the audience>/<field>".
_COUNTER_PREFIX = "c/"


def channel_problem(name: object) -> str | None:
    """Why `name` is not a channel name, in words a client can read; None if it is one."""
    if not isinstance(name, str):
        return "a channel name must be a string"
    if not name:
        return "a channel name must not be empty"
    if len(name) > MAX_CHANNEL_CHARS:
        return f"a channel name has at most {MAX_CHANNEL_CHARS} characters; this one has {len(name)}"
    if _NAME.fullmatch(name) is None:
        bad = next(c for c in name if _NAME.fullmatch(c) is None)
        return f"a channel name may hold only {CHANNEL_CHARS}; {bad!r} is not allowed"
    return None


def is_channel(name: object) -> bool:
    return channel_problem(name) is None


def namespace(name: str) -> str | None:
    """The part before the first ``:`` (``room`` of ``room:1``), if any."""
    head, sep, _ = name.partition(":")
    return head if sep else None


def pattern_problem(pattern: object) -> str | None:
    """Why `pattern` is not a channel pattern (an exact name, or a prefix ending in ``*``)."""
    if not isinstance(pattern, str):
        return "a channel pattern must be a string"
    if pattern.endswith("*"):
        if _PREFIX.fullmatch(pattern[:-1]) is None:
            return f"a channel pattern is a name or a prefix of {CHANNEL_CHARS} ending in '*'"
        return None
    return channel_problem(pattern)


def allows(patterns: Iterable[str], name: str) -> bool:
    """Whether any of the token's patterns covers channel `name` (no pattern, no right)."""
    for pattern in patterns:
        if pattern.endswith("*"):
            if name.startswith(pattern[:-1]):
                return True
        elif pattern == name:
            return True
    return False


def parse_channel_list(value: str | None) -> list[str]:
    """The channels of a ``?channels=a,b`` query parameter, in order, each once (empty items ignored)."""
    if not value:
        return []
    return list(dict.fromkeys(item.strip() for item in value.split(",") if item.strip()))


# -- subscription rows ---------------------------------------------------------------------------------
def bucket_of(connection_id: str) -> int:
    """The member bucket of a connection (stable across processes: crc32, not hash())."""
    return zlib.crc32(connection_id.encode()) % BUCKETS


def member_key(connection_id: str) -> str:
    """The sort key of a connection's subscription row in any channel."""
    return f"{bucket_of(connection_id):03d}#{connection_id}"


def connection_of(member: str) -> str:
    """The connection id of a subscription row's sort key."""
    return member.split("#", 1)[1]


def member_range(lo: int, hi: int) -> tuple[str, str]:
    """The sort key bounds of buckets lo..hi (inclusive): ``BETWEEN`` these two."""
    if not 0 <= lo <= hi < BUCKETS:
        raise ValueError(f"bucket range {lo}..{hi} is not within 0..{BUCKETS - 1}")
    return f"{lo:03d}#", f"{hi:03d}$"  # "$" sorts after "#": every id of bucket hi is below it


# -- channel tasks -------------------------------------------------------------------------------------
def bucket_ranges(members: int, per_task: int) -> list[tuple[int, int]]:
    """The bucket ranges a channel of about `members` subscribers is read in: one task per `per_task`
    members (at least one, at most BUCKETS), each over an equal share of the buckets."""
    if per_task < 1:
        raise ValueError("per_task must be at least 1")
    tasks = min(BUCKETS, max(1, math.ceil(max(members, 0) / per_task)))
    bounds = [round(k * BUCKETS / tasks) for k in range(tasks + 1)]
    return [(bounds[k], bounds[k + 1] - 1) for k in range(tasks)]


def unit_id(channel_index: int, lo: int, hi: int) -> int:
    """The work unit of bucket range lo..hi of the broadcast's `channel_index`-th channel."""
    if not 0 <= channel_index < MAX_CHANNELS_PER_BROADCAST:
        raise ValueError(f"channel index {channel_index} out of range")
    member_range(lo, hi)  # validates the range
    return channel_index * UNIT_STRIDE + lo * BUCKETS + hi


def unit_parts(unit: int) -> tuple[int, int, int]:
    """(channel index, lo, hi) of a channel work unit."""
    index, rest = divmod(unit, UNIT_STRIDE)
    lo, hi = divmod(rest, BUCKETS)
    return index, lo, hi


# -- frames and counters --------------------------------------------------------------------------------
def with_channel(frame: str, channel: str | None, offset: int | None = None, epoch: str | None = None) -> str:
    """The broadcast envelope naming its channel (``"channel"`` just before ``"data"``), and, for a
    channel with history, its ``"offset"`` and ``"epoch"`` (fanout.history); unchanged when there is
    no channel. The envelope's own ``,"data":`` comes first: broadcastId and sentAt hold no such text."""
    if channel is None:
        return frame
    position = "" if offset is None else f',"offset":{int(offset)},"epoch":{json.dumps(epoch)}'
    named = f',"channel":{json.dumps(channel)}{position},"data":'
    return frame.replace(',"data":', named, 1)


def counter_name(channel_index: int, field: str) -> str:
    """The ledger attribute of one channel's count of `field` (targeted, delivered, gone, failed).

    By the channel's place in the broadcast's audience, not its name: every update of a counter shard
    pays for the item's size, and an index keeps 100 channels' counters near 4 KB where names of up
    to 128 characters would take 50 KB."""
    return f"{_COUNTER_PREFIX}{channel_index}/{field}"


def split_counter(name: str) -> tuple[int, str] | None:
    """(channel index, field) of a ledger attribute written by counter_name; None for any other."""
    if not name.startswith(_COUNTER_PREFIX):
        return None
    index, sep, field = name[len(_COUNTER_PREFIX) :].partition("/")
    return (int(index), field) if sep and index.isdigit() and field else None


def channel_index(unit: int, channel: str | None) -> int | None:
    """The audience index of a channel unit's channel (None for a unit of no channel)."""
    return unit_parts(unit)[0] if channel is not None else None


def with_channel_counts(counts: dict[str, int], channel_index: int | None) -> dict[str, int]:
    """A ledger entry's counts, repeated under its channel's own counters when it has one."""
    if channel_index is None:
        return counts
    out = dict(counts)
    for name, value in counts.items():
        if name != "partitionsDone":
            out[counter_name(channel_index, name)] = value
    return out


def distinct(names: Sequence[str]) -> list[str]:
    """Names in their first order, each once."""
    return list(dict.fromkeys(names))
