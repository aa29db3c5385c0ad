"""The `audiences` section of `make bench`: what a targeted broadcast costs next to an everyone one.

Measured side by side in one run, on fresh local stacks, the two stacks of each pair up at once and
their broadcasts taken in turn, so both sides see the same load on the machine:

- a broadcast to a 10,000-member channel in a stack of 100,000 simulated connections, against an
  everyone-broadcast on a stack of 10,000 (each stack ~100 connections per partition, as the stack
  section sizes them; medians of 5 warm broadcasts each);
- a user-targeted send to a user with 3 real WebSocket connections, against an everyone-broadcast to
  a stack holding a single connection: POST to frame, p50 over 100 warm sends each;
- the storage alternative: reading the channel's 10,000 ids by Query of its subscription rows, against
  reading all 100,000 connections by partition (what a filter on the connection rows would read).

Run alone: ``.venv/bin/python -m loadtest.bench --only audiences``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from loadtest.bench_models import AudiencesRun

CHANNEL = "bench:big"
CHANNEL_MEMBERS = 10_000
STACK_SIZES = (10_000, 100_000)
BROADCASTS = 5
SENDS = 100
WARMUP_SENDS = 5


def _ddb(state: dict[str, Any]) -> Any:
    from loadtest.seed import dynamodb_client

    return dynamodb_client(state["dynamodbUrl"], state.get("region", "us-east-1"), 8)


def subscribe_all(state: dict[str, Any], channel: str, ids: Sequence[str], client: Any = None) -> float:
    """Write the subscription rows $connect would write for `ids` (BatchWriteItem, 8 in flight)."""
    from loadtest.seed import subscription_item, write_all

    client = client or _ddb(state)
    now = time.time()
    items = [subscription_item(channel, cid, now=now, ttl_seconds=3 * 3600) for cid in ids]
    t0 = time.monotonic()
    write_all(client, "fanout-subscriptions", items, workers=8)
    return time.monotonic() - t0


def wait_occupancy(state: dict[str, Any], channel: str, members: int, timeout: float) -> None:
    """Until the stream-fed occupancy counts every member (the swarm sizes the channel's tasks by it)."""
    from fanout.tools.operator_client import OperatorClient

    api = OperatorClient(state["httpApiUrl"], bearer_token=state["operatorToken"])
    deadline = time.monotonic() + timeout
    while api.channel(channel)["connections"] < members:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the occupancy of {channel} did not reach {members}")
        time.sleep(0.5)


def timed_broadcast(state: dict[str, Any], to: dict[str, list[str]] | None, timeout: float) -> float:
    """Seconds from POST to completed."""
    from fanout.tools.operator_client import OperatorClient

    api = OperatorClient(state["httpApiUrl"], bearer_token=state["operatorToken"])
    t0 = time.perf_counter()
    bid = api.start({"bench": "audiences"}, to=to)
    view = api.wait(bid, timeout=timeout, interval=0.05)
    if view["status"] != "completed":
        raise RuntimeError(f"broadcast {bid} ended {view['status']}: {view.get('error')}")
    return time.perf_counter() - t0


def read_costs(client: Any, partitions: int) -> dict[str, float]:
    """The channel's ids by Query of its rows vs every connection by partition: seconds, items."""
    from fanout.channels import member_range

    def pages(kwargs: dict[str, Any]) -> int:
        n = 0
        while True:
            out = client.query(**kwargs)
            n += len(out.get("Items", []))
            if "LastEvaluatedKey" not in out:
                return n
            kwargs["ExclusiveStartKey"] = out["LastEvaluatedKey"]

    lo, hi = member_range(0, 999)
    t0 = time.perf_counter()
    members = pages(
        {
            "TableName": "fanout-subscriptions",
            "KeyConditionExpression": "channel = :c AND #m BETWEEN :lo AND :hi",
            "ExpressionAttributeNames": {"#m": "member"},
            "ExpressionAttributeValues": {":c": {"S": CHANNEL}, ":lo": {"S": lo}, ":hi": {"S": hi}},
            "ProjectionExpression": "#m",
        }
    )
    channel_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    everyone = 0
    for pid in range(partitions):
        everyone += pages(
            {
                "TableName": "fanout-connections",
                "IndexName": "byPartition",
                "KeyConditionExpression": "partitionId = :p",
                "ExpressionAttributeValues": {":p": {"N": str(pid)}},
                "ProjectionExpression": "connectionId",
            }
        )
    return {
        "channelSeconds": round(channel_seconds, 3),
        "channelItems": members,
        "everyoneSeconds": round(time.perf_counter() - t1, 3),
        "everyoneItems": everyone,
    }


def storage_costs(connections: int, members: int, log: Callable[[str], None]) -> dict[str, float]:
    """On a DynamoDB Local of its own (no stack, no streams): `connections` rows over ~100 per
    partition, `members` of them subscribed to one channel; what reading the channel's ids costs by
    each design: a Query of its subscription rows (this engine), a Query of every partition (what
    filtering connection rows while reading partitions reads), a Scan filtered on a `channels` set."""
    import boto3

    from fanout.settings import Settings
    from infra.local.dynamodb import DynamoDBLocal
    from infra.local.resources import create_tables
    from loadtest.seed import connection_item, write_all

    partitions = max(1, math.ceil(connections / 100))
    with DynamoDBLocal() as ddb:
        client = boto3.client(
            "dynamodb",
            endpoint_url=ddb.endpoint,
            region_name="us-east-1",
            aws_access_key_id="local",
            aws_secret_access_key="local",
        )
        create_tables(client, Settings(partition_count=partitions), seed_partitions=False)
        ids = [f"c{i:07d}=" for i in range(connections)]
        now = time.time()
        rows = [connection_item(c, i % partitions, now=now, ttl_seconds=3600) for i, c in enumerate(ids)]
        for row in rows[:members]:
            row["channels"] = {"SS": [CHANNEL]}
        # In loadtest.seed.seed's order (its docstring says why): one connection row, the
        # subscriptions, the other connection rows.
        state = {"dynamodbUrl": ddb.endpoint}
        write_all(client, "fanout-connections", rows[:1], workers=1)
        subscribe_all(state, CHANNEL, ids[:members], client=client)
        write_all(client, "fanout-connections", rows[1:], workers=8)
        log(f"storage: {connections} connection rows, {members} subscriptions written")
        costs = read_costs(client, partitions)
        t0 = time.perf_counter()
        scanned = 0
        kwargs: dict[str, Any] = {
            "TableName": "fanout-connections",
            "FilterExpression": "contains(channels, :c)",
            "ExpressionAttributeValues": {":c": {"S": CHANNEL}},
            "ProjectionExpression": "connectionId",
        }
        while True:
            out = client.scan(**kwargs)
            scanned += int(out.get("ScannedCount", 0))
            if "LastEvaluatedKey" not in out:
                break
            kwargs["ExclusiveStartKey"] = out["LastEvaluatedKey"]
        costs["scanSeconds"] = round(time.perf_counter() - t0, 3)
        costs["scanItems"] = scanned
        log(f"storage: {costs}")
        return costs


def _stack(size: int, log: Callable[[str], None], name: str = "") -> Any:
    from infra.local.stack import LocalStack, StackOptions
    from loadtest.bench_stack import ROOT, stack_post_batch_size

    options = StackOptions(
        partitions=max(1, math.ceil(size / 100)),
        shards=4,
        post_batch_size=stack_post_batch_size(size),
        state_dir=ROOT / ".fanout" / f"bench-audiences-{name or size}",
    )
    return LocalStack(options, log=log)


def throughput(out: dict[str, Any], timeout: float, log: Callable[[str], None]) -> None:
    """Both stacks up at once and their broadcasts taken in turn (everyone on the small stack, then
    the channel on the big one, BROADCASTS times): this machine's load varies by more than the
    ratio measured, and alternating puts each pair under the same load."""
    from loadtest.seed import seed

    small, big = STACK_SIZES
    with _stack(small, log) as few, _stack(big, log) as many:
        seed(few.state, small, workers=8, rng_seed=small, wait=True, timeout=timeout, log=log)
        summary = seed(
            many.state, big, workers=8, rng_seed=big, wait=True, timeout=timeout, log=log,
            channel=CHANNEL, members=CHANNEL_MEMBERS,
        )  # fmt: skip
        out["seed"] = {k: summary.get(k) for k in ("writeSeconds", "countersSeconds", "subscribeSeconds")}
        log(f"subscribed {summary['subscribed']} of {big} to {CHANNEL} in {summary['subscribeSeconds']} s")
        wait_occupancy(many.state, CHANNEL, CHANNEL_MEMBERS, timeout)
        to = {"channels": [CHANNEL]}
        timed_broadcast(few.state, None, timeout)  # cold containers out of the figures
        timed_broadcast(many.state, to, timeout)
        everyone: list[float] = []
        channel: list[float] = []
        for _ in range(BROADCASTS):
            everyone.append(round(timed_broadcast(few.state, None, timeout), 3))
            channel.append(round(timed_broadcast(many.state, to, timeout), 3))
        out["everyoneSeconds"], out["channelSeconds"] = everyone, channel
        log(f"everyone on {small}: {everyone} s; channel of {CHANNEL_MEMBERS} in {big}: {channel} s")
        out["reads"] = read_costs(_ddb(many.state), many.options.partitions)
        log(f"reads: {out['reads']}")


@contextlib.asynccontextmanager
async def _sender(
    state: dict[str, Any], users: dict[str, int], to: dict[str, list[str]] | None
) -> AsyncIterator[Callable[[int], Awaitable[float]]]:
    """Open the users' connections (real WebSockets); yields `send(n)`: one send, POST to the last
    frame, ms."""
    from fanout.tokens import issue_token
    from fanout.tools.operator_client import OperatorClient
    from infra.local.clients import ClientSwarm
    from infra.local.demo import registered_connections, wait_registered

    api = OperatorClient(state["httpApiUrl"], bearer_token=state["operatorToken"])
    owners = [user for user, n in users.items() for _ in range(n)]
    base = await asyncio.to_thread(registered_connections, state)
    async with ClientSwarm(state["websocketUrl"], state["connectToken"]) as swarm:
        clients = await swarm.open(
            len(owners), token_for=lambda i: issue_token(state["tokenSecret"], owners[i], 3600)
        )
        await wait_registered(state, base + len(clients))

        async def send(n: int) -> float:
            t0 = time.time() * 1000
            bid = await asyncio.to_thread(api.start, {"n": n}, None, to=to)
            deadline = time.monotonic() + 30
            while not all(any(r.broadcast_id == bid for r in c.receipts) for c in clients):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"send {bid} did not reach every connection")
                await asyncio.sleep(0.002)
            return max(r.received_at_ms for c in clients for r in c.receipts if r.broadcast_id == bid) - t0

        yield send


