"""Channels from the client's side through the real handlers, against DynamoDB Local behind the strict
layer: ``?channels=`` at $connect, subscribe and unsubscribe on $default, $disconnect, the limit, and
concurrent subscribes of one connection (TransactionConflict retried).

Every client goes through the authorizer first, as API Gateway does, and its later events carry the
authorizer's context and its connectedAt, as API Gateway's do.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import aioboto3
import boto3
import pytest

from fanout.channels import BUCKETS, bucket_of, member_key
from fanout.settings import Settings, load
from fanout.tokens import issue_token
from infra.local.ddb_strict import StrictConfig, StrictDynamoDBThread
from infra.local.resources import create_tables
from tests.events import LambdaContextStub
from tests.secrets import use_token_secret

SECRET = "subscriptions-secret-" + "0123456789abcdef" * 3
API = "api7654321"
STAGE = "dev"
LIMIT = 4
LONG_HOLD_MS = 60_000.0  # ended by release_holds() once the contending transaction was refused


def _reset_caches() -> None:
    from handlers import authorizer, connect, default, disconnect

    load.cache_clear()
    for module in (authorizer, connect, default, disconnect):
        module.deps.cache_clear()


@dataclass
class Stack:
    endpoint: str
    dynamodb: Any
    settings: Settings


def _env(endpoint: str, prefix: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL_DYNAMODB": endpoint,
        "FANOUT_CONNECTIONS_TABLE": f"{prefix}-connections",
        "FANOUT_PARTITIONS_TABLE": f"{prefix}-partitions",
        "FANOUT_BROADCASTS_TABLE": f"{prefix}-broadcasts",
        "FANOUT_IDEMPOTENCY_TABLE": f"{prefix}-idempotency",
        "FANOUT_SUBSCRIPTIONS_TABLE": f"{prefix}-subscriptions",
        "FANOUT_CHANNELS_TABLE": f"{prefix}-channels",
        # $default also sends client messages (publish, sendmessage): its settings name these too
        "FANOUT_RATE_LIMITS_TABLE": f"{prefix}-rate-limits",
        "FANOUT_SWARM_FUNCTION_NAME": f"{prefix}-swarm",
        "FANOUT_PARTITION_COUNT": "4",
        "FANOUT_MAX_SUBSCRIPTIONS": str(LIMIT),
    }


@pytest.fixture(scope="module")
def stack(dynamodb_local: str, secrets_manager: str) -> Iterator[Stack]:
    with pytest.MonkeyPatch.context() as mp:
        for key, value in _env(dynamodb_local, f"sub{uuid.uuid4().hex[:8]}").items():
            mp.setenv(key, value)
        _reset_caches()
        use_token_secret(mp, SECRET, secrets_manager)
        settings = load(Settings)
        dynamodb = boto3.client("dynamodb", endpoint_url=dynamodb_local, region_name="us-east-1")
        create_tables(dynamodb, settings)
        yield Stack(dynamodb_local, dynamodb, settings)
    _reset_caches()


@pytest.fixture
def limit(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Set FANOUT_MAX_SUBSCRIPTIONS for one test (the functions' settings are rebuilt)."""

    def set_limit(value: int) -> None:
        monkeypatch.setenv("FANOUT_MAX_SUBSCRIPTIONS", str(value))
        _reset_caches()

    yield set_limit
    monkeypatch.undo()
    _reset_caches()


# -- API Gateway, as the handlers see it ------------------------------------------------------------
def _request_context(client: Client, route: str, event_type: str, **extra: Any) -> dict[str, Any]:
    now = time.time()
    return {
        "routeKey": route,
        "eventType": event_type,
        "extendedRequestId": uuid.uuid4().hex,
        "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
        "messageDirection": "IN",
        "stage": STAGE,
        "connectedAt": client.connected_at_ms,
        "requestTimeEpoch": int(now * 1000),
        "identity": {"sourceIp": "203.0.113.9", "userAgent": "pytest"},
        "requestId": uuid.uuid4().hex,
        "domainName": f"{API}.execute-api.us-east-1.amazonaws.com",
        "connectionId": client.connection_id,
        "apiId": API,
        **({"authorizer": client.authorizer} if client.authorizer is not None else {}),
        **extra,
    }


