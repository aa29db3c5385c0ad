"""Bad input gets a clear error, without I/O: `$default` frames, authorizer tokens,
broadcast envelopes and ids.

Hypothesis sizes come from a settings profile: ``FANOUT_FUZZ_PROFILE=ci`` (the default, for `make test`)
or ``deep`` (many more cases, for a one-off run).
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from moto import mock_aws

from fanout.errors import InvalidInput, PayloadTooLarge, Unauthorized
from tests.events import LambdaContextStub
from tests.secrets import use_token_secret

settings.register_profile("ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "deep", max_examples=2_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
FUZZ = settings.get_profile(os.environ.get("FANOUT_FUZZ_PROFILE", "ci"))

SECRET = "unit-test-secret-0123456789abcdef0123"
METHOD_ARN = "arn:aws:execute-api:us-east-1:123456789012:abc123/local/$connect"


@pytest.fixture(autouse=True, scope="module")
def _token_secret() -> Iterator[None]:
    """The key in Secrets Manager, read by ARN as in AWS (moto's in-process ``mock_aws``: no I/O)."""
    import handlers.authorizer
    from fanout.settings import load

    with pytest.MonkeyPatch.context() as mp, mock_aws():
        mp.delenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", raising=False)
        use_token_secret(mp, SECRET)
        yield
    load.cache_clear()
    handlers.authorizer.deps.cache_clear()


# -- $default ---------------------------------------------------------------------------------------
def message_event(
    body: Any,
    *,
    is_base64: bool = False,
    connection_id: str = "Abc123=",
    authorizer: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An API Gateway WebSocket MESSAGE event for route `$default` (with the connection's authorizer
    context, if it has one)."""
    now = int(time.time() * 1000)
    event: dict[str, Any] = {
        "requestContext": {
            "routeKey": "$default",
            "messageId": "m" + uuid.uuid4().hex[:12],
            "eventType": "MESSAGE",
            "extendedRequestId": uuid.uuid4().hex,
            "requestTime": "22/Nov/2026:10:00:00 +0000",
            "messageDirection": "IN",
            "stage": "local",
            "connectedAt": now - 5000,
            "requestTimeEpoch": now,
            "identity": {"sourceIp": "203.0.113.7", "userAgent": "fuzz"},
            "requestId": uuid.uuid4().hex,
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "connectionId": connection_id,
            "apiId": "abc123",
        },
        "isBase64Encoded": is_base64,
    }
    if authorizer is not None:
        event["requestContext"]["authorizer"] = authorizer
    if body is not None:
        event["body"] = body
    return event


ERROR_CODES = {
    "invalid",
    "too_large",
    "forbidden",
    "invalid_channel",
    "too_many_subscriptions",
    "not_connected",
    "rate_limited",
}
CHAT_ACTIONS = {"publish", "sendmessage"}


class FakeSubscriptions:
    """The subscriptions adapter in memory (the $default fuzzing does no I/O): one connection row's set
    per connection id, with the limit."""

    def __init__(self, limit: int = 3) -> None:
        self.limit = limit
        self.sets: dict[str, set[str]] = {}
        self.calls: list[tuple[str, str, str]] = []

    def subscribe(
        self, connection_id: str, user_id: str, channel: str, *, expires_at: int, limit: int
    ) -> Any:
        from fanout.protocol import Outcome

        self.calls.append(("subscribe", connection_id, channel))
        channels = self.sets.setdefault(connection_id, set())
        if channel not in channels and len(channels) >= limit:
            return Outcome.TOO_MANY
        channels.add(channel)
        return Outcome.SUBSCRIBED

    def unsubscribe(self, connection_id: str, channel: str) -> Any:
        from fanout.protocol import Outcome

        self.calls.append(("unsubscribe", connection_id, channel))
        self.sets.get(connection_id, set()).discard(channel)
        return Outcome.UNSUBSCRIBED


class FakeSends:
    """What $default starts for a client's message, in memory: (command, user, connection) per send;
    every third is refused by the rate limits, as the real adapter can."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, str, str]] = []

    def __call__(self, *, request: dict[str, str], command: Any, user_id: str, connection_id: str) -> Any:
        from fanout.messaging import RateLimited

        self.calls.append((command, user_id, connection_id))
        if len(self.calls) % 3 == 0:
            raise RateLimited(250)
        return {"broadcastId": f"b-{len(self.calls)}"}


@pytest.fixture
def sends() -> FakeSends:
    return FakeSends()


class FakeHistory:
    """A channel history in memory: every channel has offsets 1..12 of epoch "ep1"."""

    def head(self, channel: str) -> Any:
        from fanout.history import Head

        return Head(12, "ep1")

    def rows(self, channel: str, after: int, limit: int = 100) -> list[Any]:
        from fanout.channels import with_channel
        from fanout.history import Stored

        frame = '{"type":"broadcast","broadcastId":"b","sentAt":1,"data":1}'
        return [Stored(n, "ep1", with_channel(frame, channel, n, "ep1")) for n in range(after + 1, 13)][
            :limit
        ]


@pytest.fixture(autouse=True)
def subscriptions(monkeypatch: pytest.MonkeyPatch, sends: FakeSends) -> FakeSubscriptions:
    from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig

    import handlers.default

    fake = FakeSubscriptions()
    deps = handlers.default.Deps(fake, 8100, fake.limit, IdempotencyConfig(), sends, FakeHistory(), 100, 5)  # type: ignore[arg-type]
    monkeypatch.setattr(handlers.default, "deps", lambda: deps)
    return fake


def default(event: dict[str, Any]) -> dict[str, Any]:
    import handlers.default

    out = handlers.default.handler(event, LambdaContextStub("fanout-default"))
    assert out["statusCode"] == 200
    frame = json.loads(out["body"])
    assert isinstance(frame, dict)
    return frame


def assert_error(frame: dict[str, Any], *words: str, action: Any = ...) -> None:
    """A well-formed error frame: type, action, code, message, and the deprecated alias error."""
    assert frame["type"] == "error", frame
    if frame.get("action") in CHAT_ACTIONS:  # a message to others: its error names the client's id
        extra = {"retryAfterMs"} if frame.get("code") == "rate_limited" else set()
        assert set(frame) == {"type", "action", "id", "code", "message", "error", *extra}, frame
        assert frame["id"] is None or isinstance(frame["id"], str)
    else:
        assert set(frame) == {"type", "action", "code", "message", "error"}, frame
    assert frame["code"] != "internal", f"an input crashed the handler: {frame}"
    assert frame["code"] in ERROR_CODES, frame
    assert isinstance(frame["message"], str) and frame["message"].strip()
    assert frame["error"] == frame["message"]
    assert frame["action"] is None or isinstance(frame["action"], str)
    if action is not ...:
        assert frame["action"] == action, frame
    for w in words:
        assert w in frame["message"], (w, frame["message"])


@pytest.mark.parametrize(
    ("body", "is_base64", "words"),
    [
        (base64.b64encode(b'{"action":"ping"}').decode(), True, ["binary"]),
        (base64.b64encode(bytes(range(256))).decode(), True, ["binary"]),
        ("", False, ["empty"]),
        (None, False, ["empty"]),
        ("   \n\t", False, ["empty"]),
        ('{"action":"ping"', False, ["not valid JSON"]),
        ("{'action': 'ping'}", False, ["not valid JSON"]),
        ("NaN", False, ["JSON object"]),
        ("[1,2]", False, ["JSON object"]),
        ('"ping"', False, ["JSON object"]),
        ("null", False, ["JSON object"]),
        ("{}", False, ['"action"']),
        ('{"action":null}', False, ['"action"']),
        ('{"action":1}', False, ['"action"']),
        ('{"action":["ping"]}', False, ['"action"']),
        ('{"action":{"ping":1}}', False, ['"action"']),
        ('{"action":true}', False, ['"action"']),
        ('{"action":"broadcast","message":"hi all"}', False, ["unknown action", "broadcast"]),
        ('{"action":"sendmessage","data":"x"}', False, ['"id"']),
        ('{"action":"publish","channel":"room:1","message":1}', False, ['"id"']),
        ('{"action":"publish","channel":"room:1","message":1,"id":"' + "i" * 200 + '"}', False, ["128"]),
        ('{"action":"publish","channel":"room:1","id":"x"}', False, ['"message"']),
        ('{"action":"publish","message":1,"id":"x"}', False, ["channel"]),
        ('{"action":"sendmessage","message":"' + "x" * 40_000 + '","id":"x"}', False, ["too large", "32768"]),
        ('{"action":"sendmessage","to":"bob","message":1,"id":"x"}', False, ["not allow"]),
        ('{"action":"disconnect","connectionId":"Other1="}', False, ["unknown action"]),
        ('{"action":"PING"}', False, ["unknown action"]),
        ('{"action":"' + "a" * 3000 + '"}', False, ["unknown action", "..."]),
        ('{"action":"ping"}' + " " * 5000, False, ["too large", "4096"]),
        ("x" * 200_000, False, ["too large"]),
        ("[" * 10_000 + "]" * 10_000, False, ["too large"]),
        ("[" * 2_000 + "]" * 2_000, False, []),  # deep, within the size limit
        ('{"a":' * 600 + "1" + "}" * 600, False, []),
        ('{"action":"\ud800"}', False, ["unknown action"]),
        ("\ud83d\ude00\x00\x01", False, ["not valid JSON"]),
    ],
    ids=lambda v: v[:24] if isinstance(v, str) else None,
)
def test_default_refuses_bad_frames_with_an_error_frame_that_names_the_problem(
    body: Any, is_base64: bool, words: list[str]
) -> None:
    assert_error(default(message_event(body, is_base64=is_base64)), *words)


def test_default_answers_ping_with_pong_with_or_without_extra_fields() -> None:
    assert default(message_event('{"action":"ping"}')) == {"type": "pong"}
    assert default(message_event(' {"action": "ping", "n": 1} ')) == {"type": "pong"}


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"requestContext": {}},
        {"requestContext": {"connectionId": "x"}, "body": '{"action":"ping"}'},
        {**message_event('{"action":"ping"}'), "isBase64Encoded": "maybe"},
        {**message_event('{"action":"ping"}'), "body": 12345},
        {**message_event('{"action":"ping"}'), "body": {"action": "ping"}},
    ],
)
def test_default_answers_an_unreadable_event_with_an_error_frame(event: dict[str, Any]) -> None:
    assert_error(default(event), action=None)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@FUZZ
