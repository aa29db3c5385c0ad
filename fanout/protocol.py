"""The client protocol of the WebSocket API, as plain functions over plain data (no I/O).

What a connection may do comes from its token, through the authorizer's context (`Grants`): the
claims are checked where they meet the request, in `$connect` (the ``?channels=`` parameter) and in
`$default` (subscribe, unsubscribe), never read from a client's frame. `$default` turns a client
message into a command or a refusal (`read_message`) and an outcome into the frame answered
(`answer`); the handler runs the command through the subscriptions adapter in between.

Every error frame is ``{"type":"error","action":...,"code":...,"message":...,"error":...}``: the
client's action string (or null), a machine-readable code, a readable message, and ``error`` the same
text as ``message`` (the older clients read that). docs/protocol.md is the client's contract.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fanout.channels import allows, channel_problem, parse_channel_list
from fanout.chat import CHAT_ACTIONS, MAX_CHAT_MESSAGE_BYTES, ChatCommand, ChatRefusal, read_chat
from fanout.errors import Refused
from fanout.history import MAX_OFFSET, RECOVERY_IMPOSSIBLE, RecoverFrom, epoch_problem, parse_recover
from fanout.tokens import PUBLISH_SPECIALS, patterns_problem

# Control messages (ping, subscribe, unsubscribe) are small; anything bigger is refused. Messages to
# others (fanout.chat) may be bigger, up to MAX_CHAT_MESSAGE_BYTES; above that nothing is read.
MAX_MESSAGE_BYTES = 4096
ACTIONS = ("ping", "subscribe", "unsubscribe", "history", *CHAT_ACTIONS)
# How much of a client's own string an error message repeats.
SHOWN_CHARS = 40

# Error codes (the frame's "code").
INVALID = "invalid"
TOO_LARGE = "too_large"
INTERNAL = "internal"
FORBIDDEN = "forbidden"
INVALID_CHANNEL = "invalid_channel"
TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
NOT_CONNECTED = "not_connected"


def _compact(value: Mapping[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"))


def _shown(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "..."


# -- rights ----------------------------------------------------------------------------------------
class Grants(BaseModel):
    """A connection's user and rights, as the authorizer's context carries them."""

    model_config = ConfigDict(frozen=True)

    user_id: str = Field(min_length=1)
    channels: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()

    def may_subscribe(self, channel: str) -> bool:
        return allows(self.channels, channel)


def authorizer_context(user_id: str, channels: Sequence[str], publish: Sequence[str]) -> dict[str, str]:
    """The authorizer's context of a connection: API Gateway takes only strings, numbers and booleans
    as its values, so the pattern lists travel as JSON strings."""
    return {
        "userId": user_id,
        "channels": json.dumps(list(channels), separators=(",", ":")),
        "publish": json.dumps(list(publish), separators=(",", ":")),
    }


def _patterns(value: Any, specials: frozenset[str] = frozenset()) -> tuple[str, ...]:
    # Fail closed: what the authorizer did not write (or a value that is not a list of patterns) is
    # no right at all.
    if not isinstance(value, str):
        return ()
    try:
        decoded = json.loads(value)
    except (ValueError, RecursionError):
        return ()
    if patterns_problem(decoded, specials=specials) is not None:
        return ()
    return tuple(decoded)


def grants_of(context: Mapping[str, Any] | None) -> Grants | None:
    """The rights in an event's ``requestContext.authorizer``; None without a context or a user."""
    if not isinstance(context, Mapping):
        return None
    try:
        return Grants(
            user_id=context.get("userId"),
            channels=_patterns(context.get("channels")),
            publish=_patterns(context.get("publish"), PUBLISH_SPECIALS),
        )
    except ValidationError:
        return None


def expires_at(connected_at: datetime, ttl_seconds: int) -> int:
    """When a connection's rows expire (TTL, epoch seconds): its connectedAt plus the connection TTL.

    Every event of a connection carries connectedAt, so the connection row and every subscription row
    written later get the same value without a read.
    """
    return int(connected_at.timestamp()) + ttl_seconds


