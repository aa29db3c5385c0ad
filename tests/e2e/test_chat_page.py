"""The chat page in headless Chromium against the whole local stack: two users join one room, at
connect (`?channels=`) and at run time (a subscribe frame), receive the room's broadcasts once each,
and keep their room across a reconnect."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, expect

from fanout.tools.operator_client import OperatorClient
from tests.chat_page import WAIT_MS, ChatUser

pytestmark = pytest.mark.e2e

ROOM = "room:lobby"


@pytest.fixture
def users(chromium: Browser, local_stack: dict[str, Any]) -> Iterator[tuple[ChatUser, ChatUser]]:
    alice = ChatUser.open(chromium, local_stack["chatUrl"])
    bob = ChatUser.open(chromium, local_stack["chatUrl"])
    try:
        yield alice, bob
    finally:
        alice.close()
        bob.close()


def to_room(state: dict[str, Any], text: str) -> str:
    api = OperatorClient(state["httpApiUrl"], bearer_token=state["operatorToken"])
    bid = api.start({"text": text}, to={"channels": [ROOM]})
    view = api.wait(bid, timeout=60, interval=0.05)
    assert view["status"] == "completed"
    return bid


def test_the_stack_serves_the_page_at_its_chat_url(local_stack: dict[str, Any]) -> None:
    url = local_stack["chatUrl"]
    with urllib.request.urlopen(urllib.parse.urljoin(url, "config"), timeout=10) as resp:
        config = json.loads(resp.read())
    assert config["websocketUrl"] == local_stack["websocketUrl"]


def test_two_users_join_one_room_and_each_sees_its_messages_once(
    users: tuple[ChatUser, ChatUser], local_stack: dict[str, Any]
) -> None:
    alice, bob = users
    # Given alice joins before connecting (so by ?channels=) and bob after (so by a subscribe frame)
    alice.join("lobby")
    alice.connect("alice")
    alice.wait_joined(ROOM)
    bob.connect("bob")
    bob.join("lobby")
    bob.wait_joined(ROOM)
    assert "channels=room%3Alobby" in alice.sockets[-1]
    assert "channels=" not in bob.sockets[-1]

    # When the room gets two messages
    to_room(local_stack, "welcome")
    to_room(local_stack, "second")

    # Then each page shows both, once each, in the room
    for user in (alice, bob):
        user.wait_rows(2, ROOM)
        assert [m.text for m in user.shown(ROOM)] == ["welcome", "second"]
        assert user.page.locator("#messages").get_attribute("data-duplicates") in (None, "0")
        assert user.errors == []


def test_a_reconnect_keeps_the_rooms_and_a_disconnected_page_receives_nothing(
    users: tuple[ChatUser, ChatUser], local_stack: dict[str, Any]
) -> None:
    alice, bob = users
    for user, name in ((alice, "alice"), (bob, "bob")):
        user.connect(name)
        user.join("lobby")
        user.wait_joined(ROOM)

    # When alice drops her connection and connects again with the Reconnect button
    alice.reconnect()
    alice.wait_joined(ROOM)
    # Then the new connection asked for her room at connect
    assert len(alice.sockets) == 2
    assert "channels=room%3Alobby" in alice.sockets[-1]

    # And when bob disconnects, a message to the room reaches alice only
    bob.disconnect()
    expect(bob.room(ROOM)).to_have_attribute("data-joined", "false", timeout=WAIT_MS)
    to_room(local_stack, "only for alice")
    alice.wait_rows(1, ROOM)
    assert [m.text for m in alice.shown(ROOM)] == ["only for alice"]
    assert bob.shown() == []


def test_a_room_name_the_engine_would_refuse_is_refused_by_the_page(users: tuple[ChatUser, ChatUser]) -> None:
    alice, _ = users
    alice.connect("alice")
    alice.join("not a room")
    expect(alice.notices("invalid_channel")).to_have_count(1, timeout=WAIT_MS)
    expect(alice.page.locator("#rooms li")).to_have_count(0)
