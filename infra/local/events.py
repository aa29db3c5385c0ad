"""Lambda event shapes, built as plain dicts: the one source of what the local runtime hands its
functions (SQS, DynamoDB Streams, EventBridge schedules), what the gateway emulator hands the operator
API (an HTTP API payload 2.0 event) and what the tests hand the handlers (`tests/events.py`).

The WebSocket API's events (REQUEST authorizer, `$connect`, MESSAGE, `$disconnect`) are built in
`infra/local/gateway_events.py`, beside the gateway's decisions about them (authorizer policy, route
selection); they take the gateway's configuration, this module takes plain values.

Standard library only and no I/O, so that the runtime's pollers and the tests import it cheaply.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

JsonDict = dict[str, Any]

# The SenderId Lambda's SQS records carry when the message did not come with one.
DEFAULT_SENDER_ID = "AIDAIENQZJOLO23YVJ4VO"


def request_time(epoch: float) -> str:
    """API Gateway's `requestTime` / `time` format, e.g. `09/Feb/2019:18:30:07 +0000`."""
    return time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(epoch))


# --------------------------------------------------------------------------------------------------
# SQS
# --------------------------------------------------------------------------------------------------


def sqs_record(message: Mapping[str, Any], queue_arn: str, region: str) -> JsonDict:
    """One message of a ReceiveMessage answer (botocore's shape) as a record of Lambda's SQS event."""
    now = str(int(time.time() * 1000))
    attrs = dict(message.get("Attributes") or {})
    attrs.setdefault("ApproximateReceiveCount", "1")
    attrs.setdefault("SentTimestamp", now)
    attrs.setdefault("SenderId", DEFAULT_SENDER_ID)
    attrs.setdefault("ApproximateFirstReceiveTimestamp", now)
    message_attributes: JsonDict = {}
    for name, value in (message.get("MessageAttributes") or {}).items():
        entry: JsonDict = {
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": value.get("DataType"),
        }
        if "StringValue" in value:
            entry["stringValue"] = value["StringValue"]
        if "BinaryValue" in value:
            entry["binaryValue"] = base64.b64encode(value["BinaryValue"]).decode()
        message_attributes[name] = entry
    body = message.get("Body", "")
    record: JsonDict = {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": body,
        "attributes": attrs,
        "messageAttributes": message_attributes,
        # SQS always answers MD5OfBody; a hand-made message gets the digest SQS would have computed
        "md5OfBody": message.get("MD5OfBody") or hashlib.md5(body.encode()).hexdigest(),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }
    if message.get("MD5OfMessageAttributes"):
        record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
    return record


def sqs_event(messages: Iterable[Mapping[str, Any]], queue_arn: str, region: str) -> JsonDict:
    """Lambda's SQS event: one record per message, in order."""
    return {"Records": [sqs_record(m, queue_arn, region) for m in messages]}


# --------------------------------------------------------------------------------------------------
# DynamoDB Streams
# --------------------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """botocore's parsed shapes back to the JSON of Lambda's event (blobs base64, datetimes epoch s)."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, dt.datetime):
        ts = value.timestamp()
        return int(ts) if ts == int(ts) else ts
    return value


def stream_record(record: Mapping[str, Any], stream_arn: str, region: str) -> JsonDict:
    """One record of a GetRecords answer (botocore's shape) as a record of Lambda's DynamoDB Streams event."""
    out: JsonDict = _jsonable(dict(record))
    out.setdefault("eventSource", "aws:dynamodb")
    out.setdefault("eventVersion", "1.1")
    out["awsRegion"] = region  # DynamoDB Local says "ddblocal"
    out["eventSourceARN"] = stream_arn
    return out


def records_event(records: list[JsonDict]) -> JsonDict:
    """The event of a batch of records (SQS or DynamoDB Streams): `{"Records": [...]}`."""
    return {"Records": records}


