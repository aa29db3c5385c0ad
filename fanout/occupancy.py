"""Channel occupancy as plain functions over plain data: stream records of the subscriptions table ->
presence deltas per (channel, user) -> the channel counters; and the reconciler's "what to fix".

Storage (the channels table, fanout.adapters.channels): per channel, one counter row (``key = "#"``:
``connections``, ``users``, ``updatedAt``) and one presence row per user (``key = "u#<userId>"``:
``connections``). A user is present in a channel while its presence row counts more than 0.

Counting. INSERT of a subscription row is +1 connection for its (channel, user), REMOVE -1 (TTL
deletions arrive as REMOVE too, reported apart), MODIFY 0 (unless the row's user changed: -1 for the
old, +1 for the new). A batch is aggregated into one net delta per (channel, user); each is applied to
the presence row with an atomic ADD that returns the new value, and the value before is the new one
minus the delta. The user count of the channel moves only when a presence crosses 0: from <= 0 to > 0
one more user, from > 0 to <= 0 one fewer (:func:`user_delta`). Because the crossing is read from the
ADD's own answer, concurrent batches of one channel never count a user twice.

Replays. Streams are at-least-once: a batch can be applied twice (a timeout after the ADDs landed,
a compensation that did not land). A replayed INSERT counts a connection twice, a replayed REMOVE
takes one away twice and can leave a presence below 0; a presence row at or below 0 is deleted
(conditionally on the value the ADD returned), so a later INSERT of that user counts the user again.
The drift this leaves in the counters is corrected by the channel reconciler, which recounts every
channel from its subscription rows (:func:`plan_fix`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

TTL_PRINCIPAL = "dynamodb.amazonaws.com"
COUNTER_KEY = "#"
PRESENCE_PREFIX = "u#"

PresenceKey = tuple[str, str]  # (channel, userId)


class MalformedRecord(ValueError):
    """A subscriptions stream record that cannot be counted (no image, no channel or user)."""


def presence_key(user_id: str) -> str:
    """The sort key of a user's presence row in the channels table."""
    return f"{PRESENCE_PREFIX}{user_id}"


def user_of_presence(key: str) -> str | None:
    """The user of a presence row's sort key; None for the counter row (or anything else)."""
    return key[len(PRESENCE_PREFIX) :] if key.startswith(PRESENCE_PREFIX) else None


# -- stream records -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SubscriptionChange:
    """What one subscriptions stream record means for the occupancy counters."""

    sequence: str
    event_name: str
    channel: str
    old_user: str | None = None  # the user of the row before the change (None: there was no row)
    new_user: str | None = None  # ... and after it
    expired: bool = False  # a REMOVE by DynamoDB's TTL

    def deltas(self) -> dict[PresenceKey, int]:
        if self.old_user == self.new_user:
            return {}
        out: dict[PresenceKey, int] = {}
        if self.old_user is not None:
            out[(self.channel, self.old_user)] = -1
        if self.new_user is not None:
            out[(self.channel, self.new_user)] = out.get((self.channel, self.new_user), 0) + 1
        return out


def _string(image: Mapping[str, Any], name: str) -> str:
    attr = image.get(name)
    raw = attr.get("S") if isinstance(attr, Mapping) else attr
    if not isinstance(raw, str) or not raw:
        raise MalformedRecord(f"subscription row without a string {name}")
    return raw


