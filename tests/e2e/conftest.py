"""One local stack for the end-to-end tests of a session (starting one costs several seconds)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.local.stack import LocalStack, StackOptions


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A running local stack (10 partitions, 2 shards); yields the contents of its local.json."""
    state_dir = Path(tmp_path_factory.mktemp("fanout-stack"))
    stack = LocalStack(StackOptions(partitions=10, shards=2, state_dir=state_dir), log=lambda _: None)
    state = stack.start()
    try:
        yield state
    finally:
        stack.stop()