@given(body=st.text(max_size=6000))
def test_any_text_frame_gets_pong_or_an_error_frame(body: str) -> None:
    frame = default(message_event(body))
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if (
        isinstance(parsed, dict)
        and parsed.get("action") == "ping"
        and len(body.encode("utf-8", "surrogatepass")) <= 4096
    ):
        assert frame == {"type": "pong"}
    else:
        assert_error(frame)


@FUZZ
@given(message=st.dictionaries(st.sampled_from(["action", "connectionId", "message", "to"]), json_values))
def test_any_json_object_gets_pong_only_for_the_ping_action(message: dict[str, Any]) -> None:
    frame = default(message_event(json.dumps(message)))
    if message.get("action") == "ping":
        assert frame == {"type": "pong"}
    else:
        assert_error(frame)


@FUZZ
@given(data=st.binary(max_size=8000))
def test_any_binary_frame_is_refused_as_binary(data: bytes) -> None:
    frame = default(message_event(base64.b64encode(data).decode(), is_base64=True))
    assert_error(frame, "binary")


channel_names = st.text(alphabet="abcz:._-*", min_size=0, max_size=12) | st.text(max_size=140)
pattern_lists = st.lists(
    st.sampled_from(["*", "room:*", "a", "ab*", "news", "z:*"]) | st.text(alphabet="abz:*", max_size=5),
    max_size=4,
)
authorizer_contexts = st.none() | st.fixed_dictionaries(
    {"userId": st.sampled_from(["user-1", "user-2"]), "principalId": st.just("p")},
    optional={
        "channels": pattern_lists.map(json.dumps) | st.text(max_size=10),
        "publish": pattern_lists.map(json.dumps),
    },
)


