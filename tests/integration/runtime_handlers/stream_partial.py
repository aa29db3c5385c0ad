"""DynamoDB Streams handler: processes records in order, and the first time it meets the key 'k3'
reports it (and so everything after it) as failed. Processed records are recorded in order."""

from __future__ import annotations

from typing import Any

from tests.integration.runtime_handlers import record, side_dir


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    records = event["Records"]
    record(context.function_name + "-batches", {"keys": [r["dynamodb"]["Keys"]["pk"]["S"] for r in records]})
    for r in records:
        key = r["dynamodb"]["Keys"]["pk"]["S"]
        marker = side_dir() / f"failed-once-{key}"
        if key == "k3" and not marker.exists():
            marker.touch()
            return {"batchItemFailures": [{"itemIdentifier": r["dynamodb"]["SequenceNumber"]}]}
        record(context.function_name, {"eventName": r["eventName"], "key": key, "record": r})
    return {"batchItemFailures": []}
