"""No one in where they don't belong, through the real handlers in-process.

- connecting without a valid token is refused, and `$connect` without the authorizer's context writes
  no row;
- the operator API refuses any call without the IAM principal that API Gateway's IAM authorizer puts in
  `requestContext.authorizer.iam` (a JWT or Lambda authorizer context, or headers, do not count);
- a connection cannot make the engine broadcast beyond its token's rights: without the `publish` claim
  no `$default` message reaches the swarm and nothing is written; with it, only what the claim covers
  is sent, and `from` is always the token's user, whatever the frame says;
- a client cannot disconnect or address another connection: `$disconnect` acts on the gateway's
  `requestContext.connectionId` only, and no WebSocket action takes a connection id.
"""

from __future__ import annotations

import ast
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.events import LambdaContextStub, http_api_event
from tests.integration.pipeline_harness import Pipeline, pipeline
from tests.secrets import use_token_secret

ROOT = Path(__file__).resolve().parents[2]
SECRET = "integration-secret-0123456789abcdef"


@pytest.fixture
def pipe(
    dynamodb_local: str, local_sqs: str, secrets_manager: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Pipeline]:
    import handlers.authorizer
    import handlers.connect
    import handlers.disconnect

    with pipeline(dynamodb_local, local_sqs, monkeypatch, partition_count=4, shard_count=1) as p:
        use_token_secret(monkeypatch, SECRET, secrets_manager)
        for f in (handlers.connect.deps, handlers.disconnect.deps):
            f.cache_clear()
        yield p
        for f in (handlers.authorizer.deps, handlers.connect.deps, handlers.disconnect.deps):
            f.cache_clear()


def ws_context(event_type: str, route: str, connection_id: str) -> dict[str, Any]:
    now = int(time.time() * 1000)
    ctx: dict[str, Any] = {
        "routeKey": route,
        "eventType": event_type,
        "extendedRequestId": uuid.uuid4().hex,
        "requestTime": "22/Nov/2026:10:00:00 +0000",
        "messageDirection": "IN",
        "stage": "local",
        "connectedAt": now - 1000,
        "requestTimeEpoch": now,
        "identity": {"sourceIp": "203.0.113.7", "userAgent": "security-test"},
        "requestId": uuid.uuid4().hex,
        "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
        "connectionId": connection_id,
        "apiId": "abc123",
    }
    if event_type == "MESSAGE":
        ctx["messageId"] = uuid.uuid4().hex[:12]
    if event_type == "DISCONNECT":
        ctx.update(disconnectStatusCode=1000, disconnectReason="client closed")
    return ctx


def connect_event(
    connection_id: str, user: str | None, query: dict[str, str] | None = None
) -> dict[str, Any]:
    ctx = ws_context("CONNECT", "$connect", connection_id)
    if user is not None:
        ctx["authorizer"] = {"userId": user, "principalId": user, "integrationLatency": 3}
    return {
        "headers": {"Host": "abc123.execute-api.us-east-1.amazonaws.com"},
        "multiValueHeaders": {"Host": ["abc123.execute-api.us-east-1.amazonaws.com"]},
        "queryStringParameters": query,
        "requestContext": ctx,
        "isBase64Encoded": False,
    }


def disconnect_event(connection_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "headers": {"Host": "abc123.execute-api.us-east-1.amazonaws.com", **extra.pop("headers", {})},
        "multiValueHeaders": {},
        "requestContext": ws_context("DISCONNECT", "$disconnect", connection_id),
        "isBase64Encoded": False,
        **extra,
    }


def message_event(connection_id: str, body: str) -> dict[str, Any]:
    return {
        "requestContext": ws_context("MESSAGE", "$default", connection_id),
        "isBase64Encoded": False,
        "body": body,
    }


def authorizer_event(token: str | None) -> dict[str, Any]:
    return {
        "type": "REQUEST",
        "methodArn": "arn:aws:execute-api:us-east-1:123456789012:abc123/local/$connect",
        "queryStringParameters": {"token": token} if token is not None else None,
        "requestContext": {"routeKey": "$connect", "eventType": "CONNECT", "connectionId": "New1="},
    }


def broadcast_rows(pipe: Pipeline) -> int:
    return int(pipe.dynamodb.scan(TableName=pipe.settings.broadcasts_table, Select="COUNT")["Count"])


