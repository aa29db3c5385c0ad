"""Client messages to others: publish to a channel, send to a user, relay to everyone (pure, no I/O).

``{"action":"publish","channel":"room:1","message":<JSON>,"id":"m1","echo":false?}`` and
``{"action":"sendmessage","to":"bob"?,"message":<JSON>,"id":"m1"}`` become a `Publish` or a `Send`
command, or a `ChatRefusal` (an error frame naming the action and the client's id). Rights come from
the connection's `Grants` (the token's ``publish`` claim): a channel pattern to publish there,
``$user`` to send to a user, ``$all`` to relay to every connection. The sender (``from`` in what
everyone receives) is always the token's ``sub`` (Grants.user_id): nothing a frame holds can name
another sender. docs/chat.md is the client's contract.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from fanout.channels import allows, channel_problem
from fanout.models import Audience


class Grants(Protocol):
    """What the protocol's Grants (fanout.protocol) holds that a message to others needs."""

    @property
    def publish(self) -> tuple[str, ...]: ...


# The largest publish or sendmessage frame a client may send (UTF-8 bytes). API Gateway takes client
# frames of 32 KB and messages of 128 KB; a chat message fits in one frame, and the envelope every
# member receives (the message plus ~200 bytes of type, ids, channel and sender) stays far below the
# 128 KB a PostToConnection may carry. Control messages (ping, subscribe) keep their own small limit.
MAX_CHAT_MESSAGE_BYTES = 32 * 1024
# A client message id: the idempotency key of its sender, within the idempotency window.
MAX_ID_CHARS = 128
# A user id of "to" (the same bound as the operator API's audience of users).
MAX_USER_CHARS = 256
CHAT_ACTIONS = ("publish", "sendmessage")
# The specials of the `publish` claim (fanout.tokens.PUBLISH_SPECIALS).
TO_USER = "$user"
TO_ALL = "$all"

# Error codes of chat refusals (the frame's "code"), beside fanout.protocol's.
FORBIDDEN = "forbidden"
RATE_LIMITED = "rate_limited"
TOO_LARGE = "too_large"
INVALID = "invalid"
IN_PROGRESS = "in_progress"
UNAVAILABLE = "unavailable"
INTERNAL = "internal"


