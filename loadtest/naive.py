"""The naive broadcast sender, written the way the common tutorial does it: the baseline of the benchmarks.

One function, one process: Scan the connections table, then PostToConnection to each id in a loop with
the boto3 `apigatewaymanagementapi` client, deleting the row on GoneException. No partitions, no
queues, no concurrency. This is what `docs/benchmarks.md` compares the engine against.

Usage (from the repository root, with the local stack up)::

    .venv/bin/python -m loadtest.naive --message '{"hello": 1}'

prints one JSON line: seconds (the function call, as a warm Lambda would spend it), CPU seconds of this
process over the call, and the counts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError


def naive_broadcast(
    message: Any,
    *,
    table: str,
    connections_endpoint: str,
    dynamodb: Any,
    broadcast_id: str | None = None,
) -> dict[str, Any]:
    """Scan every connection and post the frame to each, one after the other."""
    apigw = boto3.client("apigatewaymanagementapi", endpoint_url=connections_endpoint)
    broadcast_id = broadcast_id or f"naive-{uuid.uuid4()}"
    frame = json.dumps(
        {
            "type": "broadcast",
            "broadcastId": broadcast_id,
            "sentAt": int(time.time() * 1000),
            "data": message,
        },
        separators=(",", ":"),
    ).encode()

    connection_ids: list[str] = []
    kwargs: dict[str, Any] = {"TableName": table, "ProjectionExpression": "connectionId"}
    while True:
        page = dynamodb.scan(**kwargs)
        connection_ids.extend(item["connectionId"]["S"] for item in page.get("Items", []))
        if "LastEvaluatedKey" not in page:
            break
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    delivered = gone = failed = 0
    for connection_id in connection_ids:
        try:
            apigw.post_to_connection(ConnectionId=connection_id, Data=frame)
            delivered += 1
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 410 or exc.response["Error"]["Code"] == "GoneException":
                dynamodb.delete_item(TableName=table, Key={"connectionId": {"S": connection_id}})
                gone += 1
            else:
                failed += 1
    return {
        "broadcastId": broadcast_id,
        "targeted": len(connection_ids),
        "delivered": delivered,
        "gone": gone,
        "failed": failed,
    }


def run(state: dict[str, Any], message: Any, table: str = "fanout-connections") -> dict[str, Any]:
    """Time one naive broadcast against the local stack described by `state` (its local.json)."""
    region = state.get("region", "us-east-1")
    dynamodb = boto3.client(  # type: ignore[call-overload]
        "dynamodb",
        endpoint_url=state["dynamodbUrl"],
        region_name=region,
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    boto3.setup_default_session(aws_access_key_id="local", aws_secret_access_key="local", region_name=region)
    c0, t0 = time.process_time(), time.perf_counter()
    out = naive_broadcast(
        message, table=table, connections_endpoint=state["connectionsUrl"], dynamodb=dynamodb
    )
    return out | {
        "seconds": round(time.perf_counter() - t0, 3),
        "cpuSeconds": round(time.process_time() - c0, 3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--message", default='{"naive": true}', help="a JSON value")
    p.add_argument("--state", type=Path, default=Path(".fanout/local.json"))
    p.add_argument("--table", default="fanout-connections")
    args = p.parse_args(argv)
    if not args.state.exists():
        raise SystemExit(f"{args.state} not found: start the local stack first")
    state = json.loads(args.state.read_text())
    print(json.dumps(run(state, json.loads(args.message), args.table)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
