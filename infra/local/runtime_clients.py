"""The AWS clients of the local Lambda runtime's own process: what its event source pollers read
with and where on-failure destinations are sent (aiobotocore, the emulators' endpoints)."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session


def sqs_endpoint(queue_url: str) -> str | None:
    """The SQS endpoint of a queue URL: its own host unless it is AWS's, else AWS_ENDPOINT_URL_SQS."""
    url = urlsplit(queue_url)
    if url.hostname and not url.hostname.endswith("amazonaws.com"):
        return f"{url.scheme}://{url.netloc}"
    return os.environ.get("AWS_ENDPOINT_URL_SQS")


def aws_client(service: str, region: str, endpoint: str | None, pool_size: int = 10) -> Any:
    """An aiobotocore client context manager (enter it with `async with`)."""
    kwargs: dict[str, Any] = {}
    if not (os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE")):
        kwargs = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}
    config = AioConfig(max_pool_connections=pool_size, retries={"max_attempts": 3, "mode": "standard"})
    return get_session().create_client(  # type: ignore[call-overload]  # the service is a run-time name
        service, region_name=region, endpoint_url=endpoint, config=config, **kwargs
    )