# The fake keeps its sets across examples on purpose: later examples meet full sets (the limit).
@settings(FUZZ, suppress_health_check=[*FUZZ.suppress_health_check, HealthCheck.function_scoped_fixture])
@given(
    action=st.sampled_from(["subscribe", "unsubscribe"]),
    channel=channel_names | json_values,
    extra=st.dictionaries(
        st.sampled_from(["connectionId", "userId", "channels", "to"]), json_values, max_size=3
    ),
    authorizer=authorizer_contexts,
    connection_id=st.sampled_from(["Abc123=", "Other456="]),
)
def test_any_subscribe_or_unsubscribe_frame_gets_a_well_formed_answer(
    action: str,
    channel: Any,
    extra: dict[str, Any],
    authorizer: dict[str, Any] | None,
    connection_id: str,
    subscriptions: FakeSubscriptions,
) -> None:
    from fanout.channels import allows, channel_problem
    from fanout.protocol import grants_of

    before = len(subscriptions.calls)
    message = {**extra, "action": action, "channel": channel}
    frame = default(message_event(json.dumps(message), connection_id=connection_id, authorizer=authorizer))
    grants = grants_of(authorizer)
    valid = channel_problem(channel) is None
    allowed = valid and grants is not None and allows(grants.channels, channel)
    ran = subscriptions.calls[before:]
    if frame["type"] == "error":
        assert_error(frame, action=action)
        assert frame["code"] in {"invalid_channel", "forbidden", "too_many_subscriptions"}
        assert (frame["code"] == "invalid_channel") == (not valid)
        if action == "subscribe" and valid:
            assert frame["code"] == ("too_many_subscriptions" if allowed else "forbidden")
    else:
        assert frame == {"type": f"{action}d", "channel": channel}
        assert valid and (allowed or action == "unsubscribe")
    # the connection is the event's, never one named in the frame; a refusal runs nothing
    assert all(cid == connection_id for _, cid, _ in ran)
    assert len(ran) == (1 if valid and (allowed or action == "unsubscribe") else 0)


