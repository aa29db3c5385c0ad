"""Soak: hold N WebSocket connections on the local stack for a while, with heartbeats, broadcasting
every few seconds; sample the RSS of every stack process; count unexpected disconnects and lost frames.

    python -m loadtest.soak                                   # 10,000 connections, 10 minutes (make soak)
    python -m loadtest.soak --connections 1000 --duration 60  # a short run

It starts its own local stack (or uses a running one with `--state .fanout/local.json`), opens the
connections from several client processes (a process holds at most ~15k sockets here),
sends `{"action":"ping"}` from every connection every `--heartbeat` seconds (API Gateway's idle timeout
is 10 minutes), starts a broadcast every `--every` seconds and checks each one: `completed`, exact
counts, every connection got it once.

Memory: RSS of every process of the stack (DynamoDB Local, SQS, the runtime and its function workers,
the gateway) every `--sample` seconds. Growth is measured from the first sample after `--warmup`
seconds to the median of the last 10% of samples, per process and in total; the bar is < 5%
(`--max-growth`).

Output: a summary on stdout and the full record (samples included) as JSON (`--out`, default
loadtest/results/soak-<timestamp>.json). Exit status 0 when every broadcast was exact, no connection
dropped unexpectedly and total memory grew less than `--max-growth` percent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

RESULTS = Path("loadtest/results")


# -- client processes ------------------------------------------------------------------------------------
@dataclass
class ClientReport:
    opened: int = 0
    refused: int = 0
    unexpected_closes: int = 0
    close_codes: dict[str, int] = field(default_factory=dict)
    pongs: int = 0
    pings: int = 0
    frames: dict[str, int] = field(default_factory=dict)  # broadcastId -> frames received
    duplicates: dict[str, int] = field(default_factory=dict)  # broadcastId -> extra frames


async def _client_main(
    url: str, token: str, count: int, heartbeat: float, ready: Any, stop: Any, out: Any, concurrency: int
) -> None:
    import aiohttp

    report = ClientReport()
    seen: dict[str, set[int]] = {}
    stopping = False
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        sockets: list[aiohttp.ClientWebSocketResponse] = []
        sem = asyncio.Semaphore(concurrency)

        async def reader(i: int, ws: aiohttp.ClientWebSocketResponse) -> None:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    frame = json.loads(msg.data)
                except ValueError:
                    continue
                if frame.get("type") == "broadcast":
                    bid = str(frame["broadcastId"])
                    got = seen.setdefault(bid, set())
                    if i in got:
                        report.duplicates[bid] = report.duplicates.get(bid, 0) + 1
                    got.add(i)
                elif frame.get("type") == "pong":
                    report.pongs += 1
            if not stopping:
                report.unexpected_closes += 1
                code = str(ws.close_code)
                report.close_codes[code] = report.close_codes.get(code, 0) + 1

        async def open_one(i: int) -> None:
            async with sem:
                try:
                    ws = await session.ws_connect(url, params={"token": token}, heartbeat=None, autoping=True)
                except (aiohttp.ClientError, TimeoutError):
                    report.refused += 1
                    return
            sockets.append(ws)
            report.opened += 1
            tasks.append(asyncio.create_task(reader(i, ws)))

        tasks: list[asyncio.Task[None]] = []
        await asyncio.gather(*(open_one(i) for i in range(count)))
        ready.put(report.opened)

        async def heartbeats() -> None:
            while True:
                # spread one round of pings over the heartbeat period
                gap = heartbeat / max(1, len(sockets))
                for ws in list(sockets):
                    if not ws.closed:
                        with contextlib.suppress(Exception):
                            await ws.send_str('{"action":"ping"}')
                            report.pings += 1
                    await asyncio.sleep(gap)

        beat = asyncio.create_task(heartbeats())
        while not stop.is_set():
            await asyncio.sleep(0.5)
        stopping = True
        beat.cancel()
        report.frames = {bid: len(ids) for bid, ids in seen.items()}
        for ws in sockets:
            with contextlib.suppress(Exception):
                await ws.close()
        for t in tasks:
            t.cancel()
    out.put(asdict(report))


def _client_process(
    url: str, token: str, count: int, heartbeat: float, ready: Any, stop: Any, out: Any
) -> None:
    asyncio.run(_client_main(url, token, count, heartbeat, ready, stop, out, concurrency=50))


# -- memory sampling -------------------------------------------------------------------------------------
def stack_processes(pids: dict[str, int | None]) -> dict[str, psutil.Process]:
    """Every process of the stack: the named children and all their descendants (function workers)."""
    procs: dict[str, psutil.Process] = {}
    for name, pid in pids.items():
        if not pid:
            continue
        try:
            root = psutil.Process(pid)
        except psutil.NoSuchProcess:
            continue
        procs[name] = root
        for child in root.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                procs[f"{name}/{child.pid}:{_short(child)}"] = child
    return procs


def _short(p: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        cmd = " ".join(p.cmdline())
        if "worker_main" in cmd:
            return "worker"
        return p.name()
    return "?"


def sample_rss(pids: dict[str, int | None]) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, proc in stack_processes(pids).items():
        with contextlib.suppress(psutil.Error):
            out[name] = int(proc.memory_info().rss)
    return out


def growth(samples: list[dict[str, Any]], warmup: float) -> dict[str, Any]:
    """Percent growth of total RSS (and per long-lived process) from the first post-warm-up sample to the
    median of the last 10% of samples."""
    after = [s for s in samples if s["t"] >= warmup]
    if len(after) < 2:
        return {"total_percent": None, "note": "too few samples after warm-up"}
    tail = after[-max(1, len(after) // 10) :]
    first_total = after[0]["total"]
    last_total = statistics.median(s["total"] for s in tail)
    per: dict[str, float] = {}
    for name in after[0]["rss"]:
        if "/" in name:  # workers come and go; the total covers them
            continue
        start = after[0]["rss"].get(name)
        end = statistics.median(s["rss"].get(name, 0) for s in tail)
        if start:
            per[name] = round(100 * (end - start) / start, 2)
    return {
        "total_percent": round(100 * (last_total - first_total) / first_total, 2),
        "total_start_mb": round(first_total / 2**20, 1),
        "total_end_mb": round(last_total / 2**20, 1),
        "per_process_percent": per,
    }


# -- the run --------------------------------------------------------------------------------------------
async def soak(args: argparse.Namespace) -> dict[str, Any]:
    from fanout.tools.operator_client import OperatorClient

    stack = None
    if args.state:
        state = json.loads(Path(args.state).read_text())
    else:
        from infra.local.stack import LocalStack, StackOptions

        options = StackOptions(
            partitions=args.partitions,
            shards=args.shards,
            post_workers=args.post_workers,
            connect_workers=args.connect_workers,
            state_dir=Path(args.state_dir),
        )
        stack = LocalStack(options, log=lambda m: print(f"stack: {m}", file=sys.stderr))
        state = await asyncio.to_thread(stack.start)
    try:
        return await _run(
            args, state, OperatorClient(state["httpApiUrl"], bearer_token=state["operatorToken"])
        )
    finally:
        if stack is not None:
            await asyncio.to_thread(stack.stop)


async def _run(args: argparse.Namespace, state: dict[str, Any], api: Any) -> dict[str, Any]:
    from infra.local.demo import registered_connections, wait_registered

    pids: dict[str, int | None] = dict(state.get("pids") or {})
    base = await asyncio.to_thread(registered_connections, state)
    ctx = mp.get_context("spawn")
    ready, out, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    per = [
        args.connections // args.processes + (1 if i < args.connections % args.processes else 0)
        for i in range(args.processes)
    ]
    workers = [
        ctx.Process(
            target=_client_process,
            args=(state["websocketUrl"], state["connectToken"], n, args.heartbeat, ready, stop, out),
        )
        for n in per
        if n
    ]
    t_open = time.monotonic()
    for w in workers:
        w.start()
    opened = 0
    for _ in workers:
        opened += int(await asyncio.to_thread(ready.get, True, 1800))
    open_seconds = time.monotonic() - t_open
    print(f"soak: {opened} connections open in {open_seconds:.1f} s", file=sys.stderr)
    await wait_registered(state, base + opened, timeout=600)

    samples: list[dict[str, Any]] = []
    broadcasts: list[dict[str, Any]] = []
    t0 = time.monotonic()
    next_sample = next_broadcast = 0.0
    try:
        while (elapsed := time.monotonic() - t0) < args.duration:
            if elapsed >= next_sample:
                rss = await asyncio.to_thread(sample_rss, pids)
                samples.append({"t": round(elapsed, 1), "total": sum(rss.values()), "rss": rss})
                next_sample += args.sample
            if elapsed >= next_broadcast:
                sent = time.monotonic()
                bid = await asyncio.to_thread(api.start, {"soak": len(broadcasts) + 1})
                view = await asyncio.to_thread(api.wait, bid, timeout=max(60.0, args.every * 6), interval=0.1)
                broadcasts.append(
                    {
                        "broadcastId": bid,
                        "t": round(elapsed, 1),
                        "wall": round(time.monotonic() - sent, 2),
                        **view,
                    }
                )
                next_broadcast += args.every
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        reports = [await asyncio.to_thread(out.get, True, 120) for _ in workers]
        for w in workers:
            w.join(30)

    received: dict[str, int] = {}
    dups: dict[str, int] = {}
    for r in reports:
        for bid, n in r["frames"].items():
            received[bid] = received.get(bid, 0) + n
        for bid, n in r["duplicates"].items():
            dups[bid] = dups.get(bid, 0) + n
    unexpected = sum(r["unexpected_closes"] for r in reports)
    exact = 0
    for b in broadcasts:
        b["received"] = received.get(b["broadcastId"], 0)
        b["duplicates"] = dups.get(b["broadcastId"], 0)
        b["exact"] = (
            b["status"] == "completed"
            and b["failed"] == 0
            and b["delivered"] == b["targeted"]
            and b["received"] == opened
            and b["duplicates"] == 0
        )
        exact += b["exact"]
    mem = growth(samples, args.warmup)
    result = {
        "connections": {
            "requested": args.connections,
            "opened": opened,
            "openSeconds": round(open_seconds, 1),
        },
        "durationSeconds": args.duration,
        "heartbeatSeconds": args.heartbeat,
        "broadcastEverySeconds": args.every,
        "broadcasts": len(broadcasts),
        "broadcastsExact": exact,
        "broadcastWallSeconds": {
            "p50": statistics.median(b["wall"] for b in broadcasts) if broadcasts else None,
            "max": max((b["wall"] for b in broadcasts), default=None),
        },
        "framesLost": sum(max(0, opened - b["received"]) for b in broadcasts),
        "duplicates": sum(b["duplicates"] for b in broadcasts),
        "unexpectedDisconnects": unexpected,
        "closeCodes": _merge(r["close_codes"] for r in reports),
        "refused": sum(r["refused"] for r in reports),
        "pings": sum(r["pings"] for r in reports),
        "pongs": sum(r["pongs"] for r in reports),
        "memory": mem,
        "samples": samples,
        "broadcastLog": broadcasts,
    }
    total = mem.get("total_percent")
    result["ok"] = bool(
        exact == len(broadcasts) and unexpected == 0 and total is not None and total < args.max_growth
    )
    return result


def _merge(dicts: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=10_000)
    p.add_argument("--duration", type=float, default=600.0, help="seconds of soak after the connections open")
    p.add_argument("--every", type=float, default=10.0, help="seconds between broadcasts")
    p.add_argument("--heartbeat", type=float, default=60.0, help="seconds between pings of one connection")
    p.add_argument("--sample", type=float, default=5.0, help="seconds between RSS samples")
    p.add_argument("--warmup", type=float, default=60.0, help="seconds before the memory baseline")
    p.add_argument("--max-growth", type=float, default=5.0, help="percent of total RSS growth allowed")
    p.add_argument("--processes", type=int, default=0, help="client processes (default: 1 per 5,000)")
    p.add_argument("--partitions", type=int, default=100)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--post-workers", type=int, default=2)
    p.add_argument("--connect-workers", type=int, default=2)
    p.add_argument("--state", help="use a running stack's local.json instead of starting one")
    p.add_argument("--state-dir", default=".fanout/soak", help="where a started stack keeps its state")
    p.add_argument("--out", help="JSON output (default loadtest/results/soak-<time>.json)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.processes:
        args.processes = max(1, -(-args.connections // 5000))
    args.warmup = min(args.warmup, args.duration / 3)
    result = asyncio.run(soak(args))
    out = Path(args.out) if args.out else RESULTS / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    summary = {k: v for k, v in result.items() if k not in ("samples", "broadcastLog")}
    print(json.dumps(summary, indent=2))
    print(f"soak: full record in {out}", file=sys.stderr)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
    sys.exit(main())