# -- $connect --------------------------------------------------------------------------------------
def requested_channels(
    query: Mapping[str, str] | None, multi_query: Mapping[str, Sequence[str]] | None = None
) -> list[str]:
    """The channels of ``?channels=a,b`` (repeated parameters join: API Gateway's single-value map
    keeps only the last one)."""
    values = list((multi_query or {}).get("channels") or [])
    if not values and query and query.get("channels") is not None:
        values = [query["channels"]]
    return parse_channel_list(",".join(values))


def channel_refusal(grants: Grants | None, channel: object) -> Refused | None:
    """Why this connection may not subscribe to `channel`; None if it may."""
    problem = channel_problem(channel)
    if problem is not None:
        shown = f" {_shown(channel)!r}" if isinstance(channel, str) and channel else ""
        return Refused(f"invalid channel{shown}: {problem}", code=INVALID_CHANNEL, status=400)
    assert isinstance(channel, str)
    if grants is None or not grants.may_subscribe(channel):
        return Refused(
            f"the token does not allow subscribing to {_shown(channel)!r}", code=FORBIDDEN, status=403
        )
    return None


def connect_channels(grants: Grants | None, requested: Sequence[str], *, limit: int) -> list[str]:
    """The channels a connection subscribes to at $connect; raises Refused (400 too many or an invalid
    name, 403 a channel the token does not allow), in which case nothing is written."""
    channels = list(dict.fromkeys(requested))
    if len(channels) > limit:
        raise Refused(
            f"at most {limit} channels per connection; {len(channels)} were asked for",
            code=TOO_MANY_SUBSCRIPTIONS,
            status=400,
        )
    refusals = [r for r in (channel_refusal(grants, c) for c in channels) if r is not None]
    # An invalid name is a bad request whatever the rights; report it before a missing right.
    refusals.sort(key=lambda r: r.status)
    if refusals:
        raise refusals[0]
    return channels


# -- $default --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ping:
    pass


@dataclass(frozen=True)
class Subscribe:
    channel: str


@dataclass(frozen=True)
class Unsubscribe:
    channel: str


@dataclass(frozen=True)
class History:
    """``{"action":"history","channel","since","epoch"?}``: the channel's messages after `since`."""

    channel: str
    since: int
    epoch: str | None = None


@dataclass(frozen=True)
class ErrorReply:
    action: str | None
    code: str
    message: str

    @property
    def frame(self) -> str:
        return error_frame(self.action, self.code, self.message)


Command = Ping | Subscribe | Unsubscribe | History


class Outcome(StrEnum):
    """What a subscribe or unsubscribe did (the adapter's answer)."""

    SUBSCRIBED = "subscribed"
    UNSUBSCRIBED = "unsubscribed"
    TOO_MANY = "too_many"
    NOT_CONNECTED = "not_connected"


PONG = _compact({"type": "pong"})
SUPPORTED = ", ".join(ACTIONS)


def error_frame(action: str | None, code: str, message: str) -> str:
    return _compact({"type": "error", "action": action, "code": code, "message": message, "error": message})


