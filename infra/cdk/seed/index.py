"""CloudFormation custom resource: make sure partition rows 0..N-1 exist (docs/architecture.md).

Create/Update: ``SET connectionCount = if_not_exists(connectionCount, 0)`` on every partition, so
existing counts survive a change of N. Delete: nothing (the table goes with its own removal policy).
Runs in Lambda with only the runtime's boto3; answers CloudFormation itself (no provider framework).
"""

from __future__ import annotations

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3


def seed(table: str, count: int, client: Any = None) -> int:
    ddb = client or boto3.client("dynamodb")

    def ensure(partition_id: int) -> None:
        ddb.update_item(
            TableName=table,
            Key={"partitionId": {"N": str(partition_id)}},
            UpdateExpression="SET connectionCount = if_not_exists(connectionCount, :zero)",
            ExpressionAttributeValues={":zero": {"N": "0"}},
        )

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(ensure, range(count)))
    return count


def handler(event: dict[str, Any], context: Any) -> None:
    props = event.get("ResourceProperties", {})
    status, reason, data = "SUCCESS", "", {}
    try:
        if event["RequestType"] in ("Create", "Update"):
            data["Seeded"] = seed(props["TableName"], int(props["PartitionCount"]))
    except Exception as exc:  # report every failure to CloudFormation instead of hanging the stack
        status, reason = "FAILED", f"{type(exc).__name__}: {exc}"
    body = json.dumps(
        {
            "Status": status,
            "Reason": reason or f"see log stream {getattr(context, 'log_stream_name', '?')}",
            "PhysicalResourceId": f"{props.get('TableName', 'partitions')}-seed",
            "StackId": event["StackId"],
            "RequestId": event["RequestId"],
            "LogicalResourceId": event["LogicalResourceId"],
            "Data": data,
        }
    ).encode()
    request = urllib.request.Request(
        event["ResponseURL"], data=body, method="PUT", headers={"Content-Type": ""}
    )
    with urllib.request.urlopen(request, timeout=30):
        pass
