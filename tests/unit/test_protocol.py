"""fanout.protocol: the rights of a connection, the channels of $connect, the messages of $default and
their answers (pure; no I/O)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fanout.errors import Refused
from fanout.protocol import (
    ErrorReply,
    Grants,
    Outcome,
    Ping,
    Subscribe,
    Unsubscribe,
    answer,
    authorizer_context,
    connect_channels,
    error_frame,
    expires_at,
    grants_of,
    read_message,
    requested_channels,
)

ROOMS = Grants(user_id="alice", channels=("room:*", "news"), publish=("$user",))


# -- rights ----------------------------------------------------------------------------------------
def test_the_authorizer_context_round_trips_into_grants() -> None:
    context = authorizer_context("alice", ["room:*", "news"], ["$user"])
    assert context == {"userId": "alice", "channels": '["room:*","news"]', "publish": '["$user"]'}
    assert grants_of({**context, "principalId": "alice"}) == ROOMS


@pytest.mark.parametrize(
    "context",
    [
        {"userId": "alice"},
        {"userId": "alice", "channels": "not json"},
        {"userId": "alice", "channels": '"room:*"'},
        {"userId": "alice", "channels": '["bad name"]'},
        {"userId": "alice", "channels": '["$all"]'},  # a special of publish only
        {"userId": "alice", "channels": ["room:*"]},  # API Gateway passes strings; a list is not one
        {"userId": "alice", "channels": "[" * 10_000},
    ],
)
def test_rights_the_authorizer_did_not_write_are_no_rights(context: dict[str, object]) -> None:
    grants = grants_of(context)
    assert grants is not None and grants.channels == () and not grants.may_subscribe("room:1")


@pytest.mark.parametrize("context", [None, {}, {"userId": ""}, {"userId": 7}, "alice"])
def test_no_user_is_no_grants(context: object) -> None:
    assert grants_of(context) is None  # type: ignore[arg-type]


def test_expiry_is_connected_at_seconds_plus_the_ttl() -> None:
    connected = datetime.fromtimestamp(1_800_000_000.999, tz=UTC)
    assert expires_at(connected, 8100) == 1_800_000_000 + 8100


@given(ms=st.integers(min_value=0, max_value=4_102_444_800_000))
def test_expiry_is_the_same_whole_second_for_any_millisecond(ms: int) -> None:
    assert expires_at(datetime.fromtimestamp(ms / 1000, tz=UTC), 60) == ms // 1000 + 60


# -- $connect --------------------------------------------------------------------------------------
def test_requested_channels_read_the_parameter_and_its_repeats() -> None:
    assert requested_channels(None) == []
    assert requested_channels({"token": "t"}) == []
    assert requested_channels({"channels": " a, b,,a "}) == ["a", "b"]
    assert requested_channels({"channels": "c"}, {"channels": ["a,b", "c"]}) == ["a", "b", "c"]


def test_connect_channels_allowed() -> None:
    assert connect_channels(ROOMS, ["room:1", "news", "room:1"], limit=2) == ["room:1", "news"]
    assert connect_channels(ROOMS, [], limit=1) == []
    assert connect_channels(None, [], limit=1) == []


@pytest.mark.parametrize(
    ("grants", "requested", "code", "status"),
    [
        (ROOMS, ["newsroom"], "forbidden", 403),
        (ROOMS, ["room:1", "lobby"], "forbidden", 403),
        (None, ["room:1"], "forbidden", 403),
        (Grants(user_id="u"), ["room:1"], "forbidden", 403),
        (ROOMS, ["room 1"], "invalid_channel", 400),
        (ROOMS, ["lobby", "room 1"], "invalid_channel", 400),  # a bad request before a missing right
        (ROOMS, ["x" * 129], "invalid_channel", 400),
        (ROOMS, ["room:1", "room:2", "room:3"], "too_many_subscriptions", 400),
    ],
)
def test_connect_channels_refused(
    grants: Grants | None, requested: list[str], code: str, status: int
) -> None:
    with pytest.raises(Refused) as caught:
        connect_channels(grants, requested, limit=2)
    assert (caught.value.code, caught.value.status) == (code, status)
    assert str(caught.value)


# -- $default --------------------------------------------------------------------------------------
def read(body: str | None, grants: Grants | None = ROOMS, *, is_base64: bool = False) -> object:
    return read_message(body, is_base64=is_base64, grants=grants)


def test_commands() -> None:
    assert read('{"action":"ping"}') == Ping()
    assert read('{"action":"ping"}', None) == Ping()  # a ping needs no rights
    assert read('{"action":"subscribe","channel":"room:1"}') == Subscribe("room:1")
    assert read('{"action":"unsubscribe","channel":"room:1"}') == Unsubscribe("room:1")
    # unsubscribing only ever removes the connection's own row: no right is needed
    assert read('{"action":"unsubscribe","channel":"lobby"}', None) == Unsubscribe("lobby")
    # the frame names no connection: extra fields are ignored
    assert read('{"action":"subscribe","channel":"news","connectionId":"Other="}') == Subscribe("news")


@pytest.mark.parametrize(
    ("body", "grants", "is_base64", "action", "code", "words"),
    [
        ("AAEC", ROOMS, True, None, "invalid", "binary"),
        ("", ROOMS, False, None, "invalid", "empty"),
        (None, ROOMS, False, None, "invalid", "empty"),
        ("{", ROOMS, False, None, "invalid", "not valid JSON"),
        ("[1]", ROOMS, False, None, "invalid", "JSON object"),
        ("{}", ROOMS, False, None, "invalid", '"action"'),
        ('{"action":7}', ROOMS, False, None, "invalid", '"action"'),
        ('{"action":"shout"}', ROOMS, False, "shout", "invalid", "ping, subscribe, unsubscribe"),
        ('{"action":"PING"}', ROOMS, False, "PING", "invalid", "unknown action"),
        ('{"action":"ping","x":"' + "y" * 5000 + '"}', ROOMS, False, None, "too_large", "4096"),
        ('{"action":"subscribe","channel":"lobby"}', ROOMS, False, "subscribe", "forbidden", "lobby"),
        ('{"action":"subscribe","channel":"room:1"}', None, False, "subscribe", "forbidden", "room:1"),
        ('{"action":"subscribe","channel":"room 1"}', ROOMS, False, "subscribe", "invalid_channel", "' '"),
        ('{"action":"subscribe"}', ROOMS, False, "subscribe", "invalid_channel", "string"),
        ('{"action":"subscribe","channel":""}', ROOMS, False, "subscribe", "invalid_channel", "empty"),
        ('{"action":"subscribe","channel":["a"]}', ROOMS, False, "subscribe", "invalid_channel", "string"),
        ('{"action":"unsubscribe","channel":7}', ROOMS, False, "unsubscribe", "invalid_channel", "string"),
    ],
)
def test_refusals(
    body: str | None, grants: Grants | None, is_base64: bool, action: str | None, code: str, words: str
) -> None:
    reply = read(body, grants, is_base64=is_base64)
    assert isinstance(reply, ErrorReply)
    assert (reply.action, reply.code) == (action, code)
    assert words in reply.message
    assert json.loads(reply.frame) == {
        "type": "error",
        "action": action,
        "code": code,
        "message": reply.message,
        "error": reply.message,
    }


def test_answers() -> None:
    assert answer(Subscribe("a"), Outcome.SUBSCRIBED, limit=3) == '{"type":"subscribed","channel":"a"}'
    assert answer(Unsubscribe("a"), Outcome.UNSUBSCRIBED, limit=3) == '{"type":"unsubscribed","channel":"a"}'
    full = json.loads(answer(Subscribe("a"), Outcome.TOO_MANY, limit=3))
    assert (full["action"], full["code"]) == ("subscribe", "too_many_subscriptions") and "3" in full[
        "message"
    ]
    gone = json.loads(answer(Unsubscribe("a"), Outcome.NOT_CONNECTED, limit=3))
    assert (gone["type"], gone["action"], gone["code"]) == ("error", "unsubscribe", "not_connected")


def test_error_frame_keeps_the_deprecated_alias() -> None:
    frame = json.loads(error_frame(None, "internal", "internal error"))
    assert frame == {
        "type": "error",
        "action": None,
        "code": "internal",
        "message": "internal error",
        "error": "internal error",
    }