def _is_chat(body: str) -> bool:
    """Whether a message above the control limit is a publish or sendmessage (only those may be)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return False
    return isinstance(data, dict) and data.get("action") in CHAT_ACTIONS


def read_message(
    body: str | None, *, is_base64: bool, grants: Grants | None
) -> Command | ChatCommand | ErrorReply | ChatRefusal:
    """One client message as a command, or the refusal to answer (never raises)."""
    if is_base64:
        return ErrorReply(None, INVALID, "binary messages are not supported; send a JSON text message")
    if body is None or not body.strip():
        return ErrorReply(None, INVALID, 'empty message; send {"action":"ping"}')
    size = len(body.encode("utf-8", errors="surrogatepass"))
    # Above the larger limit nothing is parsed; in between, only a message to others may be.
    limit = MAX_MESSAGE_BYTES
    if size > MAX_CHAT_MESSAGE_BYTES or (size > MAX_MESSAGE_BYTES and _is_chat(body)):
        limit = MAX_CHAT_MESSAGE_BYTES
    if size > limit:
        return ErrorReply(None, TOO_LARGE, f"message too large: {size} bytes; the limit is {limit} bytes")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return ErrorReply(None, INVALID, "message is not valid JSON")
    if not isinstance(data, dict):
        return ErrorReply(None, INVALID, 'message must be a JSON object with an "action"')
    action = data.get("action")
    if not isinstance(action, str):
        return ErrorReply(None, INVALID, f'message needs a string "action"; supported: {SUPPORTED}')
    if action in CHAT_ACTIONS:
        return read_chat(action, data, grants)
    if action == "ping":
        return Ping()
    if action not in ("subscribe", "unsubscribe", "history"):
        return ErrorReply(action, INVALID, f"unknown action {_shown(action)!r}; supported: {SUPPORTED}")
    channel = data.get("channel")
    if action == "history":
        return _history(data, grants)
    if action == "subscribe":
        refusal = channel_refusal(grants, channel)
        if refusal is not None:
            return ErrorReply(action, refusal.code, str(refusal))
        assert isinstance(channel, str)
        return Subscribe(channel)
    # Unsubscribing needs no right: it only ever removes this connection's own row.
    problem = channel_problem(channel)
    if problem is not None:
        return ErrorReply(action, INVALID_CHANNEL, f"invalid channel: {problem}")
    assert isinstance(channel, str)
    return Unsubscribe(channel)


def _history(data: Mapping[str, Any], grants: Grants | None) -> History | ErrorReply:
    # Reading a channel's history needs the right to subscribe to it: it is what its members got.
    channel = data.get("channel")
    refusal = channel_refusal(grants, channel)
    if refusal is not None:
        return ErrorReply("history", refusal.code, str(refusal))
    assert isinstance(channel, str)
    since = data.get("since", 0)
    if isinstance(since, bool) or not isinstance(since, int) or not 0 <= since <= MAX_OFFSET:
        return ErrorReply("history", INVALID, '"since" is an offset: a whole number, 0 or more')
    epoch = data.get("epoch")
    if epoch is not None and epoch_problem(epoch) is not None:
        return ErrorReply("history", INVALID, f'"epoch": {epoch_problem(epoch)}')
    return History(channel, since, epoch)


def recovery_error_frame(action: str | None, channel: str, message: str, epoch: str | None) -> str:
    """The error frame telling a client it cannot recover `channel` (it reloads the channel's state):
    the channel's current epoch, if it has history."""
    return _compact(
        {
            "type": "error",
            "action": action,
            "code": RECOVERY_IMPOSSIBLE,
            "channel": channel,
            "epoch": epoch,
            "message": message,
            "error": message,
        }
    )


def connect_recovery(
    grants: Grants | None, value: str, channels: Sequence[str], *, limit: int
) -> list[RecoverFrom]:
    """The channels of ``?recover=`` a connection recovers (and subscribes to): raises Refused (400 bad
    input or too many channels with ?channels=, 403 a channel the token does not allow)."""
    items = parse_recover(value)
    total = len(dict.fromkeys([*channels, *(i.channel for i in items)]))
    if total > limit:
        raise Refused(
            f"at most {limit} channels per connection; {total} were asked for (channels and recover)",
            code=TOO_MANY_SUBSCRIPTIONS,
            status=400,
        )
    for item in items:
        refusal = channel_refusal(grants, item.channel)
        if refusal is not None:
            raise refusal
    return items


def answer(command: Subscribe | Unsubscribe, outcome: Outcome, *, limit: int) -> str:
    """The frame answering a subscribe or unsubscribe that ran with `outcome`."""
    action = "subscribe" if isinstance(command, Subscribe) else "unsubscribe"
    if outcome is Outcome.SUBSCRIBED or outcome is Outcome.UNSUBSCRIBED:
        return _compact({"type": outcome.value, "channel": command.channel})
    if outcome is Outcome.TOO_MANY:
        return error_frame(
            action,
            TOO_MANY_SUBSCRIPTIONS,
            f"at most {limit} channels per connection; unsubscribe from one first",
        )
    return error_frame(action, NOT_CONNECTED, "this connection is not registered; reconnect")


def internal_error(action: str | None) -> str:
    return error_frame(action, INTERNAL, "internal error")