@FUZZ
@given(body=st.text(max_size=300), authorizer=authorizer_contexts)
def test_any_frame_of_a_connection_with_rights_gets_a_well_formed_answer(
    body: str, authorizer: dict[str, Any] | None
) -> None:
    frame = default(message_event(body, authorizer=authorizer))
    if frame["type"] == "error" and frame["code"] != "recovery_impossible":
        assert_error(frame)
    elif frame["type"] != "error":
        assert frame["type"] in {"pong", "subscribed", "unsubscribed", "history"}, frame


@FUZZ
@given(
    channel=channel_names | json_values,
    since=st.integers(-3, 20) | json_values,
    epoch=st.sampled_from(["ep1", "other", "a:b", ""]) | json_values,
    extra=st.dictionaries(st.sampled_from(["connectionId", "userId", "limit"]), json_values, max_size=2),
    authorizer=authorizer_contexts,
)
def test_any_history_frame_gets_a_page_or_a_well_formed_error(
    channel: Any, since: Any, epoch: Any, extra: dict[str, Any], authorizer: dict[str, Any] | None
) -> None:
    from fanout.channels import allows
    from fanout.protocol import grants_of

    message = {**extra, "action": "history", "channel": channel, "since": since, "epoch": epoch}
    frame = default(message_event(json.dumps(message), authorizer=authorizer))
    grants = grants_of(authorizer)
    if frame["type"] == "history":
        # only for a channel the token may subscribe to, only the messages after `since`, a page at most
        assert isinstance(channel, str) and grants is not None and allows(grants.channels, channel)
        offsets = [m["offset"] for m in frame["messages"]]
        start = since if epoch is not None else 0
        assert offsets == list(range(start + 1, start + 1 + len(offsets))) and len(offsets) <= 5
        assert frame["more"] == (offsets[-1] < 12 if offsets else False)
        assert all(m["channel"] == channel and m["epoch"] == "ep1" for m in frame["messages"])
    elif frame["code"] == "recovery_impossible":
        assert frame["action"] == "history" and frame["channel"] == channel and frame["epoch"] == "ep1"
        assert epoch != "ep1" or since > 12
    else:
        assert_error(frame, action="history")
        assert frame["code"] in {"invalid", "invalid_channel", "forbidden"}


@FUZZ
@given(value=st.text(max_size=200) | st.lists(st.sampled_from(["room:1", "a", "3", "ep", "", "x:y", "-1"]),
                                              max_size=8).map(":".join),
       authorizer=authorizer_contexts)  # fmt: skip
