"""Small handler modules run by the local Lambda runtime in tests/integration/test_runtime.py.

They talk back to the test through files under $RUNTIME_TEST_DIR (one JSON line per observation).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def side_dir() -> Path:
    return Path(os.environ["RUNTIME_TEST_DIR"])


def record(name: str, entry: dict[str, Any]) -> None:
    """Append one JSON line to $RUNTIME_TEST_DIR/<name>.jsonl (one write: safe across processes)."""
    line = (json.dumps(entry) + "\n").encode()
    fd = os.open(side_dir() / f"{name}.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
