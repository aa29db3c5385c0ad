"""The local chat page's server over HTTP: its files, its config, its token endpoint, and nothing else."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from fanout.errors import Unauthorized
from fanout.tokens import verify_token
from infra.local.chat_server import ChatConfig, ChatServer

SECRET = "chat-test-secret"
WEBSOCKET_URL = "ws://127.0.0.1:1/local"


@pytest.fixture(scope="module")
def chat() -> Iterator[str]:
    with ChatServer(ChatConfig(websocket_url=WEBSOCKET_URL, token_secret=SECRET)) as server:
        yield server.url


def request(
    url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def post_token(chat: str, payload: Any) -> tuple[int, dict[str, Any]]:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    status, _, body = request(f"{chat}/token", "POST", raw, {"Content-Type": "application/json"})
    return status, json.loads(body)


def test_the_page_and_its_scripts_are_served_with_their_types(chat: str) -> None:
    for path, kind, marker in (
        ("/", "text/html", b'<script src="chat.js"'),
        ("/index.html", "text/html", b'<form id="connect-form">'),
        ("/chat.js", "text/javascript", b"class ChatState"),
        ("/chat.css", "text/css", b"#messages"),
    ):
        status, headers, body = request(chat + path)
        assert status == 200, path
        assert headers["Content-Type"].startswith(kind), path
        assert marker in body, path
        assert headers["X-Content-Type-Options"] == "nosniff"
        # the page may talk to its own server and to the stack's WebSocket, nowhere else
        assert f"connect-src 'self' {WEBSOCKET_URL};" in headers["Content-Security-Policy"]


def test_the_config_names_the_websocket_and_the_rights_a_page_user_gets(chat: str) -> None:
    status, _, body = request(f"{chat}/config")
    assert status == 200
    assert json.loads(body) == {
        "websocketUrl": WEBSOCKET_URL,
        "channels": ["room:*"],
        "publish": ["room:*", "$user"],
    }


def test_a_token_for_the_chosen_user_joins_rooms_and_sends_to_users_only(chat: str) -> None:
    status, body = post_token(chat, {"user": "alice"})
    assert status == 200
    assert body["user"] == "alice"
    claims = verify_token(SECRET, body["token"])
    assert claims.sub == "alice"
    assert claims.channels == ("room:*",)
    assert claims.publish == ("room:*", "$user")
    assert claims.exp == body["expiresAt"]
    # signed with the stack's key: any other key refuses it
    with pytest.raises(Unauthorized):
        verify_token("another-secret", body["token"])


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"user": ""},
        {"user": "a b"},
        {"user": "x" * 65},
        {"user": 7},
        {"user": "alice", "channels": ["*"]},
        b"not json",
        b"[]",
    ],
)
def test_a_token_request_that_is_not_one_user_name_is_refused(chat: str, payload: Any) -> None:
    status, body = post_token(chat, payload)
    assert status == 400
    assert body["error"]
    assert "token" not in body


def test_a_token_request_body_beyond_the_limit_is_refused_unread(chat: str) -> None:
    status, body = post_token(chat, json.dumps({"user": "a" * 5000}).encode())
    assert status == 413
    assert "token" not in body


@pytest.mark.parametrize(
    "path",
    ["/nope", "/chat.py", "/../pyproject.toml", "/%2e%2e/chat_server.py", "/chat/chat.js", "/chat_server.py"],
)
def test_nothing_but_the_page_is_served(chat: str, path: str) -> None:
    status, _, body = request(chat + path)
    assert status == 404
    assert json.loads(body) == {"error": "not found"}


@pytest.mark.parametrize(("method", "path"), [("GET", "/token"), ("DELETE", "/token"), ("POST", "/config")])
def test_a_known_path_with_another_method_is_405(chat: str, method: str, path: str) -> None:
    status, _, _ = request(chat + path, method, b"{}" if method == "POST" else None)
    assert status == 405