def failed_item_ids(response: Any) -> set[str] | None:
    """The identifiers of a partial batch response (`ReportBatchItemFailures`): an empty set when the
    batch succeeded, None when the response is malformed, which Lambda takes as the whole batch failing."""
    if response is None or response == "" or response == []:
        return set()
    if not isinstance(response, dict):
        return set()
    failures = response.get("batchItemFailures")
    if failures is None or failures == []:
        return set()
    if not isinstance(failures, list):
        return None
    ids: set[str] = set()
    for item in failures:
        ident = item.get("itemIdentifier") if isinstance(item, dict) else None
        if not isinstance(ident, str) or not ident:
            return None
        ids.add(ident)
    return ids


# --------------------------------------------------------------------------------------------------
# EventBridge schedules
# --------------------------------------------------------------------------------------------------


def scheduled_event(rule_arn: str, region: str, account: str) -> JsonDict:
    """The event a schedule rule (`rate(...)`) sends its target."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": account,
        "time": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [rule_arn],
        "detail": {},
    }


# --------------------------------------------------------------------------------------------------
# API Gateway HTTP API (payload format 2.0)
# --------------------------------------------------------------------------------------------------


def iam_authorizer(account_id: str, *, access_key: str, user_id: str, user_name: str) -> JsonDict:
    """`requestContext.authorizer` of a route with IAM authorization, called by an IAM user."""
    return {
        "iam": {
            "accessKey": access_key,
            "accountId": account_id,
            "callerId": user_id,
            "cognitoIdentity": None,
            "principalOrgId": None,
            "userArn": f"arn:aws:iam::{account_id}:user/{user_name}",
            "userId": user_id,
        }
    }


def encode_body(raw: bytes) -> tuple[str | None, bool]:
    """(body, isBase64Encoded) of a request body as HTTP APIs pass it: text as is, other bytes base64,
    no body at all when empty."""
    if not raw:
        return None, False
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode(), True


def http_api_event(
    *,
    method: str,
    raw_path: str,
    route_key: str,
    api_id: str,
    account_id: str,
    domain_name: str,
    source_ip: str,
    now: float,
    request_id: str,
    raw_query: str = "",
    headers: Iterable[tuple[str, str]] = (),
    query: Iterable[tuple[str, str]] = (),
    body: str | None = None,
    is_base64_encoded: bool = False,
    user_agent: str | None = None,
    path_parameters: Mapping[str, str] | None = None,
    authorizer: JsonDict | None = None,
) -> JsonDict:
    """An HTTP API payload 2.0 event. Header names are lower-cased and repeated headers (and query
    parameters) joined with commas, `Cookie` headers become `cookies`, as HTTP APIs do; `user_agent`
    defaults to the `User-Agent` header."""
    hdrs: dict[str, str] = {}
    cookies: list[str] = []
    for k, v in headers:
        lk = k.lower()
        if lk == "cookie":
            cookies.extend(c.strip() for c in v.split(";") if c.strip())
            continue
        hdrs[lk] = f"{hdrs[lk]},{v}" if lk in hdrs else v
    qs: dict[str, str] = {}
    for k, v in query:
        qs[k] = f"{qs[k]},{v}" if k in qs else v
    ctx: JsonDict = {
        "accountId": account_id,
        "apiId": api_id,
        "domainName": domain_name,
        "domainPrefix": domain_name.split(".", 1)[0],
        "http": {
            "method": method,
            "path": raw_path,
            "protocol": "HTTP/1.1",
            "sourceIp": source_ip,
            "userAgent": hdrs.get("user-agent", "") if user_agent is None else user_agent,
        },
        "requestId": request_id,
        "routeKey": route_key,
        "stage": "$default",
        "time": request_time(now),
        "timeEpoch": int(now * 1000),
    }
    if authorizer is not None:
        ctx["authorizer"] = authorizer
    event: JsonDict = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": raw_path,
        "rawQueryString": raw_query,
        "headers": hdrs,
        "requestContext": ctx,
        "isBase64Encoded": is_base64_encoded,
    }
    if cookies:
        event["cookies"] = cookies
    if qs:
        event["queryStringParameters"] = qs
    if path_parameters:
        event["pathParameters"] = dict(path_parameters)
    if body is not None:
        event["body"] = body
    return event
