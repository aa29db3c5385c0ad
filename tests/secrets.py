"""The connect tokens' key as the authorizer reads it in AWS: a Secrets Manager secret, by ARN."""

from __future__ import annotations

import uuid

import boto3
import pytest

from infra.local.resources import create_token_secret


def use_token_secret(mp: pytest.MonkeyPatch, value: str, endpoint: str | None = None) -> str:
    """Store `value` as a new secret and point the authorizer at it (``FANOUT_TOKEN_SECRET_ARN``).

    `endpoint`: a Secrets Manager emulator (moto's server), given to the handlers as
    ``AWS_ENDPOINT_URL_SECRETS_MANAGER``; without one the caller runs under moto's ``mock_aws``.
    Returns the secret's ARN. The authorizer's per-container provider and the settings are reset, as
    in a new container.
    """
    import handlers.authorizer
    from fanout.settings import load

    if endpoint:
        mp.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", endpoint)
    client = boto3.client("secretsmanager", endpoint_url=endpoint, region_name="us-east-1")
    arn = create_token_secret(client, value, name=f"fanout-token-{uuid.uuid4().hex[:8]}")
    mp.setenv("FANOUT_TOKEN_SECRET_ARN", arn)
    load.cache_clear()
    handlers.authorizer.deps.cache_clear()
    return arn
