"""Metrics are contracts: every engine metric the CDK dashboard and alarms read is emitted by the code
path it describes, under the same namespace and dimensions.

The metrics are read from the synthesized template (the dashboard body and the alarms), so whatever
the monitoring construct graphs or alarms on is covered without a list here. The paths run through
the real handlers in-process against DynamoDB Local, the project's SQS server and Secrets Manager
(moto's server); their EMF output (Powertools Metrics prints it to stdout, which CloudWatch Logs turns
into metrics) is captured and read back.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fanout.channels import member_key
from fanout.settings import load
from fanout.tokens import issue_token
from tests.events import LambdaContextStub
from tests.integration.pipeline_harness import Pipeline, pipeline
from tests.secrets import use_token_secret

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

SECRET = "metrics-contract-secret-0123456789abcdef"
API = "abc123"
STAGE = "live"
HOST = f"{API}.execute-api.us-east-1.amazonaws.com"


@dataclass(frozen=True)
class MetricRef:
    """One metric as CloudWatch names it: namespace, name and the exact dimension set."""

    namespace: str
    name: str
    dimensions: tuple[tuple[str, str], ...]
    used_by: str

    def __str__(self) -> str:
        dims = ",".join(f"{k}={v}" for k, v in self.dimensions)
        return f"{self.namespace}/{self.name}[{dims}] ({self.used_by})"


def _dashboard_body(value: Any) -> str:
    """The dashboard JSON with CloudFormation tokens (region, queue names) replaced by a placeholder."""
    if isinstance(value, str):
        return value
    parts = value["Fn::Join"][1]
    return "".join(p if isinstance(p, str) else "TOKEN" for p in parts)


def _dims(values: list[Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((str(values[i]), str(values[i + 1])) for i in range(0, len(values) - 1, 2)))


def engine_metrics(template: dict[str, Any]) -> set[MetricRef]:
    """Every metric outside the AWS/ namespaces that an alarm or a dashboard widget of `template` uses."""
    out: set[MetricRef] = set()
    for rid, res in template["Resources"].items():
        props = res.get("Properties", {})
        if res["Type"] == "AWS::CloudWatch::Alarm":
            stats = [props] if "MetricName" in props else []
            stats += [m["MetricStat"]["Metric"] for m in props.get("Metrics", []) if "MetricStat" in m]
            for s in stats:
                dims = tuple(sorted((d["Name"], str(d["Value"])) for d in s.get("Dimensions", [])))
                out.add(MetricRef(s["Namespace"], s["MetricName"], dims, f"alarm {rid}"))
        elif res["Type"] == "AWS::CloudWatch::Dashboard":
            body = json.loads(_dashboard_body(props["DashboardBody"]))
            for widget in body["widgets"]:
                for row in widget.get("properties", {}).get("metrics", []):
                    if row and isinstance(row[0], str):  # [namespace, name, dim, value, ..., {options}]
                        fields = [v for v in row if not isinstance(v, dict)]
                        title = widget["properties"].get("title", "")
                        out.add(MetricRef(fields[0], fields[1], _dims(fields[2:]), f"dashboard {title!r}"))
    return {m for m in out if not m.namespace.startswith("AWS/")}


def emitted(stdout: str) -> set[tuple[str, str, tuple[tuple[str, str], ...]]]:
    """(namespace, name, dimensions) of every metric in the EMF documents printed to stdout with a value
    above zero (a counter always published as 0 says nothing about its path)."""
    seen: set[tuple[str, str, tuple[tuple[str, str], ...]]] = set()
    for line in stdout.splitlines():
        if not line.startswith("{") or '"_aws"' not in line:
            continue
        doc = json.loads(line)
        for directive in doc["_aws"]["CloudWatchMetrics"]:
            for dim_set in directive["Dimensions"]:
                dims = tuple(sorted((d, str(doc[d])) for d in dim_set))
                for metric in directive["Metrics"]:
                    value = doc[metric["Name"]]
                    if any(v > 0 for v in (value if isinstance(value, list) else [value])):
                        seen.add((directive["Namespace"], metric["Name"], dims))
    return seen


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    """The main stack's template, synthesized as `make synth` does (no bundling)."""
    from infra.cdk.app import build_app
    from tests.infra.conftest import CONTEXT

    with tempfile.TemporaryDirectory() as outdir:
        app = build_app(CONTEXT, outdir=outdir)
        # A cdk-nag finding fails validation after the template is written.
        with contextlib.suppress(RuntimeError):
            app.synth()
        return dict(json.loads((Path(outdir) / "Fanout.template.json").read_text()))