@dataclass
class Client:
    """One WebSocket client: its connection id, when it connected and its authorizer context."""

    user: str
    channels: list[str] | None = None
    connection_id: str = field(default_factory=lambda: f"{uuid.uuid4().hex[:15]}=")
    connected_at_ms: int = field(default_factory=lambda: int(time.time() * 1000) - 1234)
    authorizer: dict[str, Any] | None = None

    def connect(self, query: str | None = None) -> int:
        """Authorizer, then $connect if it allowed (API Gateway's order); the $connect status."""
        from handlers import authorizer, connect

        token = issue_token(SECRET, self.user, channels=self.channels)
        params = {"token": token} | ({"channels": query} if query is not None else {})
        auth_event = {
            "type": "REQUEST",
            "methodArn": f"arn:aws:execute-api:us-east-1:123456789012:{API}/{STAGE}/$connect",
            "headers": {"Host": f"{API}.execute-api.us-east-1.amazonaws.com"},
            "queryStringParameters": params,
            "requestContext": _request_context(self, "$connect", "CONNECT"),
        }
        policy = authorizer.handler(auth_event, LambdaContextStub("fanout-authorizer"))
        self.authorizer = {**policy["context"], "principalId": policy["principalId"]}
        event = {
            "headers": {"Host": f"{API}.execute-api.us-east-1.amazonaws.com"},
            "multiValueHeaders": {"Host": [f"{API}.execute-api.us-east-1.amazonaws.com"]},
            "queryStringParameters": params,
            "multiValueQueryStringParameters": {k: [v] for k, v in params.items()},
            "requestContext": _request_context(self, "$connect", "CONNECT"),
            "isBase64Encoded": False,
        }
        return int(connect.handler(event, LambdaContextStub("fanout-connect"))["statusCode"])

    def send(self, message: dict[str, Any] | str) -> dict[str, Any]:
        from handlers import default

        body = message if isinstance(message, str) else json.dumps(message)
        event = {
            "requestContext": _request_context(self, "$default", "MESSAGE", messageId=uuid.uuid4().hex),
            "body": body,
            "isBase64Encoded": False,
        }
        answer = default.handler(event, LambdaContextStub("fanout-default"))
        assert answer["statusCode"] == 200
        frame: dict[str, Any] = json.loads(answer["body"])
        return frame

    def subscribe(self, channel: str) -> dict[str, Any]:
        return self.send({"action": "subscribe", "channel": channel})

    def unsubscribe(self, channel: str) -> dict[str, Any]:
        return self.send({"action": "unsubscribe", "channel": channel})

    def disconnect(self) -> int:
        from handlers import disconnect

        event = {
            "headers": {"Host": f"{API}.execute-api.us-east-1.amazonaws.com"},
            "multiValueHeaders": {"Host": [f"{API}.execute-api.us-east-1.amazonaws.com"]},
            "requestContext": _request_context(
                self, "$disconnect", "DISCONNECT", disconnectStatusCode=1000, disconnectReason="bye"
            ),
            "isBase64Encoded": False,
        }
        return int(disconnect.handler(event, LambdaContextStub("fanout-disconnect"))["statusCode"])


# -- reading the tables -----------------------------------------------------------------------------
def connection_row(stack: Stack, client: Client) -> dict[str, Any] | None:
    out = stack.dynamodb.get_item(
        TableName=stack.settings.connections_table,
        Key={"connectionId": {"S": client.connection_id}},
        ConsistentRead=True,
    )
    item: dict[str, Any] | None = out.get("Item")
    return item


def listed(stack: Stack, client: Client) -> set[str]:
    """The channels the connection row lists."""
    row = connection_row(stack, client)
    return set(row["channels"]["SS"]) if row and "channels" in row else set()


def subscription_rows(stack: Stack, client: Client) -> dict[str, dict[str, Any]]:
    """The connection's subscription rows, by channel (a scan: the tests' tables are small)."""
    rows: dict[str, dict[str, Any]] = {}
    kwargs: dict[str, Any] = {"TableName": stack.settings.subscriptions_table, "ConsistentRead": True}
    while True:
        page = stack.dynamodb.scan(**kwargs)
        for item in page["Items"]:
            if item["connectionId"]["S"] == client.connection_id:
                rows[item["channel"]["S"]] = item
        if "LastEvaluatedKey" not in page:
            return rows
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def expected_expiry(stack: Stack, client: Client) -> int:
    return client.connected_at_ms // 1000 + stack.settings.connection_ttl_seconds


