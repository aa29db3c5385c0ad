"""The chat page of the local stack: its static files and a token endpoint, for trying chat by hand.

Local only: it mints tokens with the stack's own signing key for any user who asks, which is what a
page on one developer's machine needs and what no deployment may ever do (the CDK app never imports
``infra.local``; an import-linter contract keeps it so).

    GET  /           the page (infra/local/chat/index.html), /chat.js, /chat.css
    GET  /config     {"websocketUrl": ..., "channels": [...], "publish": [...]}
    POST /token      {"user": "alice"} -> {"user": "alice", "token": "<JWT>", "expiresAt": <epoch s>}

Anything else is 404 (405 for a known path with another method). The signing key comes from the
environment (``FANOUT_CHAT_TOKEN_SECRET``), never from a file or the command line.

    python -m infra.local.chat_server --host 127.0.0.1 --port 9020 --websocket-url ws://127.0.0.1:9010/local
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fanout.tokens import issue_token

log = logging.getLogger("fanout.chat")

STATIC_DIR = Path(__file__).with_name("chat")
# The only files served: a fixed list, so that no request path ever reaches the file system.
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/chat.js": ("chat.js", "text/javascript; charset=utf-8"),
    "/chat.css": ("chat.css", "text/css; charset=utf-8"),
}
# What a page user may do: join any room, publish to rooms and send to other users.
CHANNELS = ("room:*",)
PUBLISH = ("room:*", "$user")
TOKEN_TTL_SECONDS = 3600
# A token request is a few dozen bytes; anything far larger is not one.
MAX_BODY_BYTES = 1024
SECRET_ENV = "FANOUT_CHAT_TOKEN_SECRET"


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    user: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")


class ChatConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    websocket_url: str
    token_secret: str = Field(min_length=1, repr=False)


def mint(config: ChatConfig, request: TokenRequest, now: float | None = None) -> dict[str, Any]:
    """A token for the page's user: its rooms and direct messages, for an hour."""
    issued = time.time() if now is None else now
    token = issue_token(
        config.token_secret,
        request.user,
        TOKEN_TTL_SECONDS,
        issued,
        channels=CHANNELS,
        publish=PUBLISH,
    )
    return {"user": request.user, "token": token, "expiresAt": int(issued) + TOKEN_TTL_SECONDS}


def security_headers(config: ChatConfig) -> dict[str, str]:
    """The page loads only its own files and talks only to its server and the stack's WebSocket."""
    return {
        "Content-Security-Policy": (
            f"default-src 'self'; connect-src 'self' {config.websocket_url}; "
            "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }


def _handler(config: ChatConfig) -> type[BaseHTTPRequestHandler]:
    headers = security_headers(config)
    public = {"websocketUrl": config.websocket_url, "channels": list(CHANNELS), "publish": list(PUBLISH)}

    class Handler(BaseHTTPRequestHandler):
        server_version = "fanout-chat"
        sys_version = ""

        def log_message(self, format: str, *args: Any) -> None:
            log.info("request", extra={"line": format % args})

        def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: HTTPStatus, value: Any) -> None:
            self._send(status, json.dumps(value).encode(), "application/json")

        def _error(self, status: HTTPStatus, message: str) -> None:
            self._json(status, {"error": message})

        def _path(self) -> str:
            return self.path.split("?", 1)[0]

        def do_GET(self) -> None:
            path = self._path()
            if path in STATIC_FILES:
                name, content_type = STATIC_FILES[path]
                self._send(HTTPStatus.OK, (STATIC_DIR / name).read_bytes(), content_type)
            elif path == "/config":
                self._json(HTTPStatus.OK, public)
            elif path == "/token":
                self._error(HTTPStatus.METHOD_NOT_ALLOWED, 'POST a JSON body {"user": ...}')
            else:
                self._error(HTTPStatus.NOT_FOUND, "not found")

        do_HEAD = do_GET

        def do_POST(self) -> None:
            path = self._path()
            if path != "/token":
                known = path in STATIC_FILES or path == "/config"
                status = HTTPStatus.METHOD_NOT_ALLOWED if known else HTTPStatus.NOT_FOUND
                self._error(status, "not found" if not known else "method not allowed")
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0 or length > MAX_BODY_BYTES:
                too_large = f"a token request is at most {MAX_BODY_BYTES} bytes"
                self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, too_large)
                return
            try:
                request = TokenRequest.model_validate_json(self.rfile.read(length))
            except ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
                    for e in exc.errors(include_url=False, include_input=False)
                )
                self._error(HTTPStatus.BAD_REQUEST, problems)
                return
            self._json(HTTPStatus.OK, mint(config, request))

        def do_PUT(self) -> None:
            self._error(HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed")

        do_DELETE = do_PATCH = do_PUT

    return Handler


class ChatServer:
    """The page's HTTP server: `start()` runs it in a thread (the tests), `main()` in a process."""

    def __init__(self, config: ChatConfig) -> None:
        self.config = config
        self.httpd = ThreadingHTTPServer((config.host, config.port), _handler(config))
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> ChatServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="chat-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the local stack's chat page")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--websocket-url", required=True)
    args = parser.parse_args(argv)
    secret = os.environ.get(SECRET_ENV)
    if not secret:
        print(f"{SECRET_ENV} is not set", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    server = ChatServer(
        ChatConfig(host=args.host, port=args.port, websocket_url=args.websocket_url, token_secret=secret)
    )
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.httpd.shutdown).start())
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
