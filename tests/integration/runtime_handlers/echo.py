"""Echo: returns the event, the container's pid and a module-level invocation count (warm state)."""

from __future__ import annotations

import os
import time
from typing import Any

COLD_PID = os.getpid()
invocations = 0


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    global invocations
    invocations += 1
    print(f"echo invocation {invocations}")
    if event.get("fail"):
        raise ValueError(f"asked to fail: {event['fail']}")
    if event.get("sleep"):
        time.sleep(float(event["sleep"]))
    if event.get("exit"):
        os._exit(3)
    return {
        "event": event,
        "pid": os.getpid(),
        "invocations": invocations,
        "functionName": context.function_name,
        "functionVersion": context.function_version,
        "invokedFunctionArn": context.invoked_function_arn,
        "memoryLimitInMb": context.memory_limit_in_mb,
        "awsRequestId": context.aws_request_id,
        "logGroupName": context.log_group_name,
        "logStreamName": context.log_stream_name,
        "remainingMs": context.get_remaining_time_in_millis(),
        "env": os.environ.get("RUNTIME_TEST_VALUE"),
        "traceId": os.environ.get("_X_AMZN_TRACE_ID"),
        "daemonAddress": os.environ.get("AWS_XRAY_DAEMON_ADDRESS"),
    }
