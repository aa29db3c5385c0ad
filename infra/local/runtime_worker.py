"""The process inside a local Lambda "container": imports the function's handler once (the cold start;
module state persists across invocations), then serves one invocation at a time over its stdin/stdout
pipes, one JSON line per request and per response. The handler's own prints go to stderr, which the
runtime prefixes and collects.

Started by the runtime (`infra/local/runtime_pool.py`) as
`python -c "from infra.local.runtime_worker import worker_main; worker_main()"`.

Standard library only, at the top and below: every worker process imports this module before the
handler, and a heavier import would add to every cold start.
"""

from __future__ import annotations

import contextlib
import ctypes
import decimal
import importlib
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

WORKER_CMD = "from infra.local.runtime_worker import worker_main; worker_main()"


class LambdaContext:
    """The context object handed to handlers, with the attributes of AWS's Python runtime."""

    def __init__(self, request_id: str, deadline_ms: int) -> None:
        env = os.environ
        self.function_name = env.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_version = env.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.invoked_function_arn = env.get("_FANOUT_FUNCTION_ARN", "")
        self.memory_limit_in_mb = int(env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"))
        self.aws_request_id = request_id
        self.log_group_name = env.get("AWS_LAMBDA_LOG_GROUP_NAME", "")
        self.log_stream_name = env.get("AWS_LAMBDA_LOG_STREAM_NAME", "")
        self.identity: Any = None
        self.client_context: Any = None
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))


def json_default(value: Any) -> Any:
    """`json.dumps` default of handler results and invocation records: Decimals (boto3's DynamoDB
    numbers) as ints or floats."""
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _error_payload(
    exc: BaseException, request_id: str | None = None, *, skip_frames: int = 0
) -> dict[str, Any]:
    tb = exc.__traceback__
    for _ in range(skip_frames):  # hide the runtime's own frames, as AWS does
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    out: dict[str, Any] = {
        "errorMessage": str(exc),
        "errorType": type(exc).__name__,
        "stackTrace": [line.rstrip("\n") for line in traceback.format_tb(tb)],
    }
    if request_id:
        out["requestId"] = request_id
    return out


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL this worker when the runtime process dies, whatever way it dies (Linux prctl)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def worker_main() -> None:
    """Entry point of a container process. Protocol: one JSON line per request and per response."""
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # the handler's print() goes to the log pipe, never into the protocol
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the runtime, which stops us
    _die_with_parent(int(os.environ.get("_FANOUT_RUNTIME_PID", os.getppid())))

    spec = os.environ["_HANDLER"]
    module_name, _, attr = spec.rpartition(".")
    try:
        handler: Callable[[Any, Any], Any] = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:
        err = _error_payload(exc)
        err["errorType"] = (
            "Runtime.ImportModuleError" if isinstance(exc, ImportError) else "Runtime.HandlerNotFound"
        )
        err["errorMessage"] = f"Unable to import module '{module_name}' ({spec}): {exc}"
        traceback.print_exc()
        proto.write(json.dumps({"type": "initError", "error": err}) + "\n")
        return
    proto.write('{"type":"ready"}\n')

    for raw in sys.stdin.buffer:
        req = json.loads(raw)
        request_id = req["requestId"]
        if req.get("traceId"):  # as Lambda's runtime does before each invocation
            os.environ["_X_AMZN_TRACE_ID"] = req["traceId"]
        else:
            os.environ.pop("_X_AMZN_TRACE_ID", None)
        ctx = LambdaContext(request_id, int(req["deadlineMs"]))
        try:
            result = handler(req["event"], ctx)
        except Exception as exc:
            print(f"[ERROR] {type(exc).__name__}: {exc}", file=sys.stderr)
            traceback.print_exc()
            out = json.dumps({"ok": False, "error": _error_payload(exc, request_id, skip_frames=1)})
        else:
            try:
                out = json.dumps({"ok": True, "result": result}, default=json_default)
            except (TypeError, ValueError) as exc:
                err = {
                    "errorMessage": f"Unable to marshal response: {exc}",
                    "errorType": "Runtime.MarshalError",
                }
                out = json.dumps({"ok": False, "error": {**err, "requestId": request_id, "stackTrace": []}})
        sys.stdout.flush()
        sys.stderr.flush()
        proto.write(out + "\n")
