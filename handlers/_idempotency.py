"""Powertools' idempotency as the operator API and $default use it: a request ``{"key", "digest"}``
whose key names the call and whose digest must match the first call's, in the idempotency table."""

from __future__ import annotations

import boto3
from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer, IdempotencyConfig


def idempotency_store(
    table: str, ttl_seconds: int, region: str | None = None
) -> tuple[DynamoDBPersistenceLayer, IdempotencyConfig]:
    persistence = DynamoDBPersistenceLayer(table_name=table, boto3_session=boto3.Session(region_name=region))
    config = IdempotencyConfig(
        event_key_jmespath="key", payload_validation_jmespath="digest", expires_after_seconds=ttl_seconds
    )
    return persistence, config