def queued(pipe: Pipeline) -> int:
    total = 0
    for url in [*pipe.settings.partition_queue_urls, *pipe.settings.post_queue_urls]:
        attrs = pipe.sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        total += sum(int(v) for v in attrs.values())
    return total


# -- connecting ---------------------------------------------------------------------------------------
def test_connecting_without_a_valid_token_is_refused_and_a_valid_one_connects(pipe: Pipeline) -> None:
    import handlers.authorizer
    import handlers.connect
    from fanout.tokens import issue_token

    for token in (None, "", "garbage", issue_token("another-secret-0123456789abcdef", "mallory")):
        with pytest.raises(Exception, match=r"^Unauthorized$"):
            handlers.authorizer.handler(authorizer_event(token), LambdaContextStub("fanout-authorizer"))
    allowed = handlers.authorizer.handler(
        authorizer_event(issue_token(SECRET, "alice")), LambdaContextStub("fanout-authorizer")
    )
    assert allowed["context"] == {"userId": "alice", "channels": "[]", "publish": "[]"}
    out = handlers.connect.handler(connect_event("Alice1=", "alice"), LambdaContextStub("fanout-connect"))
    assert out["statusCode"] == 200
    assert pipe.connection_rows() == {"Alice1="}


def test_connect_without_the_authorizer_context_writes_no_row(pipe: Pipeline) -> None:
    import handlers.connect
    from fanout.tokens import issue_token

    # even with a valid-looking token in the query: only the authorizer's verdict counts
    event = connect_event("Sneaky1=", None, query={"token": issue_token(SECRET, "mallory")})
    out = handlers.connect.handler(event, LambdaContextStub("fanout-connect"))
    assert out["statusCode"] == 401
    assert pipe.connection_rows() == set()


