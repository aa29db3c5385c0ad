"""Starting and reading broadcasts: the operator API's domain, over the adapters passed in.

Nothing here reads settings or builds clients: the handler builds the adapters once per container
(fanout.adapters.broadcasts.BroadcastsTable, fanout.adapters.lambdas.SwarmLauncher).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from fanout.accounting import Totals
from fanout.channels import with_channel
from fanout.completion import with_totals
from fanout.errors import FanoutError, InvalidInput, PayloadTooLarge, RetryableError
from fanout.frames import build_frame
from fanout.history import MAX_EPOCH_CHARS, MAX_OFFSET, Head
from fanout.models import Audience, BroadcastRecord, BroadcastStatus
from fanout.store import now_ms
from fanout.swarming import StoredBroadcast


class Broadcasts(Protocol):
    """What starting and reading a broadcast needs of the broadcasts table (BroadcastsTable)."""

    def create(
        self,
        broadcast_id: str,
        created_at: int,
        frame: str,
        idempotency_key: str | None,
        audience: Audience | None = None,
        positions: Mapping[str, tuple[int, str]] | None = None,
        *,
        exclude_connection: str | None = None,
    ) -> None: ...
    def load(self, broadcast_id: str) -> StoredBroadcast: ...
    def totals(self, broadcast_id: str, shards: int) -> Totals: ...
    def finish(
        self, broadcast_id: str, status: BroadcastStatus, at_ms: int, *, error: str | None = None
    ) -> bool: ...


class Launcher(Protocol):
    def launch(self, broadcast_id: str) -> None: ...


class History(Protocol):
    """The channels' history, as starting a broadcast uses it (fanout.adapters.history.HistoryTable)."""

    def append(self, channel: str, envelope_at: Callable[[Head], str]) -> Head: ...


@dataclass(frozen=True)
class Started:
    """A started broadcast: its id and, for a channel broadcast, each channel's offset and epoch."""

    broadcast_id: str
    offsets: dict[str, int] = field(default_factory=dict)
    epochs: dict[str, str] = field(default_factory=dict)


def validate_broadcast_id(broadcast_id: str) -> str:
    try:
        return str(uuid.UUID(broadcast_id))
    except (ValueError, AttributeError, TypeError) as exc:
        raise InvalidInput("broadcastId must be a UUID", field="broadcastId") from exc


def start_broadcast(
    broadcasts: Broadcasts,
    swarm: Launcher,
    message: Any,
    *,
    max_frame_bytes: int,
    idempotency_key: str | None = None,
    audience: Audience | None = None,
    sender: str | None = None,
    exclude_connection: str | None = None,
    history: History | None = None,
    clock_ms: Callable[[], int] = now_ms,
) -> Started:
    """Store the broadcast (its frame serialized once) and hand it to the swarm.

    `audience` None means every connection. A channel broadcast first takes the next offset of each
    channel, storing its envelope in the channel's history (`history`; fanout.history), and the
    broadcast row keeps the offsets so that every envelope carries its channel's. Raises
    PayloadTooLarge before anything is written when the frame would exceed `max_frame_bytes` (for a
    channel broadcast: the frame naming its longest channel, with the longest offset and epoch).
    A client's message names its `sender` (the envelope's ``"from"``) and may leave out the sending
    connection (`exclude_connection`: never targeted, so never counted).
    If the swarm cannot be invoked, the broadcast is marked failed with the reason and RetryableError
    is raised (the caller may try again: a new broadcast). A message whose broadcast row then cannot be
    written is in the history without having been delivered live: recovery and the history action
    give it, and nothing else.
    """
    broadcast_id = str(uuid.uuid4())
    created_at = clock_ms()
    frame = build_frame(broadcast_id, created_at, message, limit=max_frame_bytes, sender=sender)
    positions: dict[str, tuple[int, str]] = {}
    if audience is not None and audience.channels:
        longest = max(audience.channels, key=len)
        widest = with_channel(frame, longest, MAX_OFFSET, "x" * MAX_EPOCH_CHARS) if history else None
        size = len((widest or with_channel(frame, longest)).encode("utf-8"))
        if size > max_frame_bytes:
            raise PayloadTooLarge(size, max_frame_bytes)
        if history is not None:
            for channel in audience.channels:
                head = history.append(channel, _envelope_of(frame, channel))
                positions[channel] = (head.offset, head.epoch)
    if exclude_connection is None:
        broadcasts.create(broadcast_id, created_at, frame, idempotency_key, audience, positions or None)
    else:
        broadcasts.create(
            broadcast_id,
            created_at,
            frame,
            idempotency_key,
            audience,
            positions or None,
            exclude_connection=exclude_connection,
        )
    try:
        swarm.launch(broadcast_id)
    except FanoutError as exc:
        error = f"the swarm function could not be invoked: {exc}"
        broadcasts.finish(broadcast_id, BroadcastStatus.FAILED, clock_ms(), error=error)
        raise RetryableError(f"could not start the swarm for broadcast {broadcast_id}: {exc}") from exc
    return Started(
        broadcast_id,
        offsets={c: p[0] for c, p in positions.items()},
        epochs={c: p[1] for c, p in positions.items()},
    )


def _envelope_of(frame: str, channel: str) -> Callable[[Head], str]:
    return lambda head: with_channel(frame, channel, head.offset, head.epoch)


def get_broadcast(broadcasts: Broadcasts, broadcast_id: str) -> BroadcastRecord:
    """The broadcast with its counts (the sum of its counter shards)."""
    stored = broadcasts.load(validate_broadcast_id(broadcast_id))
    if not stored.shards:
        return stored.record
    return with_totals(stored.record, broadcasts.totals(stored.record.broadcast_id, stored.shards))


def message_digest(message: Any, audience: Audience | None = None) -> str:
    """A stable digest of a message and its audience, to refuse an Idempotency-Key reused with another
    message or another audience (an everyone-broadcast's digest is the message's alone, as before)."""
    value = message if audience is None else {"message": message, "to": audience.public()}
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
