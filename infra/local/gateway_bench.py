"""Benchmark of the gateway's hot path: PostToConnection to simulated connections.

Starts the gateway as a child process (`python -m infra.local.gateway`), registers `--ids` simulated
connections, then posts small broadcast envelopes to them from `--clients` client processes (aiohttp,
`--concurrency` requests in flight each) and reports requests/s and the gateway's CPU time per post
(from /proc, so the figure does not depend on how fast the clients are).

    python -m infra.local.gateway_bench --ids 20000 --posts 40000 --clients 2 --concurrency 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from multiprocessing import get_context
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from infra.local import procs
from infra.local.gateway_events import new_connection_id

ROOT = Path(__file__).resolve().parents[2]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


async def _client(base: str, ids: list[str], posts: int, concurrency: int, frame: bytes) -> dict[str, int]:
    statuses: dict[str, int] = {}
    urls = [f"{base}/@connections/{quote(cid, safe='')}" for cid in ids]
    credential = "Credential=AKIDLOCAL/20260101/us-east-1/execute-api/aws4_request"
    headers = {"Authorization": f"AWS4-HMAC-SHA256 {credential}, SignedHeaders=host, Signature=00"}
    next_index = 0

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker() -> None:
            nonlocal next_index
            while next_index < posts:
                i = next_index
                next_index += 1
                async with session.post(urls[i % len(urls)], data=frame, headers=headers) as resp:
                    await resp.read()
                    key = str(resp.status)
                    statuses[key] = statuses.get(key, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


def _client_process(args: tuple[str, list[str], int, int, bytes]) -> dict[str, int]:
    return asyncio.run(_client(*args))


async def _admin(url: str, method: str, body: Any = None) -> Any:
    async with aiohttp.ClientSession() as session, session.request(method, url, json=body) as resp:
        return await resp.json() if resp.status != 204 else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ids", type=int, default=20_000)
    p.add_argument("--posts", type=int, default=40_000, help="posts in all, spread over the clients")
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight per client process")
    p.add_argument("--frame-bytes", type=int, default=120)
    args = p.parse_args(argv)

    ws_port, http_port = procs.free_port(), procs.free_port()
    cmd = [
        sys.executable,
        "-m",
        "infra.local.gateway",
        "--websocket-port",
        str(ws_port),
        "--http-port",
        str(http_port),
        "--log-level",
        "WARNING",
    ]
    gateway = procs.start(cmd, cwd=ROOT)
    try:
        procs.wait_for_port("127.0.0.1", ws_port, timeout=20, proc=gateway)
        admin = f"http://127.0.0.1:{ws_port}/_local"
        base = f"http://127.0.0.1:{ws_port}/local"
        ids = [new_connection_id() for _ in range(args.ids)]
        asyncio.run(_admin(f"{admin}/simulated", "POST", {"connectionIds": ids}))
        sent_at = int(time.time() * 1000)
        envelope = {"type": "broadcast", "broadcastId": "bench-1", "sentAt": sent_at, "data": ""}
        pad = max(0, args.frame_bytes - len(json.dumps(envelope)))
        envelope["data"] = "x" * pad
        frame = json.dumps(envelope, separators=(",", ":")).encode()

        per_client = args.posts // args.clients
        shards = [ids[i :: args.clients] for i in range(args.clients)]
        cpu0, t0 = _cpu_seconds(gateway.pid), time.perf_counter()
        with get_context("spawn").Pool(args.clients) as pool:
            results = pool.map(
                _client_process, [(base, shard, per_client, args.concurrency, frame) for shard in shards]
            )
        elapsed, cpu = time.perf_counter() - t0, _cpu_seconds(gateway.pid) - cpu0
        statuses: dict[str, int] = {}
        for r in results:
            for k, v in r.items():
                statuses[k] = statuses.get(k, 0) + v
        total = sum(statuses.values())
        sim = asyncio.run(_admin(f"{admin}/simulated/stats", "GET"))
        report = {
            "posts": total,
            "statuses": statuses,
            "frameBytes": len(frame),
            "seconds": round(elapsed, 2),
            "postsPerSecond": round(total / elapsed),
            "gatewayCpuSeconds": round(cpu, 2),
            "gatewayCpuMicrosPerPost": round(cpu / total * 1e6, 1),
            "gatewayCeilingPostsPerCpuSecond": round(total / cpu) if cpu else None,
            "simulatedFrames": sim["frames"],
            "broadcast": sim["broadcasts"].get("bench-1"),
        }
        print(json.dumps(report, indent=2))
        return 0 if statuses.get("200") == total == sim["frames"] else 1
    finally:
        procs.stop(gateway)


if __name__ == "__main__":
    sys.exit(main())
