"""The connection lifecycle through the real handlers against DynamoDB Local.

API-Gateway-shaped events (authorizer, $connect, $default, $disconnect), stream events read from
the connections table's real stream, and the scheduled reconciler.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import boto3
import pytest

from fanout.settings import Settings, load
from fanout.tokens import issue_token
from infra.local.resources import connections_stream_arn, create_tables
from tests.secrets import use_token_secret

SECRET = "integration-secret-" + "0123456789abcdef" * 3
PARTITIONS = 8
API = "api1234567"
STAGE = "dev"


@dataclass
class LambdaContext:
    function_name: str = "fanout-test"
    function_version: str = "$LATEST"
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:fanout-test"
    memory_limit_in_mb: int = 256
    aws_request_id: str = "req-1"
    log_group_name: str = "/aws/lambda/fanout-test"
    log_stream_name: str = "stream"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def _reset_caches() -> None:
    from handlers import authorizer, connect, default, disconnect, partition_counter, reconciler

    load.cache_clear()
    authorizer.deps.cache_clear()
    for module in (connect, default, disconnect, partition_counter, reconciler):
        module.deps.cache_clear()


@dataclass
class Stack:
    endpoint: str
    dynamodb: Any
    streams: Any
    stream_arn: str
    connections_table: str
    partitions_table: str


@pytest.fixture(scope="module")
def stack(dynamodb_local: str, secrets_manager: str) -> Iterator[Stack]:
    prefix = f"lc{uuid.uuid4().hex[:8]}"
    env = {
        "AWS_ENDPOINT_URL_DYNAMODB": dynamodb_local,
        "FANOUT_CONNECTIONS_TABLE": f"{prefix}-connections",
        "FANOUT_PARTITIONS_TABLE": f"{prefix}-partitions",
        "FANOUT_BROADCASTS_TABLE": f"{prefix}-broadcasts",
        "FANOUT_IDEMPOTENCY_TABLE": f"{prefix}-idempotency",
        "FANOUT_SUBSCRIPTIONS_TABLE": f"{prefix}-subscriptions",
        "FANOUT_CHANNELS_TABLE": f"{prefix}-channels",
        # $default also sends client messages (publish, sendmessage): its settings name these too
        "FANOUT_RATE_LIMITS_TABLE": f"{prefix}-rate-limits",
        "FANOUT_SWARM_FUNCTION_NAME": f"{prefix}-swarm",
        "FANOUT_PARTITION_COUNT": str(PARTITIONS),
        # the tests drive the stream by hand, so nothing is in flight when the reconciler runs
        "FANOUT_RECONCILE_QUIET_SECONDS": "0",
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        _reset_caches()
        use_token_secret(mp, SECRET, secrets_manager)
        settings = load(Settings)
        dynamodb = boto3.client("dynamodb", endpoint_url=dynamodb_local, region_name="us-east-1")
        create_tables(dynamodb, settings)
        streams = boto3.client("dynamodbstreams", endpoint_url=dynamodb_local, region_name="us-east-1")
        yield Stack(
            dynamodb_local,
            dynamodb,
            streams,
            connections_stream_arn(dynamodb, settings),
            settings.connections_table,
            settings.partitions_table,
        )
    _reset_caches()


# Event builders (shapes as API Gateway and Lambda send them) -------------------------------------


def _request_context(connection_id: str, route: str, event_type: str, **extra: Any) -> dict[str, Any]:
    now = time.time()
    return {
        "routeKey": route,
        "eventType": event_type,
        "extendedRequestId": uuid.uuid4().hex,
        "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
        "messageDirection": "IN",
        "stage": STAGE,
        "connectedAt": int(now * 1000),
        "requestTimeEpoch": int(now * 1000),
        "identity": {"sourceIp": "203.0.113.7", "userAgent": "pytest"},
        "requestId": uuid.uuid4().hex,
        "domainName": f"{API}.execute-api.us-east-1.amazonaws.com",
        "connectionId": connection_id,
        "apiId": API,
        **extra,
    }


def authorizer_event(connection_id: str, token: str | None) -> dict[str, Any]:
    query = {"token": token} if token is not None else None
    return {
        "type": "REQUEST",
        "methodArn": f"arn:aws:execute-api:us-east-1:123456789012:{API}/{STAGE}/$connect",
        "headers": {"Host": f"{API}.execute-api.us-east-1.amazonaws.com"},
        "multiValueHeaders": {"Host": [f"{API}.execute-api.us-east-1.amazonaws.com"]},
        "queryStringParameters": query,
        "multiValueQueryStringParameters": {k: [v] for k, v in (query or {}).items()} or None,
        "stageVariables": {},
        "requestContext": _request_context(connection_id, "$connect", "CONNECT"),
    }


def connect_event(connection_id: str, authorizer_context: dict[str, Any] | None) -> dict[str, Any]:
    extra = {}
    if authorizer_context is not None:
        extra["authorizer"] = {**authorizer_context, "principalId": authorizer_context["userId"]}
    return {
        "headers": {"Host": f"{API}.execute-api.us-east-1.amazonaws.com", "Sec-WebSocket-Version": "13"},
        "multiValueHeaders": {"Host": [f"{API}.execute-api.us-east-1.amazonaws.com"]},
        "requestContext": _request_context(connection_id, "$connect", "CONNECT", **extra),
        "isBase64Encoded": False,
    }


def disconnect_event(connection_id: str) -> dict[str, Any]:
    return {
        "headers": {"Host": f"{API}.execute-api.us-east-1.amazonaws.com"},
        "multiValueHeaders": {"Host": [f"{API}.execute-api.us-east-1.amazonaws.com"]},
        "requestContext": _request_context(
            connection_id,
            "$disconnect",
            "DISCONNECT",
            disconnectStatusCode=1001,
            disconnectReason="Going away",
        ),
        "isBase64Encoded": False,
    }


def message_event(connection_id: str, body: str | None, *, binary: bool = False) -> dict[str, Any]:
    event: dict[str, Any] = {
        "requestContext": _request_context(connection_id, "$default", "MESSAGE", messageId=uuid.uuid4().hex),
        "isBase64Encoded": binary,
    }
    if body is not None:
        event["body"] = body
    return event


class StreamReader:
    """Reads the connections table's stream incrementally, as Lambda's event source mapping would."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.positions: dict[str, str | None] = {}

    def read(self) -> list[dict[str, Any]]:
        desc = self.stack.streams.describe_stream(StreamArn=self.stack.stream_arn)["StreamDescription"]
        records: list[dict[str, Any]] = []
        for shard in desc["Shards"]:
            sid = shard["ShardId"]
            last = self.positions.get(sid)
            kwargs: dict[str, Any] = {"StreamArn": self.stack.stream_arn, "ShardId": sid}
            if last:
                kwargs |= {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": last}
            else:
                kwargs |= {"ShardIteratorType": "TRIM_HORIZON"}
            iterator = self.stack.streams.get_shard_iterator(**kwargs)["ShardIterator"]
            while iterator:
                page = self.stack.streams.get_records(ShardIterator=iterator, Limit=1000)
                records.extend(page["Records"])
                if not page["Records"]:
                    break
                self.positions[sid] = page["Records"][-1]["dynamodb"]["SequenceNumber"]
                iterator = page.get("NextShardIterator")
        return records

    def lambda_event(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        out = []
        for rec in records:
            rec = json.loads(json.dumps(rec, default=_epoch))
            rec["eventSourceARN"] = self.stack.stream_arn
            out.append(rec)
        return {"Records": out}


def _epoch(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.timestamp()
    raise TypeError(type(value))


def stored_counts(stack: Stack) -> dict[int, int]:
    items = stack.dynamodb.scan(TableName=stack.partitions_table, ConsistentRead=True)["Items"]
    return {int(i["partitionId"]["N"]): int(i.get("connectionCount", {"N": "0"})["N"]) for i in items}


def table_counts(stack: Stack) -> dict[int, int]:
    counts = dict.fromkeys(range(PARTITIONS), 0)
    kwargs: dict[str, Any] = {"TableName": stack.connections_table, "ConsistentRead": True}
    while True:
        page = stack.dynamodb.scan(**kwargs)
        for item in page["Items"]:
            counts[int(item["partitionId"]["N"])] += 1
        if "LastEvaluatedKey" not in page:
            return counts
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def get_row(stack: Stack, connection_id: str) -> dict[str, Any] | None:
    out = stack.dynamodb.get_item(
        TableName=stack.connections_table, Key={"connectionId": {"S": connection_id}}, ConsistentRead=True
    )
    item: dict[str, Any] | None = out.get("Item")
    return item


def api_gateway_connect(connection_id: str, token: str | None) -> int:
    """What API Gateway does on $connect: authorizer first; $connect only if it allowed."""
    from handlers import authorizer, connect

    try:
        policy = authorizer.handler(authorizer_event(connection_id, token), LambdaContext())
    except Exception as exc:
        assert str(exc) == "Unauthorized"
        return 401
    assert policy["policyDocument"]["Statement"][0]["Effect"] == "Allow"
    return int(
        connect.handler(connect_event(connection_id, policy["context"]), LambdaContext())["statusCode"]
    )


# Tests -------------------------------------------------------------------------------------------


def test_refused_tokens_write_no_row(stack: Stack) -> None:
    from handlers import connect

    reader = StreamReader(stack)
    reader.read()  # skip whatever earlier tests wrote
    expired = issue_token(SECRET, "mallory", ttl_seconds=60, now=time.time() - 3600)
    forged = issue_token("not-the-secret-" + "x" * 40, "mallory")
    cases = {"missing": None, "expired": expired, "forged": forged, "garbage": "a.b.c"}
    for name, token in cases.items():
        assert api_gateway_connect(f"refused-{name}", token) == 401
        assert get_row(stack, f"refused-{name}") is None
    # $connect reached without the authorizer's context (a misconfigured route) refuses too
    assert connect.handler(connect_event("no-auth", None), LambdaContext())["statusCode"] == 401
    assert get_row(stack, "no-auth") is None
    assert reader.read() == []


def test_lifecycle_counters_follow_the_stream(stack: Stack) -> None:
    from handlers import default, disconnect, partition_counter

    reader = StreamReader(stack)
    reader.read()
    before = stored_counts(stack)
    # Given 40 clients connecting with valid tokens
    ids = [f"conn-{i:03d}=" for i in range(40)]
    started = time.time()
    for i, cid in enumerate(ids):
        assert api_gateway_connect(cid, issue_token(SECRET, f"user-{i}")) == 200
    row = get_row(stack, ids[0])
    assert row is not None
    assert row["userId"] == {"S": "user-0"}
    assert row["sourceIp"] == {"S": "203.0.113.7"}
    assert 0 <= int(row["partitionId"]["N"]) < PARTITIONS
    ttl = load(Settings).connection_ttl_seconds
    assert int(started) + ttl <= int(row["expiresAt"]["N"]) <= int(time.time()) + ttl
    assert int(row["connectedAt"]["N"]) >= int(started * 1000)

    # When they ping, and some send nonsense
    assert default.handler(message_event(ids[0], '{"action":"ping"}'), LambdaContext()) == {
        "statusCode": 200,
        "body": '{"type":"pong"}',
    }
    assert (
        "unknown action" in default.handler(message_event(ids[1], '{"action":"x"}'), LambdaContext())["body"]
    )

    # And 10 of them disconnect (one twice: $disconnect is idempotent)
    for cid in ids[:10]:
        assert disconnect.handler(disconnect_event(cid), LambdaContext())["statusCode"] == 200
        assert get_row(stack, cid) is None
    assert disconnect.handler(disconnect_event(ids[0]), LambdaContext())["statusCode"] == 200

    # And the stream of the connections table reaches the counter function
    records = reader.read()
    assert [r["eventName"] for r in records].count("INSERT") == 40
    assert [r["eventName"] for r in records].count("REMOVE") == 10
    response = partition_counter.handler(reader.lambda_event(records), LambdaContext())

    # Then the counters hold exactly the rows of each partition
    assert response == {"batchItemFailures": []}
    after = stored_counts(stack)
    delta = {p: after.get(p, 0) - before.get(p, 0) for p in range(PARTITIONS)}
    assert sum(delta.values()) == 30
    assert after == table_counts(stack)


def test_partial_batch_failure_and_ttl_removals(stack: Stack) -> None:
    from handlers import partition_counter

    reader = StreamReader(stack)
    reader.read()
    # Given a connect stream of 6 rows and a TTL-style removal of one of them
    ids = [f"ttl-{i}=" for i in range(6)]
    for i, cid in enumerate(ids):
        assert api_gateway_connect(cid, issue_token(SECRET, f"ttl-user-{i}")) == 200
    stack.dynamodb.delete_item(TableName=stack.connections_table, Key={"connectionId": {"S": ids[5]}})
    records = reader.read()
    assert len(records) == 7
    records[-1]["userIdentity"] = {"type": "Service", "principalId": "dynamodb.amazonaws.com"}
    event = reader.lambda_event(records)
    before = stored_counts(stack)

    # When record #3 of the batch is unreadable
    good = json.loads(json.dumps(event["Records"][3]))
    event["Records"][3]["dynamodb"]["NewImage"]["partitionId"] = {"N": "not-a-number"}
    response = partition_counter.handler(event, LambdaContext())

    # Then it is reported, and only the records before it were counted
    failed_seq = event["Records"][3]["dynamodb"]["SequenceNumber"]
    assert response == {"batchItemFailures": [{"itemIdentifier": failed_seq}]}
    mid = stored_counts(stack)
    assert sum(mid.values()) - sum(before.values()) == 3

    # When Lambda redelivers from the failed record (now readable)
    retry = {"Records": [good, *event["Records"][4:]]}
    assert partition_counter.handler(retry, LambdaContext()) == {"batchItemFailures": []}

    # Then nothing was counted twice: 6 inserts, 1 TTL removal
    assert sum(stored_counts(stack).values()) - sum(before.values()) == 5
    assert stored_counts(stack) == table_counts(stack)


def test_reconciler_corrects_injected_drift(stack: Stack) -> None:
    from handlers import reconciler

    # Given counters that match the table, then drift injected on two partitions and one row gone
    truth = table_counts(stack)
    assert sum(truth.values()) > 0
    stack.dynamodb.update_item(
        TableName=stack.partitions_table,
        Key={"partitionId": {"N": "0"}},
        UpdateExpression="SET connectionCount = :v",
        ExpressionAttributeValues={":v": {"N": "999"}},
    )
    stack.dynamodb.update_item(
        TableName=stack.partitions_table,
        Key={"partitionId": {"N": "1"}},
        UpdateExpression="ADD connectionCount :v",
        ExpressionAttributeValues={":v": {"N": "-7"}},
    )
    stack.dynamodb.delete_item(TableName=stack.partitions_table, Key={"partitionId": {"N": "2"}})

    # When the scheduled reconciler runs
    result = reconciler.handler({"source": "aws.events", "detail-type": "Scheduled Event"}, LambdaContext())

    # Then every counter equals the recount, and the skew is reported
    assert stored_counts(stack) == truth
    assert result["corrected"] == 3  # a missing row is recreated, even at 0
    assert result["connections"] == sum(truth.values())
    expected_skew = max(truth.values()) / (sum(truth.values()) / PARTITIONS)
    assert result["skew"] == pytest.approx(expected_skew)
    item = stack.dynamodb.get_item(TableName=stack.partitions_table, Key={"partitionId": {"N": "0"}})["Item"]
    assert "reconciledAt" in item

    # And a second run finds nothing to correct
    assert reconciler.handler({}, LambdaContext())["corrected"] == 0


def test_a_sliced_recount_corrects_its_slice_and_every_partition_in_turn(stack: Stack) -> None:
    from handlers import reconciler
    from partitions.lifecycle import reconcile

    d = reconciler.deps()
    truth = table_counts(stack)
    # Given drift on a partition of the first slice of 3 and one of the last (8 partitions: 3 runs)
    for pid in (1, 7):
        stack.dynamodb.update_item(
            TableName=stack.partitions_table,
            Key={"partitionId": {"N": str(pid)}},
            UpdateExpression="ADD connectionCount :v",
            ExpressionAttributeValues={":v": {"N": "5"}},
        )
    now = int(time.time() * 1000)

    # When the first run recounts its slice of 3
    first = reconcile(
        d.connections, d.partitions, partition_count=PARTITIONS, now_ms=now, per_run=3, run_index=0
    )

    # Then only partitions 0-2 were read and corrected; the figures still cover all 8 (stored for the rest)
    assert (first.recounted, first.queries) == (3, 3)
    assert [c.partition_id for c in first.corrected] == [1]
    assert stored_counts(stack)[7] == truth[7] + 5
    assert first.plan.total == sum(truth.values()) + 5

    # And the next two runs reach the rest: every counter is the truth again
    later = [
        reconcile(d.connections, d.partitions, partition_count=PARTITIONS, now_ms=now, per_run=3, run_index=i)
        for i in (1, 2)
    ]
    assert [[c.partition_id for c in r.corrected] for r in later] == [[], [7]]
    assert stored_counts(stack) == truth


def test_conditional_correction_never_overwrites_a_concurrent_add(stack: Stack) -> None:
    from fanout.adapters.partitions import PartitionsTable

    table = PartitionsTable(stack.dynamodb, stack.partitions_table)
    read = table.get_count(3)
    table.add(3, 1)  # a stream ADD lands between the reconciler's read and its write
    assert read is not None
    assert table.correct(3, expected=read, value=0, now_ms=0) is False
    assert table.get_count(3) == read + 1
    table.add(3, -1)


def test_stored_counts_are_the_counters_without_their_stamps(stack: Stack) -> None:
    from fanout.adapters.partitions import PartitionsTable

    table = PartitionsTable(stack.dynamodb, stack.partitions_table)
    assert table.stored_counts() == {pid: c.count for pid, c in table.stored_counters().items()}


def test_authorizer_allows_with_the_contract_policy(stack: Stack) -> None:
    from handlers import authorizer

    event = authorizer_event("ok-1", issue_token(SECRET, "alice"))
    assert authorizer.handler(event, LambdaContext()) == {
        "principalId": "alice",
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [
                {"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": event["methodArn"]}
            ],
        },
        "context": {"userId": "alice", "channels": "[]", "publish": "[]"},
    }


def test_authorizer_context_carries_the_rights_as_json_strings(stack: Stack) -> None:
    from handlers import authorizer

    token = issue_token(SECRET, "bob", channels=["room:*", "news"], publish=["$user", "room:1"])
    context = authorizer.handler(authorizer_event("ok-2", token), LambdaContext())["context"]
    assert context == {"userId": "bob", "channels": '["room:*","news"]', "publish": '["$user","room:1"]'}
    assert all(isinstance(v, str) for v in context.values())  # API Gateway's rule for context values


@pytest.mark.parametrize(
    ("body", "binary", "problem"),
    [
        ('{"action":"shout"}', False, "unknown action 'shout'"),
        ("not json", False, "not valid JSON"),
        ("[1,2]", False, "JSON object"),
        ('{"action": 7}', False, 'string "action"'),
        ("{}", False, 'string "action"'),
        ("", False, "empty message"),
        (None, False, "empty message"),
        ("AAECAw==", True, "binary"),
        ('{"action":"ping","pad":"' + "x" * 5000 + '"}', False, "too large"),
        ("[" * 100_000, False, "too large"),
    ],
)
def test_default_route_answers_with_a_frame(body: str | None, binary: bool, problem: str) -> None:
    from handlers import default

    answer = default.handler(message_event("c-default", body, binary=binary), LambdaContext())
    assert answer["statusCode"] == 200
    frame = json.loads(answer["body"])
    assert frame["type"] == "error"
    assert problem in frame["message"]
    assert frame["error"] == frame["message"]  # the deprecated alias old clients read
    assert frame["code"] == ("too_large" if "too large" in problem else "invalid")
    assert frame["action"] == ("shout" if "shout" in problem else None)


def test_default_route_survives_an_unreadable_event() -> None:
    from handlers import default

    answer = default.handler({"requestContext": {"connectionId": "x"}}, LambdaContext())
    assert json.loads(answer["body"]) == {
        "type": "error",
        "action": None,
        "code": "invalid",
        "message": "unreadable request",
        "error": "unreadable request",
    }


@pytest.mark.parametrize("quiet", [True, False], ids=["quiet-period", "no-quiet-period"])
def test_a_recount_never_counts_a_record_still_in_flight_twice(stack: Stack, quiet: bool) -> None:
    from handlers import reconciler
    from partitions.lifecycle import reconcile

    d = reconciler.deps()
    pid = 4
    reconcile(d.connections, d.partitions, partition_count=PARTITIONS, now_ms=int(time.time() * 1000))
    before = d.partitions.get_count(pid)
    assert before is not None
    # Given a row whose INSERT the stream has not applied yet, on a partition the stream just changed
    stack.dynamodb.put_item(
        TableName=stack.connections_table,
        Item={"connectionId": {"S": f"in-flight-{quiet}="}, "partitionId": {"N": str(pid)}},
    )
    d.partitions.add(pid, 0)

    # When the reconciler runs before the record is applied, then the record lands
    out = reconcile(
        d.connections,
        d.partitions,
        partition_count=PARTITIONS,
        now_ms=int(time.time() * 1000),
        quiet_ms=60_000 if quiet else 0,
    )
    d.partitions.add(pid, 1)

    # Then with the quiet period the partition was left alone and the counter is exact; without it,
    # the recount already held the row and the record counted it a second time
    if quiet:
        assert [c.partition_id for c in out.skipped] == [pid]
        assert d.partitions.get_count(pid) == before + 1 == table_counts(stack)[pid]
    else:
        assert [c.partition_id for c in out.corrected] == [pid]
        assert d.partitions.get_count(pid) == before + 2 == table_counts(stack)[pid] + 1
    stack.dynamodb.delete_item(
        TableName=stack.connections_table, Key={"connectionId": {"S": f"in-flight-{quiet}="}}
    )
    reconcile(d.connections, d.partitions, partition_count=PARTITIONS, now_ms=int(time.time() * 1000))