# -- the operator API ---------------------------------------------------------------------------------
def operator_call(pipe: Pipeline, event: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    import handlers.operator_api

    out = handlers.operator_api.handler(event, LambdaContextStub("fanout-operator-api"))
    return int(out["statusCode"]), json.loads(out.get("body") or "{}")


def without_iam(method: str, path: str, authorizer: dict[str, Any] | None, **kw: Any) -> dict[str, Any]:
    params = {"broadcast_id": path.rsplit("/", 1)[1]} if path.startswith("/broadcasts/") else None
    route = "GET /broadcasts/{broadcast_id}" if params else f"{method} {path}"
    event = http_api_event(method, path, iam=False, path_parameters=params, route_key=route, **kw)
    if authorizer is not None:
        event["requestContext"]["authorizer"] = authorizer
    return event


FORGED = {
    "none": None,
    "empty authorizer": {},
    "empty iam": {"iam": {}},
    "iam without identity": {"iam": {"accessKey": "AKIA", "accountId": "123456789012"}},
    "jwt authorizer": {"jwt": {"claims": {"sub": "operator"}, "scopes": ["admin"]}},
    "lambda authorizer": {"lambda": {"userArn": "arn:aws:iam::123456789012:user/operator"}},
}


@pytest.mark.parametrize("authorizer", list(FORGED.values()), ids=list(FORGED))
@pytest.mark.parametrize("method", ["POST", "GET"])
def test_the_operator_api_refuses_calls_without_the_iam_principal(
    pipe: Pipeline, authorizer: dict[str, Any] | None, method: str
) -> None:
    headers = {
        "Authorization": "Bearer anything",
        "x-amzn-iam-userarn": "arn:aws:iam::123456789012:user/operator",
        "x-amz-security-token": "forged",
    }
    if method == "POST":
        event = without_iam("POST", "/broadcasts", authorizer, body={"message": "hi"}, headers=headers)
    else:
        made = operator_call(pipe, http_api_event("POST", "/broadcasts", body={"message": "seed"}))
        assert made[0] == 202
        pipe.lambdas.invocations.clear()
        event = without_iam("GET", f"/broadcasts/{made[1]['broadcastId']}", authorizer, headers=headers)
    rows = broadcast_rows(pipe)
    try:
        status, body = operator_call(pipe, event)
    except Exception as exc:  # pragma: no cover - shown as a failure with the reason
        pytest.fail(f"the operator API crashed on a forged authorizer context: {exc!r}")
    assert status == 403
    assert "IAM" in body["message"]
    assert "broadcastId" not in body and "status" not in body
    assert broadcast_rows(pipe) == rows
    assert pipe.lambdas.invocations == []


# -- a connection cannot make the engine broadcast (without the rights) --------------------------------
ATTEMPTS = [
    {"action": "broadcast", "message": "hi everyone"},
    {"action": "sendmessage", "data": "hi everyone"},
    {"action": "sendmessage", "message": "hi everyone", "id": "m1"},
    {"action": "sendmessage", "to": "Victim", "message": "hi", "id": "m2"},
    {"action": "publish", "channel": "room:1", "message": "hi", "id": "m3"},
    {"action": "POST /broadcasts", "body": {"message": "x"}},
    {"action": "$default", "message": "x"},
    {"action": "swarm", "broadcastId": str(uuid.uuid4())},
    {"action": "ping", "broadcast": True, "message": "x"},
    {"action": "postToConnection", "connectionId": "Victim1=", "data": "x"},
    {"action": "disconnect", "connectionId": "Victim1="},
    {"action": "deleteConnection", "connectionId": "Victim1="},
    {"action": "@connections", "connectionId": "Victim1=", "method": "DELETE"},
]


@pytest.mark.parametrize("message", ATTEMPTS, ids=lambda m: str(m["action"]))
def test_no_websocket_message_broadcasts_posts_or_disconnects(
    pipe: Pipeline, message: dict[str, Any]
) -> None:
    import handlers.default

    pipe.seed_connections({0: ["Mallory1=", "Victim1="]})
    pipe.connections.live.update({"Mallory1=", "Victim1="})
    rows, depth = broadcast_rows(pipe), queued(pipe)

    out = handlers.default.handler(
        message_event("Mallory1=", json.dumps(message)), LambdaContextStub("fanout-default")
    )

    reply = json.loads(out["body"])
    if message["action"] == "ping":
        assert reply == {"type": "pong"}  # extra fields are ignored, never acted on
    elif message["action"] in ("publish", "sendmessage"):
        # the connection has no rights at all (no authorizer context): refused before any I/O
        assert reply["type"] == "error" and reply["code"] in ("forbidden", "invalid"), reply
    else:
        assert reply["type"] == "error" and "unknown action" in reply["error"]
    assert broadcast_rows(pipe) == rows
    assert queued(pipe) == depth
    assert pipe.lambdas.invocations == []
    assert sum(pipe.connections.answers.values()) == 0  # nothing reached @connections
    assert pipe.connection_rows() == {"Mallory1=", "Victim1="}


def test_the_websocket_handlers_hold_no_client_for_lambda_sqs_or_connections() -> None:
    """Static: `$connect`/`$disconnect`/`$default` cannot queue work or post, and only `$default`
    starts a broadcast (a client's message, after its rights and rate limits: fanout.messaging), through
    the swarm launcher and nothing else of the pipeline."""
    forbidden_calls = {
        "invoke",
        "send_message",
        "send_message_batch",
        "post_to_connection",
        "delete_connection",
    }
    forbidden_imports = {"fanout.broadcasts", "fanout.stages", "fanout.postclient", "handlers.operator_api"}
    for name in ("default", "connect", "disconnect", "authorizer"):
        tree = ast.parse((ROOT / "handlers" / f"{name}.py").read_text())
        calls = {
            n.func.attr
            for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
        }
        imports = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | {
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
        }
        assert not calls & forbidden_calls, (name, calls & forbidden_calls)
        assert not imports & forbidden_imports, (name, imports & forbidden_imports)
        source = (ROOT / "handlers" / f"{name}.py").read_text()
        assert 'client("sqs"' not in source
        assert "apigatewaymanagementapi" not in source
        if name == "default":
            assert source.count('client("lambda"') == 1 and "SwarmLauncher(" in source
        elif name == "connect":  # ?recover= hands the missed messages to the recovery function
            assert source.count('client("lambda"') == 1 and "SwarmLauncher(" not in source
            assert "fanout.messaging" not in imports
        else:
            assert 'client("lambda"' not in source and "fanout.messaging" not in imports


def test_the_local_stack_routes_websockets_to_connect_disconnect_and_default_only() -> None:
    from infra.local.stack import FUNCTIONS

    ws_functions = {n for n in FUNCTIONS if n in ("fanout-connect", "fanout-disconnect", "fanout-default")}
    assert ws_functions == {"fanout-connect", "fanout-disconnect", "fanout-default"}
    source = (ROOT / "infra" / "cdk" / "constructs" / "apis.py").read_text()
    assert "HttpIamAuthorizer()" in source  # the operator API: IAM on every route, by default


# -- a client cannot disconnect another ----------------------------------------------------------------
def test_disconnect_acts_only_on_the_gateways_connection_id(pipe: Pipeline) -> None:
    import handlers.disconnect

    pipe.seed_connections({0: ["Mallory1=", "Victim1="]})
    # Mallory's own disconnect, with every client-controlled field naming the victim
    event = disconnect_event(
        "Mallory1=",
        headers={"connectionId": "Victim1=", "X-Connection-Id": "Victim1="},
        queryStringParameters={"connectionId": "Victim1="},
        body=json.dumps({"connectionId": "Victim1="}),
    )
    out = handlers.disconnect.handler(event, LambdaContextStub("fanout-disconnect"))
    assert out["statusCode"] == 200
    assert pipe.connection_rows() == {"Victim1="}


# -- a connection with rights sends only what they cover, and only as its token's user ------------------
def chat_event(connection_id: str, body: dict[str, Any], user: str, publish: list[str]) -> dict[str, Any]:
    from fanout.protocol import authorizer_context

    event = message_event(connection_id, json.dumps(body))
    event["requestContext"]["authorizer"] = {
        **authorizer_context(user, ["room:*"], publish),
        "principalId": user,
    }
    return event


FORBIDDEN_SENDS = [
    ({"action": "publish", "channel": "admin:alerts", "message": "x", "id": "f1"}, ["room:*"]),
    ({"action": "publish", "channel": "room:1", "message": "x", "id": "f2"}, ["$user", "$all"]),
    ({"action": "sendmessage", "to": "Victim", "message": "x", "id": "f3"}, ["room:*", "$all"]),
    ({"action": "sendmessage", "message": "x", "id": "f4"}, ["room:*", "$user"]),
]


@pytest.mark.parametrize(("message", "publish"), FORBIDDEN_SENDS, ids=lambda v: str(v)[:40])
def test_a_send_the_token_does_not_cover_is_forbidden_and_starts_nothing(
    pipe: Pipeline, message: dict[str, Any], publish: list[str]
) -> None:
    import handlers.default

    pipe.seed_connections({0: ["Mallory1=", "Victim1="]}, users={"Victim1=": "Victim"})
    pipe.connections.live.update({"Mallory1=", "Victim1="})
    rows = broadcast_rows(pipe)

    out = handlers.default.handler(
        chat_event("Mallory1=", message, "mallory", publish), LambdaContextStub("fanout-default")
    )

    reply = json.loads(out["body"])
    assert (reply["type"], reply["code"], reply["id"]) == ("error", "forbidden", message["id"])
    assert broadcast_rows(pipe) == rows
    assert pipe.lambdas.invocations == []
    assert sum(pipe.connections.answers.values()) == 0


def test_from_is_the_tokens_user_whatever_the_frame_names(pipe: Pipeline) -> None:
    import handlers.default

    pipe.seed_connections({0: ["Mallory1=", "Victim1="]}, users={"Victim1=": "Victim"})
    pipe.connections.live.update({"Mallory1=", "Victim1="})

    def send(body: dict[str, Any]) -> dict[str, Any]:
        event = chat_event("Mallory1=", body, "mallory", ["$user"])
        return dict(json.loads(handlers.default.handler(event, LambdaContextStub("fanout-default"))["body"]))

    # a frame naming a sender is refused outright
    spoofed = send({"action": "sendmessage", "to": "Victim", "message": "x", "id": "s1", "from": "admin"})
    assert (spoofed["code"], spoofed["id"]) == ("invalid", "s1")
    assert pipe.lambdas.invocations == []
    # other fields that look like an identity are ignored; inside the message, they are the message's
    body = {"action": "sendmessage", "to": "Victim", "id": "s2", "userId": "admin", "sub": "admin",
            "connectionId": "Victim1=", "echo": False,
            "message": {"from": "admin", "text": "hi"}}  # fmt: skip
    assert send(body)["type"] == "ack"
    pipe.run_swarms()
    pipe.drain()
    # the victim got it (echo off leaves out the event's connection, never one the frame names), from
    # the token's user
    (frame,) = [json.loads(f) for f in pipe.connections.frames["Victim1="]]
    assert frame["from"] == "mallory" and frame["data"] == {"from": "admin", "text": "hi"}
    assert pipe.connections.frames.get("Mallory1=", []) == []