def test_any_recover_parameter_is_refused_with_a_reason_or_names_allowed_channels(
    value: str, authorizer: dict[str, Any] | None
) -> None:
    from fanout.channels import allows, channel_problem
    from fanout.errors import Refused
    from fanout.history import epoch_problem
    from fanout.protocol import connect_recovery, grants_of

    grants = grants_of(authorizer)
    try:
        items = connect_recovery(grants, value, [], limit=5)
    except Refused as exc:
        assert exc.status in (400, 403) and str(exc).strip()
        return
    assert len(items) <= 5
    for item in items:
        assert channel_problem(item.channel) is None and epoch_problem(item.epoch) is None
        assert item.since >= 0 and grants is not None and allows(grants.channels, item.channel)


def test_a_failing_subscription_store_is_an_internal_error_frame(
    subscriptions: FakeSubscriptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fanout.errors import RetryableError

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise RetryableError("DynamoDB is down")

    monkeypatch.setattr(subscriptions, "subscribe", fail)
    context = {"userId": "u", "channels": '["*"]', "principalId": "u"}
    frame = default(message_event('{"action":"subscribe","channel":"a"}', authorizer=context))
    assert frame == {
        "type": "error",
        "action": "subscribe",
        "code": "internal",
        "message": "internal error",
        "error": "internal error",
    }


# -- authorizer -------------------------------------------------------------------------------------
def authorizer_event(token: Any = None, *, with_token: bool = True) -> dict[str, Any]:
    return {
        "type": "REQUEST",
        "methodArn": METHOD_ARN,
        "headers": {"Host": "abc123.execute-api.us-east-1.amazonaws.com"},
        "queryStringParameters": {"token": token} if with_token else None,
        "requestContext": {"routeKey": "$connect", "eventType": "CONNECT", "connectionId": "Xyz789="},
    }


def authorize(event: dict[str, Any]) -> dict[str, Any]:
    import handlers.authorizer

    return handlers.authorizer.handler(event, LambdaContextStub("fanout-authorizer"))  # type: ignore[no-any-return]


def assert_refused(event: dict[str, Any]) -> None:
    with pytest.raises(Exception) as caught:
        authorize(event)
    assert type(caught.value) is Exception, f"crashed with {type(caught.value).__name__}: {caught.value}"
    assert str(caught.value) == "Unauthorized"


def _b64(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def token_with(
    claims: dict[str, Any], *, secret: str = SECRET, algorithm: str = "HS256", **headers: Any
) -> str:
    return jwt.encode(claims, secret, algorithm=algorithm, headers=headers or None)


def valid_claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "user-1", "iat": now, "exp": now + 600, **overrides}


def test_a_valid_token_is_allowed_on_the_method_arn_only() -> None:
    out = authorize(authorizer_event(token_with(valid_claims())))
    assert out["principalId"] == "user-1"
    assert out["context"] == {"userId": "user-1", "channels": "[]", "publish": "[]"}
    [statement] = out["policyDocument"]["Statement"]
    assert statement == {"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": METHOD_ARN}


def _tamper(token: str, part: int) -> str:
    pieces = token.split(".")
    chars = list(pieces[part])
    chars[len(chars) // 2] = "A" if chars[len(chars) // 2] != "A" else "B"
    pieces[part] = "".join(chars)
    return ".".join(pieces)


def _rs256_header_hmac_signed() -> str:
    header = _b64({"alg": "RS256", "typ": "JWT"})
    payload = _b64(valid_claims())
    import hashlib
    import hmac

    sig = hmac.new(SECRET.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(sig)}"


NOW = int(time.time())
REFUSED_TOKENS: dict[str, Any] = {
    "missing": None,
    "empty": "",
    "expired": token_with(valid_claims(iat=NOW - 7200, exp=NOW - 1)),
    "expires now": token_with(valid_claims(exp=NOW)),
    "issued in the future": token_with(valid_claims(iat=NOW + 3600, exp=NOW + 7200)),
    "wrong secret": token_with(valid_claims(), secret="another-secret-0123456789abcdef0123"),
    "tampered payload": _tamper(token_with(valid_claims()), 1),
    "tampered signature": _tamper(token_with(valid_claims()), 2),
    "tampered header": _tamper(token_with(valid_claims()), 0),
    "payload swapped to another user": ".".join(
        [
            token_with(valid_claims()).split(".")[0],
            _b64(valid_claims(sub="admin")),
            token_with(valid_claims()).split(".")[2],
        ]
    ),
    "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(valid_claims())}.",
    "alg None": f"{_b64({'alg': 'None', 'typ': 'JWT'})}.{_b64(valid_claims())}.",
    "alg RS256 header, HMAC signature": _rs256_header_hmac_signed(),
    "alg HS512 with the right secret": token_with(valid_claims(), algorithm="HS512"),
    "alg HS384 with the right secret": token_with(valid_claims(), algorithm="HS384"),
    "no alg": f"{_b64({'typ': 'JWT'})}.{_b64(valid_claims())}.{_b64(b'sig')}",
    "no sub": token_with({"iat": NOW, "exp": NOW + 600}),
    "empty sub": token_with(valid_claims(sub="")),
    "no exp": token_with({"sub": "u", "iat": NOW}),
    "exp as a string": token_with(valid_claims(exp=str(NOW + 600))),
    "exp as a boolean": token_with(valid_claims(exp=True)),
    "sub as a number": token_with(valid_claims(sub=12345)),
    "two parts": "abc.def",
    "four parts": token_with(valid_claims()) + ".extra",
    "garbage": "not-a-token",
    "garbage with dots": "....",
    "non-ascii": "ünïcødé.tøkén.✓",
    "nul bytes": "eyJ\x00.eyJ\x00.\x00",
    "huge": "A" * 1_000_000,
    "huge valid-looking": token_with(
        valid_claims(pad="x" * 500_000), secret="nope-0123456789abcdef0123456789"
    ),
    "header not JSON": f"{_b64(b'not json')}.{_b64(valid_claims())}.{_b64(b'sig')}",
    "header a JSON list": f"{_b64(b'[1,2]')}.{_b64(valid_claims())}.{_b64(b'sig')}",
    "payload a JSON list": token_with(valid_claims()).split(".")[0] + f".{_b64(b'[1]')}.sig",
    "bearer prefix": "Bearer " + token_with(valid_claims()),
}


@pytest.mark.parametrize("token", list(REFUSED_TOKENS.values()), ids=list(REFUSED_TOKENS))
def test_bad_tokens_are_refused_with_the_documented_exception(token: Any) -> None:
    assert_refused(authorizer_event(token))


@pytest.mark.parametrize(
    "event",
    [
        authorizer_event(with_token=False),
        {**authorizer_event(token_with(valid_claims())), "queryStringParameters": {"tok": "x"}},
        {**authorizer_event(token_with(valid_claims())), "methodArn": ""},
        {k: v for k, v in authorizer_event(token_with(valid_claims())).items() if k != "methodArn"},
        {**authorizer_event(None), "queryStringParameters": {"token": 123}},
        {**authorizer_event(None), "queryStringParameters": {"token": ["a", "b"]}},
        {**authorizer_event(None), "queryStringParameters": "token=abc"},
        {},
    ],
    ids=["no querystring", "other param", "empty methodArn", "no methodArn", "int", "list", "str qs", "{}"],
)
def test_unreadable_authorizer_events_are_refused_with_the_documented_exception(
    event: dict[str, Any],
) -> None:
    assert_refused(event)


@FUZZ
@given(token=st.text(max_size=2000) | st.binary(max_size=600).map(lambda b: _b64(b)))
def test_any_random_token_is_refused(token: str) -> None:
    assert_refused(authorizer_event(token))


@FUZZ
@given(
    claims=st.dictionaries(
        st.sampled_from(["sub", "exp", "iat", "nbf", "aud"]),
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=10),
    ),
    algorithm=st.sampled_from(["HS256", "HS384", "HS512"]),
    secret=st.sampled_from([SECRET, SECRET + "x", "short"]),
)
def test_any_signed_token_is_allowed_only_when_hs256_with_the_secret_and_valid_claims(
    claims: dict[str, Any], algorithm: str, secret: str
) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        token = jwt.encode(claims, secret, algorithm=algorithm)
    now = time.time()
    sub: Any = claims.get("sub")
    exp: Any = claims.get("exp")
    iat: Any = claims.get("iat")

    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    ok = (
        algorithm == "HS256"
        and secret == SECRET
        and isinstance(sub, str)
        and bool(sub)
        and number(exp)
        and number(iat)
        and int(exp) > now + 1
        and int(iat) <= now + 59
    )
    # stay clear of the clock edges, where the outcome depends on when this line runs
    assume(
        not (number(exp) and abs(int(exp) - now) < 5) and not (number(iat) and abs(int(iat) - now - 60) < 5)
    )
    if ok:
        assert authorize(authorizer_event(token))["principalId"] == sub
    else:
        assert_refused(authorizer_event(token))


@FUZZ
@given(
    channels=st.none() | json_values | pattern_lists,
    publish=st.none() | json_values | pattern_lists | st.just(["$user", "$all"]),
)
def test_any_rights_claims_are_allowed_only_as_lists_of_patterns_and_reach_the_context(
    channels: Any, publish: Any
) -> None:
    from fanout.protocol import grants_of
    from fanout.tokens import PUBLISH_SPECIALS, patterns_problem

    claims = valid_claims()
    if channels is not None:
        claims["channels"] = channels
    if publish is not None:
        claims["publish"] = publish
    ok = (channels is None or patterns_problem(channels) is None) and (
        publish is None or patterns_problem(publish, specials=PUBLISH_SPECIALS) is None
    )
    event = authorizer_event(token_with(claims))
    if not ok:
        assert_refused(event)
        return
    context = authorize(event)["context"]
    assert all(isinstance(v, str) for v in context.values())  # API Gateway's rule for context values
    grants = grants_of(context)
    assert grants is not None
    assert list(grants.channels) == (channels or []) and list(grants.publish) == (publish or [])


@pytest.mark.parametrize("claim", ["exp", "iat"])
def test_a_signed_token_with_an_infinite_time_claim_is_refused_not_a_crash(claim: str) -> None:
    # JSON has no Infinity, but Python's json (used by PyJWT on both ends) reads and writes it
    assert_refused(authorizer_event(token_with(valid_claims(**{claim: float("inf")}))))


@FUZZ
@given(flip=st.integers(min_value=0, max_value=10_000), char=st.sampled_from("ABCDEFabcdef0123456789-_"))
def test_any_one_character_change_to_a_valid_token_is_refused(flip: int, char: str) -> None:
    token = token_with(valid_claims())
    i = flip % len(token)
    assume(token[i] != "." and token[i] != char)
    tampered = token[:i] + char + token[i + 1 :]
    # base64url's last character may carry padding bits that decode to the same bytes
    try:
        same = jwt.decode(tampered, SECRET, algorithms=["HS256"]) == jwt.decode(
            token, SECRET, algorithms=["HS256"]
        )
    except jwt.PyJWTError:
        same = False
    assume(not same)
    assert_refused(authorizer_event(tampered))


# -- broadcast envelopes and ids --------------------------------------------------------------------
def test_a_deeply_nested_message_is_refused_as_invalid_input_not_a_crash() -> None:
    from fanout.frames import build_frame

    deep: Any = "x"
    for _ in range(10_000):
        deep = [deep]
    with pytest.raises(InvalidInput):
        build_frame(str(uuid.uuid4()), 0, deep, limit=128 * 1024)


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (float("nan"), InvalidInput),
        (float("inf"), InvalidInput),
        ({1j: 2}, InvalidInput),
        (b"bytes", InvalidInput),
        ({"s": {1, 2}}, InvalidInput),
        ("x" * (128 * 1024), PayloadTooLarge),
        ("é" * (64 * 1024), PayloadTooLarge),
    ],
    ids=["nan", "inf", "complex key", "bytes", "set", "128 KiB ascii", "64 Ki two-byte chars"],
)
def test_unserializable_or_oversized_messages_are_refused_with_a_named_problem(
    message: Any, error: type
) -> None:
    from fanout.frames import build_frame

    with pytest.raises(error) as caught:
        build_frame(str(uuid.uuid4()), 0, message, limit=128 * 1024)
    assert caught.value.field == "message"  # type: ignore[attr-defined]
    assert str(caught.value)


