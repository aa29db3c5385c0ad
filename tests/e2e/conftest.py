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


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Debian's chromium, headless, driven by Playwright (which cannot download browsers of its own
    here); `make setup` installs it where it is missing."""
    import os
    import shutil

    from playwright.sync_api import sync_playwright

    executable = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if executable is None:
        pytest.fail("chromium is not installed: `make setup` installs Debian's chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()
