"""Fixtures for tests against emulators."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from infra.local.procs import free_port


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """moto's server (threaded, in this process); yields its endpoint URL.

    It serves Secrets Manager for the authorizer, and SQS only as the reference the SQS conformance
    suite compares the project's SQS server with: moto's SQS accepts what SQS refuses (see
    test_sqs_conformance.py), so no pipeline test runs on it.
    """
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def secrets_manager(moto_server: str) -> str:
    """A Secrets Manager endpoint (moto's server)."""
    return moto_server


@pytest.fixture(scope="session")
def local_sqs() -> Iterator[str]:
    """The project's SQS server (infra/local/sqs.py, in a thread of this process): the SQS of every
    pipeline test, as of the local stack."""
    from infra.local.sqs import serve_in_thread

    with serve_in_thread() as endpoint:
        yield endpoint
