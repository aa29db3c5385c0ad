"""Fixtures shared by every layer of tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from infra.local.xray import XRaySink, new_trace_header, trace_root

# Dummy credentials and region: tests never reach AWS.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "fanout")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "Fanout")
# As in Lambda, where the functions run with active tracing: the X-Ray SDK and Powertools' Tracer decide
# at import whether they run in Lambda, so this must be set before any handler is imported.
os.environ.setdefault("LAMBDA_TASK_ROOT", str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("POWERTOOLS_DEV", "false")


@pytest.fixture(scope="session")
def dynamodb_local_raw() -> Iterator[str]:
    """A fresh in-memory DynamoDB Local for the test session; yields its own endpoint URL (no AWS
    transaction-conflict rules: use `dynamodb_local` unless a test is about DynamoDB Local itself)."""
    from infra.local.dynamodb import DynamoDBLocal

    with DynamoDBLocal() as ddb:
        yield ddb.endpoint


@pytest.fixture(scope="session")
def dynamodb_local(dynamodb_local_raw: str) -> Iterator[str]:
    """DynamoDB Local behind the strict layer (infra/local/ddb_strict.py), which applies AWS's
    transaction-conflict rules; yields the strict endpoint URL."""
    from infra.local.ddb_strict import strict_endpoint

    with strict_endpoint(dynamodb_local_raw) as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def xray_sink() -> Iterator[XRaySink]:
    """The UDP address standing in for the X-Ray daemon, for the whole session."""
    with XRaySink() as sink:
        yield sink


@dataclass(frozen=True)
class Trace:
    sink: XRaySink
    header: str

    @property
    def root(self) -> str:
        return str(trace_root(self.header))


@pytest.fixture(autouse=True)
def xray_trace(xray_sink: XRaySink, monkeypatch: pytest.MonkeyPatch) -> Trace:
    """Every test runs as a sampled invocation does in Lambda: a fresh trace header of its own, and the
    SDK sending to the session's sink (documents of this test: `sink.docs(trace.root)`)."""
    import sys

    header = new_trace_header(sampled=True)
    monkeypatch.setenv("_X_AMZN_TRACE_ID", header)
    monkeypatch.setenv("AWS_XRAY_DAEMON_ADDRESS", xray_sink.address)
    if "aws_xray_sdk.core" in sys.modules:  # the recorder read the address when it was imported
        from aws_xray_sdk.core import xray_recorder

        xray_recorder.emitter.set_daemon_address(xray_sink.address)
    return Trace(xray_sink, header)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Debian's chromium, headless, driven by Playwright (which cannot download browsers of its own
    here); `make setup` installs it where it is missing. ``CHROMIUM`` names another executable."""
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
