"""Reading a channel's history and recovering a reconnected connection, over the adapters passed in.

`read_page` answers the ``history`` action and ``GET /channels/{name}/history``; `recover` is the
recovery function's work for one channel of ``?recover=``: the messages after the client's offset,
posted in offset order, then the hand-over to live delivery. The decisions are fanout.history's.

The boundary, with no gap and no duplicate: $connect writes the connection's subscription row with
``liveFrom`` = RECOVERING, so no live message is delivered to it. Recovery posts what the history
holds after N up to the head H it read, then, in one transaction, checks that the head is still H and
sets ``liveFrom`` = H. A message of offset <= H is recovery's (live delivery skips it, whenever its
members are read); a message of offset > H got its offset after the transaction, so its members are
read after it too and the row takes it live. If the head moved, recovery reads again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from fanout.errors import FanoutError
from fanout.history import (
    RECOVERY_IMPOSSIBLE,
    Head,
    Stored,
    page,
    recovery_problem,
    start_after,
)


class HistoryReader(Protocol):
    def head(self, channel: str) -> Head | None: ...
    def rows(self, channel: str, after: int, limit: int = ...) -> list[Stored]: ...


class HistoryHandover(HistoryReader, Protocol):
    def go_live(self, channel: str, connection_id: str, head: Head | None) -> bool | None: ...


class RecoveryImpossible(FanoutError):
    """The messages asked for are not all kept (another epoch, or older than the history)."""

    code = RECOVERY_IMPOSSIBLE

    def __init__(self, channel: str, message: str, epoch: str | None) -> None:
        super().__init__(message)
        self.channel = channel
        self.epoch = epoch


@dataclass(frozen=True)
class HistoryPage:
    channel: str
    epoch: str | None
    messages: list[Stored]
    more: bool
    head: Head | None


def read_page(
    history: HistoryReader, channel: str, since: int, epoch: str | None, *, keep: int, limit: int
) -> HistoryPage:
    """The envelopes after offset `since` of `epoch` (None: the current epoch, whatever is kept), at
    most `limit`, and whether more follow; RecoveryImpossible when they are not all kept."""
    head = history.head(channel)
    problem = recovery_problem(head, since, epoch, keep)
    if problem is not None:
        raise RecoveryImpossible(channel, problem, head.epoch if head else None)
    if head is None:
        return HistoryPage(channel, None, [], False, None)
    after = start_after(head, since, epoch, keep)
    try:
        rows, more = page(history.rows(channel, after, limit + 1), after, head, limit=limit)
    except LookupError as exc:
        raise RecoveryImpossible(channel, f"{exc}; reload the channel's state", head.epoch) from exc
    return HistoryPage(channel, head.epoch, rows, more, head)


class Sender(Protocol):
    def __call__(self, frame: str) -> bool: ...


@dataclass(frozen=True)
class Recovered:
    channel: str
    sent: int
    impossible: str | None = None  # why, when the client was told it cannot recover
    gone: bool = False  # the connection (or its subscription) went away meanwhile


def recover(
    history: HistoryHandover,
    send: Sender,
    connection_id: str,
    channel: str,
    since: int,
    epoch: str,
    *,
    keep: int,
    limit: int,
    impossible_frame: Callable[[RecoveryImpossible], str],
    max_rounds: int = 1_000,
) -> Recovered:
    """Post the messages of `channel` after `since`, in offset order, then hand the subscription over
    to live delivery; when they cannot be recovered, post the error frame and hand over at the head.
    `send` returns False when the connection is gone."""
    sent = 0
    cursor: int = since
    current: str | None = epoch
    impossible: str | None = None
    for _ in range(max_rounds):
        try:
            batch = read_page(history, channel, cursor, current, keep=keep, limit=limit)
        except RecoveryImpossible as exc:
            if impossible is None:
                impossible = str(exc)
                if not send(impossible_frame(exc)):
                    return Recovered(channel, sent, impossible, gone=True)
            # from now on the client starts again from what the channel has now
            head = history.head(channel)
            cursor, current = (head.offset, head.epoch) if head else (0, None)
            batch = HistoryPage(channel, current, [], False, head)
        for row in batch.messages:
            if not send(row.envelope):
                return Recovered(channel, sent, impossible, gone=True)
            sent += 1
            cursor = row.offset
        if batch.more:
            continue
        handed = history.go_live(channel, connection_id, batch.head)
        if handed is None:
            return Recovered(channel, sent, impossible, gone=True)
        if handed:
            return Recovered(channel, sent, impossible)
        if batch.head is None:
            cursor, current = 0, None
    raise FanoutError(f"recovery of {channel} did not catch up after {max_rounds} rounds")
