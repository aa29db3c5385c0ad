"""The local SQS server's wire protocol: AWS JSON 1.0, as boto3 >= 1.34 speaks SQS.

A request is ``POST /`` with ``X-Amz-Target: AmazonSQS.<Action>`` and the action's parameters as a
JSON object. Errors carry ``__type`` (``com.amazonaws.sqs#<Shape>``) and, SQS's JSON protocol being
compatible with its older query protocol, the ``x-amzn-query-error`` header (``<legacy code>;Sender``,
`SqsError.code`): botocore then reports the legacy code (for example
``AWS.SimpleQueueService.NonExistentQueue``) and raises the modeled exception class
(``client.exceptions.QueueDoesNotExist``), as it does against AWS.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from infra.local.sqs_model import SqsError

JSON_CONTENT_TYPE = "application/x-amz-json-1.0"
TARGET_PREFIX = "AmazonSQS."


def action_of(target: str) -> str:
    """The action an ``X-Amz-Target`` header names; "" when it names none of SQS's."""
    return target[len(TARGET_PREFIX) :] if target.startswith(TARGET_PREFIX) else ""


def decode_params(raw: bytes) -> dict[str, Any]:
    """A request body's parameters; SerializationException unless it is a JSON object (or empty)."""
    try:
        params = json.loads(raw) if raw else {}
    except ValueError as exc:
        raise SqsError("SerializationException", "The request body is not valid JSON.") from exc
    if not isinstance(params, dict):
        raise SqsError("SerializationException", "The request body must be a JSON object.")
    return params


def result_response(result: dict[str, Any], request_id: str) -> web.Response:
    return web.Response(
        body=json.dumps(result).encode(),
        content_type=JSON_CONTENT_TYPE,
        headers={"x-amzn-RequestId": request_id},
    )


def error_response(err: SqsError, request_id: str) -> web.Response:
    headers = {"x-amzn-RequestId": request_id, "x-amzn-query-error": f"{err.code};Sender"}
    body = {"__type": f"com.amazonaws.sqs#{err.shape}", "message": err.message}
    return web.Response(
        status=err.status, body=json.dumps(body).encode(), content_type=JSON_CONTENT_TYPE, headers=headers
    )