@FUZZ
@given(message=json_values)
def test_any_json_message_fits_the_envelope_or_is_refused_for_its_size(message: Any) -> None:
    from fanout.frames import build_frame

    try:
        frame = build_frame("b", 1, message, limit=300)
    except PayloadTooLarge as exc:
        assert exc.size > 300 and "300" in str(exc)
        return
    assert json.loads(frame)["data"] == message


@FUZZ
@given(broadcast_id=st.text(max_size=100))
def test_any_broadcast_id_is_a_uuid_or_refused_with_invalid_input(broadcast_id: str) -> None:
    from fanout.broadcasts import validate_broadcast_id

    try:
        canonical = validate_broadcast_id(broadcast_id)
    except InvalidInput as exc:
        assert exc.field == "broadcastId" and "UUID" in str(exc)
        return
    assert str(uuid.UUID(canonical)) == canonical


def test_tokens_are_never_put_in_the_refusal_reason() -> None:
    from fanout.tokens import verify_token

    token = token_with(valid_claims(), secret="other-secret-0123456789abcdef0123")
    with pytest.raises(Unauthorized) as caught:
        verify_token(SECRET, token)
    assert token not in str(caught.value)
    assert token.split(".")[2] not in str(caught.value)


chat_ids = st.none() | st.text(max_size=140) | json_values
chat_targets = st.sampled_from(["room:1", "room:2", "news", "a", "z:q"]) | channel_names | json_values
publish_contexts = st.fixed_dictionaries(
    {"userId": st.sampled_from(["user-1", "user-2"]), "principalId": st.just("p")},
    optional={
        "publish": st.lists(st.sampled_from(["$user", "$all", "room:*", "news", "a*"]), max_size=3).map(
            json.dumps
        )
        | st.text(max_size=10),
    },
)


