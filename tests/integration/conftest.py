"""Fixtures for tests against emulators."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from infra.local.procs import free_port


@pytest.fixture(scope="session")
def moto_sqs() -> Iterator[str]:
    """moto's server (threaded, in this process) for SQS; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def local_sqs() -> Iterator[str]:
    """The project's SQS server (strict about what SQS refuses, unlike moto), in this process."""
    from infra.local.sqs import serve_in_thread

    with serve_in_thread() as endpoint:
        yield endpoint