@pytest.fixture
def held_dynamodb(dynamodb_local_raw: str) -> Iterator[str]:
    """The strict layer with transactions held until released (POST /_strict/release): the engine's
    single-item writes then meet one deterministically, as they may on AWS."""
    from infra.local.ddb_strict import strict_endpoint

    with strict_endpoint(dynamodb_local_raw, transaction_hold_ms=60_000) as endpoint:
        yield endpoint


@pytest.fixture
def pipe(
    held_dynamodb: str, local_sqs: str, secrets_manager: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Pipeline]:
    import handlers.channel_counter
    import handlers.channel_reconciler
    import handlers.connect
    import handlers.disconnect
    import handlers.reconciler

    # max_post_attempts=1: an id that keeps failing is dead-lettered (and counted Failed) at once.
    with pipeline(
        held_dynamodb,
        local_sqs,
        monkeypatch,
        partition_count=4,
        shard_count=1,
        max_post_attempts=1,
        sweep_after_seconds=0.001,
        sweep_attempts=1,
    ) as p:
        use_token_secret(monkeypatch, SECRET, secrets_manager)
        monkeypatch.setenv("FANOUT_RECONCILE_QUIET_SECONDS", "0")
        caches = (
            handlers.connect.deps,
            handlers.disconnect.deps,
            handlers.reconciler.deps,
            handlers.channel_counter.deps,
            handlers.channel_reconciler.deps,
        )
        for cache in caches:
            cache.cache_clear()
        yield p
        for cache in caches:
            cache.cache_clear()
        load.cache_clear()


def _ws_context(connection_id: str, route: str, event_type: str, **extra: Any) -> dict[str, Any]:
    now = int(time.time() * 1000)
    return {
        "routeKey": route,
        "eventType": event_type,
        "extendedRequestId": uuid.uuid4().hex,
        "requestTime": "01/Dec/2026:10:00:00 +0000",
        "messageDirection": "IN",
        "stage": STAGE,
        "connectedAt": now,
        "requestTimeEpoch": now,
        "identity": {"sourceIp": "203.0.113.7", "userAgent": "metrics-contract"},
        "requestId": uuid.uuid4().hex,
        "domainName": HOST,
        "connectionId": connection_id,
        "apiId": API,
        **extra,
    }