async def _send_latencies(
    single_state: dict[str, Any], user_state: dict[str, Any], sends: int
) -> tuple[list[float], list[float]]:
    """Sends taken in turn, one to everyone (a single connection) on one stack, one to a user with 3
    connections on the other, so both see the same load on this machine."""
    single: list[float] = []
    user: list[float] = []
    async with (
        _sender(single_state, {"bench-single": 1}, None) as to_single,
        _sender(user_state, {"bench-user": 3}, {"users": ["bench-user"]}) as to_user,
    ):
        for n in range(WARMUP_SENDS + sends):
            a, b = await to_single(n), await to_user(n)
            if n >= WARMUP_SENDS:
                single.append(a)
                user.append(b)
    return single, user


def latency(out: dict[str, Any], log: Callable[[str], None]) -> None:
    with _stack(10, log, name="single") as one, _stack(10, log, name="user") as other:
        single, user = asyncio.run(_send_latencies(one.state, other.state, SENDS))
    out["everyoneSingleP50Ms"] = round(statistics.median(single), 1)
    out["userP50Ms"] = round(statistics.median(user), 1)
    out["sends"] = SENDS
    log(f"POST to frame p50: everyone to 1 connection {out['everyoneSingleP50Ms']} ms, "
        f"user with 3 connections {out['userP50Ms']} ms")  # fmt: skip


def run_audiences(timeout: float, log: Callable[[str], None]) -> AudiencesRun:
    out: dict[str, Any] = {"command": ".venv/bin/python -m loadtest.bench --only audiences"}
    out["storage"] = storage_costs(STACK_SIZES[1], CHANNEL_MEMBERS, log)
    latency(out, log)
    throughput(out, timeout, log)
    return AudiencesRun.model_validate(out)


if __name__ == "__main__":  # the storage comparison alone, no stack: python -m loadtest.bench_audiences
    import json

    print(json.dumps(storage_costs(STACK_SIZES[1], CHANNEL_MEMBERS, print)))