# The fake sender is shared across examples on purpose: every third send is rate limited.
@settings(FUZZ, suppress_health_check=[*FUZZ.suppress_health_check, HealthCheck.function_scoped_fixture])
@given(
    action=st.sampled_from(["publish", "sendmessage"]),
    fields=st.fixed_dictionaries(
        {},
        optional={
            "channel": chat_targets,
            "to": st.sampled_from(["user-1", "user-2", "bob"]) | json_values,
            "message": json_values,
            "id": chat_ids,
            "echo": st.booleans() | json_values,
            "from": st.sampled_from(["user-2", "admin"]) | json_values,
            "connectionId": st.just("Other456="),
            "userId": st.just("admin"),
        },
    ),
    authorizer=st.none() | publish_contexts,
)
def test_any_publish_or_sendmessage_gets_an_ack_or_an_error_and_sends_only_what_the_token_allows(
    action: str, fields: dict[str, Any], authorizer: dict[str, Any] | None, sends: FakeSends
) -> None:
    from fanout.chat import Publish, may_publish
    from fanout.protocol import grants_of

    before = len(sends.calls)
    frame = default(message_event(json.dumps({**fields, "action": action}), authorizer=authorizer))
    ran = sends.calls[before:]
    grants = grants_of(authorizer)
    if frame["type"] == "ack":
        assert set(frame) == {"type", "id", "broadcastId"} and frame["id"] == fields["id"]
    else:
        assert_error(frame, action=action)
        assert frame["code"] in {"invalid", "forbidden", "rate_limited", "too_large"}
    if not ran:
        assert frame["type"] == "error" and frame["code"] != "rate_limited"
        return
    # whatever was started was allowed, from the token's user, on the event's connection
    ((command, user_id, connection_id),) = ran
    assert grants is not None and user_id == grants.user_id and connection_id == "Abc123="
    assert "from" not in fields and isinstance(fields.get("id"), str) and "message" in fields
    if isinstance(command, Publish):
        assert action == "publish" and may_publish(grants, command.channel)
        assert command.channel == fields["channel"]
    else:
        assert action == "sendmessage" and "channel" not in fields
        assert ("$user" if command.to is not None else "$all") in grants.publish
    assert frame["type"] == "ack" or frame["code"] == "rate_limited"
