"""Fixtures shared by every layer of tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# Dummy credentials and region: tests never reach AWS.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "fanout")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "Fanout")
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
os.environ.setdefault("POWERTOOLS_DEV", "false")


@pytest.fixture(scope="session")
def dynamodb_local_raw() -> Iterator[str]:
    """A fresh in-memory DynamoDB Local for the test session; yields its own endpoint URL (no AWS
    transaction-conflict rules: use `dynamodb_local` unless a test is about DynamoDB Local itself)."""
    from infra.local.dynamodb import DynamoDBLocal

    with DynamoDBLocal() as ddb:
        yield ddb.endpoint


@pytest.fixture(scope="session")
def dynamodb_local(dynamodb_local_raw: str) -> Iterator[str]:
    """DynamoDB Local behind the strict layer (infra/local/ddb_strict.py), which applies AWS's
    transaction-conflict rules; yields the strict endpoint URL."""
    from infra.local.ddb_strict import strict_endpoint

    with strict_endpoint(dynamodb_local_raw) as endpoint:
        yield endpoint
