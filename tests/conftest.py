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
def dynamodb_local() -> Iterator[str]:
    """A fresh in-memory DynamoDB Local for the test session; yields its endpoint URL."""
    from infra.local.dynamodb import DynamoDBLocal

    with DynamoDBLocal() as ddb:
        yield ddb.endpoint
