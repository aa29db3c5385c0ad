"""Builders of real AWS event shapes for handler tests, on the shapes the local stack uses
(infra/local/events.py), with a test caller's defaults."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

from infra.local import events

ACCOUNT_ID = "123456789012"
API_ID = "api1234567"
REGION = "us-east-1"


def http_api_event(
    method: str,
    path: str,
    *,
    body: Any = None,
    raw_body: str | bytes | None = None,
    headers: dict[str, str] | None = None,
    iam: bool = True,
    path_parameters: dict[str, str] | None = None,
    route_key: str | None = None,
) -> dict[str, Any]:
    """An HTTP API (payload format 2.0) event, IAM-authorized unless iam=False."""
    is_b64 = False
    if raw_body is None and body is not None:
        raw_body = json.dumps(body)
    if isinstance(raw_body, bytes):
        raw_body = base64.b64encode(raw_body).decode()
        is_b64 = True
    merged = {"content-type": "application/json", **{k.lower(): v for k, v in (headers or {}).items()}}
    authorizer = (
        events.iam_authorizer(
            ACCOUNT_ID, access_key="AKIAEXAMPLE", user_id="AIDAEXAMPLE", user_name="operator"
        )
        if iam
        else None
    )
    return events.http_api_event(
        method=method,
        raw_path=path,
        route_key=route_key or f"{method} {path}",
        api_id=API_ID,
        account_id=ACCOUNT_ID,
        domain_name=f"{API_ID}.execute-api.{REGION}.amazonaws.com",
        source_ip="203.0.113.9",
        user_agent="pytest",
        now=time.time(),
        request_id=str(uuid.uuid4()),
        headers=merged.items(),
        body=raw_body,
        is_base64_encoded=is_b64,
        path_parameters=path_parameters,
        authorizer=authorizer,
    )


def sqs_event(messages: list[dict[str, Any]], queue_arn: str) -> dict[str, Any]:
    """A Lambda SQS event from ReceiveMessage results (with Attributes requested)."""
    return events.sqs_event(messages, queue_arn, REGION)


class LambdaContextStub:
    """The attributes of the Lambda context object that handlers read."""

    def __init__(self, name: str = "fanout-test", timeout_ms: int = 60_000) -> None:
        self.function_name = name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{name}"
        self.memory_limit_in_mb = 512
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{name}"
        self.log_stream_name = "test"
        self._deadline = time.monotonic() + timeout_ms / 1000

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))
