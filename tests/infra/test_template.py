"""Assertions on the synthesized templates (one synthesis per session, see conftest.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_cdk.assertions import Template

from infra.cdk.config import FanoutConfig
from infra.cdk.sizing import post_concurrency_plan
from tests.infra.conftest import PARTITIONS, SHARDS, Synth

pytestmark = pytest.mark.slow

# Spelled out here, not read from the topology: a function lost from it fails this test.
FUNCTIONS = {
    "fanout-authorizer": "handlers.authorizer.handler",
    "fanout-connect": "handlers.connect.handler",
    "fanout-disconnect": "handlers.disconnect.handler",
    "fanout-default": "handlers.default.handler",
    "fanout-partition-counter": "handlers.partition_counter.handler",
    "fanout-reconciler": "handlers.reconciler.handler",
    "fanout-channel-counter": "handlers.channel_counter.handler",
    "fanout-channel-reconciler": "handlers.channel_reconciler.handler",
    "fanout-operator-api": "handlers.operator_api.handler",
    "fanout-swarm": "handlers.swarm.handler",
    "fanout-query": "handlers.query.handler",
    "fanout-post": "handlers.post.handler",
    "fanout-sweeper": "handlers.sweeper.handler",
    "fanout-recovery": "handlers.recovery.handler",
}
PLAN = post_concurrency_plan(FanoutConfig().post_budget, SHARDS, FanoutConfig().post_worker_capacity)
# Tables have generated names; each is known by its (partition key, sort key).
TABLE_KEYS = {("connectionId", None): "connections", ("partitionId", None): "partitions",
              ("broadcastId", None): "broadcasts", ("id", None): "idempotency",
              ("channel", "member"): "subscriptions", ("channel", "key"): "channels",
              ("key", None): "rate_limits",
              ("channel", "offset"): "history"}  # fmt: skip


def by_type(t: dict[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    return {k: r for k, r in t["Resources"].items() if r["Type"] == type_}


def logical_id_of(t: dict[str, Any], type_: str, prop: str, value: Any) -> str:
    matches = [k for k, r in by_type(t, type_).items() if r["Properties"].get(prop) == value]
    assert len(matches) == 1, f"{type_} with {prop}={value}: {matches}"
    return matches[0]


def function_id(t: dict[str, Any], name: str) -> str:
    return logical_id_of(t, "AWS::Lambda::Function", "FunctionName", name)


def table_ids(t: dict[str, Any]) -> dict[str, str]:
    """Logical id of each table by its role (connections, subscriptions, channels, partitions, ...)."""
    out = {}
    for lid, r in by_type(t, "AWS::DynamoDB::Table").items():
        schema = {k["KeyType"]: k["AttributeName"] for k in r["Properties"]["KeySchema"]}
        out[TABLE_KEYS[(schema["HASH"], schema.get("RANGE"))]] = lid
    assert len(out) == len(TABLE_KEYS)
    return out


def refs(value: Any) -> set[str]:
    """Logical ids a CloudFormation value refers to (Ref / Fn::GetAtt / Fn::ImportValue)."""
    found: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "Ref" and isinstance(v, str) and not v.startswith("AWS::"):
                found.add(v)
            elif k == "Fn::GetAtt":
                found.add(v[0] if isinstance(v, list) else v.split(".")[0])
            elif k == "Fn::ImportValue":
                found.add(f"import:{v}")
            else:
                found |= refs(v)
    elif isinstance(value, list):
        for v in value:
            found |= refs(v)
    return found


# -- WebSocket API -------------------------------------------------------------------------------
def test_websocket_routes_integrations_and_authorizer(fanout: dict[str, Any], template: Template) -> None:
    routes = {
        r["Properties"]["RouteKey"]: r["Properties"]
        for r in by_type(fanout, "AWS::ApiGatewayV2::Route").values()
    }
    ws_routes = {k: v for k, v in routes.items() if k.startswith("$")}
    assert set(ws_routes) == {"$connect", "$disconnect", "$default"}

    authorizer_id, authorizer = next(iter(by_type(fanout, "AWS::ApiGatewayV2::Authorizer").items()))
    assert authorizer["Properties"]["AuthorizerType"] == "REQUEST"
    assert authorizer["Properties"]["IdentitySource"] == ["route.request.querystring.token"]
    assert function_id(fanout, "fanout-authorizer") in refs(authorizer["Properties"]["AuthorizerUri"])

    assert ws_routes["$connect"]["AuthorizationType"] == "CUSTOM"
    assert ws_routes["$connect"]["AuthorizerId"] == {"Ref": authorizer_id}
    integrations = by_type(fanout, "AWS::ApiGatewayV2::Integration")
    for route, fn in (
        ("$connect", "fanout-connect"),
        ("$disconnect", "fanout-disconnect"),
        ("$default", "fanout-default"),
    ):
        target = ws_routes[route]["Target"]
        (integration_id,) = refs(target) & set(integrations)
        integration = integrations[integration_id]["Properties"]
        assert integration["IntegrationType"] == "AWS_PROXY"
        assert function_id(fanout, fn) in refs(integration["IntegrationUri"]), route

    # $default is two-way: a route response sends the handler's body back to the client
    assert ws_routes["$default"].get("RouteResponseSelectionExpression") == "$default"
    template.has_resource_properties("AWS::ApiGatewayV2::RouteResponse", {"RouteResponseKey": "$default"})


def test_websocket_stage_throttling_and_access_logs(fanout: dict[str, Any]) -> None:
    stages = {
        r["Properties"]["StageName"]: r["Properties"]
        for r in by_type(fanout, "AWS::ApiGatewayV2::Stage").values()
    }
    ws = stages["live"]
    assert ws["DefaultRouteSettings"]["ThrottlingRateLimit"] > 0
    assert ws["DefaultRouteSettings"]["ThrottlingBurstLimit"] > 0
    assert refs(ws["AccessLogSettings"]["DestinationArn"])
    assert "$context.connectionId" in ws["AccessLogSettings"]["Format"]
    # the Region-wide CloudWatch role that WebSocket logging needs is set before the stage
    assert by_type(fanout, "AWS::ApiGateway::Account")


# -- operator API --------------------------------------------------------------------------------
def test_operator_api_routes_are_iam_authorized_and_throttled(fanout: dict[str, Any]) -> None:
    routes = {
        r["Properties"]["RouteKey"]: r["Properties"]
        for r in by_type(fanout, "AWS::ApiGatewayV2::Route").values()
    }
    http_routes = {k: v for k, v in routes.items() if not k.startswith("$")}
    # every operator route is routed, /channels/* included (the handler serves them; unrouted, AWS 404s)
    assert set(http_routes) == {
        "POST /broadcasts",
        "GET /broadcasts/{broadcastId}",
        "GET /channels/{name}",
        "GET /channels/{name}/history",
    }
    integrations = by_type(fanout, "AWS::ApiGatewayV2::Integration")
    for route in http_routes.values():
        assert route["AuthorizationType"] == "AWS_IAM"
        (integration_id,) = refs(route["Target"]) & set(integrations)
        integration = integrations[integration_id]["Properties"]
        assert integration["PayloadFormatVersion"] == "2.0"
        assert function_id(fanout, "fanout-operator-api") in refs(integration["IntegrationUri"])
    stage = next(
        s["Properties"]
        for s in by_type(fanout, "AWS::ApiGatewayV2::Stage").values()
        if s["Properties"]["StageName"] == "$default"
    )
    assert stage["DefaultRouteSettings"]["ThrottlingRateLimit"] > 0
    assert refs(stage["AccessLogSettings"]["DestinationArn"])


# -- tables --------------------------------------------------------------------------------------
def test_tables_keys_gsi_stream_ttl_pitr_encryption(fanout: dict[str, Any]) -> None:
    tables = {role: fanout["Resources"][lid] for role, lid in table_ids(fanout).items()}
    keys = {n: t["Properties"]["KeySchema"] for n, t in tables.items()}
    assert keys["connections"] == [{"AttributeName": "connectionId", "KeyType": "HASH"}]
    assert keys["partitions"] == [{"AttributeName": "partitionId", "KeyType": "HASH"}]
    assert keys["broadcasts"] == [{"AttributeName": "broadcastId", "KeyType": "HASH"}]
    assert keys["idempotency"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert keys["subscriptions"] == [
        {"AttributeName": "channel", "KeyType": "HASH"},
        {"AttributeName": "member", "KeyType": "RANGE"},
    ]
    assert keys["channels"] == [
        {"AttributeName": "channel", "KeyType": "HASH"},
        {"AttributeName": "key", "KeyType": "RANGE"},
    ]
    conn = tables["connections"]["Properties"]
    gsis = {g["IndexName"]: g for g in conn["GlobalSecondaryIndexes"]}
    assert set(gsis) == {"byPartition", "byUser"}
    for name, key in (("byPartition", "partitionId"), ("byUser", "userId")):
        assert gsis[name]["KeySchema"] == [
            {"AttributeName": key, "KeyType": "HASH"},
            {"AttributeName": "connectionId", "KeyType": "RANGE"},
        ], name
        assert gsis[name]["Projection"] == {"ProjectionType": "KEYS_ONLY"}, name
    assert {"AttributeName": "userId", "AttributeType": "S"} in conn["AttributeDefinitions"]
    subs = tables["subscriptions"]["Properties"]
    assert subs["StreamSpecification"] == {"StreamViewType": "NEW_AND_OLD_IMAGES"}  # the channel counter
    assert subs["TimeToLiveSpecification"] == {"AttributeName": "expiresAt", "Enabled": True}
    assert "StreamSpecification" not in tables["channels"]["Properties"]
    assert {"AttributeName": "partitionId", "AttributeType": "N"} in conn["AttributeDefinitions"]
    assert conn["StreamSpecification"] == {"StreamViewType": "NEW_AND_OLD_IMAGES"}
    assert conn["TimeToLiveSpecification"] == {"AttributeName": "expiresAt", "Enabled": True}
    assert tables["idempotency"]["Properties"]["TimeToLiveSpecification"]["AttributeName"] == "expiration"
    # token buckets: one row per connection and per user, gone once full again
    assert keys["rate_limits"] == [{"AttributeName": "key", "KeyType": "HASH"}]
    assert tables["rate_limits"]["Properties"]["TimeToLiveSpecification"] == {
        "AttributeName": "expiresAt",
        "Enabled": True,
    }
    assert "StreamSpecification" not in tables["rate_limits"]["Properties"]
    for name, table in tables.items():
        props = table["Properties"]
        assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True, name
        assert props["SSESpecification"]["SSEEnabled"] is True, name
        assert props["BillingMode"] == "PAY_PER_REQUEST", name
        assert table["DeletionPolicy"] == "Retain", name  # default removal policy keeps data
        assert props["DeletionProtectionEnabled"] is True, name
        assert "TableName" not in props, name  # generated: a redeploy after destroy never collides


def test_broadcasts_pending_index_is_sparse_and_keys_only(fanout: dict[str, Any]) -> None:
    props = fanout["Resources"][table_ids(fanout)["broadcasts"]]["Properties"]
    (gsi,) = props["GlobalSecondaryIndexes"]
    assert gsi["IndexName"] == "byPending"
    assert gsi["KeySchema"] == [
        {"AttributeName": "pending", "KeyType": "HASH"},
        {"AttributeName": "createdAt", "KeyType": "RANGE"},
    ]
    assert gsi["Projection"] == {"ProjectionType": "KEYS_ONLY"}
    # only the index keys are declared: `pending` is absent from finished rows (sparse)
    assert {"AttributeName": "pending", "AttributeType": "S"} in props["AttributeDefinitions"]
    assert {"AttributeName": "createdAt", "AttributeType": "N"} in props["AttributeDefinitions"]


def test_partition_rows_are_seeded(fanout: dict[str, Any]) -> None:
    (seed,) = by_type(fanout, "Custom::FanoutPartitionSeed").values()
    assert seed["Properties"]["PartitionCount"] == str(PARTITIONS)


# -- queues --------------------------------------------------------------------------------------
def test_queue_and_dlq_counts_follow_q(fanout: dict[str, Any]) -> None:
    queues = {
        r["Properties"]["QueueName"]: r["Properties"] for r in by_type(fanout, "AWS::SQS::Queue").values()
    }
    expected = {
        f"fanout-{stage}-{i}{dlq}"
        for stage in ("partition", "post")
        for i in range(SHARDS)
        for dlq in ("", "-dlq")
    }
    assert set(queues) == expected | {
        "fanout-partition-counter-failures",
        "fanout-swarm-failures",
        "fanout-channel-counter-failures",
        "fanout-recovery-failures",
    }
    ids = {r["Properties"]["QueueName"]: k for k, r in by_type(fanout, "AWS::SQS::Queue").items()}
    for stage, timeout in (("partition", 60), ("post", 60)):
        for i in range(SHARDS):
            q = queues[f"fanout-{stage}-{i}"]
            assert q["RedrivePolicy"]["maxReceiveCount"] == 5
            assert refs(q["RedrivePolicy"]["deadLetterTargetArn"]) == {ids[f"fanout-{stage}-{i}-dlq"]}
            assert q["VisibilityTimeout"] == 6 * timeout
    for name, q in queues.items():
        assert q["SqsManagedSseEnabled"] is True, name
    # every queue refuses plain-HTTP access
    assert len(by_type(fanout, "AWS::SQS::QueuePolicy")) == len(queues)


# -- functions and event sources -----------------------------------------------------------------
def test_functions_arm64_with_handlers(fanout: dict[str, Any]) -> None:
    fns = {
        r["Properties"]["FunctionName"]: r["Properties"]
        for r in by_type(fanout, "AWS::Lambda::Function").values()
        if "FunctionName" in r["Properties"]
    }
    assert {n: f["Handler"] for n, f in fns.items()} == FUNCTIONS
    for name, fn in fns.items():
        assert fn["Architectures"] == ["arm64"], name
        assert fn["Runtime"] == "python3.12", name
        assert fn["TracingConfig"] == {"Mode": "Active"}, name
        assert len(fn["Layers"]) == 1, name
        env = fn["Environment"]["Variables"]
        assert env["POWERTOOLS_SERVICE_NAME"] == "fanout" and env["POWERTOOLS_METRICS_NAMESPACE"] == "Fanout"
        assert env["FANOUT_SHARD_COUNT"] == str(SHARDS) and env["FANOUT_PARTITION_COUNT"] == str(PARTITIONS)
    assert fns["fanout-post"]["MemorySize"] >= 1769
    assert (fns["fanout-sweeper"]["MemorySize"], fns["fanout-sweeper"]["Timeout"]) == (256, 55)
    # no reservation by default: it fails where the account's concurrency quota is below it + 100
    for name, fn in fns.items():
        assert "ReservedConcurrentExecutions" not in fn, name


def _join_refs(value: dict[str, Any]) -> list[str]:
    """Logical ids referenced, in order, by a JSON list built with Fn::Join."""
    return [p["Ref"] for p in value["Fn::Join"][1] if isinstance(p, dict) and "Ref" in p]


def test_function_environment_wiring(fanout: dict[str, Any]) -> None:
    fns = {
        r["Properties"]["FunctionName"]: r["Properties"]["Environment"]["Variables"]
        for r in by_type(fanout, "AWS::Lambda::Function").values()
        if "FunctionName" in r["Properties"]
    }
    queue_ids = {r["Properties"]["QueueName"]: k for k, r in by_type(fanout, "AWS::SQS::Queue").items()}
    assert _join_refs(fns["fanout-swarm"]["FANOUT_PARTITION_QUEUE_URLS"]) == [
        queue_ids[f"fanout-partition-{i}"] for i in range(SHARDS)
    ]
    post_urls = [queue_ids[f"fanout-post-{i}"] for i in range(SHARDS)]
    assert _join_refs(fns["fanout-query"]["FANOUT_POST_QUEUE_URLS"]) == post_urls
    # the swarm queues the post batches of the small audiences it reads itself
    assert _join_refs(fns["fanout-swarm"]["FANOUT_POST_QUEUE_URLS"]) == post_urls
    assert _join_refs(fns["fanout-post"]["FANOUT_POST_QUEUE_URLS"]) == post_urls
    assert _join_refs(fns["fanout-post"]["FANOUT_POST_DEAD_LETTER_QUEUE_URLS"]) == [
        queue_ids[f"fanout-post-{i}-dlq"] for i in range(SHARDS)
    ]
    assert float(fns["fanout-post"]["FANOUT_POST_RATE_PER_WORKER"]) == PLAN.rate_per_worker
    endpoint = json.dumps(fns["fanout-post"]["FANOUT_CONNECTIONS_ENDPOINT"])
    assert "https://" in endpoint and ".execute-api." in endpoint and "/live" in endpoint
    (secret_id,) = by_type(fanout, "AWS::SecretsManager::Secret")
    assert fns["fanout-authorizer"]["FANOUT_TOKEN_SECRET_ARN"] == {"Ref": secret_id}
    assert "FANOUT_TOKEN_SECRET" not in fns["fanout-authorizer"]  # never the key itself
    swarm = {"Ref": function_id(fanout, "fanout-swarm")}
    assert fns["fanout-operator-api"]["FANOUT_SWARM_FUNCTION_NAME"] == swarm
    assert fns["fanout-sweeper"]["FANOUT_SWARM_FUNCTION_NAME"] == swarm
    assert fns["fanout-sweeper"]["FANOUT_SWEEP_AFTER_SECONDS"] == "300"
    assert fns["fanout-sweeper"]["FANOUT_SWEEP_ATTEMPTS"] == "3"
    # every function finds every table by the name CloudFormation generated (fanout/settings.py)
    tables = table_ids(fanout)
    for name, env in fns.items():
        for role in TABLE_KEYS.values():
            assert env[f"FANOUT_{role.upper()}_TABLE"] == {"Ref": tables[role]}, (name, role)


def test_sqs_event_source_mappings(fanout: dict[str, Any]) -> None:
    mappings = by_type(fanout, "AWS::Lambda::EventSourceMapping").values()
    queue_names = {k: r["Properties"]["QueueName"] for k, r in by_type(fanout, "AWS::SQS::Queue").items()}
    sqs = {}
    for m in mappings:
        p = m["Properties"]
        (source,) = refs(p["EventSourceArn"])
        if source in queue_names:
            sqs[queue_names[source]] = p
    assert set(sqs) == {f"fanout-{s}-{i}" for s in ("partition", "post") for i in range(SHARDS)}
    for name, p in sqs.items():
        assert p["FunctionResponseTypes"] == ["ReportBatchItemFailures"], name
        stage = "post" if name.startswith("fanout-post") else "query"
        assert function_id(fanout, f"fanout-{stage}") in refs(p["FunctionName"]), name
        if stage == "post":
            assert p["ScalingConfig"] == {"MaximumConcurrency": PLAN.max_concurrency_per_shard}
        else:
            assert 2 <= p["ScalingConfig"]["MaximumConcurrency"] <= 1000


def test_stream_event_source_mappings(fanout: dict[str, Any]) -> None:
    tables = {lid: role for role, lid in table_ids(fanout).items()}
    queue_names = {k: r["Properties"]["QueueName"] for k, r in by_type(fanout, "AWS::SQS::Queue").items()}
    streams = {}
    for m in by_type(fanout, "AWS::Lambda::EventSourceMapping").values():
        (source,) = refs(m["Properties"]["EventSourceArn"])
        if source in tables:
            streams[tables[source]] = m["Properties"]
    # each stream-fed table has one consumer, with its own failure queue
    assert set(streams) == {"connections", "subscriptions"}
    for table, fn, failures in (
        ("connections", "fanout-partition-counter", "fanout-partition-counter-failures"),
        ("subscriptions", "fanout-channel-counter", "fanout-channel-counter-failures"),
    ):
        stream = streams[table]
        assert refs(stream["FunctionName"]) == {function_id(fanout, fn)}, table
        assert stream["BisectBatchOnFunctionError"] is True, table
        assert stream["FunctionResponseTypes"] == ["ReportBatchItemFailures"], table
        assert stream["StartingPosition"] == "TRIM_HORIZON", table
        assert 0 < stream["MaximumRetryAttempts"] <= 20, table
        (queue,) = refs(stream["DestinationConfig"]["OnFailure"]["Destination"])
        assert queue_names[queue] == failures, table
        # Lambda sends the failed batch's description with the function's own role
        assert any(refs(r) == {queue} for r in _role_actions(fanout, fn)["sqs:SendMessage"]), table
        reads = _role_actions(fanout, fn)["dynamodb:GetRecords"]
        assert {x for r in reads for x in refs(r)} == {table_ids(fanout)[table]}, table


def test_reconciler_and_sweeper_run_every_minute(fanout: dict[str, Any]) -> None:
    scheduled = {}
    for rule in by_type(fanout, "AWS::Events::Rule").values():
        (target,) = rule["Properties"]["Targets"]
        (fn,) = refs(target["Arn"])
        scheduled[fn] = rule["Properties"]["ScheduleExpression"]
        assert target["RetryPolicy"]["MaximumRetryAttempts"] == 0  # the next minute's run retries
    assert scheduled == {
        function_id(fanout, "fanout-reconciler"): "rate(1 minute)",
        function_id(fanout, "fanout-channel-reconciler"): "rate(1 minute)",
        function_id(fanout, "fanout-sweeper"): "rate(1 minute)",
    }


def test_swarm_async_failures_land_in_an_encrypted_queue(fanout: dict[str, Any]) -> None:
    swarm = function_id(fanout, "fanout-swarm")
    (config,) = [
        c
        for c in by_type(fanout, "AWS::Lambda::EventInvokeConfig").values()
        if c["Properties"]["FunctionName"] == {"Ref": swarm}
    ]
    p = config["Properties"]
    assert p["FunctionName"] == {"Ref": swarm} and p["Qualifier"] == "$LATEST"
    assert p["MaximumRetryAttempts"] == 2
    assert p["MaximumEventAgeInSeconds"] == 6 * 3600
    (queue_id,) = refs(p["DestinationConfig"]["OnFailure"]["Destination"])
    queue = fanout["Resources"][queue_id]["Properties"]
    assert queue["QueueName"] == "fanout-swarm-failures"
    assert queue["SqsManagedSseEnabled"] is True
    assert queue["MessageRetentionPeriod"] == 14 * 24 * 3600
    # Lambda sends the failed event with the function's own role
    sends = _role_actions(fanout, "fanout-swarm")["sqs:SendMessage"]
    assert any(refs(r) == {queue_id} for r in sends)
    # and any message there pages someone
    alarms = [
        a["Properties"]
        for a in by_type(fanout, "AWS::CloudWatch::Alarm").values()
        if a["Properties"].get("MetricName") == "ApproximateNumberOfMessagesVisible"
        and refs(a["Properties"]["Dimensions"]) == {queue_id}
    ]
    (alarm,) = alarms
    assert alarm["Threshold"] == 1
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"


def test_sweeper_permissions(fanout: dict[str, Any]) -> None:
    actions = _role_actions(fanout, "fanout-sweeper")
    broadcasts = table_ids(fanout)["broadcasts"]
    (index,) = actions["dynamodb:Query"]
    assert refs(index) == {broadcasts} and json.dumps(index).endswith('/index/byPending"]]}')
    for action in ("dynamodb:GetItem", "dynamodb:UpdateItem"):
        (table,) = actions[action]
        assert table == {"Fn::GetAtt": [broadcasts, "Arn"]}, action
    (swarm,) = actions["lambda:InvokeFunction"]
    assert refs(swarm) == {function_id(fanout, "fanout-swarm")}
    # the counts of a broadcast: its counter shards in the ledger table
    (ledger,) = actions["dynamodb:BatchGetItem"]
    assert ledger == {"Fn::GetAtt": [table_ids(fanout)["idempotency"], "Arn"]}
    # nothing else: no other table, no queue
    assert set(actions) == {
        "dynamodb:Query", "dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:BatchGetItem",
        "lambda:InvokeFunction",
        "logs:CreateLogStream", "logs:PutLogEvents", "xray:PutTraceSegments", "xray:PutTelemetryRecords",
    }  # fmt: skip


def _tables_of(fanout: dict[str, Any], function_name: str) -> dict[str, set[str]]:
    """action -> the roles of the tables (or "<table>/<index>") a function may call it on."""
    roles = {lid: role for role, lid in table_ids(fanout).items()}
    out: dict[str, set[str]] = {}
    for action, resources in _role_actions(fanout, function_name).items():
        if not action.startswith("dynamodb:") or action == "dynamodb:ListStreams":
            continue
        for resource in resources:
            (lid,) = refs(resource) & set(roles)
            text = json.dumps(resource)
            index = text.split("/index/")[1].split('"')[0] if "/index/" in text else None
            stream = "/stream/" in text or "StreamArn" in text
            out.setdefault(action, set()).add(
                roles[lid] + (f"/{index}" if index else "") + ("/stream" if stream else "")
            )
    return out


STREAM_READ = ("dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator")


def test_channel_functions_least_privilege(fanout: dict[str, Any]) -> None:
    counter = _tables_of(fanout, "fanout-channel-counter")
    assert counter == {
        "dynamodb:UpdateItem": {"channels"},
        "dynamodb:DeleteItem": {"channels"},
        **{a: {"subscriptions/stream"} for a in STREAM_READ},
    }
    assert _tables_of(fanout, "fanout-channel-reconciler") == {
        "dynamodb:Scan": {"subscriptions", "channels"},
        "dynamodb:Query": {"subscriptions", "channels"},
        "dynamodb:DeleteItem": {"subscriptions", "channels"},
        "dynamodb:UpdateItem": {"channels"},
    }
    operator = _tables_of(fanout, "fanout-operator-api")
    assert operator["dynamodb:GetItem"] >= {"channels"}
    assert all("channels" not in t for a, t in operator.items() if a != "dynamodb:GetItem")
    assert all("subscriptions" not in t for t in operator.values())


def test_connection_and_pipeline_functions_reach_the_channel_tables(fanout: dict[str, Any]) -> None:
    writes = {"dynamodb:PutItem", "dynamodb:DeleteItem", "dynamodb:BatchWriteItem"}
    for fn in ("fanout-connect", "fanout-disconnect", "fanout-default"):
        actions = _tables_of(fanout, fn)
        assert {a for a, t in actions.items() if "subscriptions" in t} == writes, fn
        assert all("channels" not in t for t in actions.values()), fn
    assert "connections" in _tables_of(fanout, "fanout-default")["dynamodb:UpdateItem"]
    for fn in ("fanout-swarm", "fanout-query"):
        actions = _tables_of(fanout, fn)
        assert {"subscriptions", "connections/byUser"} <= actions["dynamodb:Query"], fn
        assert "channels" in actions["dynamodb:BatchGetItem"], fn
        assert not {a for a, t in actions.items() if "subscriptions" in t} - {"dynamodb:Query"}, fn
        assert not {a for a, t in actions.items() if "channels" in t} - {
            "dynamodb:GetItem", "dynamodb:BatchGetItem"
        }, fn  # fmt: skip
    post = _tables_of(fanout, "fanout-post")
    # the subscriptions of a pruned connection go in one BatchWriteItem of deletes
    assert {a for a, t in post.items() if "subscriptions" in t} == {"dynamodb:BatchWriteItem"}
    assert all("channels" not in t for t in post.values())
    # the swarm reads a small audience itself: it writes its plan and count and queues its post batches
    swarm = _tables_of(fanout, "fanout-swarm")
    assert {"dynamodb:PutItem", "dynamodb:UpdateItem"} <= {a for a, t in swarm.items() if "idempotency" in t}


# -- IAM -----------------------------------------------------------------------------------------
# Actions AWS only authorizes on Resource "*" (Service Authorization Reference), with the reason.
STAR_RESOURCE_ACTIONS = {
    "xray:PutTraceSegments": "X-Ray has no resource types",
    "xray:PutTelemetryRecords": "X-Ray has no resource types",
    "dynamodb:ListStreams": "ListStreams has no resource type",
    "ecr:GetAuthorizationToken": "issues a registry token, no resource type",
}

BOOTSTRAP_IMAGE_REPOSITORY = "cdk-hnb659fds-container-assets-${AWS::AccountId}-${AWS::Region}"


def allow_statements(t: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for lid, r in t["Resources"].items():
        docs = []
        if r["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            docs.append(r["Properties"]["PolicyDocument"])
        if r["Type"] == "AWS::IAM::Role":
            docs += [p["PolicyDocument"] for p in r["Properties"].get("Policies", [])]
        for doc in docs:
            out += [(lid, s) for s in doc["Statement"] if s["Effect"] == "Allow"]
    return out


def as_list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else [v]


@pytest.mark.parametrize("stack", ["Fanout", "FanoutLoadTest"])
def test_every_iam_statement_is_scoped_to_this_stack(synth: Synth, stack: str) -> None:
    t = synth.templates[stack]
    statements = allow_statements(t)
    assert statements
    for lid, s in statements:
        for action in as_list(s["Action"]):
            assert "*" not in action, f"{lid}: wildcard action {action}"
        for resource in as_list(s["Resource"]):
            if resource == "*":
                assert set(as_list(s["Action"])) <= set(STAR_RESOURCE_ACTIONS), f"{lid}: {s['Action']} on *"
                continue
            if BOOTSTRAP_IMAGE_REPOSITORY in json.dumps(resource):
                continue  # the CDK bootstrap repository holding this app's image asset
            targets = refs(resource)
            assert targets, f"{lid}: resource {resource} names nothing in this app"
            for target in targets:
                if target.startswith("import:"):
                    assert target.startswith("import:Fanout:"), f"{lid}: {target}"
                else:
                    assert target in t["Resources"], f"{lid}: {target} is not a resource of {stack}"
    # no AWS managed policy other than API Gateway's own logging role
    for lid, role in by_type(t, "AWS::IAM::Role").items():
        for arn in role["Properties"].get("ManagedPolicyArns", []):
            assert "AmazonAPIGatewayPushToCloudWatchLogs" in json.dumps(arn), lid


def _role_actions(t: dict[str, Any], function_name: str) -> dict[str, list[Any]]:
    fn = t["Resources"][function_id(t, function_name)]
    (role_id,) = refs(fn["Properties"]["Role"])
    actions: dict[str, list[Any]] = {}
    for lid, s in allow_statements(t):
        policy = t["Resources"][lid]
        if policy["Type"] == "AWS::IAM::Policy" and {"Ref": role_id} in policy["Properties"]["Roles"]:
            for a in as_list(s["Action"]):
                actions.setdefault(a, []).extend(as_list(s["Resource"]))
    return actions


def test_post_to_connection_only_on_this_apis_connections(fanout: dict[str, Any]) -> None:
    api_id = logical_id_of(fanout, "AWS::ApiGatewayV2::Api", "ProtocolType", "WEBSOCKET")
    for name in FUNCTIONS:
        actions = _role_actions(fanout, name)
        # the post stage, and recovery posting a reconnected connection's missed messages
        if name not in ("fanout-post", "fanout-recovery"):
            assert "execute-api:ManageConnections" not in actions, name
            continue
        (arn,) = actions["execute-api:ManageConnections"]
        assert refs(arn) == {api_id}
        assert json.dumps(arn).endswith('/live/POST/@connections/*"]]}')


def test_operator_api_and_sweeper_may_invoke_the_swarm_function_only(fanout: dict[str, Any]) -> None:
    # $default starts a client's broadcast (publish, sendmessage) as the operator API does
    invokers = {"fanout-operator-api", "fanout-sweeper", "fanout-default"}
    for name in invokers:
        (target,) = _role_actions(fanout, name)["lambda:InvokeFunction"]
        assert refs(target) == {function_id(fanout, "fanout-swarm")}, name
    # $connect hands a ?recover= to the recovery function, and invokes nothing else
    (target,) = _role_actions(fanout, "fanout-connect")["lambda:InvokeFunction"]
    assert refs(target) == {function_id(fanout, "fanout-recovery")}
    for name in set(FUNCTIONS) - invokers - {"fanout-connect"}:
        assert "lambda:InvokeFunction" not in _role_actions(fanout, name), name


def test_default_function_sends_client_messages_with_least_privilege(fanout: dict[str, Any]) -> None:
    actions = _tables_of(fanout, "fanout-default")
    assert actions == {
        "dynamodb:GetItem": {"connections", "idempotency", "rate_limits", "history"},
        "dynamodb:Query": {"history"},
        "dynamodb:UpdateItem": {"connections", "broadcasts", "idempotency", "rate_limits", "history"},
        "dynamodb:PutItem": {"subscriptions", "broadcasts", "idempotency", "history"},
        "dynamodb:DeleteItem": {"subscriptions", "idempotency", "history"},
        "dynamodb:BatchWriteItem": {"subscriptions"},
    }
    # no other function touches the buckets
    for name in set(FUNCTIONS) - {"fanout-default"}:
        assert all("rate_limits" not in t for t in _tables_of(fanout, name).values()), name
    env = next(
        r["Properties"]["Environment"]["Variables"]
        for r in by_type(fanout, "AWS::Lambda::Function").values()
        if r["Properties"].get("FunctionName") == "fanout-default"
    )
    for var in ("FANOUT_RATE_LIMITS_TABLE", "FANOUT_BROADCASTS_TABLE", "FANOUT_IDEMPOTENCY_TABLE"):
        assert refs(env[var]), var
    assert refs(env["FANOUT_SWARM_FUNCTION_NAME"]) == {function_id(fanout, "fanout-swarm")}


def test_rate_limit_rejections_are_alarmed_and_charted(fanout: dict[str, Any]) -> None:
    alarms = [a["Properties"] for a in by_type(fanout, "AWS::CloudWatch::Alarm").values()]
    (alarm,) = [a for a in alarms if a.get("MetricName") == "RateLimitRejections"]
    assert alarm["Namespace"] == "Fanout" and alarm["Statistic"] == "Sum"
    assert alarm["Threshold"] == 600 and alarm["ComparisonOperator"] == "GreaterThanThreshold"
    assert alarm["TreatMissingData"] == "notBreaching"
    (dashboard,) = by_type(fanout, "AWS::CloudWatch::Dashboard").values()
    body = json.dumps(dashboard["Properties"]["DashboardBody"])
    for metric in ("Publishes", "DirectMessages", "RateLimitRejections", "ForbiddenSends"):
        assert f'\\"Fanout\\",\\"{metric}\\"' in body, metric


# -- monitoring ----------------------------------------------------------------------------------
def test_dashboard_widgets(fanout: dict[str, Any]) -> None:
    (dashboard,) = by_type(fanout, "AWS::CloudWatch::Dashboard").values()
    body = json.dumps(dashboard["Properties"]["DashboardBody"])
    for metric in ("Delivered", "Gone", "Throttled", "Failed", "BroadcastsStarted", "BroadcastsCompleted",
                   "BroadcastDuration", "BatchLatency", "PartitionSkew", "Connections", "ConnectFailed",
                   "DisconnectFailed", "ConnectRefused", "TransactionConflicts", "BroadcastsRedriven",
                   "BroadcastsFailed", "Subscriptions", "Channels", "SubscriptionRecordsCounted",
                   "SubscriptionsExpiredDeleted", "ChannelsCorrected", "ChannelDriftTotal",
                   "ChannelCounterAddsFailed", "SubscriptionRecordsMalformed"):  # fmt: skip
        assert f'\\"Fanout\\",\\"{metric}\\"' in body, metric
    assert body.count("PERIOD(") >= 3  # delivered/s, gone/s, throttled/s
    assert body.count('\\"stat\\":\\"p99\\"') >= 2 and body.count('\\"stat\\":\\"p50\\"') >= 2
    for metric in ("ApproximateNumberOfMessagesVisible", "ApproximateAgeOfOldestMessage"):
        # one line per shard per stage (and per DLQ for the depth)
        assert body.count(f'\\"AWS/SQS\\",\\"{metric}\\"') >= 2 * SHARDS, metric
    for metric in ("Errors", "Throttles", "ConcurrentExecutions"):
        assert body.count(f'\\"AWS/Lambda\\",\\"{metric}\\"') >= len(FUNCTIONS), metric
    # the lag of both stream consumers, and the channel functions' errors beside the occupancy figures
    assert body.count('\\"AWS/Lambda\\",\\"IteratorAge\\"') == 2
    assert body.count('\\"label\\":\\"channel-counter errors\\"') == 1
    assert body.count('\\"label\\":\\"channel-reconciler errors\\"') == 1


def test_alarms_are_wired_to_the_topic(fanout: dict[str, Any]) -> None:
    (topic_id,) = by_type(fanout, "AWS::SNS::Topic")
    alarms = list(by_type(fanout, "AWS::CloudWatch::Alarm").values())
    for alarm in alarms:
        assert alarm["Properties"]["AlarmActions"] == [{"Ref": topic_id}]
    names = [a["Properties"].get("MetricName") for a in alarms]
    dlqs = 2 * SHARDS + 4  # per-shard DLQs, both streams' failures, swarm and recovery async failures
    # and the recovery failures once more, as failed recoveries
    assert names.count("ApproximateNumberOfMessagesVisible") == dlqs + 1
    assert names.count("ApproximateAgeOfOldestMessage") == 2 * SHARDS
    assert names.count("Throttled") == 1
    # Errors of every function but the authorizer, whose alarm is net of its token refusals
    errors = [a["Properties"] for a in alarms if a["Properties"].get("MetricName") == "Errors"]
    alarmed = {ref for a in errors for ref in refs(a["Dimensions"])}
    authorizer = function_id(fanout, "fanout-authorizer")
    assert alarmed == {function_id(fanout, n) for n in FUNCTIONS} - {authorizer}
    topic = fanout["Resources"][topic_id]["Properties"]
    assert refs(topic["KmsMasterKeyId"])


def test_stream_consumers_lag_and_failures_are_alarmed(fanout: dict[str, Any]) -> None:
    alarms = [a["Properties"] for a in by_type(fanout, "AWS::CloudWatch::Alarm").values()]
    ages = [a for a in alarms if a.get("MetricName") == "IteratorAge"]
    assert {ref for a in ages for ref in refs(a["Dimensions"])} == {
        function_id(fanout, "fanout-partition-counter"),
        function_id(fanout, "fanout-channel-counter"),
    }
    for alarm in ages:
        assert alarm["Namespace"] == "AWS/Lambda" and alarm["Statistic"] == "Maximum"
        assert alarm["Threshold"] == FanoutConfig().stream_age_alarm_seconds * 1000  # IteratorAge is ms
    # a record the channel counter gave up on pages someone
    ids = {r["Properties"]["QueueName"]: k for k, r in by_type(fanout, "AWS::SQS::Queue").items()}
    (depth,) = [
        a
        for a in alarms
        if a.get("MetricName") == "ApproximateNumberOfMessagesVisible"
        and refs(a["Dimensions"]) == {ids["fanout-channel-counter-failures"]}
    ]
    assert depth["Threshold"] == 1
    assert depth["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"


def _fanout_alarm(fanout: dict[str, Any], metric: str) -> dict[str, Any]:
    (alarm,) = [
        a["Properties"]
        for a in by_type(fanout, "AWS::CloudWatch::Alarm").values()
        if a["Properties"].get("MetricName") == metric
    ]
    # exactly what Powertools emits: namespace POWERTOOLS_METRICS_NAMESPACE, dimension service=fanout
    assert alarm["Namespace"] == "Fanout"
    assert alarm["Dimensions"] == [{"Name": "service", "Value": "fanout"}]
    assert alarm["Statistic"] == "Sum" and alarm["Period"] == 60
    assert alarm["TreatMissingData"] == "notBreaching"
    return alarm


def test_authorizer_faults_alarm_subtracts_token_refusals(fanout: dict[str, Any]) -> None:
    (alarm,) = [
        a["Properties"]
        for a in by_type(fanout, "AWS::CloudWatch::Alarm").values()
        if "Metrics" in a["Properties"]
    ]
    queries = {q["Id"]: q for q in alarm["Metrics"]}
    (expression,) = [q for q in queries.values() if "Expression" in q]
    assert expression["Expression"] == "FILL(errors, 0) - FILL(refused, 0)"
    assert expression.get("ReturnData", True) is True
    errors = queries["errors"]["MetricStat"]
    assert errors["Metric"]["MetricName"] == "Errors" and errors["Metric"]["Namespace"] == "AWS/Lambda"
    assert refs(errors["Metric"]["Dimensions"]) == {function_id(fanout, "fanout-authorizer")}
    refused = queries["refused"]["MetricStat"]
    assert refused["Metric"] == {
        "MetricName": "ConnectRefused",
        "Namespace": "Fanout",
        "Dimensions": [{"Name": "service", "Value": "fanout"}],
    }
    assert errors["Stat"] == refused["Stat"] == "Sum"
    assert alarm["Threshold"] == 1 and alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"


@pytest.mark.parametrize("metric", ["ConnectFailed", "DisconnectFailed"])
def test_caught_connect_path_failures_are_alarmed(fanout: dict[str, Any], metric: str) -> None:
    alarm = _fanout_alarm(fanout, metric)
    assert alarm["Threshold"] == 1
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"


def test_engine_metrics_of_retries_and_redrives_are_alarmed(fanout: dict[str, Any]) -> None:
    conflicts = _fanout_alarm(fanout, "TransactionConflicts")
    assert conflicts["Threshold"] == FanoutConfig().transaction_conflict_alarm_per_minute
    assert conflicts["EvaluationPeriods"] == conflicts["DatapointsToAlarm"] == 3  # sustained only
    for metric in ("BroadcastsRedriven", "BroadcastsFailed"):
        alarm = _fanout_alarm(fanout, metric)
        assert alarm["Threshold"] == 1 and alarm["EvaluationPeriods"] == 1, metric
        assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold", metric


def test_outputs(fanout: dict[str, Any]) -> None:
    assert {"WebSocketUrl", "CallbackUrl", "OperatorApiUrl", "ConnectionsTable", "PartitionsTable",
            "BroadcastsTable", "IdempotencyTable", "DashboardName"} <= set(fanout["Outputs"])  # fmt: skip


# -- load-test stack -----------------------------------------------------------------------------
def test_loadtest_stack_worker_count_parameter_and_image_asset(synth: Synth) -> None:
    t = synth.templates["FanoutLoadTest"]
    assert t["Parameters"]["WorkerCount"]["Default"] == 7
    services = by_type(t, "AWS::ECS::Service")
    counts = sorted(json.dumps(s["Properties"]["DesiredCount"]) for s in services.values())
    assert counts == ["1", '{"Ref": "WorkerCount"}']
    for s in services.values():
        assert s["Properties"]["LaunchType"] == "FARGATE"
    assets = json.loads((synth.outdir / "FanoutLoadTest.assets.json").read_text())
    (image,) = assets["dockerImages"].values()
    assert image["source"]["dockerFile"] == "loadtest/Dockerfile"
    staged = synth.outdir / image["source"]["directory"]
    assert (staged / "loadtest" / "Dockerfile").exists() and not (staged / ".venv").exists()


def test_lambda_code_asset_holds_only_the_engine(synth: Synth) -> None:
    assets = json.loads((synth.outdir / "Fanout.assets.json").read_text())
    dirs = [
        synth.outdir / a["source"]["path"]
        for a in assets["files"].values()
        if a["source"].get("packaging") == "zip"
    ]
    engine = [d for d in dirs if (d / "handlers").exists()]
    assert len(engine) == 1
    assert sorted(p.name for p in engine[0].iterdir()) == ["fanout", "handlers", "partitions"]
    assert not list(engine[0].glob("**/__pycache__"))
    # the operator tools stay out: no function imports them, and argparse/rich have no use there
    assert (engine[0] / "fanout" / "accounting.py").is_file()
    assert not (engine[0] / "fanout" / "tools").exists()


def test_the_dependencies_layer_leaves_out_what_only_operator_tools_use() -> None:
    from infra.cdk.bundling import runtime_dependencies

    deps = runtime_dependencies()
    assert any(d.startswith("aws-lambda-powertools") for d in deps)
    assert not any(d.startswith(("rich", "boto3-stubs")) for d in deps)
