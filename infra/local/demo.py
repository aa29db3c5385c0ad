"""`make demo`: the local stack, N real WebSocket clients, three broadcasts, and what each one did."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fanout.tokens import issue_token
from fanout.tools.operator_client import OperatorClient
from infra.local.clients import ClientSwarm, percentile
from infra.local.stack import LocalStack, StackOptions, local_client

console = Console(width=110)


@dataclass
class BroadcastReport:
    broadcast_id: str
    view: dict[str, Any]
    wall_seconds: float
    clients: int
    received_once: int
    duplicates: int
    missing: int
    p50_ms: float | None
    p99_ms: float | None
    audience: str = "everyone"

    @property
    def exactly_once(self) -> bool:
        return self.received_once == self.clients and self.duplicates == 0 and self.missing == 0

    @property
    def counts_exact(self) -> bool:
        v = self.view
        return v["status"] == "completed" and v["targeted"] == self.clients and v["delivered"] == self.clients


def registered_connections(state: dict[str, Any], partitions_table: str = "fanout-partitions") -> int:
    """The sum of the partition counters (kept by the stream), as the swarm will see it."""
    ddb = local_client("dynamodb", state["dynamodbUrl"])
    total = 0
    for page in ddb.get_paginator("scan").paginate(TableName=partitions_table):
        total += sum(int(i.get("connectionCount", {"N": "0"})["N"]) for i in page["Items"])
    return total


def table_rows(state: dict[str, Any], table: str) -> int:
    """How many items `table` of the local stack holds."""
    ddb = local_client("dynamodb", state["dynamodbUrl"])
    return sum(p["Count"] for p in ddb.get_paginator("scan").paginate(TableName=table, Select="COUNT"))


async def wait_registered(state: dict[str, Any], expected: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    seen = -1
    while time.monotonic() < deadline:
        seen = await asyncio.to_thread(registered_connections, state)
        if seen == expected:
            return seen
        await asyncio.sleep(0.25)
    raise TimeoutError(f"the partition counters show {seen} connections, expected {expected}")


async def run_broadcasts(
    state: dict[str, Any], swarm: ClientSwarm, count: int = 3, *, settle_seconds: float = 5.0
) -> list[BroadcastReport]:
    api = OperatorClient(state["httpApiUrl"], bearer_token=state["operatorToken"])
    reports = []
    clients = len(swarm.live())
    for n in range(1, count + 1):
        t0 = time.monotonic()
        bid = await asyncio.to_thread(api.start, {"demo": n, "text": f"broadcast {n} of {count}"})
        view = await asyncio.to_thread(api.wait, bid, timeout=120, interval=0.05)
        wall = time.monotonic() - t0
        # frames may still be in flight to the sockets after the last counter update
        deadline = time.monotonic() + settle_seconds
        while time.monotonic() < deadline:
            counts = swarm.receipts_for(bid)
            if sum(1 for c in swarm.live() if counts[c.index] >= 1) == clients:
                break
            await asyncio.sleep(0.02)
        counts = swarm.receipts_for(bid)
        live = swarm.live()
        lat = swarm.latencies_ms(bid)
        reports.append(
            BroadcastReport(
                broadcast_id=bid,
                view=view,
                wall_seconds=wall,
                clients=clients,
                received_once=sum(1 for c in live if counts[c.index] == 1),
                duplicates=sum(max(0, counts[c.index] - 1) for c in live),
                missing=sum(1 for c in live if counts[c.index] == 0),
                p50_ms=percentile(lat, 50),
                p99_ms=percentile(lat, 99),
            )
        )
    return reports


# The demo's clients: each in one or two of these channels, and two connections (devices) per user.
DEMO_CHANNELS = ("news", "sports", "music", "games")


def demo_channels(index: int) -> list[str]:
    return [DEMO_CHANNELS[(index + k) % len(DEMO_CHANNELS)] for k in range(1 + index % 2)]


def demo_user(index: int) -> str:
    return f"demo-user-{index // 2}"


async def run_targeted(
    state: dict[str, Any],
    swarm: ClientSwarm,
    to: dict[str, list[str]],
    expected: Counter[tuple[int, str | None]],
    *,
    settle_seconds: float = 5.0,
) -> BroadcastReport:
    """One broadcast to an audience; `expected` holds the (client, channel named) that must get it
    once. A frame anywhere else counts as a duplicate: nowhere else means nowhere else."""
    api = OperatorClient(state["httpApiUrl"], bearer_token=state["operatorToken"])
    t0 = time.monotonic()
    bid = await asyncio.to_thread(api.start, {"demo": "targeted", "to": to}, to=to)
    view = await asyncio.to_thread(api.wait, bid, timeout=120, interval=0.05)
    wall = time.monotonic() - t0
    deadline = time.monotonic() + settle_seconds
    while time.monotonic() < deadline and sum(swarm.channel_receipts(bid).values()) < sum(expected.values()):
        await asyncio.sleep(0.02)
    got = swarm.channel_receipts(bid)
    lat = swarm.latencies_ms(bid)
    (kind, names), *_ = to.items()
    return BroadcastReport(
        broadcast_id=bid,
        view=view,
        wall_seconds=wall,
        clients=sum(expected.values()),
        received_once=sum(1 for key in expected if got[key] == 1),
        duplicates=sum(max(0, n - expected[key]) for key, n in got.items()),
        missing=sum(1 for key in expected if got[key] == 0),
        p50_ms=percentile(lat, 50),
        p99_ms=percentile(lat, 99),
        audience=f"{kind} {','.join(names)}" if kind == "channels" else f"{len(names)} {kind}",
    )


async def run_demo_audiences(state: dict[str, Any], swarm: ClientSwarm) -> list[BroadcastReport]:
    """One channel broadcast and one user-targeted send to the demo's clients."""
    live = [c.index for c in swarm.live()]
    channels = ["sports", "games"]
    in_channels: Counter[tuple[int, str | None]] = Counter(
        {(i, name): 1 for i in live for name in demo_channels(i) if name in channels}
    )
    users = sorted({demo_user(i) for i in live[:6]})
    to_users: Counter[tuple[int, str | None]] = Counter({(i, None): 1 for i in live if demo_user(i) in users})
    return [
        await run_targeted(state, swarm, {"channels": channels}, in_channels),
        await run_targeted(state, swarm, {"users": users}, to_users),
    ]


