"""Bad input gets a clear error: the operator API, fuzzed.

Schemathesis generates requests from the handler's own OpenAPI description
(`handlers.operator_api.app.get_openapi_json_schema()`), positive and negative; each is turned into an
HTTP API (payload 2.0) event and handed to the real handler in-process, against DynamoDB Local and an SQS
emulator. Hypothesis adds what the description cannot express: deep nesting, non-UTF-8 and base64
bodies, invalid JSON, odd Idempotency-Keys and broadcast ids.

Every response must be: below 500; a 4xx whose body names the problem; and no partial write (a refused
request leaves no broadcast row and starts no swarm).

Sizes: ``FANOUT_FUZZ_PROFILE=ci`` (default) or ``deep``.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.events import LambdaContextStub, http_api_event
from tests.integration.pipeline_harness import Pipeline, pipeline

settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
settings.register_profile(
    "deep",
    max_examples=1_000,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
FUZZ = settings.get_profile(os.environ.get("FANOUT_FUZZ_PROFILE", "ci"))


@pytest.fixture(scope="module")
def pipe(dynamodb_local: str, local_sqs: str) -> Iterator[Pipeline]:
    with (
        pytest.MonkeyPatch.context() as mp,
        pipeline(dynamodb_local, local_sqs, mp, partition_count=2, shard_count=1) as p,
    ):
        yield p


@dataclass
class Answer:
    status: int
    body: Any
    raw: dict[str, Any]


def call(pipe: Pipeline, event: dict[str, Any]) -> Answer:
    """The handler's answer; a raised exception is what API Gateway turns into a 500."""
    import handlers.operator_api

    try:
        out = handlers.operator_api.handler(event, LambdaContextStub("fanout-operator-api"))
    except Exception as exc:  # a crash: API Gateway would answer 500
        return Answer(500, {"crash": f"{type(exc).__name__}: {exc}"[:300]}, {})
    text = out.get("body") or ""
    if out.get("isBase64Encoded"):
        text = base64.b64decode(text).decode("utf-8", "replace")
    try:
        body = json.loads(text) if text else None
    except ValueError:
        body = text
    return Answer(int(out["statusCode"]), body, out)


def broadcast_rows(pipe: Pipeline) -> int:
    out = pipe.dynamodb.scan(TableName=pipe.settings.broadcasts_table, Select="COUNT", ConsistentRead=True)
    return int(out["Count"])


def names_the_problem(body: Any) -> bool:
    """A 4xx body says what is wrong: a message, or validation details with a location."""
    if not isinstance(body, dict):
        return False
    message = body.get("message")
    if isinstance(message, str) and message.strip():
        return True
    detail = body.get("detail")
    return (
        isinstance(detail, list)
        and bool(detail)
        and all(isinstance(d, dict) and d.get("loc") and (d.get("type") or d.get("msg")) for d in detail)
    )


def check(pipe: Pipeline, event: dict[str, Any]) -> Answer:
    """Call once and check the three properties; returns the answer for further checks."""
    rows = broadcast_rows(pipe)
    pipe.lambdas.invocations.clear()
    answer = call(pipe, event)
    assert answer.status < 500, (answer.status, answer.body)
    created = broadcast_rows(pipe) - rows
    if 400 <= answer.status < 500:
        assert names_the_problem(answer.body), (answer.status, answer.body)
        assert created == 0, f"a refused request ({answer.status}) wrote {created} broadcast row(s)"
        assert pipe.lambdas.invocations == [], "a refused request started a swarm"
    elif answer.status == 202:
        assert created in (0, 1)  # 0: an idempotent replay
        assert uuid.UUID(answer.body["broadcastId"])
    return answer


def event_for(
    method: str,
    path: str,
    *,
    raw_body: str | bytes | None = None,
    headers: dict[str, str] | None = None,
    iam: bool = True,
) -> dict[str, Any]:
    params = None
    route = f"{method} {path}"
    if path.startswith("/broadcasts/"):
        params = {"broadcast_id": path.split("/", 2)[2]}
        route = "GET /broadcasts/{broadcast_id}"
    return http_api_event(
        method, path, raw_body=raw_body, headers=headers, iam=iam, path_parameters=params, route_key=route
    )


