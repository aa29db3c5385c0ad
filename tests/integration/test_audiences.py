"""Channel, user and connection-list broadcasts through the real handlers: operator API → swarm →
(query) → post, with the same exact accounting as an everyone-broadcast.

DynamoDB Local (behind the strict layer) holds the tables, SQS is the project's emulator, and the
`@connections` API is a fake that answers 410 and 429 on cue.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.integration.pipeline_harness import Pipeline, pipeline


@pytest.fixture
def pipe(dynamodb_local: str, local_sqs: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pipeline]:
    # 500 members per channel task: the 2,400-member channel below is read by 5 query tasks
    with pipeline(
        dynamodb_local,
        local_sqs,
        monkeypatch,
        partition_count=10,
        shard_count=2,
        channel_task_members=500,
    ) as p:
        yield p


def frames_by(pipe: Pipeline) -> Counter[tuple[str, str | None]]:
    """(connection, channel named) → frames received."""
    out: Counter[tuple[str, str | None]] = Counter()
    for cid, frames in pipe.connections.frames.items():
        for raw in frames:
            out[(cid, json.loads(raw).get("channel"))] += 1
    return out


def test_a_channel_broadcast_reaches_each_member_once_per_channel_and_counts_per_channel(
    pipe: Pipeline,
) -> None:
    # Given 3,000 connections; "big" has 2,400 members, "small" 40 (20 of them also in big), "other"
    # 100 that are not targeted; 24 of big's members are gone and 30 are throttled into a requeue
    ids = [f"c{i:04d}=" for i in range(3000)]
    per_partition = {p: ids[p::10] for p in range(10)}
    big, small, other = ids[:2400], ids[2380:2420], ids[2500:2600]
    subs: dict[str, list[str]] = {}
    for name, members in (("big", big), ("small", small), ("other", other)):
        for c in members:
            subs.setdefault(c, []).append(name)
    pipe.seed_connections(per_partition, channels=subs)
    pipe.set_occupancy("big", 2400, 2400)
    pipe.set_occupancy("small", 40, 40)
    gone = set(big[::100])
    pipe.connections.live.update(c for c in ids if c not in gone)
    for c in big[1:31]:
        pipe.connections.script[c] = [429] * 5

    # When an operator broadcasts to big and small
    view = pipe.broadcast({"text": "hi"}, to={"channels": ["big", "small", "big"]})

    # Then each member got one frame per targeted channel it is in, naming the channel, and no one else
    want: Counter[tuple[str, str | None]] = Counter()
    for name, members in (("big", big), ("small", small)):
        want.update((c, name) for c in members if c not in gone)
    assert frames_by(pipe) == want
    frame = json.loads(pipe.connections.frames[small[-1]][0])
    # a channel message carries its place in the channel's history: the first of "small"
    assert isinstance(frame.pop("epoch"), str)
    assert frame == {
        "type": "broadcast",
        "broadcastId": view["broadcastId"],
        "sentAt": view["createdAt"],
        "channel": "small",
        "offset": 1,
        "data": {"text": "hi"},
    }
    # the counts are exact, for the broadcast and per channel, and "to" is echoed
    assert view["status"] == "completed"
    assert view["to"] == {"channels": ["big", "small"]}
    assert view["partitions"] == 5 + 1  # big in 5 bucket ranges (queued), small in one (in the swarm)
    assert (view["targeted"], view["delivered"], view["gone"], view["failed"]) == (2440, 2416, 24, 0)
    assert view["channels"] == {
        "big": {"targeted": 2400, "delivered": 2376, "gone": 24, "failed": 0},
        "small": {"targeted": 40, "delivered": 40, "gone": 0, "failed": 0},
    }
    # and the gone connections were pruned with their subscriptions
    assert not gone & pipe.connection_rows()
    assert not {c for _, c in pipe.subscription_rows()} & gone


def test_a_user_send_reaches_every_connection_of_each_user_and_no_one_else(pipe: Pipeline) -> None:
    ids = [f"d{i:03d}=" for i in range(300)]
    users = {c: f"user-{i // 2}" for i, c in enumerate(ids)}  # two connections per user
    pipe.seed_connections({p: ids[p::10] for p in range(10)}, users=users)
    pipe.connections.live.update(ids)

    view = pipe.broadcast({"dm": 1}, to={"users": ["user-3", "user-7", "user-3", "nobody"]})

    assert frames_by(pipe) == Counter({(c, None): 1 for c in ids[6:8] + ids[14:16]})
    assert view["status"] == "completed"
    assert view["to"] == {"users": ["user-3", "user-7", "nobody"]}
    assert view["partitions"] == 1
    assert (view["targeted"], view["delivered"], view["gone"], view["failed"]) == (4, 4, 0, 0)
    assert "channels" not in view


def test_a_connection_list_counts_unknown_ids_gone(pipe: Pipeline) -> None:
    ids = [f"e{i:03d}=" for i in range(20)]
    pipe.seed_connections({0: ids})
    pipe.connections.live.update(ids)

    view = pipe.broadcast({"n": 1}, to={"connections": [ids[3], ids[4], "no-such-id"]})

    assert frames_by(pipe) == Counter({(ids[3], None): 1, (ids[4], None): 1})
    assert (view["targeted"], view["delivered"], view["gone"]) == (3, 2, 1)


def test_a_swarm_run_twice_sends_an_in_swarm_audience_once(pipe: Pipeline) -> None:
    ids = [f"f{i:03d}=" for i in range(30)]
    pipe.seed_connections({0: ids}, channels={c: ["room:1"] for c in ids})
    pipe.connections.live.update(ids)
    status, body, _ = pipe.api("POST", "/broadcasts", body={"message": 1, "to": {"channels": ["room:1"]}})
    assert status == 202
    invocations = list(pipe.lambdas.invocations)
    pipe.run_swarms()
    pipe.lambdas.invocations.extend(invocations)  # Lambda delivers the async event twice
    pipe.run_swarms()
    pipe.drain()
    _, view, _ = pipe.api("GET", f"/broadcasts/{body['broadcastId']}")
    assert frames_by(pipe) == Counter({(c, "room:1"): 1 for c in ids})
    assert (view["status"], view["targeted"], view["delivered"]) == ("completed", 30, 30)


@pytest.mark.parametrize(
    ("to", "field"),
    [
        ({"channels": []}, "channels"),
        ({"channels": ["bad name"]}, "channels"),
        ({"channels": [f"c{i}" for i in range(101)]}, "channels"),
        ({"users": ["u"] * 1001}, "users"),
        ({"connections": [""]}, "connections"),
        ({"channels": ["a"], "users": ["u"]}, "to"),
        ({"everyone": True}, "everyone"),
        ("room:1", "to"),
    ],
)
def test_a_malformed_audience_is_refused_naming_the_field(pipe: Pipeline, to: object, field: str) -> None:
    status, body, _ = pipe.api("POST", "/broadcasts", body={"message": 1, "to": to})
    assert status == 422, body
    assert field in json.dumps(body)
    assert pipe.lambdas.invocations == []


def test_an_idempotency_key_reused_with_another_audience_is_refused(pipe: Pipeline) -> None:
    key = {"Idempotency-Key": "k-audience-1"}
    first = pipe.api("POST", "/broadcasts", body={"message": 1, "to": {"users": ["a"]}}, headers=key)
    again = pipe.api("POST", "/broadcasts", body={"message": 1, "to": {"users": ["a"]}}, headers=key)
    other = pipe.api("POST", "/broadcasts", body={"message": 1, "to": {"users": ["b"]}}, headers=key)
    assert (first[0], again[0], other[0]) == (202, 202, 422)
    assert first[1]["broadcastId"] == again[1]["broadcastId"]


def test_channel_occupancy_is_read_from_the_counter_row(pipe: Pipeline) -> None:
    pipe.set_occupancy("room:9", 12, 5)
    assert pipe.api("GET", "/channels/room:9")[:2] == (
        200,
        {"channel": "room:9", "connections": 12, "users": 5},
    )
    assert pipe.api("GET", "/channels/room%3A9")[1]["connections"] == 12  # percent-encoded, decoded once
    assert pipe.api("GET", "/channels/empty")[1] == {"channel": "empty", "connections": 0, "users": 0}
    status, body, _ = pipe.api("GET", "/channels/bad%20name")
    assert status in (400, 422) and "name" in json.dumps(body)
