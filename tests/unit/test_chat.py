"""Client messages to others (fanout.chat, fanout.ratelimit, fanout.messaging): pure decisions."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fanout.chat import (
    MAX_CHAT_MESSAGE_BYTES,
    ChatRefusal,
    Publish,
    Send,
    ack_frame,
    audience_of,
    command_digest,
    idempotency_key,
)
from fanout.errors import InvalidInput, PayloadTooLarge
from fanout.frames import build_frame
from fanout.messaging import RateLimited, send_client_message
from fanout.models import Audience
from fanout.protocol import MAX_MESSAGE_BYTES, ErrorReply, Grants, read_message
from fanout.ratelimit import Admitted, BucketLimit, Decision, Limited, connection_key, decide, user_key
from fanout.swarming import targeted_ids

ALICE = Grants(user_id="alice", channels=("room:*",), publish=("room:*", "$user"))
EVERYONE = Grants(user_id="alice", publish=("$all",))
NOBODY = Grants(user_id="alice")


def read(body: Any, grants: Grants | None = ALICE) -> Any:
    text = body if isinstance(body, str) else json.dumps(body)
    return read_message(text, is_base64=False, grants=grants)


# -- reading -------------------------------------------------------------------------------------------
def test_publish_and_sendmessage_become_commands() -> None:
    assert read({"action": "publish", "channel": "room:1", "message": {"t": "hi"}, "id": "m1"}) == Publish(
        "room:1", {"t": "hi"}, "m1", True
    )
    frame = {"action": "publish", "channel": "room:1", "message": 1, "id": "m2", "echo": False}
    assert read(frame) == Publish("room:1", 1, "m2", False)
    assert read({"action": "sendmessage", "to": "bob", "message": "x", "id": "m3"}) == Send("bob", "x", "m3")
    assert read({"action": "sendmessage", "message": None, "id": "m4"}, EVERYONE) == Send(None, None, "m4")


@pytest.mark.parametrize(
    ("frame", "grants", "code", "words"),
    [
        ({"action": "publish", "channel": "lobby", "message": 1, "id": "a"}, ALICE, "forbidden", "lobby"),
        ({"action": "publish", "channel": "room:1", "message": 1, "id": "a"}, NOBODY, "forbidden", "room:1"),
        ({"action": "publish", "channel": "room:1", "message": 1, "id": "a"}, None, "forbidden", "room:1"),
        # the specials name no channel: "$all" is no right to publish to a channel
        ({"action": "publish", "channel": "room:1", "message": 1, "id": "a"}, EVERYONE, "forbidden", "room"),
        ({"action": "publish", "channel": "room 1", "message": 1, "id": "a"}, ALICE, "invalid", "channel"),
        ({"action": "publish", "message": 1, "id": "a"}, ALICE, "invalid", "channel"),
        ({"action": "publish", "channel": "room:1", "id": "a"}, ALICE, "invalid", '"message"'),
        ({"action": "publish", "channel": "room:1", "message": 1}, ALICE, "invalid", '"id"'),
        ({"action": "publish", "channel": "room:1", "message": 1, "id": ""}, ALICE, "invalid", '"id"'),
        ({"action": "publish", "channel": "room:1", "message": 1, "id": 7}, ALICE, "invalid", '"id"'),
        ({"action": "publish", "channel": "room:1", "message": 1, "id": "a" * 129}, ALICE, "invalid", "128"),
        (
            {"action": "publish", "channel": "room:1", "message": 1, "id": "a", "echo": "no"},
            ALICE,
            "invalid",
            "echo",
        ),
        (
            {"action": "publish", "channel": "room:1", "message": 1, "id": "a", "from": "bob"},
            ALICE,
            "invalid",
            "from",
        ),
        ({"action": "sendmessage", "message": 1, "id": "a"}, ALICE, "forbidden", "everyone"),
        ({"action": "sendmessage", "to": "bob", "message": 1, "id": "a"}, EVERYONE, "forbidden", "user"),
        ({"action": "sendmessage", "to": "", "message": 1, "id": "a"}, ALICE, "invalid", '"to"'),
        ({"action": "sendmessage", "to": ["bob"], "message": 1, "id": "a"}, ALICE, "invalid", '"to"'),
        (
            {"action": "sendmessage", "channel": "room:1", "message": 1, "id": "a"},
            ALICE,
            "invalid",
            "publish",
        ),
        (
            {"action": "sendmessage", "to": "bob", "message": 1, "id": "a", "from": "eve"},
            ALICE,
            "invalid",
            "from",
        ),
    ],
)
def test_refusals_name_the_action_the_id_and_a_code(
    frame: dict[str, Any], grants: Grants | None, code: str, words: str
) -> None:
    reply = read(frame, grants)
    assert isinstance(reply, ChatRefusal)
    assert (reply.action, reply.code) == (frame["action"], code)
    assert words in reply.message
    sent = json.loads(reply.frame)
    shown_id = frame.get("id") if isinstance(frame.get("id"), str) and len(frame["id"]) <= 128 else None
    assert sent == {"type": "error", "action": frame["action"], "id": shown_id, "code": code,
                    "message": reply.message, "error": reply.message}  # fmt: skip


def test_a_message_to_others_may_be_bigger_than_a_control_message() -> None:
    text = "x" * (MAX_MESSAGE_BYTES * 2)
    assert isinstance(read({"action": "publish", "channel": "room:1", "message": text, "id": "a"}), Publish)
    too_big = read({"action": "ping", "pad": text})
    assert isinstance(too_big, ErrorReply) and too_big.code == "too_large"
    # above the chat limit nothing is parsed, whatever the action
    huge = read(
        {"action": "publish", "channel": "room:1", "message": "x" * MAX_CHAT_MESSAGE_BYTES, "id": "a"}
    )
    assert (
        isinstance(huge, ErrorReply)
        and huge.code == "too_large"
        and str(MAX_CHAT_MESSAGE_BYTES) in huge.message
    )


def test_who_receives_a_command() -> None:
    assert audience_of(Publish("room:1", 1, "a")) == Audience(channels=["room:1"])
    assert audience_of(Send("bob", 1, "a")) == Audience(users=["bob"])
    assert audience_of(Send(None, 1, "a")) is None  # everyone


def test_ack_frame_takes_an_offset_when_there_is_one() -> None:
    assert json.loads(ack_frame("m1", "b-1")) == {"type": "ack", "id": "m1", "broadcastId": "b-1"}
    assert json.loads(ack_frame("m1", "b-1", offset=7))["offset"] == 7


def test_idempotency_keys_are_per_user_and_digests_per_content() -> None:
    assert idempotency_key("alice", "m1") != idempotency_key("bob", "m1")
    # no separator can make two (user, id) pairs collide
    assert idempotency_key("a#b", "c") != idempotency_key("a", "b#c")
    same = command_digest(Publish("room:1", {"a": 1, "b": 2}, "m1"))
    assert same == command_digest(Publish("room:1", {"b": 2, "a": 1}, "m1"))
    assert same != command_digest(Publish("room:2", {"a": 1, "b": 2}, "m1"))
    assert same != command_digest(Publish("room:1", {"a": 1, "b": 2}, "m1", echo=False))
    assert command_digest(Send("bob", 1, "m")) != command_digest(Send(None, 1, "m"))


def test_the_envelope_names_the_sender_before_the_data() -> None:
    frame = json.loads(build_frame("b", 5, {"t": 1}, limit=10_000, sender="alice"))
    assert frame == {"type": "broadcast", "broadcastId": "b", "sentAt": 5, "from": "alice", "data": {"t": 1}}
    assert "from" not in json.loads(build_frame("b", 5, 1, limit=10_000))


def test_excluded_connection_is_not_targeted() -> None:
    assert targeted_ids(["a", "b", "c"], "b") == ["a", "c"]
    assert targeted_ids(["a", "b"], None) == ["a", "b"]
    assert targeted_ids(["a"], "z") == ["a"]


# -- token buckets -------------------------------------------------------------------------------------
LIMIT = BucketLimit(rate=10, burst=20)


def run(times: list[float], limit: BucketLimit = LIMIT) -> list[Decision]:
    tat: float | None = None
    out: list[Decision] = []
    for now in times:
        d = decide(tat, now, limit)
        if isinstance(d, Admitted):
            tat = d.tat
        out.append(d)
    return out


def test_a_full_bucket_admits_its_burst_then_refuses_with_the_wait() -> None:
    decisions = run([1000.0] * 21)
    assert all(isinstance(d, Admitted) for d in decisions[:20])
    assert decisions[20] == Limited(100)  # one token comes back every 100 ms at 10/s


def test_the_bucket_refills_at_its_rate() -> None:
    decisions = run([1000.0] * 20 + [1100.0, 1100.0, 1300.0, 1300.0, 1300.0])
    assert [isinstance(d, Admitted) for d in decisions[20:]] == [True, False, True, True, False]


@given(st.lists(st.floats(min_value=0, max_value=10_000), min_size=1, max_size=200))
def test_never_more_than_burst_plus_rate_times_elapsed(offsets: list[float]) -> None:
    times = sorted(offsets)
    decisions = run(times)
    admitted = [t for t, d in zip(times, decisions, strict=True) if isinstance(d, Admitted)]
    for i, start in enumerate(admitted):
        for j in range(i, len(admitted)):
            assert j - i + 1 <= LIMIT.burst + (admitted[j] - start) / LIMIT.interval_ms + 1e-6
    for t, d in zip(times, decisions, strict=True):
        if isinstance(d, Limited):
            # waiting as told is enough: the retry is admitted if nothing else came in between
            last = max(a for a in admitted if a <= t)
            tat = run([a for a in admitted if a <= last])[-1]
            assert isinstance(tat, Admitted)
            assert isinstance(decide(tat.tat, t + d.retry_after_ms, LIMIT), Admitted)


class Buckets:
    def __init__(self, refuse: str | None = None) -> None:
        self.refuse = refuse
        self.taken: list[list[str]] = []

    def take_all(self, buckets: list[tuple[str, BucketLimit]]) -> Decision:
        self.taken.append([k for k, _ in buckets])
        return Limited(250) if self.refuse in [k for k, _ in buckets] else Admitted(0)


class Broadcasts:
    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []

    def create(self, broadcast_id: str, created_at: int, frame: str, key: str | None,
               audience: Audience | None = None, positions: Any = None, *,
               exclude_connection: str | None = None) -> None:  # fmt: skip
        self.created.append({"frame": json.loads(frame), "audience": audience, "exclude": exclude_connection})

    def load(self, broadcast_id: str) -> Any: ...
    def totals(self, broadcast_id: str, shards: int) -> Any: ...
    def finish(self, *args: Any, **kwargs: Any) -> bool:
        return True


class Swarm:
    def __init__(self) -> None:
        self.launched: list[str] = []

    def launch(self, broadcast_id: str) -> None:
        self.launched.append(broadcast_id)


def send(
    command: Publish | Send, buckets: Buckets, broadcasts: Broadcasts, swarm: Swarm, limit: int = 10_000
) -> str:
    return send_client_message(
        command, user_id="alice", connection_id="C1=", buckets=buckets, connection_limit=LIMIT,
        user_limit=LIMIT, broadcasts=broadcasts, swarm=swarm, max_frame_bytes=limit,
    ).broadcast_id  # fmt: skip


def test_a_message_takes_a_token_of_its_connection_and_its_user_then_starts_a_broadcast() -> None:
    buckets, broadcasts, swarm = Buckets(), Broadcasts(), Swarm()
    bid = send(Publish("room:1", {"t": "hi"}, "m1", echo=False), buckets, broadcasts, swarm)
    assert buckets.taken == [[connection_key("C1="), user_key("alice")]]
    assert swarm.launched == [bid]
    (created,) = broadcasts.created
    assert created["audience"] == Audience(channels=["room:1"])
    assert created["exclude"] == "C1="
    assert created["frame"]["from"] == "alice" and created["frame"]["data"] == {"t": "hi"}
    send(Send(None, 1, "m2"), buckets, broadcasts, swarm)
    assert broadcasts.created[1]["exclude"] is None and broadcasts.created[1]["audience"] is None


@pytest.mark.parametrize("refused", [connection_key("C1="), user_key("alice")])
def test_a_limited_message_starts_nothing(refused: str) -> None:
    broadcasts, swarm = Broadcasts(), Swarm()
    with pytest.raises(RateLimited) as caught:
        send(Send("bob", 1, "m"), Buckets(refuse=refused), broadcasts, swarm)
    assert caught.value.retry_after_ms == 250
    assert broadcasts.created == [] and swarm.launched == []


def test_a_message_too_large_for_its_envelope_starts_nothing() -> None:
    broadcasts, swarm = Broadcasts(), Swarm()
    with pytest.raises(PayloadTooLarge):
        send(Publish("room:1", "x" * 500, "m"), Buckets(), broadcasts, swarm, limit=300)
    assert broadcasts.created == [] and swarm.launched == []


# -- the handler's answers -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raised", "code"),
    [
        (RateLimited(120), "rate_limited"),
        (PayloadTooLarge(200_000, 131_072), "too_large"),
        ("validation", "invalid"),
        ("in_progress", "in_progress"),
        ("retryable", "unavailable"),
    ],
)
def test_the_handler_answers_each_failure_of_a_send_with_its_code(
    monkeypatch: pytest.MonkeyPatch, raised: Any, code: str
) -> None:
    from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig
    from aws_lambda_powertools.utilities.idempotency.exceptions import (
        IdempotencyAlreadyInProgressError,
        IdempotencyValidationError,
    )

    import handlers.default
    from fanout.errors import RetryableError
    from fanout.protocol import authorizer_context
    from tests.events import LambdaContextStub

    errors = {
        "validation": IdempotencyValidationError(),
        "in_progress": IdempotencyAlreadyInProgressError(),
        "retryable": RetryableError("swarm down"),
    }

    def send_once(**_: Any) -> Any:
        raise errors.get(raised, raised)

    deps = handlers.default.Deps(None, 8100, 3, IdempotencyConfig(), send_once, None, 100, 50)  # type: ignore[arg-type]
    monkeypatch.setattr(handlers.default, "deps", lambda: deps)
    context = {**authorizer_context("alice", [], ["room:*"]), "principalId": "alice"}
    body = json.dumps({"action": "publish", "channel": "room:1", "message": 1, "id": "m-9"})
    event = {
        "requestContext": {
            "routeKey": "$default", "messageId": "m1", "eventType": "MESSAGE", "extendedRequestId": "x",
            "requestTime": "04/Dec/2026:10:00:00 +0000", "messageDirection": "IN", "stage": "local",
            "connectedAt": 1_800_000_000_000, "requestTimeEpoch": 1_800_000_001_000,
            "identity": {"sourceIp": "203.0.113.7"}, "requestId": "r1", "domainName": "d", "apiId": "a",
            "connectionId": "C1=", "authorizer": context,
        },
        "body": body,
        "isBase64Encoded": False,
    }  # fmt: skip
    out = handlers.default.handler(event, LambdaContextStub("fanout-default"))
    frame = json.loads(out["body"])
    assert (frame["type"], frame["code"], frame["action"], frame["id"]) == ("error", code, "publish", "m-9")
    assert ("retryAfterMs" in frame) == (code == "rate_limited")
    if code == "rate_limited":
        assert frame["retryAfterMs"] == 120


@given(sender=st.text(min_size=1, max_size=30) | st.just('x","data":1,"y'), message=st.text(max_size=30))
def test_a_sender_of_any_name_cannot_move_where_the_channel_is_spliced_in(sender: str, message: str) -> None:
    from fanout.channels import with_channel

    try:
        frame = build_frame("b", 5, message, limit=10_000, sender=sender)
    except InvalidInput:
        return  # a lone surrogate: refused, as in a message
    named = json.loads(with_channel(frame, "room:1"))
    assert (named["from"], named["channel"], named["data"]) == (sender, "room:1", message)