def assert_consistent(stack: Stack, client: Client) -> None:
    """The connection row's set and the subscription rows agree, each row whole."""
    rows = subscription_rows(stack, client)
    assert set(rows) == listed(stack, client)
    row = connection_row(stack, client)
    for channel, item in rows.items():
        assert item == {
            "channel": {"S": channel},
            "member": {"S": member_key(client.connection_id)},
            "connectionId": {"S": client.connection_id},
            "userId": {"S": client.user},
            "expiresAt": row["expiresAt"] if row else {"N": str(expected_expiry(stack, client))},
        }


# -- $connect ---------------------------------------------------------------------------------------
def test_connect_with_allowed_channels_writes_their_rows_and_lists_them(stack: Stack) -> None:
    # Given a token allowing the room:* prefix and the exact channel news
    client = Client("alice", channels=["room:*", "news"])

    # When it connects with ?channels=room:1,news (a repeat and blanks ignored)
    assert client.connect(" room:1,news,,room:1 ") == 200

    # Then the connection row lists both, and each has its row expiring with the connection
    row = connection_row(stack, client)
    assert row is not None
    assert set(row["channels"]["SS"]) == {"room:1", "news"}
    assert row["expiresAt"] == {"N": str(expected_expiry(stack, client))}
    assert set(subscription_rows(stack, client)) == {"room:1", "news"}
    assert_consistent(stack, client)


def test_connect_without_channels_lists_none(stack: Stack) -> None:
    client = Client("bob", channels=["room:*"])
    assert client.connect() == 200
    row = connection_row(stack, client)
    assert row is not None and "channels" not in row
    assert subscription_rows(stack, client) == {}


@pytest.mark.parametrize(
    ("rights", "query", "status"),
    [
        (None, "room:1", 403),  # no claim, no right
        (["room:*"], "room:1,news", 403),
        (["news"], "newsroom", 403),  # an exact name is not a prefix
        (["room:*"], "room:1,bad name", 400),
        (["*"], "x" * 129, 400),
        (["*"], "ok,caf\u00e9", 400),
        (["*"], ",".join(f"c{i}" for i in range(LIMIT + 1)), 400),
    ],
    ids=["no-claim", "one-forbidden", "exact-only", "invalid-name", "too-long", "non-ascii", "too-many"],
)
def test_a_refused_connect_writes_no_row_at_all(
    stack: Stack, rights: list[str] | None, query: str, status: int
) -> None:
    client = Client("mallory", channels=rights)
    assert client.connect(query) == status
    assert connection_row(stack, client) is None
    assert subscription_rows(stack, client) == {}


def test_connect_at_the_limit_is_allowed(stack: Stack) -> None:
    client = Client("carol", channels=["*"])
    assert client.connect(",".join(f"c{i}" for i in range(LIMIT))) == 200
    assert listed(stack, client) == {f"c{i}" for i in range(LIMIT)}
    assert_consistent(stack, client)


# -- $default ---------------------------------------------------------------------------------------
def test_subscribe_and_unsubscribe_at_run_time(stack: Stack) -> None:
    # Given a connection without channels
    client = Client("dave", channels=["room:*"])
    assert client.connect() == 200

    # When it subscribes to room:7
    assert client.subscribe("room:7") == {"type": "subscribed", "channel": "room:7"}

    # Then the row is written with the connection's expiry, and the connection row lists it
    assert listed(stack, client) == {"room:7"}
    assert subscription_rows(stack, client)["room:7"]["expiresAt"] == {
        "N": str(expected_expiry(stack, client))
    }
    assert_consistent(stack, client)

    # When it subscribes again: the same answer, the same single row
    assert client.subscribe("room:7") == {"type": "subscribed", "channel": "room:7"}
    assert set(subscription_rows(stack, client)) == {"room:7"}
    assert_consistent(stack, client)

    # When it unsubscribes, twice (idempotent), and from a channel it never had
    for channel in ("room:7", "room:7", "room:8"):
        assert client.unsubscribe(channel) == {"type": "unsubscribed", "channel": channel}
    assert subscription_rows(stack, client) == {}
    row = connection_row(stack, client)
    assert row is not None and "channels" not in row  # DynamoDB drops an emptied set


def test_subscribe_refusals_are_error_frames_and_write_nothing(stack: Stack) -> None:
    client = Client("erin", channels=["room:*"])
    assert client.connect() == 200
    forbidden = client.subscribe("news")
    assert forbidden["type"] == "error" and forbidden["action"] == "subscribe"
    assert forbidden["code"] == "forbidden" and forbidden["error"] == forbidden["message"]
    invalid = client.subscribe("room 1")
    assert (invalid["code"], invalid["action"]) == ("invalid_channel", "subscribe")
    assert "' '" in invalid["message"]  # why, from channel_problem
    assert client.send({"action": "subscribe"})["code"] == "invalid_channel"
    assert subscription_rows(stack, client) == {} and listed(stack, client) == set()