def _compact(value: Mapping[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _shown(text: str, chars: int = 40) -> str:
    return text if len(text) <= chars else text[:chars] + "..."


@dataclass(frozen=True)
class Publish:
    channel: str
    message: Any
    id: str
    echo: bool = True

    action = "publish"


@dataclass(frozen=True)
class Send:
    """A direct message (`to` a user) or, without `to`, a relay to every connection."""

    to: str | None
    message: Any
    id: str
    echo: bool = True

    action = "sendmessage"


ChatCommand = Publish | Send


@dataclass(frozen=True)
class ChatRefusal:
    action: str
    id: str | None
    code: str
    message: str
    retry_after_ms: int | None = None

    @property
    def frame(self) -> str:
        return chat_error_frame(self.action, self.id, self.code, self.message, self.retry_after_ms)


def chat_error_frame(
    action: str | None, message_id: str | None, code: str, message: str, retry_after_ms: int | None = None
) -> str:
    """``{"type":"error","action","id","code","message","error"}`` (+ ``retryAfterMs`` when limited);
    ``error`` repeats ``message`` as every error frame of the protocol does."""
    frame: dict[str, Any] = {
        "type": "error",
        "action": action,
        "id": message_id,
        "code": code,
        "message": message,
        "error": message,
    }
    if retry_after_ms is not None:
        frame["retryAfterMs"] = retry_after_ms
    return _compact(frame)


def ack_frame(message_id: str, broadcast_id: str, *, offset: int | None = None) -> str:
    """``{"type":"ack","id","broadcastId"}``; a channel message's ack also carries its ``offset`` once
    the channel keeps history (None leaves it out)."""
    frame: dict[str, Any] = {"type": "ack", "id": message_id, "broadcastId": broadcast_id}
    if offset is not None:
        frame["offset"] = offset
    return _compact(frame)


def _id_problem(value: object) -> str | None:
    if not isinstance(value, str) or not value:
        return 'needs an "id": a non-empty string the client chooses (its idempotency key)'
    if len(value) > MAX_ID_CHARS:
        return f'"id" has at most {MAX_ID_CHARS} characters; this one has {len(value)}'
    return None


def read_chat(action: str, data: Mapping[str, Any], grants: Grants | None) -> ChatCommand | ChatRefusal:
    """A parsed publish or sendmessage frame as a command, or the refusal to answer (never raises)."""
    raw_id = data.get("id")
    shown_id = raw_id if isinstance(raw_id, str) and len(raw_id) <= MAX_ID_CHARS else None
    problem = _id_problem(raw_id)
    if problem is not None:
        return ChatRefusal(action, shown_id, INVALID, problem)
    assert isinstance(raw_id, str)
    if "message" not in data:
        return ChatRefusal(action, raw_id, INVALID, 'needs a "message": any JSON value')
    echo = data.get("echo", True)
    if not isinstance(echo, bool):
        return ChatRefusal(action, raw_id, INVALID, '"echo" must be true or false')
    if "from" in data:
        # Never trusted, and never silently dropped: a client naming a sender learns that it cannot.
        return ChatRefusal(action, raw_id, INVALID, '"from" is set by the server (the token\'s user)')
    message = data["message"]
    if action == "publish":
        return _publish(data, grants, raw_id, message, echo)
    return _send(data, grants, raw_id, message, echo)


def _publish(
    data: Mapping[str, Any], grants: Grants | None, mid: str, message: Any, echo: bool
) -> ChatCommand | ChatRefusal:
    channel = data.get("channel")
    problem = channel_problem(channel)
    if problem is not None:
        return ChatRefusal("publish", mid, INVALID, f"invalid channel: {problem}")
    assert isinstance(channel, str)
    if grants is None or not may_publish(grants, channel):
        return ChatRefusal(
            "publish", mid, FORBIDDEN, f"the token does not allow publishing to {_shown(channel)!r}"
        )
    return Publish(channel, message, mid, echo)


def _send(
    data: Mapping[str, Any], grants: Grants | None, mid: str, message: Any, echo: bool
) -> ChatCommand | ChatRefusal:
    if "channel" in data:
        return ChatRefusal(
            "sendmessage", mid, INVALID, 'sendmessage takes "to" or nothing; use publish for a channel'
        )
    to = data.get("to")
    rights = grants.publish if grants is not None else ()
    if to is None:
        if TO_ALL not in rights:
            return ChatRefusal("sendmessage", mid, FORBIDDEN, "the token does not allow sending to everyone")
        return Send(None, message, mid, echo)
    if not isinstance(to, str) or not to or len(to) > MAX_USER_CHARS:
        return ChatRefusal(
            "sendmessage", mid, INVALID, f'"to" must be a user id of 1 to {MAX_USER_CHARS} characters'
        )
    if TO_USER not in rights:
        return ChatRefusal("sendmessage", mid, FORBIDDEN, "the token does not allow sending to a user")
    return Send(to, message, mid, echo)


def may_publish(grants: Grants, channel: str) -> bool:
    """Whether the token's ``publish`` claim covers `channel` (its specials name no channel)."""
    return allows((p for p in grants.publish if p not in (TO_USER, TO_ALL)), channel)


def audience_of(command: ChatCommand) -> Audience | None:
    """Who receives it: the channel's members, every connection of the user, or everyone (None)."""
    if isinstance(command, Publish):
        return Audience(channels=[command.channel])
    if command.to is not None:
        return Audience(users=[command.to])
    return None


def idempotency_key(user_id: str, message_id: str) -> str:
    """The same id from the same user is the same message; another user's same id is another one."""
    return json.dumps([user_id, message_id], separators=(",", ":"))


def command_digest(command: ChatCommand) -> str:
    """A digest of what the message does, to refuse an id reused for another message or target."""
    target = command.channel if isinstance(command, Publish) else command.to
    value = [command.action, target, command.echo, command.message]
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()
