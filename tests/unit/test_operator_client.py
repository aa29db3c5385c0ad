"""The operator API client retries what is safe to retry, and only that (a local HTTP server)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from fanout.errors import BroadcastNotFound, InvalidInput
from fanout.tools.operator_client import OperatorApiError, OperatorApiUnavailable, OperatorClient

# (status, body, seconds to wait before answering) for each request, in order
Script = list[tuple[int, dict[str, Any], float]]


class Api:
    def __init__(self) -> None:
        self.script: Script = []
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                api.seen.append((self.command, self.path, dict(self.headers.items()), body))
                status, payload, delay = api.script.pop(0) if api.script else (200, {}, 0.0)
                time.sleep(delay)
                raw = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = _answer

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def client(self, **kw: Any) -> OperatorClient:
        return OperatorClient(self.url, bearer_token="t", **{"timeout": 0.5, **kw})


@pytest.fixture
def api() -> Iterator[Api]:
    server = Api()
    yield server
    server.server.shutdown()
    server.server.server_close()


def test_status_is_retried_through_5xx_and_429(api: Api) -> None:
    api.script = [
        (503, {"message": "busy"}, 0),
        (429, {"message": "slow down"}, 0),
        (200, {"status": "running"}, 0),
    ]
    assert api.client().status("b1") == {"status": "running"}
    assert [(m, p) for m, p, _, _ in api.seen] == [("GET", "/broadcasts/b1")] * 3


def test_a_start_that_timed_out_is_retried_with_the_same_key(api: Api) -> None:
    api.script = [(202, {"broadcastId": "first"}, 1.0), (202, {"broadcastId": "first"}, 0)]
    assert api.client().start({"text": "hi"}) == "first"
    keys = [h.get("Idempotency-Key") for _, _, h, _ in api.seen]
    assert len(keys) == 2 and keys[0] and keys[0] == keys[1]
    assert all(json.loads(b) == {"message": {"text": "hi"}} for _, _, _, b in api.seen)


def test_a_start_in_progress_409_is_retried_and_the_callers_key_is_kept(api: Api) -> None:
    api.script = [(409, {"message": "being started"}, 0), (202, {"broadcastId": "b"}, 0)]
    assert api.client().start("m", idempotency_key="k-1") == "b"
    assert [h.get("Idempotency-Key") for _, _, h, _ in api.seen] == ["k-1", "k-1"]


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, InvalidInput), (422, InvalidInput), (404, BroadcastNotFound), (418, OperatorApiError)],
)
def test_client_errors_are_not_retried(api: Api, status: int, error: type[Exception]) -> None:
    api.script = [(status, {"message": "no"}, 0)]
    call: Callable[[], Any] = (
        (lambda: api.client().status("x")) if status == 404 else (lambda: api.client().start(1))
    )
    with pytest.raises(error):
        call()
    assert len(api.seen) == 1


def test_every_attempt_failing_is_a_clear_error(api: Api) -> None:
    api.script = [(503, {"message": "busy"}, 0)] * 3
    with pytest.raises(OperatorApiError, match="503"):
        api.client(attempts=3).status("b")
    assert len(api.seen) == 3


def test_no_server_is_unavailable_after_the_attempts() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    with pytest.raises(OperatorApiUnavailable, match="did not answer after 2 attempts"):
        OperatorClient(f"http://127.0.0.1:{port}", bearer_token="t", attempts=2, timeout=0.5).status("b")
