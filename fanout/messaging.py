"""Sending a client's message to others: the $default function's domain, over the adapters passed in.

A message that passed the protocol's checks (fanout.chat: its shape and the token's rights) takes a
token of its connection's bucket and of its user's (fanout.ratelimit, kept in DynamoDB so every
container shares them), then starts a broadcast like the operator's: the same pipeline, the same
accounting, with the sender in its envelope and, echo off, its own connection left out.
"""

from __future__ import annotations

from typing import Protocol

from fanout.broadcasts import Broadcasts, History, Launcher, Started, start_broadcast
from fanout.chat import ChatCommand, audience_of
from fanout.errors import FanoutError
from fanout.ratelimit import BucketLimit, Decision, Limited, connection_key, user_key


class Buckets(Protocol):
    def take_all(self, buckets: list[tuple[str, BucketLimit]]) -> Decision: ...


class RateLimited(FanoutError):
    """A client sent faster than its connection's or its user's limit."""

    def __init__(self, retry_after_ms: int) -> None:
        super().__init__(f"too many messages; retry after {retry_after_ms} ms")
        self.retry_after_ms = retry_after_ms


def send_client_message(
    command: ChatCommand,
    *,
    user_id: str,
    connection_id: str,
    buckets: Buckets,
    connection_limit: BucketLimit,
    user_limit: BucketLimit,
    broadcasts: Broadcasts,
    swarm: Launcher,
    max_frame_bytes: int,
    history: History | None = None,
) -> Started:
    """Start the broadcast of a client's message; returns it (a channel message with its offset and
    epoch in the channel's `history`).

    Raises RateLimited (nothing written), PayloadTooLarge (the envelope above the frame limit) or
    RetryableError (the swarm could not be started) from start_broadcast.
    """
    decision = buckets.take_all(
        [(connection_key(connection_id), connection_limit), (user_key(user_id), user_limit)]
    )
    if isinstance(decision, Limited):
        raise RateLimited(decision.retry_after_ms)
    return start_broadcast(
        broadcasts,
        swarm,
        command.message,
        max_frame_bytes=max_frame_bytes,
        audience=audience_of(command),
        sender=user_id,
        exclude_connection=None if command.echo else connection_id,
        history=history,
    )
