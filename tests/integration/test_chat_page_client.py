"""The chat page in headless Chromium against a scripted engine: the page's side of the chat contract
(publish frames, acks, envelopes with `from`/`offset`/`epoch`, `?recover=`, `recovery_impossible`,
history pages) checked frame by frame, whatever the engine does today.

The page's WebSocket is answered by Playwright's WebSocket routing, not by a server: each test plays
the engine's frames, in orders a real engine can produce (an echo before its ack, offsets out of
order, a recovery that overlaps what was seen).
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, WebSocketRoute, expect

from infra.local.chat_server import ChatConfig, ChatServer
from tests.chat_page import WAIT_MS, ChatUser

WEBSOCKET_URL = "ws://127.0.0.1:9/local"
ROOM = "room:a"


@dataclass
class Socket:
    route: WebSocketRoute
    frames: list[dict[str, Any]] = field(default_factory=list)

    @property
    def query(self) -> dict[str, list[str]]:
        return urllib.parse.parse_qs(urllib.parse.urlsplit(self.route.url).query)


@dataclass
class ScriptedEngine:
    """Answers the page's WebSockets; the test says what the engine sends."""

    page: Page
    sockets: list[Socket] = field(default_factory=list)

    def install(self) -> None:
        self.page.route_web_socket(f"{WEBSOCKET_URL}**", self._accept)

    def _accept(self, route: WebSocketRoute) -> None:
        socket = Socket(route)
        route.on_message(lambda message: socket.frames.append(json.loads(message)))
        self.sockets.append(socket)

    @property
    def socket(self) -> Socket:
        return self.sockets[-1]

    def send(self, **frame: Any) -> None:
        self.socket.route.send(json.dumps(frame))

    def envelope(self, offset: int, text: str, sender: str = "bob", epoch: str = "E1", **extra: Any) -> None:
        self.send(
            type="broadcast",
            broadcastId=f"b-{epoch}-{offset}",
            sentAt=1,
            channel=ROOM,
            offset=offset,
            epoch=epoch,
            data={"text": text},
            **{"from": sender},
            **extra,
        )

    def frame(self, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first frame the page sent on the current socket that matches, waiting for it."""
        deadline = time.monotonic() + WAIT_MS / 1000
        while True:
            found = [f for f in self.socket.frames if match(f)]
            if found:
                return found[0]
            assert time.monotonic() < deadline, f"no such frame; the page sent {self.socket.frames}"
            # one round trip to the browser: Playwright delivers the socket's frames meanwhile
            self.page.evaluate("() => new Promise(requestAnimationFrame)")


@pytest.fixture(scope="module")
def chat_url() -> Iterator[str]:
    with ChatServer(ChatConfig(websocket_url=WEBSOCKET_URL, token_secret="page-test-secret")) as server:
        yield server.url + "/"


@pytest.fixture
def alice(chromium: Browser, chat_url: str) -> Iterator[tuple[ChatUser, ScriptedEngine]]:
    context = chromium.new_context()
    page = context.new_page()
    engine = ScriptedEngine(page)
    engine.install()
    user = ChatUser(context, page)
    page.on("pageerror", lambda exc: user.errors.append(str(exc)))
    page.goto(f"{chat_url}?rooms=a")
    expect(page.locator("body")).to_have_attribute("data-ready", "true", timeout=WAIT_MS)
    user.connect("alice")
    try:
        yield user, engine
    finally:
        assert user.errors == []
        context.close()


def position(user: ChatUser) -> tuple[str | None, str | None]:
    room = user.room(ROOM)
    return room.get_attribute("data-position"), room.get_attribute("data-epoch")


def offsets(user: ChatUser) -> list[int | None]:
    return [m.offset for m in user.shown(ROOM)]


def duplicates(user: ChatUser) -> str | None:
    return user.page.locator("#messages").get_attribute("data-duplicates")


def test_the_rooms_chosen_before_connecting_are_asked_for_at_connect(
    alice: tuple[ChatUser, ScriptedEngine],
) -> None:
    _, engine = alice
    assert engine.socket.query["channels"] == [ROOM]
    assert "recover" not in engine.socket.query
    assert engine.socket.query["token"][0].count(".") == 2


def test_a_publish_is_one_row_whether_its_ack_or_its_echo_comes_first(
    alice: tuple[ChatUser, ScriptedEngine],
) -> None:
    user, engine = alice
    user.say(ROOM, "hi")
    sent = engine.frame(lambda f: f.get("action") == "publish")
    assert sent == {"action": "publish", "channel": ROOM, "message": {"text": "hi"}, "id": sent["id"]}
    assert sent["id"]
    user.wait_rows(1, ROOM, pending="true")

    # the ack first, then the echo
    engine.send(type="ack", id=sent["id"], broadcastId="b-1", offset=1)
    user.wait_rows(1, ROOM, pending="false", offset="1")
    engine.envelope(1, "hi", sender="alice")
    user.wait_rows(1, ROOM, **{"from": "alice", "offset": "1", "epoch": "E1"})

    # the echo first, then the ack
    user.say(ROOM, "again")
    again = engine.frame(lambda f: f.get("message") == {"text": "again"})
    engine.envelope(2, "again", sender="alice")
    user.wait_rows(1, ROOM, offset="2", epoch="E1")
    engine.send(type="ack", id=again["id"], broadcastId="b-2", offset=2)
    expect(user.page.locator('#messages li[data-pending="true"]')).to_have_count(0, timeout=WAIT_MS)

    assert [(m.offset, m.sender, m.text, m.mine) for m in user.shown(ROOM)] == [
        (1, "alice", "hi", True),
        (2, "alice", "again", True),
    ]
    assert duplicates(user) == "0"
    assert position(user) == ("2", "E1")


def test_messages_are_shown_in_offset_order_once_each_with_their_sender(
    alice: tuple[ChatUser, ScriptedEngine],
) -> None:
    user, engine = alice
    engine.envelope(2, "second", sender="bob")
    engine.envelope(1, "first", sender="carol")
    engine.envelope(3, "third", sender="bob")
    engine.envelope(2, "second", sender="bob")
    expect(user.page.locator("#messages")).to_have_attribute("data-duplicates", "1", timeout=WAIT_MS)
    assert [(m.offset, m.sender, m.text) for m in user.shown(ROOM)] == [
        (1, "carol", "first"),
        (2, "bob", "second"),
        (3, "bob", "third"),
    ]
    assert not any(m.mine for m in user.shown(ROOM))
    assert position(user) == ("3", "E1")


def test_a_reconnect_recovers_from_the_end_of_what_was_seen_without_a_gap(
    alice: tuple[ChatUser, ScriptedEngine],
) -> None:
    user, engine = alice
    # Given offsets 1 and 3 arrived, and 2 not yet
    engine.envelope(1, "one")
    engine.envelope(3, "three")
    user.wait_rows(2, ROOM)
    assert position(user) == ("1", "E1")

    # When the page drops and reconnects
    user.reconnect()

    # Then it asks for everything after 1, in its room, and shows the recovery's overlap once
    assert len(engine.sockets) == 2
    assert engine.socket.query["recover"] == [f"{ROOM}:1:E1"]
    assert engine.socket.query["channels"] == [ROOM]
    engine.envelope(2, "two")
    engine.envelope(3, "three")
    engine.envelope(4, "four")
    user.wait_rows(4, ROOM)
    expect(user.page.locator("#messages")).to_have_attribute("data-duplicates", "1", timeout=WAIT_MS)
    assert offsets(user) == [1, 2, 3, 4]
    assert position(user) == ("4", "E1")


def test_recovery_impossible_is_shown_and_the_room_starts_afresh(
    alice: tuple[ChatUser, ScriptedEngine],
) -> None:
    user, engine = alice
    engine.envelope(5, "five")
    user.wait_rows(1, ROOM)
    user.reconnect()
    assert engine.socket.query["recover"] == [f"{ROOM}:5:E1"]

    engine.send(
        type="error",
        action="recover",
        channel=ROOM,
        code="recovery_impossible",
        message="history of room:a starts after offset 5",
    )
    expect(user.notices("recovery_impossible")).to_have_count(1, timeout=WAIT_MS)
    expect(user.notices("recovery_impossible")).to_contain_text(ROOM)
    assert position(user) == ("", "")

    # the next connection asks for the room, but recovers nothing it cannot have
    user.reconnect()
    assert engine.socket.query["channels"] == [ROOM]
    assert "recover" not in engine.socket.query


def test_a_new_epoch_restarts_the_offsets(alice: tuple[ChatUser, ScriptedEngine]) -> None:
    user, engine = alice
    engine.envelope(1, "old one")
    engine.envelope(2, "old two")
    engine.envelope(1, "new one", epoch="E2")
    user.wait_rows(3, ROOM)
    expect(user.notices("epoch_changed")).to_have_count(1, timeout=WAIT_MS)
    assert duplicates(user) == "0"
    assert position(user) == ("1", "E2")


def test_history_pages_are_taken_in_and_the_next_page_asked_for(
    alice: tuple[ChatUser, ScriptedEngine],
) -> None:
    user, engine = alice
    page_of = [
        {"type": "broadcast", "broadcastId": f"b-{n}", "offset": n, "from": "bob", "data": {"text": f"m{n}"}}
        for n in (7, 8)
    ]
    engine.send(type="history", channel=ROOM, epoch="E3", messages=page_of, more=True)
    user.wait_rows(2, ROOM)
    assert engine.frame(lambda f: f.get("action") == "history") == {
        "action": "history",
        "channel": ROOM,
        "since": 8,
        "epoch": "E3",
    }
    assert offsets(user) == [7, 8]


def test_a_refused_publish_shows_its_code_and_when_to_retry(alice: tuple[ChatUser, ScriptedEngine]) -> None:
    user, engine = alice
    user.say(ROOM, "too fast")
    sent = engine.frame(lambda f: f.get("action") == "publish")
    engine.send(
        type="error",
        action="publish",
        id=sent["id"],
        code="rate_limited",
        retryAfterMs=250,
        message="at most 10 messages/s",
    )
    row = user.page.locator('#messages li[data-failed="rate_limited"]')
    expect(row).to_have_count(1, timeout=WAIT_MS)
    expect(row).to_contain_text("retry after 250 ms")
    expect(user.notices("rate_limited")).to_have_count(1)


def test_what_a_message_says_is_shown_as_text_never_as_markup(alice: tuple[ChatUser, ScriptedEngine]) -> None:
    user, engine = alice
    markup = '<img src=x onerror="document.body.dataset.owned=1">'
    engine.envelope(1, markup, sender="<b>mallory</b>")
    user.wait_rows(1, ROOM)
    (shown,) = user.shown(ROOM)
    assert (shown.text, shown.sender) == (markup, "<b>mallory</b>")
    assert user.page.locator("#messages img, #messages b").count() == 0
    assert user.page.locator("body").get_attribute("data-owned") is None


def test_a_direct_message_is_shown_with_its_sender(alice: tuple[ChatUser, ScriptedEngine]) -> None:
    user, engine = alice
    engine.send(type="broadcast", broadcastId="d-1", sentAt=1, data={"text": "psst"}, **{"from": "bob"})
    user.wait_rows(1, "")
    (shown,) = user.shown("")
    assert (shown.sender, shown.text, shown.offset) == ("bob", "psst", None)


def test_a_connection_the_engine_drops_comes_back_by_itself_and_recovers(
    alice: tuple[ChatUser, ScriptedEngine],
) -> None:
    user, engine = alice
    engine.envelope(1, "one")
    user.wait_rows(1, ROOM)
    # API Gateway's idle timeout or its 2-hour limit: the server closes the socket
    engine.socket.route.close(code=1001, reason="Going away")
    expect(user.status).to_contain_text("reconnecting", timeout=WAIT_MS)
    user.wait_open()
    assert len(engine.sockets) == 2
    assert engine.socket.query["recover"] == [f"{ROOM}:1:E1"]


def test_a_direct_message_to_a_user_is_sent_as_sendmessage_and_acknowledged(
    alice: tuple[ChatUser, ScriptedEngine],
) -> None:
    user, engine = alice
    user.page.fill("#to", "bob")
    user.page.fill("#text", "just you")
    user.page.click("#send")
    sent = engine.frame(lambda f: f.get("action") == "sendmessage")
    assert sent == {"action": "sendmessage", "to": "bob", "message": {"text": "just you"}, "id": sent["id"]}
    user.wait_rows(1, "", pending="true", to="bob")
    engine.send(type="ack", id=sent["id"], broadcastId="b-d")
    user.wait_rows(1, "", pending="false", to="bob", mine="true")
    assert engine.frame(lambda f: f.get("action") == "sendmessage") == sent
    assert [f for f in engine.socket.frames if f.get("action") == "publish"] == []