# -- schemathesis ------------------------------------------------------------------------------------
def openapi() -> Any:
    import handlers.operator_api

    return schemathesis.openapi.from_dict(json.loads(handlers.operator_api.app.get_openapi_json_schema()))


def case_event(case: Any) -> dict[str, Any]:
    """An HTTP API v2 event from a schemathesis case."""
    path = case.formatted_path
    headers = {str(k): str(v) for k, v in (case.headers or {}).items()}
    raw: str | bytes | None
    body = case.body
    if isinstance(body, schemathesis.core.NotSet):
        raw = None
    elif isinstance(body, bytes):
        raw = body
    else:
        raw = json.dumps(body)
    if raw is not None and case.media_type:
        headers.setdefault("content-type", case.media_type)
    return event_for(case.method.upper(), path, raw_body=raw, headers=headers)


def _operations() -> list[tuple[str, str]]:
    return [(op.ok().method.upper(), op.ok().path) for op in openapi().get_all_operations()]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
@pytest.mark.parametrize(("method", "path"), _operations(), ids=lambda v: str(v))
def test_schemathesis_no_5xx_clear_4xx_no_partial_write(
    pipe: Pipeline, method: str, path: str, mode: GenerationMode
) -> None:
    operation = openapi()[path][method.lower()]
    seen: dict[int, int] = {}

    @FUZZ
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        answer = check(pipe, case_event(case))
        seen[answer.status] = seen.get(answer.status, 0) + 1

    run()
    assert seen, "no case was generated"


def test_the_openapi_description_covers_every_route() -> None:
    assert sorted(_operations()) == [
        ("GET", "/broadcasts/{broadcast_id}"),
        ("GET", "/channels/{name}"),
        ("GET", "/channels/{name}/history"),
        ("POST", "/broadcasts"),
    ]


# -- broadcast bodies ---------------------------------------------------------------------------------
def nested(depth: int) -> str:
    return '{"message":' + "[" * depth + "1" + "]" * depth + "}"


BAD_BODIES: dict[str, tuple[str | bytes | None, dict[str, str], set[int]]] = {
    "no body": (None, {}, {422}),
    "empty": ("", {}, {422}),
    "invalid JSON": ('{"message": ', {}, {422}),
    "JSON with a trailing comma": ('{"message": 1,}', {}, {422}),
    "a list": ("[1, 2]", {}, {422}),
    "a string": ('"hello"', {}, {422}),
    "a number": ("42", {}, {422}),
    "null": ("null", {}, {422}),
    "no message": ('{"text": "hi"}', {}, {422}),
    "an extra field": ('{"message": "hi", "to": "Abc="}', {}, {422}),
    "NaN message": ('{"message": NaN}', {}, {400}),  # parsed, but no JSON frame can carry it
    "Infinity message": ('{"message": Infinity}', {}, {400}),
    "a frame above 128 KB": (json.dumps({"message": "x" * 140_000}), {}, {413}),
    "a body above 1 MB": (json.dumps({"message": "x" * 1_100_000}), {}, {413}),
    "4-byte characters above 128 KB": (json.dumps({"message": "😀" * 40_000}, ensure_ascii=False), {}, {413}),
    "nested 10,000 levels": (nested(10_000), {}, {400}),  # "request body is nested too deeply"
    "nested 1,500 levels": (nested(1_500), {}, {400}),
    # below the recursion limit the body parses, and the message model's validation refuses the depth
    "nested 500 levels": (nested(500), {}, {422}),
    "base64 of non-UTF-8 bytes": (b"\xff\xfe\x00{\x80\x81", {}, {400}),
    "base64 of valid JSON": (json.dumps({"message": "via base64"}).encode(), {}, {202}),
    "text/plain content type": ('{"message": "hi"}', {"content-type": "text/plain"}, {415}),
    "form content type": (
        "message=hi",
        {"content-type": "application/x-www-form-urlencoded"},
        {202},  # Powertools' validation reads a form body as the object {"message": "hi"}
    ),
    "lone surrogate escape": ('{"message": "\\ud800"}', {}, {400}),
    "NUL in a string": ('{"message": "a\\u0000b"}', {}, {202}),
}


