"""Holds each invocation for a while and records how many invocations run at the same moment.

A marker file exists under $RUNTIME_TEST_DIR/running-<function>/ while an invocation runs; the number
of markers seen is a lower bound of the true concurrency, so a value above the limit is a violation.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from tests.integration.runtime_handlers import record, side_dir


def handler(event: dict[str, Any], context: Any) -> None:
    running = side_dir() / f"running-{context.function_name}"
    running.mkdir(exist_ok=True)
    marker = running / uuid.uuid4().hex
    marker.touch()
    try:
        seen = len(os.listdir(running))
        time.sleep(float(os.environ.get("SLOW_SECONDS", "0.3")))
        record(context.function_name, {"seen": seen, "records": len(event.get("Records", []))})
    finally:
        marker.unlink()
