"""SQS handler: reports the messages whose body starts with 'fail' as batch item failures."""

from __future__ import annotations

from typing import Any

from tests.integration.runtime_handlers import record


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    failures = []
    for r in event["Records"]:
        record(
            context.function_name,
            {"body": r["body"], "receiveCount": r["attributes"]["ApproximateReceiveCount"], "record": r},
        )
        if r["body"].startswith("fail"):
            failures.append({"itemIdentifier": r["messageId"]})
    return {"batchItemFailures": failures}