def strict_layer_summary(state: dict[str, Any]) -> str:
    """What the strict DynamoDB layer refused during the run (infra/local/ddb_strict.py)."""
    import json
    import urllib.request

    with urllib.request.urlopen(state["dynamodbStatsUrl"], timeout=5) as resp:
        s = json.loads(resp.read())
    return (
        f"DynamoDB strict layer: {s['transactionsCancelled']} transactions cancelled (TransactionConflict), "
        f"{s['writesRejected']} writes rejected (TransactionConflictException), "
        f"{s['ProvisionedThroughputExceededException'] + s['ThrottlingException']} requests throttled"
    )


def render(reports: list[BroadcastReport]) -> Table:
    table = Table(title="Broadcasts")
    for col in (
        "#",
        "to",
        "targeted",
        "delivered",
        "gone",
        "failed",
        "p50 ms",
        "p99 ms",
        "wall s",
        "exactly once",
    ):
        table.add_column(col, justify="right")
    for i, r in enumerate(reports, 1):
        v = r.view
        table.add_row(
            str(i),
            r.audience,
            str(v["targeted"]),
            str(v["delivered"]),
            str(v["gone"]),
            str(v["failed"]),
            f"{r.p50_ms:.0f}" if r.p50_ms is not None else "-",
            f"{r.p99_ms:.0f}" if r.p99_ms is not None else "-",
            f"{r.wall_seconds:.2f}",
            "yes" if r.exactly_once and r.counts_exact else f"NO ({r.missing} missing, {r.duplicates} dup)",
        )
    return table


async def demo(connections: int, options: StackOptions) -> int:
    stack = LocalStack(options, log=lambda m: console.print(f"[dim]stack:[/] {m}"))
    state = await asyncio.to_thread(stack.start)
    try:
        async with ClientSwarm(state["websocketUrl"], state["connectToken"]) as swarm:
            secret = state["tokenSecret"]
            columns = (
                TextColumn("opening WebSocket clients"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
            )
            with Progress(*columns, console=console) as progress:
                task = progress.add_task("open", total=connections)
                t0 = time.monotonic()
                await swarm.open(
                    connections,
                    on_progress=lambda k: progress.advance(task, k),
                    token_for=lambda i: issue_token(secret, demo_user(i), 24 * 3600, channels=["*"]),
                    params_for=lambda i: {"channels": ",".join(demo_channels(i))},
                )
            opened = len(swarm.live())
            console.print(
                f"{opened} clients connected in {time.monotonic() - t0:.1f} s ({swarm.refused} refused)"
            )
            if opened != connections:
                console.print(f"[red]only {opened} of {connections} clients could connect[/]")
                return 1
            await wait_registered(state, opened)
            t0 = time.monotonic()
            reports = await run_broadcasts(state, swarm)
            total = time.monotonic() - t0
            reports += await run_demo_audiences(state, swarm)
            console.print(render(reports))
            console.print(f"three broadcasts to {opened} clients took {total:.2f} s in all")
            console.print(strict_layer_summary(state))
            ok = all(r.exactly_once and r.counts_exact for r in reports)
            console.print(
                "[green]every frame arrived exactly once where it belonged, and nowhere else[/]"
                if ok
                else "[red]FAILED[/]"
            )
            return 0 if ok else 1
    finally:
        await asyncio.to_thread(stack.stop)
