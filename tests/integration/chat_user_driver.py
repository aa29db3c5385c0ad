"""Drives two of the locustfile's `ChatUser`s through one reconnect, step by step, against a chat engine
at the WebSocket URL given; prints what they reported (Locust request events) as JSON.

Run in a process of its own by tests/integration/test_loadtest_chat_user.py: importing Locust patches
the process with gevent, which the test process must not be.

    python tests/integration/chat_user_driver.py ws://127.0.0.1:PORT/ SECRET

The scenario, both users in both rooms:
1. b publishes 3 messages to each room and a 1; both receive them all;
2. a publishes one more message to room 0 and drops at once, without a close frame, before reading its
   ack; b publishes 3 to each room meanwhile;
3. a reconnects with `?recover=`, publishing its unacknowledged message again with the same id, and
   receives what it missed;
4. b publishes 2 more to each room, live; both stop, judging their gaps against every ack.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent  # noqa: F401  (Locust's own import patches the process first)
import locust
from locust.argument_parser import parse_options
from locust.env import Environment

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import loadtest.locustfile as lf  # noqa: E402
from loadtest.chat_report import room_names  # noqa: E402

TIMEOUT = 20.0


def wait_until(user: lf.ChatUser, done: Callable[[], bool]) -> None:
    """Wait on the user's frames (never on the clock) until `done()`."""
    while True:
        user.frame_seen.clear()
        if done():
            return
        if not user.frame_seen.wait(TIMEOUT):
            raise TimeoutError(f"{user.user_id}: still waiting after {TIMEOUT} s")


def acked_max(env: Environment) -> dict[str, int]:
    lf.flush_chat_acks(env)
    acks = lf.chat_ledger_of(env).acks
    return {room: max(offset for _at, offset in items) for room, items in acks.items()}


def settled(env: Environment, *users: lf.ChatUser) -> None:
    """Every publish acknowledged, and every user has received up to the last acknowledged offset."""
    for user in users:
        wait_until(user, lambda u=user: not u.pending)  # type: ignore[misc]
    top = acked_max(env)
    for user in users:
        wait_until(
            user,
            lambda u=user: all(  # type: ignore[misc]
                max(u.tracks[room].counts, default=0) >= top.get(room, 0) for room in u.rooms
            ),
        )


def main(url: str, secret: str) -> dict[str, Any]:
    options = parse_options(
        [
            "--fanout-ws-url", url, "--fanout-api-url", "http://127.0.0.1:9/",
            "--fanout-token-secret", secret, "--fanout-state", str(ROOT / "no-such-local.json"),
            "--chat-users", "2", "--rooms", "2", "--rooms-per-user", "2", "--publish-rate", "0",
            "--reconnect-every", "0", "--settle", "0", "--grace", "0", "--ws-timeout", "10",
        ]
    )  # fmt: skip
    # the chat user joins through the init event, as in a run (a class of weight 0 alone is refused)
    env = Environment(user_classes=[lf.OperatorUser], events=locust.events, parsed_options=options)
    runner = env.create_local_runner()
    locust.events.init.fire(environment=env, runner=runner, web_ui=None)
    reported: Counter[tuple[str, str, bool]] = Counter()

    def on_request(request_type: str, name: str, exception: Exception | None, **_: Any) -> None:
        reported[(request_type, name, exception is not None)] += 1

    env.events.request.add_listener(on_request)
    rooms = room_names(2)
    a, b = lf.ChatUser(env), lf.ChatUser(env)
    a.on_start()
    b.on_start()
    assert a.rooms == b.rooms == rooms

    for room in rooms:
        for _ in range(3):
            b.publish(room)
        a.publish(room)
    settled(env, a, b)

    positions_before = {room: a.tracks[room].position() for room in rooms}
    unacked = a.publish(rooms[0])
    a.drop(reconnect=False)
    for room in rooms:
        for _ in range(3):
            b.publish(room)
    settled(env, b)
    assert a.connect()
    # the recovery is queued before the ack of the publish sent again: once acknowledged, it is in
    wait_until(a, lambda: not a.pending)

    for room in rooms:
        for _ in range(2):
            b.publish(room)
    settled(env, a, b)
    lf.flush_chat_acks(env)
    a.on_stop()
    b.on_stop()
    return {
        "events": [[t, n, failed, count] for (t, n, failed), count in sorted(reported.items())],
        "positionsBefore": positions_before,
        "unacked": unacked,
        "users": {"a": a.user_id, "b": b.user_id},
        "acked": acked_max(env),
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