def test_too_many_subscriptions_at_the_limit(stack: Stack) -> None:
    # Given a connection subscribed to LIMIT channels
    client = Client("frank", channels=["*"])
    assert client.connect(",".join(f"t{i}" for i in range(LIMIT - 1))) == 200
    assert client.subscribe(f"t{LIMIT - 1}")["type"] == "subscribed"

    # When it subscribes to one more
    refused = client.subscribe("one-more")

    # Then it is refused with too_many_subscriptions, and nothing changed
    assert refused["type"] == "error" and refused["code"] == "too_many_subscriptions"
    assert refused["action"] == "subscribe" and str(LIMIT) in refused["message"]
    assert listed(stack, client) == {f"t{i}" for i in range(LIMIT)}
    assert_consistent(stack, client)

    # And a channel it already has is still answered subscribed; after an unsubscribe there is room
    assert client.subscribe("t0")["type"] == "subscribed"
    assert client.unsubscribe("t1")["type"] == "unsubscribed"
    assert client.subscribe("one-more") == {"type": "subscribed", "channel": "one-more"}
    assert_consistent(stack, client)


def test_a_connection_cannot_change_another_connections_rows(stack: Stack) -> None:
    # Given two connections of different users on room:1
    alice, mallory = Client("alice", channels=["room:*"]), Client("mallory", channels=["room:*"])
    assert alice.connect("room:1") == 200
    assert mallory.connect("room:1") == 200

    # When mallory names alice's connection (and user) in frames
    for action in ("unsubscribe", "subscribe"):
        frame = {
            "action": action,
            "channel": "room:2",
            "connectionId": alice.connection_id,
            "userId": "alice",
        }
        assert mallory.send(frame)["type"] == f"{action}d"
    assert (
        mallory.send({"action": "unsubscribe", "channel": "room:1", "connectionId": alice.connection_id})[
            "type"
        ]
        == "unsubscribed"
    )

    # Then only mallory's own rows changed
    assert listed(stack, alice) == {"room:1"}
    assert_consistent(stack, alice)
    assert listed(stack, mallory) == {"room:2"}
    assert set(subscription_rows(stack, mallory)) == {"room:2"}
    assert subscription_rows(stack, mallory)["room:2"]["userId"] == {"S": "mallory"}


def test_a_subscribe_without_a_connection_row_is_refused(stack: Stack) -> None:
    ghost = Client("ghost", channels=["*"])
    assert ghost.connect() == 200
    stack.dynamodb.delete_item(
        TableName=stack.settings.connections_table, Key={"connectionId": {"S": ghost.connection_id}}
    )
    refused = ghost.subscribe("anything")
    assert (refused["type"], refused["code"]) == ("error", "not_connected")
    assert connection_row(stack, ghost) is None  # the update never creates a row
    assert subscription_rows(stack, ghost) == {}
    assert ghost.unsubscribe("anything") == {"type": "unsubscribed", "channel": "anything"}


# -- $disconnect ------------------------------------------------------------------------------------
def test_disconnect_removes_every_subscription_row(stack: Stack, limit: Any) -> None:
    # Given a connection on 60 channels (more than two BatchWriteItem calls), one added at run time
    limit(100)
    client = Client("gina", channels=["*"])
    names = [f"d{i}" for i in range(59)]
    assert client.connect(",".join(names)) == 200
    assert client.subscribe("late")["type"] == "subscribed"
    other = Client("hal", channels=["*"])
    assert other.connect("d0") == 200
    assert len(subscription_rows(stack, client)) == 60

    # When it disconnects
    assert client.disconnect() == 200

    # Then no row of it is left; the other connection's rows are untouched
    assert connection_row(stack, client) is None
    assert subscription_rows(stack, client) == {}
    assert set(subscription_rows(stack, other)) == {"d0"}
    assert client.disconnect() == 200  # again: nothing left to do


