"""The WebSocket gateway emulator against a stand-in Lambda runtime (an aiohttp app speaking the Invoke API
and routing to Python functions defined here)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aws_lambda_powertools.utilities.parser.models import (
    APIGatewayProxyEventV2Model,
    APIGatewayWebSocketConnectEventModel,
    APIGatewayWebSocketDisconnectEventModel,
    APIGatewayWebSocketMessageEventModel,
)

from infra.local.gateway import Gateway
from infra.local.gateway_config import FaultConfig, GatewayConfig
from infra.local.gateway_events import HttpRoute, match_http_route, select_route
from infra.local.gateway_sim import broadcast_id_of

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "operator-secret"
WAIT = 10.0  # upper bound on waiting for an asynchronous effect (never asserted as a duration)

Handler = Callable[[dict[str, Any]], Any]


class FakeLambda:
    """The Lambda Invoke REST API, routing to in-test functions; records every event per function."""

    def __init__(self) -> None:
        self.functions: dict[str, Handler] = {}
        self.events: dict[str, list[dict[str, Any]]] = {}
        self._runner: web.AppRunner | None = None
        self.url = ""

    def events_of(self, name: str) -> list[dict[str, Any]]:
        return self.events.setdefault(name, [])

    async def _invoke(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        assert request.headers.get("X-Amz-Invocation-Type") == "RequestResponse"
        fn = self.functions.get(name)
        if fn is None:
            return web.json_response({"Type": "User", "message": f"Function not found: {name}"}, status=404)
        event = await request.json()
        self.events_of(name).append(event)
        try:
            result = fn(event)
            if isinstance(result, Awaitable):
                result = await result
        except Exception as exc:
            body = {"errorMessage": str(exc), "errorType": type(exc).__name__}
            return web.json_response(body, headers={"X-Amz-Function-Error": "Unhandled"})
        return web.json_response(result)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/2015-03-31/functions/{name}/invocations", self._invoke)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def allow(event: dict[str, Any]) -> dict[str, Any]:
    """Authorizer: token 'good' → Allow, 'deny' → explicit Deny, anything else → Unauthorized."""
    token = (event.get("queryStringParameters") or {}).get("token")
    if token not in ("good", "deny"):
        raise Exception("Unauthorized")
    statement = {
        "Action": "execute-api:Invoke",
        "Effect": "Allow" if token == "good" else "Deny",
        "Resource": event["methodArn"],
    }
    return {
        "principalId": "user-1",
        "policyDocument": {"Version": "2012-10-17", "Statement": [statement]},
        "context": {"userId": "user-1", "tier": 3},
    }


def default_route(event: dict[str, Any]) -> dict[str, Any]:
    try:
        body = json.loads(event.get("body") or "")
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("action") == "ping":
        return {"statusCode": 200, "body": json.dumps({"type": "pong"})}
    return {"statusCode": 200, "body": json.dumps({"type": "error", "error": "unknown action"})}


@pytest.fixture
async def lam() -> AsyncIterator[FakeLambda]:
    fake = FakeLambda()
    fake.functions.update(
        {
            "fanout-authorizer": allow,
            "fanout-connect": lambda e: {"statusCode": 200},
            "fanout-disconnect": lambda e: {"statusCode": 200},
            "fanout-default": default_route,
            "fanout-operator-api": lambda e: {
                "statusCode": 202,
                "headers": {"Content-Type": "application/json", "X-Trace": "t1"},
                "cookies": ["a=1; Path=/"],
                "body": json.dumps({"broadcastId": "b-1"}),
            },
        }
    )
    await fake.start()
    yield fake
    await fake.stop()


MakeGateway = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def make_gateway(lam: FakeLambda) -> AsyncIterator[MakeGateway]:
    gateways: list[Gateway] = []

    async def make(**overrides: Any) -> Gateway:
        data: dict[str, Any] = {
            "websocket_port": 0,
            "http_port": 0,
            "lambda_url": lam.url,
            "operator_token": TOKEN,
            "shutdown_grace_seconds": 2,
            **overrides,
        }
        gateway = Gateway(GatewayConfig.model_validate(data))
        await gateway.start()
        gateways.append(gateway)
        return gateway

    yield make
    for gateway in gateways:
        await gateway.stop()


@pytest.fixture
async def gw(make_gateway: MakeGateway) -> Gateway:
    return await make_gateway()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def wait_until(predicate: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def connect(
    http: aiohttp.ClientSession, gw: Gateway, token: str = "good", **kw: Any
) -> tuple[aiohttp.ClientWebSocketResponse, str]:
    """Open a socket and learn its connection id (the newest registered connection)."""
    before = set(gw.connections)
    ws = await http.ws_connect(f"{gw.websocket_url}?token={token}", **kw)
    await wait_until(lambda: bool(set(gw.connections) - before), "the connection to register")
    (cid,) = set(gw.connections) - before
    return ws, cid


def conn_url(gw: Gateway, cid: str) -> str:
    return f"{gw.connections_url}/@connections/{quote(cid, safe='')}"


# --------------------------------------------------------------------------------------------------
# Handshake


@pytest.mark.parametrize(("token", "status"), [("deny", 403), ("bad", 401)])
async def test_refused_handshake_invokes_nothing_else(
    gw: Gateway, lam: FakeLambda, http: aiohttp.ClientSession, token: str, status: int
) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(f"{gw.websocket_url}?token={token}")
    assert refused.value.status == status
    assert len(lam.events_of("fanout-authorizer")) == 1
    assert lam.events_of("fanout-connect") == []
    assert lam.events_of("fanout-disconnect") == []
    assert gw.connections == {}


async def test_authorizer_crash_is_500_and_connect_refusal_refuses(
    gw: Gateway, lam: FakeLambda, http: aiohttp.ClientSession
) -> None:
    def crash(event: dict[str, Any]) -> None:
        raise RuntimeError("boom")

    lam.functions["fanout-authorizer"] = crash
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(f"{gw.websocket_url}?token=good")
    assert refused.value.status == 500
    assert lam.events_of("fanout-connect") == []

    lam.functions["fanout-authorizer"] = allow
    lam.functions["fanout-connect"] = lambda e: {"statusCode": 429, "body": "slow down"}
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(f"{gw.websocket_url}?token=good")
    assert refused.value.status == 429
    assert len(lam.events_of("fanout-connect")) == 1
    assert lam.events_of("fanout-disconnect") == []


async def test_wrong_stage_is_forbidden(gw: Gateway, http: aiohttp.ClientSession) -> None:
    base = gw.websocket_url.rsplit("/", 1)[0]
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(f"{base}/prod?token=good")
    assert refused.value.status == 403


async def test_lifecycle_events_have_api_gateway_shapes(
    gw: Gateway, lam: FakeLambda, http: aiohttp.ClientSession
) -> None:
    # Given an accepted connection
    ws, cid = await connect(http, gw, headers={"User-Agent": "pytest-client", "X-Custom": "v"})
    assert len(cid) == 16 and cid.endswith("=")

    # Then the authorizer got a REQUEST event for the $connect method ARN
    (auth,) = lam.events_of("fanout-authorizer")
    assert auth["type"] == "REQUEST"
    assert auth["methodArn"] == "arn:aws:execute-api:us-east-1:000000000000:localwsapi/local/$connect"
    assert auth["queryStringParameters"] == {"token": "good"}
    assert auth["multiValueQueryStringParameters"] == {"token": ["good"]}
    assert auth["headers"]["X-Custom"] == "v"
    assert auth["requestContext"]["connectionId"] == cid
    assert auth["requestContext"]["eventType"] == "CONNECT"

    # And $connect got the authorizer's context
    (conn_event,) = lam.events_of("fanout-connect")
    connect_model = APIGatewayWebSocketConnectEventModel.model_validate(conn_event)
    assert connect_model.request_context.connection_id == cid
    assert connect_model.request_context.identity.user_agent == "pytest-client"
    assert str(connect_model.request_context.identity.source_ip.network_address) == "127.0.0.1"
    authorizer = conn_event["requestContext"]["authorizer"]
    assert authorizer["principalId"] == "user-1"
    assert authorizer["userId"] == "user-1"
    assert authorizer["tier"] == 3
    assert conn_event["queryStringParameters"] == {"token": "good"}

    # When a message is sent, the MESSAGE event parses and carries the authorizer context too
    await ws.send_str(json.dumps({"action": "ping"}))
    assert json.loads(await ws.receive_str(timeout=WAIT)) == {"type": "pong"}
    (msg_event,) = lam.events_of("fanout-default")
    message_model = APIGatewayWebSocketMessageEventModel.model_validate(msg_event)
    assert message_model.request_context.route_key == "ping"
    assert message_model.request_context.event_type == "MESSAGE"
    assert message_model.body == '{"action": "ping"}'
    assert msg_event["requestContext"]["authorizer"]["userId"] == "user-1"

    # When the client closes, $disconnect parses with the client's close code
    await ws.close(code=4001, message=b"bye")
    await wait_until(lambda: bool(lam.events_of("fanout-disconnect")), "$disconnect")
    (disc,) = lam.events_of("fanout-disconnect")
    disconnect_model = APIGatewayWebSocketDisconnectEventModel.model_validate(disc)
    assert disconnect_model.request_context.connection_id == cid
    assert disconnect_model.request_context.disconnect_status_code == 4001
    assert disconnect_model.request_context.disconnect_reason == "bye"
    assert disc["requestContext"]["authorizer"]["principalId"] == "user-1"
    assert cid not in gw.connections


async def test_route_selection(
    make_gateway: MakeGateway, lam: FakeLambda, http: aiohttp.ClientSession
) -> None:
    seen: list[str] = []

    def echo(event: dict[str, Any]) -> dict[str, Any]:
        seen.append(event["requestContext"]["routeKey"])
        return {"statusCode": 200, "body": "echo:" + event["body"]}

    lam.functions["fanout-echo"] = echo
    gw = await make_gateway(routes={"ping": "fanout-default", "echo": "fanout-echo"})
    ws, _ = await connect(http, gw)
    await ws.send_str('{"action": "echo", "x": 1}')
    assert await ws.receive_str(timeout=WAIT) == 'echo:{"action": "echo", "x": 1}'
    for body in ("not json", '{"action": "nope"}', '{"other": 1}', "[1, 2]"):
        await ws.send_str(body)
        assert json.loads(await ws.receive_str(timeout=WAIT))["type"] == "error"
    await ws.send_bytes(b"\x00\x01")
    assert json.loads(await ws.receive_str(timeout=WAIT))["type"] == "error"
    routes = [e["requestContext"]["routeKey"] for e in lam.events_of("fanout-default")]
    assert routes == ["$default"] * 5
    assert lam.events_of("fanout-default")[-1]["isBase64Encoded"] is True
    assert base64.b64decode(lam.events_of("fanout-default")[-1]["body"]) == b"\x00\x01"
    assert seen == ["echo"]
    await ws.close()


async def test_function_error_on_a_route_answers_internal_server_error(
    gw: Gateway, lam: FakeLambda, http: aiohttp.ClientSession
) -> None:
    def boom(event: dict[str, Any]) -> None:
        raise ValueError("nope")

    lam.functions["fanout-default"] = boom
    ws, cid = await connect(http, gw)
    await ws.send_str("hello")
    answer = json.loads(await ws.receive_str(timeout=WAIT))
    assert answer["message"] == "Internal server error"
    assert answer["connectionId"] == cid
    await ws.close()


def test_pure_route_selection_and_http_route_matching() -> None:
    routes = {"ping": "f"}
    assert select_route('{"action":"ping"}', ("action",), routes) == "ping"
    assert select_route('{"action":{"x":1}}', ("action",), routes) == "$default"
    assert select_route('{"a":{"b":"ping"}}', ("a", "b"), routes) == "ping"
    http_routes = [HttpRoute.parse("POST /broadcasts"), HttpRoute.parse("GET /broadcasts/{broadcastId}")]
    assert match_http_route(http_routes, "GET", "/broadcasts/b-1") == (
        "GET /broadcasts/{broadcastId}",
        {"broadcastId": "b-1"},
    )
    assert match_http_route(http_routes, "POST", "/broadcasts") == ("POST /broadcasts", None)
    assert match_http_route(http_routes, "DELETE", "/broadcasts/b-1") == ("$default", None)
    assert broadcast_id_of(b'{"type":"broadcast","broadcastId":"b-9","sentAt":1,"data":{}}') == "b-9"
    assert broadcast_id_of(b'{"type": "broadcast", "broadcastId": "b-9"}') == "b-9"
    assert broadcast_id_of(b'{"type":"pong"}') is None


# --------------------------------------------------------------------------------------------------
# Limits: idle timeout, maximum duration, frame size, vanished clients


async def test_idle_timeout_closes_and_disconnects(
    make_gateway: MakeGateway, lam: FakeLambda, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(idle_timeout_seconds=1)
    ws, cid = await connect(http, gw)
    msg = await ws.receive(timeout=WAIT)
    assert msg.type is WSMsgType.CLOSE
    assert msg.data == 1001
    await wait_until(lambda: bool(lam.events_of("fanout-disconnect")), "$disconnect")
    ctx = lam.events_of("fanout-disconnect")[0]["requestContext"]
    assert ctx["connectionId"] == cid
    assert ctx["disconnectStatusCode"] == 1001
    assert ctx["disconnectReason"] == "Going away"


async def test_maximum_duration_closes_an_active_connection(
    make_gateway: MakeGateway, lam: FakeLambda, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(max_connection_seconds=1)
    ws, _ = await connect(http, gw)
    while True:  # stay active: only the maximum duration can end this
        await ws.send_str('{"action":"ping"}')
        msg = await ws.receive(timeout=WAIT)
        if msg.type is not WSMsgType.TEXT:
            break
    assert msg.type is WSMsgType.CLOSE and msg.data == 1001
    await wait_until(lambda: bool(lam.events_of("fanout-disconnect")), "$disconnect")


async def test_oversized_client_frame_closes_with_1009(
    gw: Gateway, lam: FakeLambda, http: aiohttp.ClientSession
) -> None:
    ws, _ = await connect(http, gw)
    await ws.send_str("x" * (128 * 1024 + 1))
    msg = await ws.receive(timeout=WAIT)
    assert msg.type is WSMsgType.CLOSE and msg.data == 1009
    await wait_until(lambda: bool(lam.events_of("fanout-disconnect")), "$disconnect")
    assert lam.events_of("fanout-disconnect")[0]["requestContext"]["disconnectStatusCode"] == 1009
    assert lam.events_of("fanout-default") == []


KILLED_CLIENT = """
import asyncio, os, sys, aiohttp
async def main():
    session = aiohttp.ClientSession()
    ws = await session.ws_connect(sys.argv[1])
    print("connected", flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""


async def test_client_killed_without_close_frame_is_disconnected(gw: Gateway, lam: FakeLambda) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", KILLED_CLIENT, f"{gw.websocket_url}?token=good", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), WAIT)).strip() == b"connected"
        await wait_until(lambda: len(gw.connections) == 1, "the connection")
        (cid,) = gw.connections
    finally:
        proc.kill()
        await proc.wait()
    await wait_until(lambda: bool(lam.events_of("fanout-disconnect")), "$disconnect")
    ctx = lam.events_of("fanout-disconnect")[0]["requestContext"]
    assert ctx["connectionId"] == cid
    assert ctx["disconnectStatusCode"] == 1006
    assert gw.connections == {}


async def test_unresponsive_client_is_dropped_by_heartbeat(
    make_gateway: MakeGateway, lam: FakeLambda
) -> None:
    # A client that completes the handshake and then never reads (so never answers a ping), TCP kept open
    gw = await make_gateway(heartbeat_seconds=0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.websocket_port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /local?token=good HTTP/1.1\r\nHost: 127.0.0.1:{gw.websocket_port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    status = await asyncio.wait_for(reader.readline(), WAIT)
    assert b" 101 " in status
    try:
        await wait_until(lambda: bool(lam.events_of("fanout-disconnect")), "$disconnect of the silent client")
        assert lam.events_of("fanout-disconnect")[0]["requestContext"]["disconnectStatusCode"] == 1006
    finally:
        writer.close()


# --------------------------------------------------------------------------------------------------
# @connections API


async def test_post_get_delete_with_url_encoded_ids(
    gw: Gateway, lam: FakeLambda, http: aiohttp.ClientSession
) -> None:
    ws, cid = await connect(http, gw, headers={"User-Agent": "ua-1"})
    # Ids may hold '+', '/' and '=': force one that does, to prove the path is URL-decoded
    conn = gw.connections.pop(cid)
    cid = "ab+c/d0EFGhIjK=="[:15] + "="
    conn.info.connection_id = cid
    gw.connections[cid] = conn
    url = conn_url(gw, cid)
    assert "%2F" in url and "%2B" in url and "%3D" in url

    credential = "Credential=AKIA/20250101/us-east-1/execute-api/aws4_request"
    sigv4 = {"Authorization": f"AWS4-HMAC-SHA256 {credential}, SignedHeaders=host, Signature=00"}
    async with http.post(url, data=b'{"hello": "world"}', headers=sigv4) as resp:
        assert resp.status == 200
    assert await ws.receive_str(timeout=WAIT) == '{"hello": "world"}'
    async with http.post(url, data=b"\xff\xfe\x00") as resp:
        assert resp.status == 200
    assert await ws.receive_bytes(timeout=WAIT) == b"\xff\xfe\x00"

    encoded_at = url.replace("/@connections/", "/%40connections/")
    async with http.post(encoded_at, data=b"via %40") as resp:
        assert resp.status == 200
    assert await ws.receive_str(timeout=WAIT) == "via %40"
    async with http.get(url) as resp:
        assert resp.status == 200
        info = await resp.json()
    assert info["identity"] == {"sourceIp": "127.0.0.1", "userAgent": "ua-1"}
    assert info["connectedAt"].endswith("Z") and info["lastActiveAt"] >= info["connectedAt"]

    async with http.delete(url) as resp:
        assert resp.status == 204
    msg = await ws.receive(timeout=WAIT)
    assert msg.type is WSMsgType.CLOSE and msg.data == 1000
    await wait_until(lambda: bool(lam.events_of("fanout-disconnect")), "$disconnect")
    assert lam.events_of("fanout-disconnect")[0]["requestContext"]["connectionId"] == cid
    async with http.post(url, data=b"late") as resp:
        assert resp.status == 410


async def test_errors_gone_and_too_large(gw: Gateway, http: aiohttp.ClientSession) -> None:
    url = conn_url(gw, "Tm90VGhlcmUxMjM=")
    for method in ("POST", "GET", "DELETE"):
        async with http.request(method, url, data=b"x") as resp:
            assert resp.status == 410
            assert resp.headers["x-amzn-ErrorType"] == "GoneException"
            assert "message" in await resp.json()
    ws, cid = await connect(http, gw)
    async with http.post(conn_url(gw, cid).replace("/local/", "/prod/"), data=b"x") as resp:
        assert resp.status == 403  # another stage
    async with http.post(conn_url(gw, cid), data=b"x" * (128 * 1024 + 1)) as resp:
        assert resp.status == 413
        assert resp.headers["x-amzn-ErrorType"] == "PayloadTooLargeException"
    async with http.post(conn_url(gw, cid), data=b"x" * (128 * 1024)) as resp:
        assert resp.status == 200
    assert len(await ws.receive_str(timeout=WAIT)) == 128 * 1024
    stats = gw.stats()
    assert stats["posts"] == {"410": 1, "413": 1, "200": 1}
    await ws.close()


async def test_boto3_management_client_speaks_to_it(gw: Gateway, http: aiohttp.ClientSession) -> None:
    import boto3

    ws, cid = await connect(http, gw)

    def calls() -> tuple[Any, str]:
        client = boto3.client(
            "apigatewaymanagementapi",
            endpoint_url=gw.connections_url,
            region_name="us-east-1",
            aws_access_key_id="AKIDLOCAL",
            aws_secret_access_key="local",
        )
        client.post_to_connection(ConnectionId=cid, Data=b"from boto3")
        info = client.get_connection(ConnectionId=cid)
        try:
            client.post_to_connection(ConnectionId="R29uZUdvbmVHb25l", Data=b"x")
        except client.exceptions.GoneException as exc:
            return info, exc.response["Error"]["Code"]
        return info, "no error"

    info, code = await asyncio.to_thread(calls)
    assert await ws.receive_str(timeout=WAIT) == "from boto3"
    assert info["Identity"]["SourceIp"] == "127.0.0.1"
    assert info["ConnectedAt"].year >= 2025
    assert code == "GoneException"
    await ws.close()


async def test_fault_injection_is_seeded_and_changeable(
    make_gateway: MakeGateway, http: aiohttp.ClientSession
) -> None:
    faults = {"rate410": 0.1, "rate429": 0.2, "rate500": 0.05, "seed": 42, "goneCloses": False}
    gw = await make_gateway(faults=faults)
    async with http.post(f"{gw.admin_url}/simulated", json={"connectionIds": ["c1"]}) as resp:
        assert resp.status == 200
    statuses = []
    for _ in range(400):
        async with http.post(conn_url(gw, "c1"), data=b"m") as resp:
            statuses.append(resp.status)
            if resp.status == 429:
                assert resp.headers["x-amzn-ErrorType"] == "LimitExceededException"

    # the same seeded draws, made here
    rng = random.Random(42)
    expected = []
    for _ in range(400):
        r = rng.random()
        expected.append(410 if r < 0.1 else 429 if r < 0.3 else 500 if r < 0.35 else 200)
    assert statuses == expected
    assert {410, 429, 500, 200} <= set(statuses)

    # changed at runtime: no faults, and a gone-closing 410 unregisters the id
    async with http.post(f"{gw.admin_url}/faults", json={"rate410": 0, "rate429": 0, "rate500": 0}) as resp:
        assert resp.status == 200
    async with http.post(conn_url(gw, "c1"), data=b"m") as resp:
        assert resp.status == 200
    async with http.post(f"{gw.admin_url}/faults", json={"rate410": 1.0, "goneCloses": True}) as resp:
        assert (await resp.json())["rate410"] == 1.0
    async with http.post(conn_url(gw, "c1"), data=b"m") as resp:
        assert resp.status == 410
    async with http.post(f"{gw.admin_url}/faults", json={"rate410": 0}) as resp:
        assert resp.status == 200
    async with http.post(conn_url(gw, "c1"), data=b"m") as resp:
        assert resp.status == 410  # really gone now
    async with http.post(f"{gw.admin_url}/faults", json={"rate410": 0.9, "rate429": 0.9}) as resp:
        assert resp.status == 400


async def test_injected_410_closes_a_real_socket(
    make_gateway: MakeGateway, lam: FakeLambda, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(faults={"rate410": 1.0})
    ws, cid = await connect(http, gw)
    async with http.post(conn_url(gw, cid), data=b"m") as resp:
        assert resp.status == 410
    msg = await ws.receive(timeout=WAIT)
    assert msg.type is WSMsgType.CLOSE
    await wait_until(lambda: bool(lam.events_of("fanout-disconnect")), "$disconnect")


# --------------------------------------------------------------------------------------------------
# Simulated connections


def envelope(bid: str) -> bytes:
    return json.dumps({"type": "broadcast", "broadcastId": bid, "sentAt": 1, "data": {"x": 1}}).encode()


async def test_simulated_connections_count_frames_and_duplicates(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    ids = [f"sim{i:04d}+/=" for i in range(300)]
    async with http.post(f"{gw.admin_url}/simulated", json={"connectionIds": ids}) as resp:
        assert (await resp.json()) == {"registered": 300, "new": 300}

    async def post(cid: str, body: bytes) -> int:
        async with http.post(conn_url(gw, cid), data=body) as resp:
            return resp.status

    assert set(await asyncio.gather(*(post(c, envelope("b1")) for c in ids))) == {200}
    assert set(await asyncio.gather(*(post(c, envelope("b1")) for c in ids[:7]))) == {200}
    assert set(await asyncio.gather(*(post(c, envelope("b2")) for c in ids[:5]))) == {200}
    assert await post(ids[0], b"not an envelope") == 200
    assert await post("unregistered", envelope("b1")) == 410

    async with http.get(f"{gw.admin_url}/simulated/stats") as resp:
        stats = await resp.json()
    assert stats["registered"] == 300
    assert stats["frames"] == 300 + 7 + 5 + 1
    assert stats["idsWithFrames"] == 300
    assert stats["idsWithMultipleFrames"] == 7
    assert stats["unattributedFrames"] == 1
    assert stats["broadcasts"] == {
        "b1": {"frames": 307, "ids": 300, "duplicates": 7},
        "b2": {"frames": 5, "ids": 5, "duplicates": 0},
    }

    # GET and DELETE work on simulated ids too; DELETE of all clears
    async with http.get(conn_url(gw, ids[1])) as resp:
        assert resp.status == 200
    async with http.delete(conn_url(gw, ids[1])) as resp:
        assert resp.status == 204
    assert await post(ids[1], envelope("b3")) == 410
    async with http.delete(f"{gw.admin_url}/simulated") as resp:
        assert resp.status == 204
    async with http.get(f"{gw.admin_url}/simulated/stats") as resp:
        assert (await resp.json())["registered"] == 0
    assert await post(ids[2], envelope("b3")) == 410

    async with http.get(f"{gw.admin_url}/stats") as resp:
        stats = await resp.json()
    assert stats["posts"]["200"] == 313 and stats["posts"]["410"] == 3
    assert stats["connectionsOpen"] == 0


async def test_registering_many_simulated_ids_in_one_request(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    ids = [f"L0SM9cOFvH{i:06d}=" for i in range(120_000)]  # a ~2.6 MB body
    async with http.post(f"{gw.admin_url}/simulated", json={"connectionIds": ids}) as resp:
        assert resp.status == 200
        assert await resp.json() == {"registered": 120_000, "new": 120_000}
    async with http.post(conn_url(gw, ids[-1]), data=envelope("b1")) as resp:
        assert resp.status == 200


async def test_admin_rejects_bad_input(gw: Gateway, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{gw.admin_url}/simulated", json={"connectionIds": "x"}) as resp:
        assert resp.status == 400
    async with http.get(f"{gw.admin_url}/nothing") as resp:
        assert resp.status == 404


# --------------------------------------------------------------------------------------------------
# Operator HTTP API


async def test_operator_api_requires_the_bearer_token(
    gw: Gateway, lam: FakeLambda, http: aiohttp.ClientSession
) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        async with http.post(f"{gw.http_api_url}/broadcasts", json={"message": 1}, headers=headers) as resp:
            assert resp.status == 401
    assert lam.events_of("fanout-operator-api") == []


async def test_operator_api_event_and_response_mapping(
    gw: Gateway, lam: FakeLambda, http: aiohttp.ClientSession
) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}", "X-Mixed-Case": "v", "Idempotency-Key": "k1"}
    url = f"{gw.http_api_url}/broadcasts?a=1&a=2"
    async with http.post(url, json={"message": "hi"}, headers=auth) as resp:
        assert resp.status == 202
        assert resp.headers["X-Trace"] == "t1"
        assert resp.headers["Set-Cookie"].startswith("a=1")
        assert await resp.json() == {"broadcastId": "b-1"}
    async with http.get(f"{gw.http_api_url}/broadcasts/b-7", headers=auth) as resp:
        assert resp.status == 202
    async with http.put(f"{gw.http_api_url}/other", data=b"\xff\x00", headers=auth) as resp:
        assert resp.status == 202

    post, get, other = lam.events_of("fanout-operator-api")
    for event in (post, get, other):
        APIGatewayProxyEventV2Model.model_validate(event)
        iam = event["requestContext"]["authorizer"]["iam"]
        assert iam["accountId"] == "000000000000" and iam["userArn"].startswith("arn:aws:iam::")
        assert event["version"] == "2.0" and event["requestContext"]["stage"] == "$default"
    assert post["routeKey"] == "POST /broadcasts" == post["requestContext"]["routeKey"]
    assert post["rawPath"] == "/broadcasts" and post["rawQueryString"] == "a=1&a=2"
    assert post["queryStringParameters"] == {"a": "1,2"}
    assert post["headers"]["x-mixed-case"] == "v" and post["headers"]["idempotency-key"] == "k1"
    assert json.loads(post["body"]) == {"message": "hi"} and post["isBase64Encoded"] is False
    assert post["requestContext"]["http"]["method"] == "POST"
    assert get["routeKey"] == "GET /broadcasts/{broadcastId}"
    assert get["pathParameters"] == {"broadcastId": "b-7"}
    assert other["routeKey"] == "$default"
    assert other["isBase64Encoded"] is True and base64.b64decode(other["body"]) == b"\xff\x00"


async def test_operator_api_function_error_is_500(
    gw: Gateway, lam: FakeLambda, http: aiohttp.ClientSession
) -> None:
    def boom(event: dict[str, Any]) -> None:
        raise RuntimeError("x")

    lam.functions["fanout-operator-api"] = boom
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with http.get(f"{gw.http_api_url}/broadcasts/x", headers=auth) as resp:
        assert resp.status == 500


# --------------------------------------------------------------------------------------------------
# CLI


async def test_cli_ready_line_and_clean_stop(lam: FakeLambda, tmp_path: Path) -> None:
    config = tmp_path / "gateway.json"
    config.write_text(json.dumps({"websocketPort": 0, "httpPort": 0, "lambdaUrl": lam.url, "stage": "dev"}))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "infra.local.gateway",
        "--config",
        str(config),
        "--operator-token",
        TOKEN,
        "--rate-429",
        "0.5",
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        ready = json.loads(await asyncio.wait_for(proc.stderr.readline(), WAIT))
        assert ready["message"] == "gateway ready"
        assert ready["websocketUrl"].endswith("/dev")
        assert "operatorToken" not in ready
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{ready['adminUrl']}/faults") as resp:
                assert (await resp.json())["rate429"] == 0.5
            ws = await http.ws_connect(f"{ready['websocketUrl']}?token=good")
            proc.send_signal(signal.SIGTERM)
            msg = await ws.receive(timeout=WAIT)
            assert msg.type is WSMsgType.CLOSE and msg.data == 1001
            assert await asyncio.wait_for(proc.wait(), WAIT) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    (disc,) = lam.events_of("fanout-disconnect")
    assert disc["requestContext"]["disconnectStatusCode"] == 1001


def test_config_json_round_trip_and_validation() -> None:
    cfg = GatewayConfig.model_validate(
        {"websocketPort": 1, "operatorToken": "t", "faults": {"latencyMs": 3, "rate410": 0.5}}
    )
    again = GatewayConfig.model_validate_json(cfg.dump_json())
    assert again == cfg
    assert cfg.functions.connect == "fanout-connect" and cfg.idle_timeout_seconds == 600
    with pytest.raises(ValueError):
        FaultConfig(rate410=0.6, rate500=0.6)
    with pytest.raises(ValueError):
        GatewayConfig(route_selection_expression="$request.header.x")


# --------------------------------------------------------------------------------------------------
# With the project's real handlers


async def test_real_authorizer_and_default_handlers_behind_the_gateway(
    make_gateway: MakeGateway,
    lam: FakeLambda,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    secrets_manager: str,
) -> None:
    from fanout.settings import load
    from fanout.tokens import issue_token
    from handlers import authorizer, default
    from tests.events import LambdaContextStub
    from tests.secrets import use_token_secret

    use_token_secret(monkeypatch, "gateway-test-secret", secrets_manager)
    try:
        lam.functions["fanout-authorizer"] = lambda e: authorizer.handler(
            e, LambdaContextStub("fanout-authorizer")
        )
        lam.functions["fanout-default"] = lambda e: default.handler(e, LambdaContextStub("fanout-default"))
        gw = await make_gateway()
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{gw.websocket_url}?token=forged")
        assert refused.value.status == 401
        assert lam.events_of("fanout-connect") == []

        token = issue_token("gateway-test-secret", "alice", 60, channels=["room:*"], publish=["$user"])
        ws, _ = await connect(http, gw, token=token)
        # the authorizer's context, rights included (JSON strings), reaches $connect and later events
        rights = {"userId": "alice", "channels": '["room:*"]', "publish": '["$user"]'}
        context = lam.events_of("fanout-connect")[0]["requestContext"]["authorizer"]
        assert {k: context[k] for k in rights} == rights
        await ws.send_str('{"action":"ping"}')
        assert json.loads(await ws.receive_str(timeout=WAIT)) == {"type": "pong"}
        later = lam.events_of("fanout-default")[-1]["requestContext"]["authorizer"]
        assert {k: later[k] for k in rights} == rights
        await ws.send_str("nonsense")
        assert json.loads(await ws.receive_str(timeout=WAIT))["type"] == "error"
        await ws.close()
    finally:
        load.cache_clear()
        authorizer.deps.cache_clear()