def run_chat_paths(pipe: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    """$default's messages to others: a publish, a direct message, a forbidden send, a rate-limited one."""
    import handlers.default
    from fanout.protocol import authorizer_context

    # a bucket of one token that does not refill within the test: the second message is refused
    monkeypatch.setenv("FANOUT_CONNECTION_MESSAGE_BURST", "1")
    monkeypatch.setenv("FANOUT_CONNECTION_MESSAGE_RATE", "0.01")
    load.cache_clear()
    handlers.default.deps.cache_clear()
    context = {**authorizer_context("carol", [], ["room:*", "$user"]), "principalId": "carol"}

    def send(cid: str, frame: dict[str, Any]) -> dict[str, Any]:
        event = {
            "requestContext": _ws_context(
                cid, "$default", "MESSAGE", messageId=uuid.uuid4().hex, authorizer=context
            ),
            "body": json.dumps(frame),
            "isBase64Encoded": False,
        }
        return dict(json.loads(handlers.default.handler(event, LambdaContextStub("fanout-default"))["body"]))

    assert (
        send("chat-a=", {"action": "publish", "channel": "room:1", "message": 1, "id": "p"})["type"] == "ack"
    )
    assert send("chat-b=", {"action": "sendmessage", "to": "dan", "message": 1, "id": "d"})["type"] == "ack"
    assert send("chat-b=", {"action": "sendmessage", "to": "dan", "message": 2, "id": "e"})["code"] == (
        "rate_limited"
    )
    assert send("chat-c=", {"action": "publish", "channel": "lobby", "message": 1, "id": "f"})["code"] == (
        "forbidden"
    )
    monkeypatch.delenv("FANOUT_CONNECTION_MESSAGE_BURST")
    monkeypatch.delenv("FANOUT_CONNECTION_MESSAGE_RATE")
    load.cache_clear()
    handlers.default.deps.cache_clear()
    # the two messages' broadcasts (to no one: no member, no connection of dan's) run to the end, so
    # that no broadcast is left pending for the sweeper's paths
    assert pipe.run_swarms() == 2
    pipe.drain()


def run_connection_paths(pipe: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    """Authorizer (allowed, refused), $connect, $default, $disconnect, and both failing."""
    import handlers.authorizer
    import handlers.connect
    import handlers.default
    import handlers.disconnect

    def authorize(token: str) -> dict[str, Any] | None:
        event = {
            "type": "REQUEST",
            "methodArn": f"arn:aws:execute-api:us-east-1:123456789012:{API}/{STAGE}/$connect",
            "queryStringParameters": {"token": token},
            "requestContext": _ws_context("conn-a=", "$connect", "CONNECT"),
        }
        try:
            return dict(handlers.authorizer.handler(event, LambdaContextStub("fanout-authorizer")))
        except Exception as exc:
            assert str(exc) == "Unauthorized"
            return None

    def connect(cid: str, context: dict[str, Any]) -> int:
        auth = {**context, "principalId": context["userId"]}
        event = {
            "headers": {"Host": HOST, "Sec-WebSocket-Version": "13"},
            "multiValueHeaders": {"Host": [HOST]},
            "requestContext": _ws_context(cid, "$connect", "CONNECT", authorizer=auth),
            "isBase64Encoded": False,
        }
        return int(handlers.connect.handler(event, LambdaContextStub("fanout-connect"))["statusCode"])

    def disconnect(cid: str) -> int:
        ctx = _ws_context(
            cid, "$disconnect", "DISCONNECT", disconnectStatusCode=1001, disconnectReason="Going away"
        )
        event = {
            "headers": {"Host": HOST},
            "multiValueHeaders": {"Host": [HOST]},
            "requestContext": ctx,
            "isBase64Encoded": False,
        }
        return int(handlers.disconnect.handler(event, LambdaContextStub("fanout-disconnect"))["statusCode"])

    assert authorize("forged") is None
    allowed = authorize(issue_token(SECRET, "alice", 60))
    assert allowed is not None
    assert connect("conn-a=", allowed["context"]) == 200
    ping = {
        "requestContext": _ws_context("conn-a=", "$default", "MESSAGE", messageId=uuid.uuid4().hex),
        "body": '{"action":"ping"}',
        "isBase64Encoded": False,
    }
    assert json.loads(handlers.default.handler(ping, LambdaContextStub("fanout-default"))["body"]) == {
        "type": "pong"
    }
    assert disconnect("conn-a=") == 200

    # When the connections table cannot be written, $connect and $disconnect fail (and say so)
    monkeypatch.setenv("FANOUT_CONNECTIONS_TABLE", f"missing-{uuid.uuid4().hex[:8]}")
    load.cache_clear()
    handlers.connect.deps.cache_clear()
    handlers.disconnect.deps.cache_clear()
    try:
        assert connect("conn-b=", allowed["context"]) == 500
        assert disconnect("conn-b=") == 500
    finally:
        monkeypatch.setenv("FANOUT_CONNECTIONS_TABLE", pipe.settings.connections_table)
        load.cache_clear()
        handlers.connect.deps.cache_clear()
        handlers.disconnect.deps.cache_clear()


def run_broadcast_paths(pipe: Pipeline) -> None:
    """A broadcast through operator API, swarm, query and post with gone, throttled and failing ids."""
    ids = {p: [f"m{p}x{i}=" for i in range(5)] for p in range(4)}
    everyone = [c for batch in ids.values() for c in batch]
    pipe.seed_connections(ids)
    gone, throttled, failing = everyone[0], everyone[1], everyone[2]
    pipe.connections.live.update(c for c in everyone if c != gone)
    pipe.connections.script[throttled] = [429]
    pipe.connections.script[failing] = [500] * 100
    view = pipe.broadcast({"text": "metrics"})
    assert (view["status"], view["delivered"], view["gone"], view["failed"]) == ("completed", 18, 1, 1)


def run_conflict_path(pipe: Pipeline, strict_url: str) -> None:
    """A post batch counting into a shard that a transaction holds: TransactionConflictException,
    retried (TransactionConflicts) until the transaction ends."""
    pipe.seed_connections({0: ["conflict0="]})
    pipe.connections.live.add("conflict0=")
    status, body, _ = pipe.api("POST", "/broadcasts", body={"message": "conflict"})
    assert status == 202
    pipe.run_swarms()
    pipe.drain_queries()
    broadcast_id = body["broadcastId"]
    shards = pipe.shape(broadcast_id)["counter_shards"]
    table = pipe.settings.idempotency_table
    hold = threading.Thread(
        target=pipe.dynamodb.transact_write_items,
        kwargs={
            "TransactItems": [
                {
                    "Update": {
                        "TableName": table,
                        "Key": {"id": {"S": f"acct#{broadcast_id}#{k}"}},
                        "UpdateExpression": "ADD held :zero",
                        "ExpressionAttributeValues": {":zero": {"N": "0"}},
                    }
                }
                for k in range(shards)
            ]
        },
    )
    hold.start()
    wait_strict(strict_url, lambda s: s["heldTransactions"] >= 1)

    def release_after_a_refusal() -> None:
        wait_strict(strict_url, lambda s: s.get("writesRejected", 0) >= 1)
        request = urllib.request.Request(f"{strict_url}/_strict/release", method="POST")
        urllib.request.urlopen(request, timeout=10).close()

    releaser = threading.Thread(target=release_after_a_refusal)
    releaser.start()
    pipe.drain()  # the post stage's count meets the transaction, is refused, and retried
    releaser.join(30)
    hold.join(30)
    assert not releaser.is_alive() and not hold.is_alive()
    _, view, _ = pipe.api("GET", f"/broadcasts/{broadcast_id}")
    assert view["status"] == "completed", view
    assert view["delivered"] + view["gone"] + view["failed"] == view["targeted"], view


def wait_strict(strict_url: str, predicate: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(f"{strict_url}/_strict/stats", timeout=10) as resp:
            if predicate(json.load(resp)):
                return
        assert time.monotonic() < deadline, "the strict layer never reached the state waited for"
        time.sleep(0.02)


def run_sweeper_paths(pipe: Pipeline) -> None:
    """A broadcast whose swarm event was lost: re-driven once (BroadcastsRedriven), then, still without
    progress, failed (BroadcastsFailed)."""
    import handlers.sweeper

    status, _, _ = pipe.api("POST", "/broadcasts", body={"message": "lost"})
    assert status == 202
    pipe.lambdas.invocations.clear()
    handlers.sweeper.deps.cache_clear()
    first = handlers.sweeper.handler({}, LambdaContextStub("fanout-sweeper"))
    time.sleep(0.01)  # past the (1 ms) sweep deadline
    second = handlers.sweeper.handler({}, LambdaContextStub("fanout-sweeper"))
    assert (first["redriven"], second["failed"]) == (1, 1), (first, second)
    handlers.sweeper.deps.cache_clear()


def run_reconciler() -> None:
    import handlers.reconciler

    handlers.reconciler.handler({}, LambdaContextStub("fanout-reconciler"))


def _subscription_record(sequence: int, image: dict[str, Any]) -> dict[str, Any]:
    """A subscriptions stream INSERT record, as Lambda's event source mapping delivers it."""
    keys = {k: image[k] for k in ("channel", "member") if k in image}
    return {
        "eventID": str(sequence),
        "eventName": "INSERT",
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/subscriptions/stream/2026-12-01",
        "dynamodb": {
            "ApproximateCreationDateTime": time.time(),
            "Keys": keys,
            "NewImage": image,
            "SequenceNumber": str(sequence),
            "SizeBytes": 100,
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        },
    }


def run_history_paths(pipe: Pipeline) -> None:
    """$connect with ?recover=, the history action, and a recovery that cannot recover."""
    import handlers.authorizer
    import handlers.connect
    import handlers.default
    import handlers.recovery

    for module in (handlers.connect, handlers.default, handlers.recovery):
        module.deps.cache_clear()
    event = {
        "type": "REQUEST",
        "methodArn": f"arn:aws:execute-api:us-east-1:123456789012:{API}/{STAGE}/$connect",
        "queryStringParameters": {"token": issue_token(SECRET, "bob", 60, channels=["room:*"])},
        "requestContext": _ws_context("conn-r=", "$connect", "CONNECT"),
    }
    context = dict(handlers.authorizer.handler(event, LambdaContextStub("fanout-authorizer")))["context"]
    auth = {**context, "principalId": "bob"}
    connect = {
        "headers": {"Host": HOST, "Sec-WebSocket-Version": "13"},
        "multiValueHeaders": {"Host": [HOST]},
        "queryStringParameters": {"recover": "room:m:0:stale"},
        "requestContext": _ws_context("conn-r=", "$connect", "CONNECT", authorizer=auth),
        "isBase64Encoded": False,
    }
    assert handlers.connect.handler(connect, LambdaContextStub("fanout-connect"))["statusCode"] == 200
    (recovery,) = [p for name, _, p in pipe.lambdas.invocations if name == "fanout-recovery"]
    pipe.lambdas.invocations.clear()
    pipe.broadcast("m", to={"channels": ["room:m"]})
    history = {
        "requestContext": _ws_context("conn-r=", "$default", "MESSAGE", messageId="h", authorizer=auth),
        "body": '{"action":"history","channel":"room:m","since":0}',
        "isBase64Encoded": False,
    }
    reply = json.loads(handlers.default.handler(history, LambdaContextStub("fanout-default"))["body"])
    assert reply["type"] == "history" and len(reply["messages"]) == 1
    pipe.connections.live.update({"conn-r=", "conn-s="})
    handlers.recovery.handler(recovery, LambdaContextStub("fanout-recovery"))
    assert json.loads(pipe.connections.frames["conn-r="][0])["code"] == "recovery_impossible"
    # and one that recovers the message it missed
    connect["queryStringParameters"] = {"recover": f"room:m:0:{reply['epoch']}"}
    connect["requestContext"] = _ws_context("conn-s=", "$connect", "CONNECT", authorizer=auth)
    assert handlers.connect.handler(connect, LambdaContextStub("fanout-connect"))["statusCode"] == 200
    (recovery,) = [p for name, _, p in pipe.lambdas.invocations if name == "fanout-recovery"]
    pipe.lambdas.invocations.clear()
    handlers.recovery.handler(recovery, LambdaContextStub("fanout-recovery"))
    assert json.loads(pipe.connections.frames["conn-s="][0])["data"] == "m"


def run_channel_paths(pipe: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    """The channel counter (counted, an unreadable record, a failed add) and the channel reconciler
    (a drifted counter, an expired subscription row)."""
    import handlers.channel_counter
    import handlers.channel_reconciler

    def row(channel: str, cid: str, expires_at: int) -> dict[str, Any]:
        return {
            "channel": {"S": channel},
            "member": {"S": member_key(cid)},
            "connectionId": {"S": cid},
            "userId": {"S": "u-" + cid},
            "expiresAt": {"N": str(expires_at)},
        }

    def count(records: list[dict[str, Any]]) -> None:
        handlers.channel_counter.handler({"Records": records}, LambdaContextStub("fanout-channel-counter"))

    later = int(time.time()) + 3600
    live, expired = row("metrics:1", "s1=", later), row("metrics:1", "s2=", int(time.time()) - 60)
    for item in (live, expired):
        pipe.dynamodb.put_item(TableName=pipe.settings.subscriptions_table, Item=item)
    unreadable = {k: v for k, v in row("metrics:1", "s3=", later).items() if k != "userId"}
    count([_subscription_record(1, live), _subscription_record(2, unreadable)])
    # the occupancy table cannot be written: the counter's adds fail (and say so)
    monkeypatch.setenv("FANOUT_CHANNELS_TABLE", f"missing-{uuid.uuid4().hex[:8]}")
    load.cache_clear()
    handlers.channel_counter.deps.cache_clear()
    try:
        count([_subscription_record(3, row("metrics:2", "s4=", later))])
    finally:
        monkeypatch.setenv("FANOUT_CHANNELS_TABLE", pipe.settings.channels_table)
        load.cache_clear()
        handlers.channel_counter.deps.cache_clear()
    # the counter missed the expired row's INSERT: the reconciler finds the drift and the expired row
    handlers.channel_reconciler.handler({}, LambdaContextStub("fanout-channel-reconciler"))


def test_every_dashboard_and_alarm_metric_is_emitted_by_its_code_path(
    template: dict[str, Any],
    pipe: Pipeline,
    held_dynamodb: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given the metrics the dashboard and the alarms read, and the namespace the functions emit to
    contract = engine_metrics(template)
    assert {"Throttled", "Delivered", "BroadcastsStarted"} <= {m.name for m in contract}
    namespaces = {
        r["Properties"]["Environment"]["Variables"].get("POWERTOOLS_METRICS_NAMESPACE")
        for r in template["Resources"].values()
        if r["Type"] == "AWS::Lambda::Function" and "Environment" in r.get("Properties", {})
    }
    assert {m.namespace for m in contract} <= namespaces
    assert os.environ["POWERTOOLS_METRICS_NAMESPACE"] in namespaces

    # When every path runs: connections, a broadcast with every outcome, the reconcilers, channels
    capsys.readouterr()
    run_connection_paths(pipe, monkeypatch)
    run_chat_paths(pipe, monkeypatch)
    run_broadcast_paths(pipe)
    run_conflict_path(pipe, held_dynamodb)
    run_sweeper_paths(pipe)
    run_reconciler()
    run_channel_paths(pipe, monkeypatch)
    run_history_paths(pipe)
    seen = emitted(capsys.readouterr().out)

    # Then each of them was emitted, with the same namespace and dimensions
    assert seen, "no EMF output captured"
    missing = sorted(str(m) for m in contract if (m.namespace, m.name, m.dimensions) not in seen)
    assert missing == [], f"used by the dashboard or an alarm, emitted by no path: {missing}"
