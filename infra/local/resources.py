"""Create the engine's tables and queues on the emulators (DynamoDB Local, the SQS server, moto).

Both are built from the one topology (fanout/topology.py) the CDK app builds its tables and queues from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fanout.settings import Settings
from fanout.topology import Queue, TopologyConfig, topology

# The tables and queues of the topology (fanout/topology.py), as the CDK app builds them; their shape
# does not depend on the deploy-time knobs.
TOPOLOGY = topology()
MAX_RECEIVE_COUNT = TOPOLOGY.stage("post").shards[0].max_receive_count


def table_specs(settings: Settings) -> list[dict[str, Any]]:
    """CreateTable requests of the topology's tables, named as ``settings`` names them."""
    specs: list[dict[str, Any]] = []
    for table in TOPOLOGY.tables:
        spec: dict[str, Any] = {
            "TableName": getattr(settings, table.setting),
            "AttributeDefinitions": [
                {"AttributeName": k.name, "AttributeType": k.type} for k in table.attributes
            ],
            "KeySchema": [
                {"AttributeName": table.partition_key.name, "KeyType": "HASH"},
                *([{"AttributeName": table.sort_key.name, "KeyType": "RANGE"}] if table.sort_key else []),
            ],
        }
        if table.indexes:
            spec["GlobalSecondaryIndexes"] = [
                {
                    "IndexName": index.name,
                    "KeySchema": [
                        {"AttributeName": index.partition_key.name, "KeyType": "HASH"},
                        *(
                            [{"AttributeName": index.sort_key.name, "KeyType": "RANGE"}]
                            if index.sort_key
                            else []
                        ),
                    ],
                    "Projection": {"ProjectionType": index.projection},
                }
                for index in table.indexes
            ]
        if table.stream:
            spec["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": table.stream}
        specs.append(spec)
    return specs


def create_tables(dynamodb: Any, settings: Settings, *, seed_partitions: bool = True) -> None:
    """Create the topology's tables (idempotent) and one row per partition with count 0.

    TTL is not enabled: DynamoDB Local accepts the setting but never expires items, and nothing local
    waits that long (a connection row is deleted by $disconnect, or pruned on a 410).
    """
    existing = set(dynamodb.list_tables().get("TableNames", []))
    specs = table_specs(settings)
    for spec in specs:
        if spec["TableName"] not in existing:
            dynamodb.create_table(BillingMode="PAY_PER_REQUEST", **spec)
    for spec in specs:
        dynamodb.get_waiter("table_exists").wait(
            TableName=spec["TableName"], WaiterConfig={"Delay": 0.2, "MaxAttempts": 100}
        )
    if seed_partitions:
        seed_partition_rows(dynamodb, settings)


def seed_partition_rows(dynamodb: Any, settings: Settings) -> None:
    """One row per partition, count 0, so that reads of the partition view see every partition."""
    rows = [
        {"PutRequest": {"Item": {"partitionId": {"N": str(p)}, "connectionCount": {"N": "0"}}}}
        for p in range(settings.partition_count)
    ]
    for start in range(0, len(rows), 25):
        pending: dict[str, Any] = {settings.partitions_table: rows[start : start + 25]}
        while pending:
            out = dynamodb.batch_write_item(RequestItems=pending)
            pending = out.get("UnprocessedItems") or {}


def stream_arns(dynamodb: Any, settings: Settings) -> dict[str, str]:
    """The stream ARN of every topology table with a stream, by table key (connections, subscriptions):
    what the runtime's stream event source mappings read."""
    arns: dict[str, str] = {}
    for table in TOPOLOGY.tables:
        if table.stream:
            desc = dynamodb.describe_table(TableName=getattr(settings, table.setting))["Table"]
            arns[table.key] = str(desc["LatestStreamArn"])
    return arns


def connections_stream_arn(dynamodb: Any, settings: Settings) -> str:
    return stream_arns(dynamodb, settings)["connections"]


@dataclass(frozen=True)
class QueueSet:
    partition_queue_urls: list[str]
    post_queue_urls: list[str]
    dead_letter_queue_urls: list[str]  # the partition shards' DLQs, then the post shards'
    swarm_failure_queue_url: str | None = None
    recovery_failure_queue_url: str | None = None

    def stage(self, stage: str) -> list[str]:
        return {"partition": self.partition_queue_urls, "post": self.post_queue_urls}[stage]

    def dead_letters(self, stage: str) -> list[str]:
        shards = len(self.partition_queue_urls)
        return (
            self.dead_letter_queue_urls[:shards]
            if stage == "partition"
            else self.dead_letter_queue_urls[shards:]
        )


def create_queues(sqs: Any, *, shards: int, prefix: str = "fanout", visibility_timeout: int = 30) -> QueueSet:
    """The topology's queues for Q shards (idempotent): each stage's shards with their dead-letter
    queues, and the swarm's failure queue.

    ``visibility_timeout`` replaces the topology's (6 x the consumer's timeout, 6 minutes): locally an
    invocation that died (a killed worker, a test's fault) gives its messages back in seconds, not
    minutes, and the tests wait for that redelivery.
    """
    system = topology(TopologyConfig(shards=shards))
    urls: dict[str, list[str]] = {}
    dlq_urls: list[str] = []

    def create(queue: Queue, attributes: dict[str, str]) -> str:
        attributes = {"MessageRetentionPeriod": str(queue.retention_seconds), **attributes}
        return str(sqs.create_queue(QueueName=f"{prefix}-{queue.key}", Attributes=attributes)["QueueUrl"])

    for stage in system.queue_stages:
        for shard in stage.shards:
            assert shard.dead_letter is not None and shard.max_receive_count is not None
            dlq_url = create(shard.dead_letter, {})
            dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
                "QueueArn"
            ]
            redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(shard.max_receive_count)}
            attributes = {"VisibilityTimeout": str(visibility_timeout), "RedrivePolicy": json.dumps(redrive)}
            urls.setdefault(stage.stage, []).append(create(shard, attributes))
            dlq_urls.append(dlq_url)
    swarm_failures = create(system.swarm_failures, {})
    recovery_failures = create(system.recovery_failures, {})
    return QueueSet(urls["partition"], urls["post"], dlq_urls, swarm_failures, recovery_failures)


TOKEN_SECRET_NAME = "fanout-token-secret"


def create_token_secret(secretsmanager: Any, value: str, *, name: str = TOKEN_SECRET_NAME) -> str:
    """Store the connect tokens' HS256 key as a Secrets Manager secret (as the CDK app does); its ARN.

    The authorizer reads it by ARN (``FANOUT_TOKEN_SECRET_ARN``), the path it takes in AWS.
    """
    return str(secretsmanager.create_secret(Name=name, SecretString=value)["ARN"])