def change_from_record(record: Mapping[str, Any]) -> SubscriptionChange:
    """The occupancy change of one subscriptions stream record; raises MalformedRecord."""
    body = record.get("dynamodb")
    if not isinstance(body, Mapping):
        raise MalformedRecord("no dynamodb section")
    sequence = str(body.get("SequenceNumber", ""))
    name = record.get("eventName")
    old_image, new_image = body.get("OldImage"), body.get("NewImage")
    if name == "INSERT":
        if not isinstance(new_image, Mapping):
            raise MalformedRecord("INSERT without NewImage: the stream must be NEW_AND_OLD_IMAGES")
        return SubscriptionChange(
            sequence, name, _string(new_image, "channel"), new_user=_string(new_image, "userId")
        )
    if name == "REMOVE":
        if not isinstance(old_image, Mapping):
            raise MalformedRecord("REMOVE without OldImage: the stream must be NEW_AND_OLD_IMAGES")
        identity = record.get("userIdentity") or {}
        expired = isinstance(identity, Mapping) and identity.get("principalId") == TTL_PRINCIPAL
        return SubscriptionChange(
            sequence,
            name,
            _string(old_image, "channel"),
            old_user=_string(old_image, "userId"),
            expired=expired,
        )
    if name == "MODIFY":
        if not isinstance(old_image, Mapping) or not isinstance(new_image, Mapping):
            raise MalformedRecord("MODIFY without both images: the stream must be NEW_AND_OLD_IMAGES")
        return SubscriptionChange(
            sequence,
            name,
            _string(new_image, "channel"),
            old_user=_string(old_image, "userId"),
            new_user=_string(new_image, "userId"),
        )
    raise MalformedRecord(f"unknown eventName {name!r}")


def aggregate(changes: Iterable[SubscriptionChange]) -> dict[PresenceKey, int]:
    """One net delta per touched (channel, user); the ones that cancel out are left out."""
    total: dict[PresenceKey, int] = {}
    for change in changes:
        for key, delta in change.deltas().items():
            total[key] = total.get(key, 0) + delta
    return {key: delta for key, delta in sorted(total.items()) if delta}


def prefix_before_failure(changes: Sequence[SubscriptionChange | None]) -> list[SubscriptionChange]:
    """The changes before the first record that could not be read (None), in stream order: Lambda
    redelivers from the first failure, so what follows it is counted when it comes back."""
    out: list[SubscriptionChange] = []
    for change in changes:
        if change is None:
            break
        out.append(change)
    return out


@dataclass(frozen=True)
class Checkpoint:
    """Where the batch must be redelivered from after presence ADDs failed, and the deltas that undo
    the landed ADDs' share of the records that will come back (so they do not count twice)."""

    index: int | None  # position in the applied prefix of the first record to redeliver; None: all counted
    compensation: dict[PresenceKey, int]


def plan_checkpoint(applied: Sequence[SubscriptionChange], failed: Iterable[PresenceKey]) -> Checkpoint:
    """After the ADDs of ``aggregate(applied)`` where those of ``failed`` did not land."""
    failed_keys = set(failed)
    if not failed_keys:
        return Checkpoint(None, {})
    index = next((i for i, c in enumerate(applied) if failed_keys.intersection(c.deltas())), None)
    if index is None:
        return Checkpoint(None, {})
    undo = aggregate(applied[index:])
    return Checkpoint(index, {key: -delta for key, delta in undo.items() if key not in failed_keys})


# -- presence -> counters -------------------------------------------------------------------------------
def user_delta(before: int, after: int) -> int:
    """+1 when a presence goes from <= 0 to > 0 (a user arrives), -1 the other way, else 0."""
    return int(after > 0) - int(before > 0)


@dataclass(frozen=True)
class PresenceUpdate:
    """One landed presence ADD: its delta and the value DynamoDB answered (UPDATED_NEW)."""

    channel: str
    user_id: str
    delta: int
    after: int

    @property
    def before(self) -> int:
        return self.after - self.delta

    @property
    def users(self) -> int:
        return user_delta(self.before, self.after)

    @property
    def vacated(self) -> bool:
        """The presence row counts no connection any more: it is deleted (if it still holds `after`)."""
        return self.after <= 0


@dataclass(frozen=True)
class CounterDelta:
    connections: int = 0
    users: int = 0

    def __bool__(self) -> bool:
        return bool(self.connections or self.users)


