"""Create the engine's tables and queues on the emulators (DynamoDB Local, the SQS server, moto).

The same definitions as the CDK app's tables and queues construct (docs/architecture.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fanout.settings import Settings
from fanout.store import PENDING_INDEX

MAX_RECEIVE_COUNT = 5


def create_tables(dynamodb: Any, settings: Settings, *, seed_partitions: bool = True) -> None:
    """Create the four tables (idempotent) and one row per partition with count 0."""
    existing = set(dynamodb.list_tables().get("TableNames", []))
    specs: list[dict[str, Any]] = [
        {
            "TableName": settings.connections_table,
            "AttributeDefinitions": [
                {"AttributeName": "connectionId", "AttributeType": "S"},
                {"AttributeName": "partitionId", "AttributeType": "N"},
            ],
            "KeySchema": [{"AttributeName": "connectionId", "KeyType": "HASH"}],
            "GlobalSecondaryIndexes": [
                {
                    "IndexName": settings.connections_index,
                    "KeySchema": [
                        {"AttributeName": "partitionId", "KeyType": "HASH"},
                        {"AttributeName": "connectionId", "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "KEYS_ONLY"},
                }
            ],
            "StreamSpecification": {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        },
        {
            "TableName": settings.partitions_table,
            "AttributeDefinitions": [{"AttributeName": "partitionId", "AttributeType": "N"}],
            "KeySchema": [{"AttributeName": "partitionId", "KeyType": "HASH"}],
        },
        {
            "TableName": settings.broadcasts_table,
            "AttributeDefinitions": [
                {"AttributeName": "broadcastId", "AttributeType": "S"},
                {"AttributeName": "pending", "AttributeType": "S"},
                {"AttributeName": "createdAt", "AttributeType": "N"},
            ],
            "KeySchema": [{"AttributeName": "broadcastId", "KeyType": "HASH"}],
            "GlobalSecondaryIndexes": [
                {
                    "IndexName": PENDING_INDEX,
                    "KeySchema": [
                        {"AttributeName": "pending", "KeyType": "HASH"},
                        {"AttributeName": "createdAt", "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "KEYS_ONLY"},
                }
            ],
        },
        {
            "TableName": settings.idempotency_table,
            "AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}],
            "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
        },
    ]
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


def connections_stream_arn(dynamodb: Any, settings: Settings) -> str:
    desc = dynamodb.describe_table(TableName=settings.connections_table)["Table"]
    return str(desc["LatestStreamArn"])


@dataclass(frozen=True)
class QueueSet:
    partition_queue_urls: list[str]
    post_queue_urls: list[str]
    dead_letter_queue_urls: list[str]


def create_queues(sqs: Any, *, shards: int, prefix: str = "fanout", visibility_timeout: int = 30) -> QueueSet:
    """Q partition-task shards and Q post shards, each with its dead-letter queue (idempotent)."""
    partition_urls: list[str] = []
    post_urls: list[str] = []
    dlq_urls: list[str] = []
    for stage, urls in (("partition", partition_urls), ("post", post_urls)):
        for i in range(shards):
            name = f"{prefix}-{stage}-{i}"
            dlq_url = sqs.create_queue(
                QueueName=f"{name}-dlq", Attributes={"MessageRetentionPeriod": "1209600"}
            )["QueueUrl"]
            dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
                "QueueArn"
            ]
            redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(MAX_RECEIVE_COUNT)})
            url = sqs.create_queue(
                QueueName=name,
                Attributes={"VisibilityTimeout": str(visibility_timeout), "RedrivePolicy": redrive},
            )["QueueUrl"]
            urls.append(url)
            dlq_urls.append(dlq_url)
    return QueueSet(partition_urls, post_urls, dlq_urls)


TOKEN_SECRET_NAME = "fanout-token-secret"


def create_token_secret(secretsmanager: Any, value: str, *, name: str = TOKEN_SECRET_NAME) -> str:
    """Store the connect tokens' HS256 key as a Secrets Manager secret (as the CDK app does); its ARN.

    The authorizer reads it by ARN (``FANOUT_TOKEN_SECRET_ARN``), the path it takes in AWS.
    """
    return str(secretsmanager.create_secret(Name=name, SecretString=value)["ARN"])
