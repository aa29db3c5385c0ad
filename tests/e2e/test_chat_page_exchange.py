"""The chat page in headless Chromium, two users exchanging messages in one room: each sees the other's
with `from` and an offset, and one who drops and reconnects recovers what was said meanwhile, with no
gap and no duplicate. Needs the engine's `publish` (acks, `from`) and its history (`offset`, `epoch`,
`?recover=`)."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, expect

from tests.chat_page import WAIT_MS, ChatUser, Shown

pytestmark = pytest.mark.e2e

ROOM = "room:exchange"


@pytest.fixture
def users(chromium: Browser, local_stack: dict[str, Any]) -> Iterator[tuple[ChatUser, ChatUser]]:
    alice = ChatUser.open(chromium, local_stack["chatUrl"])
    bob = ChatUser.open(chromium, local_stack["chatUrl"])
    try:
        for user, name in ((alice, "alice"), (bob, "bob")):
            user.connect(name)
            user.join("exchange")
            user.wait_joined(ROOM)
        yield alice, bob
    finally:
        alice.close()
        bob.close()


def say_acked(user: ChatUser, text: str) -> None:
    """Publish and wait for the engine's answer: an ack (the row gets its offset), not an error."""
    user.say(ROOM, text)
    row = user.page.locator("#messages li.message", has_text=text).last
    refused = user.page.locator('#notices li[data-action="publish"]')
    answered = user.page.locator('#messages li.message[data-pending="false"]', has_text=text)
    expect(answered.or_(refused).first).to_be_visible(timeout=WAIT_MS)
    assert refused.count() == 0, f"{text!r} was refused: {refused.first.text_content()}"
    assert row.get_attribute("data-failed") is None, f"{text!r} was refused: {row.text_content()}"
    assert row.get_attribute("data-offset"), f"{text!r} was acknowledged without an offset"


def assert_in_order_once(shown: list[Shown]) -> None:
    offsets = [m.offset for m in shown]
    assert None not in offsets, shown
    first = offsets[0]
    assert first is not None
    assert offsets == list(range(first, first + len(offsets))), "a gap or a duplicate"


def no_duplicates_dropped(user: ChatUser) -> str | None:
    return user.page.locator("#messages").get_attribute("data-duplicates")


def test_two_users_exchange_messages_with_their_sender_and_offset(users: tuple[ChatUser, ChatUser]) -> None:
    alice, bob = users
    say_acked(alice, "hello bob")
    bob.wait_rows(1, ROOM, **{"from": "alice"})
    say_acked(bob, "hi alice")
    alice.wait_rows(1, ROOM, **{"from": "bob"})

    for user in (alice, bob):
        user.wait_rows(2, ROOM)
        shown = user.shown(ROOM)
        assert [(m.sender, m.text) for m in shown] == [("alice", "hello bob"), ("bob", "hi alice")]
        assert_in_order_once(shown)
        assert user.errors == []
    # each sees its own message as its own, once (the ack and the echo are one row)
    assert [m.mine for m in alice.shown(ROOM)] == [True, False]
    assert [m.mine for m in bob.shown(ROOM)] == [False, True]
    # both saw the same offsets
    assert [m.offset for m in alice.shown(ROOM)] == [m.offset for m in bob.shown(ROOM)]


def test_a_user_who_reconnects_recovers_what_was_missed_without_gap_or_duplicate(
    users: tuple[ChatUser, ChatUser],
) -> None:
    alice, bob = users
    # Given bob has seen one message, then drops
    say_acked(alice, "before")
    bob.wait_rows(1, ROOM)
    (seen,) = bob.shown(ROOM)
    epoch = bob.room(ROOM).get_attribute("data-epoch")
    assert epoch
    bob.disconnect()

    # When alice says two things meanwhile and bob reconnects
    say_acked(alice, "while you were away")
    say_acked(alice, "still away?")
    bob.reconnect()

    # Then bob asked to recover his room from the last offset he saw
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(bob.sockets[-1]).query)
    assert query["recover"] == [f"{ROOM}:{seen.offset}:{epoch}"]
    # and has everything, once, in offset order
    bob.wait_rows(3, ROOM)
    assert [m.text for m in bob.shown(ROOM)] == ["before", "while you were away", "still away?"]
    assert_in_order_once(bob.shown(ROOM))

    # And what comes after the recovery follows it without a gap
    say_acked(alice, "welcome back")
    bob.wait_rows(4, ROOM)
    assert_in_order_once(bob.shown(ROOM))
    assert bob.shown(ROOM) == [
        Shown(m.channel, m.offset, m.sender, m.text, mine=False) for m in alice.shown(ROOM)
    ]
    assert no_duplicates_dropped(bob) in (None, "0")
    assert bob.notices("recovery_impossible").count() == 0


def test_the_reconnect_button_drops_and_recovers_with_nothing_shown_twice(
    users: tuple[ChatUser, ChatUser],
) -> None:
    alice, bob = users
    say_acked(alice, "one")
    say_acked(alice, "two")
    bob.wait_rows(2, ROOM)

    # When bob drops his open connection and connects again at once
    bob.reconnect()
    assert "recover" in urllib.parse.parse_qs(urllib.parse.urlsplit(bob.sockets[-1]).query)
    say_acked(alice, "three")

    # Then he has the three, once each: whatever the recovery sent again was not shown twice
    bob.wait_rows(3, ROOM)
    assert [m.text for m in bob.shown(ROOM)] == ["one", "two", "three"]
    assert_in_order_once(bob.shown(ROOM))