def counter_deltas(updates: Iterable[PresenceUpdate]) -> dict[str, CounterDelta]:
    """One (connections, users) delta per channel from the presence ADDs that landed; a channel whose
    changes cancel out is left out (no write)."""
    connections: dict[str, int] = {}
    users: dict[str, int] = {}
    for u in updates:
        connections[u.channel] = connections.get(u.channel, 0) + u.delta
        users[u.channel] = users.get(u.channel, 0) + u.users
    out = {ch: CounterDelta(connections[ch], users.get(ch, 0)) for ch in sorted(connections)}
    return {ch: d for ch, d in out.items() if d}


# -- reconciliation -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StoredOccupancy:
    """A channel's rows in the channels table."""

    connections: int | None = None  # None: no counter row (or no such attribute)
    users: int | None = None
    updated_at_ms: int | None = None  # when the counter last applied a stream batch
    presence: Mapping[str, int] = field(default_factory=dict)  # userId -> connections


@dataclass(frozen=True)
class CountedOccupancy:
    """A channel's subscription rows, counted: userId -> rows."""

    presence: Mapping[str, int] = field(default_factory=dict)

    @property
    def connections(self) -> int:
        return sum(self.presence.values())

    @property
    def users(self) -> int:
        return sum(1 for n in self.presence.values() if n > 0)


def count_rows(user_ids: Iterable[str]) -> CountedOccupancy:
    """The occupancy of a channel whose subscription rows carry these users (one per row)."""
    presence: dict[str, int] = {}
    for user in user_ids:
        presence[user] = presence.get(user, 0) + 1
    return CountedOccupancy(presence)


@dataclass(frozen=True)
class PresenceFix:
    user_id: str
    expected: int | None  # the stored value the fix is conditional on (None: no row)
    value: int  # 0: delete the row


@dataclass(frozen=True)
class CounterFix:
    expected: tuple[int, int] | None  # stored (connections, users); None: no counter row
    value: tuple[int, int]


@dataclass(frozen=True)
class OccupancyFix:
    channel: str
    counter: CounterFix | None
    presence: tuple[PresenceFix, ...]

    @property
    def drift(self) -> int:
        """|stored - counted| connections of the counter row (0 when only presence rows drifted)."""
        if self.counter is None:
            return 0
        stored = self.counter.expected[0] if self.counter.expected else 0
        return abs(stored - self.counter.value[0])


def is_busy(stored: StoredOccupancy, *, now_ms: int, quiet_ms: int) -> bool:
    """The counter applied a stream batch within `quiet_ms`: records may still be in flight, and a
    recount now would race them (count a row twice, or miss one), so the channel waits a run."""
    at = stored.updated_at_ms
    return at is not None and at > now_ms - quiet_ms


def plan_fix(channel: str, stored: StoredOccupancy, counted: CountedOccupancy) -> OccupancyFix | None:
    """What to write so the channel's rows equal its recount; None when they already do.

    A counter row holding (0, 0) stands for an empty channel as well as no row does, so a missing row
    of an empty channel is not written. Presence rows are set to each user's count, and deleted (value
    0) for the users with no subscription row left.
    """
    truth = (counted.connections, counted.users)
    have = None if stored.connections is None and stored.users is None else (
        stored.connections or 0, stored.users or 0
    )  # fmt: skip
    counter = None
    if have != truth and not (have is None and truth == (0, 0)):
        counter = CounterFix(have, truth)
    fixes: list[PresenceFix] = []
    for user in sorted(set(stored.presence) | set(counted.presence)):
        want = counted.presence.get(user, 0)
        got = stored.presence.get(user)
        if (got if got is not None else 0) != want or (got is not None and want == 0):
            fixes.append(PresenceFix(user, got, want))
    if counter is None and not fixes:
        return None
    return OccupancyFix(channel, counter, tuple(fixes))


def expired_members(rows: Iterable[tuple[str, str, int | None]], *, now_s: int) -> list[tuple[str, str]]:
    """(channel, member) of the subscription rows whose ``expiresAt`` (epoch s) has passed."""
    return [(ch, member) for ch, member, at in rows if at is not None and at < now_s]
