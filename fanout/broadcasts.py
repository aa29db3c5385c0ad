"""Starting and reading broadcasts: the operator API's domain, over the adapters passed in.

Nothing here reads settings or builds clients: the handler builds the adapters once per container
(fanout.adapters.broadcasts.BroadcastsTable, fanout.adapters.lambdas.SwarmLauncher).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from fanout.accounting import Totals
from fanout.channels import with_channel
from fanout.completion import with_totals
from fanout.errors import FanoutError, InvalidInput, PayloadTooLarge, RetryableError
from fanout.frames import build_frame
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
    clock_ms: Callable[[], int] = now_ms,
) -> str:
    """Store the broadcast (its frame serialized once) and hand it to the swarm; returns its id.

    `audience` None means every connection. Raises PayloadTooLarge before anything is written when
    the frame would exceed `max_frame_bytes` (for a channel broadcast: the frame naming its longest
    channel).
    A client's message names its `sender` (the envelope's ``"from"``) and may leave out the sending
    connection (`exclude_connection`: never targeted, so never counted).
    If the swarm cannot be invoked, the broadcast is marked failed with the reason and RetryableError
    is raised (the caller may try again: a new broadcast).
    """
    broadcast_id = str(uuid.uuid4())
    created_at = clock_ms()
    frame = build_frame(broadcast_id, created_at, message, limit=max_frame_bytes, sender=sender)
    if audience is not None and audience.channels:
        longest = max(audience.channels, key=len)
        size = len(with_channel(frame, longest).encode("utf-8"))
        if size > max_frame_bytes:
            raise PayloadTooLarge(size, max_frame_bytes)
    if exclude_connection is None:
        broadcasts.create(broadcast_id, created_at, frame, idempotency_key, audience)
    else:
        broadcasts.create(
            broadcast_id, created_at, frame, idempotency_key, audience, exclude_connection=exclude_connection
        )
    try:
        swarm.launch(broadcast_id)
    except FanoutError as exc:
        error = f"the swarm function could not be invoked: {exc}"
        broadcasts.finish(broadcast_id, BroadcastStatus.FAILED, clock_ms(), error=error)
        raise RetryableError(f"could not start the swarm for broadcast {broadcast_id}: {exc}") from exc
    return broadcast_id


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
