"""Drives the real pipeline handlers against DynamoDB Local, an SQS endpoint and a fake @connections API."""

from __future__ import annotations

import json
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from fanout.channels import member_key
from fanout.settings import Settings, load
from infra.cdk.sizing import post_rate_per_worker
from infra.local.resources import create_queues, create_tables
from infra.local.stack import LOCAL_POST_RATE_BUDGET
from tests.events import LambdaContextStub, http_api_event, sqs_event
from tests.fakes import FakeConnectionsApi, FakeLambdaApi


def reset_handler_state() -> None:
    """Forget per-container state (settings, clients, loops) between tests, as a new container would."""
    import handlers.default
    import handlers.operator_api
    import handlers.post
    import handlers.query
    import handlers.swarm
    import handlers.sweeper

    for module in (handlers.swarm, handlers.query, handlers.post):
        if module.deps.cache_info().currsize:
            module.deps().close()
        module.deps.cache_clear()
    handlers.operator_api.deps.cache_clear()
    handlers.default.deps.cache_clear()
    handlers.sweeper.deps.cache_clear()
    load.cache_clear()


@dataclass
class Pipeline:
    settings: Settings
    dynamodb: Any
    sqs: Any
    connections: FakeConnectionsApi
    lambdas: FakeLambdaApi
    dead_letter_urls: list[str]
    delayed_seen: int = 0  # the most requeued post batches seen waiting out their DelaySeconds at once

    # -- seeding -------------------------------------------------------------------------------------
    def seed_connections(
        self,
        per_partition: dict[int, list[str]],
        *,
        connected_ago: float = 60,
        users: dict[str, str] | None = None,
        channels: dict[str, list[str]] | None = None,
    ) -> None:
        """Connection rows (and partition counts) for connections opened `connected_ago` seconds ago;
        `users` gives a connection its userId, `channels` its subscriptions (rows written as $connect
        writes them)."""
        now = int(time.time())
        connected_ms = int((time.time() - connected_ago) * 1000)
        users = users or {}
        channels = channels or {}

        def row(c: str, p: int) -> dict[str, Any]:
            item = {
                "connectionId": {"S": c},
                "partitionId": {"N": str(p)},
                "connectedAt": {"N": str(connected_ms)},
                "expiresAt": {"N": str(now + 8000)},
                "userId": {"S": users.get(c, "u-" + c)},
            }
            if channels.get(c):
                item["channels"] = {"SS": channels[c]}
            return {"PutRequest": {"Item": item}}

        rows = [row(c, p) for p, ids in per_partition.items() for c in ids]
        subscriptions = [
            {
                "PutRequest": {
                    "Item": {
                        "channel": {"S": name},
                        "member": {"S": member_key(c)},
                        "connectionId": {"S": c},
                        "userId": {"S": users.get(c, "u-" + c)},
                        "expiresAt": {"N": str(now + 8000)},
                    }
                }
            }
            for c, names in channels.items()
            for name in names
        ]
        for table, items in (
            (self.settings.connections_table, rows),
            (self.settings.subscriptions_table, subscriptions),
        ):
            for start in range(0, len(items), 25):
                pending: dict[str, Any] = {table: items[start : start + 25]}
                while pending:
                    out = self.dynamodb.batch_write_item(RequestItems=pending)
                    pending = out.get("UnprocessedItems") or {}
        for p, ids in per_partition.items():
            self.dynamodb.put_item(
                TableName=self.settings.partitions_table,
                Item={"partitionId": {"N": str(p)}, "connectionCount": {"N": str(len(ids))}},
            )

    def set_occupancy(self, channel: str, connections: int, users: int) -> None:
        """The channel's counter row, as the channel counter keeps it from the subscriptions stream."""
        self.dynamodb.put_item(
            TableName=self.settings.channels_table,
            Item={
                "channel": {"S": channel},
                "key": {"S": "#"},
                "connections": {"N": str(connections)},
                "users": {"N": str(users)},
            },
        )

    def subscription_rows(self) -> set[tuple[str, str]]:
        """(channel, connection id) of every subscription row."""
        rows: set[tuple[str, str]] = set()
        table = self.settings.subscriptions_table
        for page in self.dynamodb.get_paginator("scan").paginate(TableName=table):
            rows.update((i["channel"]["S"], i["connectionId"]["S"]) for i in page["Items"])
        return rows

    def connection_rows(self) -> set[str]:
        ids: set[str] = set()
        for page in self.dynamodb.get_paginator("scan").paginate(TableName=self.settings.connections_table):
            ids.update(i["connectionId"]["S"] for i in page["Items"])
        return ids

    def shape(self, broadcast_id: str) -> dict[str, int]:
        """What the swarm fixed for a broadcast and put in every task and batch (partitions, shards)."""
        item = self.dynamodb.get_item(
            TableName=self.settings.broadcasts_table, Key={"broadcastId": {"S": broadcast_id}}
        )["Item"]
        return {"partitions": int(item["partitions"]["N"]), "counter_shards": int(item["counterShards"]["N"])}

    # -- driving handlers ----------------------------------------------------------------------------
    def api(self, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
        import handlers.operator_api

        params = None
        route = f"{method} {path}"
        if path.startswith("/broadcasts/"):
            params = {"broadcast_id": path.rsplit("/", 1)[1]}
            route = "GET /broadcasts/{broadcast_id}"
        path, _, query = path.partition("?")
        if path.startswith("/channels/") and path.endswith("/history"):
            params = {"name": path.split("/")[2]}
            route = "GET /channels/{name}/history"
        elif path.startswith("/channels/"):
            params = {"name": path.rsplit("/", 1)[1]}
            route = "GET /channels/{name}"
        event = http_api_event(method, path, path_parameters=params, route_key=route, **kwargs)
        if query:
            event["rawQueryString"] = query
            event["queryStringParameters"] = dict(urllib.parse.parse_qsl(query))
        out = handlers.operator_api.handler(event, LambdaContextStub("fanout-operator-api"))
        body = json.loads(out["body"]) if out.get("body") else {}
        return out["statusCode"], body, out.get("headers", {})

    def run_swarms(self) -> int:
        import handlers.swarm

        calls = [inv for inv in self.lambdas.invocations if inv[0] == self.settings.swarm_function_name]
        self.lambdas.invocations.clear()
        for _, kind, payload in calls:
            assert kind == "Event"
            handlers.swarm.handler(payload, LambdaContextStub("fanout-swarm"))
        return len(calls)

    def _drain_once(self, urls: list[str], handler: Callable[..., Any], name: str) -> int:
        handled = 0
        for url in urls:
            msgs = self.sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"], WaitTimeSeconds=0
            ).get("Messages", [])
            if not msgs:
                continue
            arn = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
                "QueueArn"
            ]
            out = handler(sqs_event(msgs, arn), LambdaContextStub(name))
            failed = {f["itemIdentifier"] for f in out.get("batchItemFailures", [])}
            done = [m for m in msgs if m["MessageId"] not in failed]
            if done:
                self.sqs.delete_message_batch(
                    QueueUrl=url,
                    Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)],
                )
            handled += len(msgs)
        return handled

    def drain_queries(self) -> None:
        """Run the query handler over the partition queues until they are empty (post queues untouched)."""
        import handlers.query

        while self._drain_once(self.settings.partition_queue_urls, handlers.query.handler, "fanout-query"):
            pass

    def drain(self, *, idle_rounds: int = 3, timeout: float = 120) -> None:
        """Run query and post handlers over their queues until nothing arrives for a few rounds."""
        import handlers.post
        import handlers.query

        idle = 0
        deadline = time.monotonic() + timeout
        while idle < idle_rounds:
            assert time.monotonic() < deadline, "the pipeline did not drain"
            n = self._drain_once(self.settings.partition_queue_urls, handlers.query.handler, "fanout-query")
            n += self._drain_once(self.settings.post_queue_urls, handlers.post.handler, "fanout-post")
            if n:
                idle = 0
            elif delayed := self.delayed(self.settings.post_queue_urls):
                self.delayed_seen = max(self.delayed_seen, delayed)
                time.sleep(0.2)  # a requeue waits out its DelaySeconds, as in SQS
            else:
                idle += 1
                time.sleep(0.2)

    def delayed(self, urls: list[str]) -> int:
        """Messages sent with a DelaySeconds not yet over (requeued post batches)."""
        return sum(
            int(
                self.sqs.get_queue_attributes(
                    QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesDelayed"]
                )["Attributes"]["ApproximateNumberOfMessagesDelayed"]
            )
            for url in urls
        )

    def broadcast(self, message: Any, *, to: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        request = {"message": message, **({"to": to} if to is not None else {})}
        status, body, _ = self.api("POST", "/broadcasts", body=request, **kwargs)
        assert status == 202, body
        self.run_swarms()
        self.drain()
        status, view, _ = self.api("GET", f"/broadcasts/{body['broadcastId']}")
        assert status == 200, view
        return view


@contextmanager
def pipeline(
    dynamodb_endpoint: str, sqs_endpoint: str, monkeypatch: pytest.MonkeyPatch, **overrides: Any
) -> Iterator[Pipeline]:
    connections = FakeConnectionsApi().start()
    lambdas = FakeLambdaApi().start()
    try:
        prefix = f"t{uuid.uuid4().hex[:8]}"
        env = {
            "AWS_ENDPOINT_URL_DYNAMODB": dynamodb_endpoint,
            "AWS_ENDPOINT_URL_SQS": sqs_endpoint,
            "AWS_ENDPOINT_URL_LAMBDA": lambdas.endpoint,
            "FANOUT_CONNECTIONS_TABLE": f"{prefix}-connections",
            "FANOUT_PARTITIONS_TABLE": f"{prefix}-partitions",
            "FANOUT_BROADCASTS_TABLE": f"{prefix}-broadcasts",
            "FANOUT_IDEMPOTENCY_TABLE": f"{prefix}-idempotency",
            "FANOUT_SUBSCRIPTIONS_TABLE": f"{prefix}-subscriptions",
            "FANOUT_CHANNELS_TABLE": f"{prefix}-channels",
            "FANOUT_RATE_LIMITS_TABLE": f"{prefix}-rate-limits",
            "FANOUT_HISTORY_TABLE": f"{prefix}-history",
            "FANOUT_SWARM_FUNCTION_NAME": "fanout-swarm",
            "FANOUT_RECOVERY_FUNCTION_NAME": "fanout-recovery",
            "FANOUT_CONNECTIONS_ENDPOINT": connections.endpoint,
            # Paced as deployed: the local budget over this process's one post worker.
            "FANOUT_POST_RATE_PER_WORKER": str(post_rate_per_worker(LOCAL_POST_RATE_BUDGET, 1)),
            "FANOUT_RETRY_BASE_SECONDS": "0.001",
            "FANOUT_RETRY_CAP_SECONDS": "0.01",
            # As in Lambda: Powertools' AsyncBatchProcessor then runs on the container's event loop
            # (outside Lambda it would use asyncio.run, a new loop per batch).
            "LAMBDA_TASK_ROOT": str(Path(__file__).resolve().parents[2]),
        }
        env.update({f"FANOUT_{k.upper()}": str(v) for k, v in overrides.items()})
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        load.cache_clear()
        base = Settings()
        dynamodb = boto3.client("dynamodb", endpoint_url=dynamodb_endpoint)
        sqs = boto3.client("sqs", endpoint_url=sqs_endpoint)
        create_tables(dynamodb, base)
        queues = create_queues(sqs, shards=base.shard_count, prefix=prefix, visibility_timeout=2)
        post_dlqs = queues.dead_letter_queue_urls[base.shard_count :]
        monkeypatch.setenv("FANOUT_PARTITION_QUEUE_URLS", json.dumps(queues.partition_queue_urls))
        monkeypatch.setenv("FANOUT_POST_QUEUE_URLS", json.dumps(queues.post_queue_urls))
        monkeypatch.setenv("FANOUT_POST_DEAD_LETTER_QUEUE_URLS", json.dumps(post_dlqs))
        reset_handler_state()
        yield Pipeline(load(Settings), dynamodb, sqs, connections, lambdas, post_dlqs)
    finally:
        reset_handler_state()
        connections.stop()
        lambdas.stop()