@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_broadcast_bodies_get_a_clear_answer(pipe: Pipeline, name: str) -> None:
    raw, headers, expected = BAD_BODIES[name]
    answer = check(pipe, event_for("POST", "/broadcasts", raw_body=raw, headers=headers))
    assert len(expected) == 1
    assert answer.status in expected, (answer.status, answer.body)


json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
json_values = st.recursive(
    json_leaf,
    lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=10), c, max_size=5),
    max_leaves=30,
)


@FUZZ
@given(body=json_values)
def test_any_json_body_is_accepted_only_as_an_object_with_just_a_message(pipe: Pipeline, body: Any) -> None:
    answer = check(pipe, event_for("POST", "/broadcasts", raw_body=json.dumps(body)))
    if isinstance(body, dict) and set(body) == {"message"}:
        assert answer.status == 202, answer.body
    else:
        assert answer.status == 422, answer.body


@FUZZ
@given(raw=st.binary(max_size=300))
def test_any_base64_body_gets_a_clear_answer(pipe: Pipeline, raw: bytes) -> None:
    check(pipe, event_for("POST", "/broadcasts", raw_body=raw))


@FUZZ
@given(raw=st.text(max_size=300))
def test_any_text_body_gets_a_clear_answer(pipe: Pipeline, raw: str) -> None:
    check(pipe, event_for("POST", "/broadcasts", raw_body=raw))


# -- headers -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("", {202}),
        (" ", {202}),
        ("k" * 256, {202}),
        ("k" * 257, {422}),
        ("k" * 100_000, {422}),
        ("clé-ünïcødé-😀", {202}),
        ("a\x00b", {202}),
        ("../../etc/passwd", {202}),
        ('{"key": 1}', {202}),
    ],
    ids=["empty", "space", "256", "257", "100k", "unicode", "nul", "path", "json"],
)
def test_idempotency_keys_get_a_clear_answer_and_replays_are_stable(
    pipe: Pipeline, key: str, expected: set[int]
) -> None:
    body = json.dumps({"message": {"key": key[:20]}})
    first = check(pipe, event_for("POST", "/broadcasts", raw_body=body, headers={"Idempotency-Key": key}))
    assert len(expected) == 1
    assert first.status in expected, (first.status, first.body)
    if first.status == 202 and key.strip():
        again = check(pipe, event_for("POST", "/broadcasts", raw_body=body, headers={"Idempotency-Key": key}))
        assert again.status == 202 and again.body == first.body


@FUZZ
@given(
    headers=st.dictionaries(
        st.sampled_from(["idempotency-key", "content-type", "content-length", "authorization", "x-amz-date"]),
        st.text(max_size=300),
    )
)
def test_any_headers_get_a_clear_answer(pipe: Pipeline, headers: dict[str, str]) -> None:
    check(pipe, event_for("POST", "/broadcasts", raw_body='{"message": "h"}', headers=headers))


# -- broadcast ids -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("broadcast_id", "expected"),
    [
        ("not-a-uuid", 400),
        (str(uuid.uuid4()), 404),
        (str(uuid.uuid4()).upper(), 404),
        (uuid.uuid4().hex, 404),
        ("x" * 65, 422),
        ("%00", 400),
        ("..%2F..%2Fetc", 400),
        ("' OR 1=1 --", 400),
        ("😀", 404),  # no route matches: Powertools' "Not found"
    ],
)
def test_broadcast_ids_get_a_clear_answer(pipe: Pipeline, broadcast_id: str, expected: int) -> None:
    answer = check(pipe, event_for("GET", f"/broadcasts/{broadcast_id}"))
    assert answer.status == expected, answer.body


@FUZZ
@given(broadcast_id=st.text(min_size=1, max_size=80).filter(lambda s: "/" not in s))
def test_any_broadcast_id_gets_a_clear_answer(pipe: Pipeline, broadcast_id: str) -> None:
    answer = check(pipe, event_for("GET", f"/broadcasts/{broadcast_id}"))
    assert answer.status in (400, 404, 422), answer.body


def test_an_existing_broadcast_is_read_back(pipe: Pipeline) -> None:
    made = check(pipe, event_for("POST", "/broadcasts", raw_body='{"message": 1}'))
    answer = check(pipe, event_for("GET", f"/broadcasts/{made.body['broadcastId']}"))
    assert answer.status == 200 and answer.body["broadcastId"] == made.body["broadcastId"]
