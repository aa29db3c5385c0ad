"""Records every event it gets in $RUNTIME_TEST_DIR/<function>.jsonl; fails when FAIL_ALWAYS is set."""

from __future__ import annotations

import os
from typing import Any

from tests.integration.runtime_handlers import record


def handler(event: Any, context: Any) -> None:
    record(context.function_name, {"event": event, "requestId": context.aws_request_id})
    if os.environ.get("FAIL_ALWAYS"):
        raise RuntimeError("failing on purpose")