# -- concurrency ------------------------------------------------------------------------------------
def test_concurrent_subscribes_of_one_connection_end_consistent(stack: Stack, limit: Any) -> None:
    # Given one connection and a limit of 3
    limit(3)
    client = Client("ivan", channels=["*"])
    assert client.connect() == 200

    # When 8 threads subscribe it to 8 channels at once (their transactions contend on its row)
    start = threading.Barrier(8)

    def subscribe(i: int) -> dict[str, Any]:
        start.wait()
        return client.subscribe(f"k{i}")

    with ThreadPoolExecutor(max_workers=8) as pool:
        frames = list(pool.map(subscribe, range(8)))

    # Then exactly 3 were subscribed, the others refused at the limit, and the set and rows agree
    codes = [f.get("code", f["type"]) for f in frames]
    assert codes.count("subscribed") == 3, frames
    assert codes.count("too_many_subscriptions") == 5, frames
    assert listed(stack, client) == {f"k{i}" for i, f in enumerate(frames) if f["type"] == "subscribed"}
    assert_consistent(stack, client)


def test_a_subscribe_that_conflicts_is_retried_until_it_lands(
    dynamodb_local_raw: str, secrets_manager: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a strict layer that holds each transaction until released, and the functions behind it
    with StrictDynamoDBThread(
        StrictConfig(upstream=dynamodb_local_raw, transaction_hold_ms=LONG_HOLD_MS)
    ) as proxy:
        for key, value in _env(proxy.endpoint, f"cf{uuid.uuid4().hex[:8]}").items():
            monkeypatch.setenv(key, value)
        _reset_caches()
        use_token_secret(monkeypatch, SECRET, secrets_manager)
        settings = load(Settings)
        ddb = boto3.client("dynamodb", endpoint_url=proxy.endpoint, region_name="us-east-1")
        create_tables(ddb, settings)
        stack = Stack(proxy.endpoint, ddb, settings)
        client = Client("judy", channels=["*"])
        try:
            assert client.connect() == 200
            with ThreadPoolExecutor(max_workers=2) as pool:
                # When a first subscribe's transaction holds the connection row
                first = pool.submit(client.subscribe, "a")
                proxy.wait_held(1)
                # And a second subscribe of the same connection is refused with TransactionConflict
                second = pool.submit(client.subscribe, "b")
                proxy.wait_for(lambda stats: stats["transactionsCancelled"] >= 1)
                proxy.release_holds()
                # Then both land, the second on a retry once the row is free (held in turn)
                assert first.result(timeout=30) == {"type": "subscribed", "channel": "a"}
                proxy.wait_held(1)
                proxy.release_holds()
                assert second.result(timeout=30) == {"type": "subscribed", "channel": "b"}
            assert listed(stack, client) == {"a", "b"}
            assert_consistent(stack, client)
        finally:
            proxy.release_holds()
            _reset_caches()


# -- the pipeline's side of the adapter --------------------------------------------------------------
def test_member_ids_reads_a_channel_by_bucket_range_and_remove_deletes_rows(stack: Stack, limit: Any) -> None:
    from fanout.adapters.subscriptions import AsyncSubscriptionsTable

    # Given 40 connections on one channel, two of them also on a second
    limit(10)
    channel = f"big-{uuid.uuid4().hex[:6]}"
    clients = [Client(f"u{i}", channels=["*"]) for i in range(40)]
    for c in clients:
        assert c.connect(channel) == 200
    assert clients[0].subscribe(f"{channel}-2")["type"] == "subscribed"
    assert clients[1].subscribe(f"{channel}-2")["type"] == "subscribed"
    ids = {c.connection_id for c in clients}

    async def run() -> None:
        session = aioboto3.Session()
        async with session.client("dynamodb", endpoint_url=stack.endpoint, region_name="us-east-1") as ddb:
            table = AsyncSubscriptionsTable(ddb, stack.settings.subscriptions_table)
            # When the whole key range and two halves are read
            everyone = await table.member_ids(channel, 0, BUCKETS - 1)
            low = await table.member_ids(channel, 0, 499)
            high = await table.member_ids(channel, 500, BUCKETS - 1)
            # Then every member is read once, each half holding the ids of its buckets
            assert sorted(everyone) == sorted(ids)
            assert sorted(low + high) == sorted(ids)
            assert all(bucket_of(cid) < 500 for cid in low)
            # When the rows of 30 connections (and one on the second channel) are removed
            gone = {c.connection_id: [channel] for c in clients[:30]}
            gone[clients[0].connection_id].append(f"{channel}-2")
            await table.remove(gone)
            # Then the others are left
            left = await table.member_ids(channel, 0, BUCKETS - 1)
            assert sorted(left) == sorted(c.connection_id for c in clients[30:])
            assert await table.member_ids(f"{channel}-2", 0, BUCKETS - 1) == [clients[1].connection_id]

    asyncio.run(run())
