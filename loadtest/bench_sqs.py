"""Throughput of the local SQS server (infra/local/sqs.py) with 10,000 messages queued.

Usage (from the repository root)::

    .venv/bin/python -m loadtest.bench_sqs --json loadtest/results/bench_sqs.json
    .venv/bin/python -m loadtest.bench_sqs --client raw --json loadtest/results/bench_sqs_raw.json

The server runs in its own process (``python -m infra.local.sqs``). The benchmark fills one queue
with ``--queued`` messages (10,000), then measures two phases, each driven by ``--clients`` worker
processes with ``--concurrency`` requests in flight each:

- send: ``--messages`` messages with SendMessageBatch (10 per call); the queue grows from 10,000;
- receive+delete: ``--messages`` messages with ReceiveMessage (10 per call) then DeleteMessageBatch;
  the queue shrinks back to 10,000, so every receive runs with at least 10,000 messages queued.

Each phase reports messages per second (wall clock, from the moment the warmed-up workers are told
to start until the last one is done), the server's CPU time (user + system from /proc, so CPU per
message is the server's own cost whatever the client) and the workers' CPU time. ``--client``
picks the client: ``aiobotocore`` (what the engine uses, SigV4-signed) or ``raw`` (bare aiohttp
POSTs of the same JSON, unsigned: the floor of client cost, to show the server's capacity when the
client is not the limit). On a 2-core machine the server and the clients share the cores; a phase
whose server CPU is well below its wall time is limited by the clients.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

from infra.local import procs

BATCH = 10
TARGET = "AmazonSQS."


def _proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RawClient:
    """The SQS JSON protocol over bare aiohttp, unsigned (the server accepts any credentials)."""

    def __init__(self, endpoint: str, concurrency: int) -> None:
        import aiohttp

        self.endpoint = endpoint
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency))

    async def call(self, action: str, params: dict[str, Any]) -> dict[str, Any]:
        headers = {"X-Amz-Target": TARGET + action, "Content-Type": "application/x-amz-json-1.0"}
        async with self.session.post(self.endpoint + "/", data=json.dumps(params), headers=headers) as resp:
            body: dict[str, Any] = await resp.json(content_type=None)
            if resp.status != 200:
                raise RuntimeError(f"{action}: {resp.status} {body}")
            return body

    async def close(self) -> None:
        await self.session.close()


class BotoClient:
    """aiobotocore's SQS client, one per worker process."""

    def __init__(self, client: Any) -> None:
        self.client = client

    @classmethod
    async def open(cls, endpoint: str, concurrency: int, stack: Any) -> BotoClient:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        client = await stack.enter_async_context(
            get_session().create_client(
                "sqs",
                endpoint_url=endpoint,
                region_name="us-east-1",
                aws_access_key_id="bench",
                aws_secret_access_key="bench",
                config=AioConfig(max_pool_connections=concurrency, retries={"max_attempts": 1}),
            )
        )
        return cls(client)

    async def call(self, action: str, params: dict[str, Any]) -> dict[str, Any]:
        method = {
            "SendMessageBatch": self.client.send_message_batch,
            "ReceiveMessage": self.client.receive_message,
            "DeleteMessageBatch": self.client.delete_message_batch,
        }[action]
        result: dict[str, Any] = await method(**params)
        return result


async def _run_worker(
    phase: str, endpoint: str, url: str, count: int, concurrency: int, body: str, kind: str, go: Any
) -> tuple[int, float, float]:
    import contextlib

    async with contextlib.AsyncExitStack() as stack:
        if kind == "raw":
            raw = RawClient(endpoint, concurrency)
            stack.push_async_callback(raw.close)
            client: RawClient | BotoClient = raw
        else:
            client = await BotoClient.open(endpoint, concurrency, stack)
        # Warm up: connections and (for boto) the service model, outside the measurement.
        await asyncio.gather(
            *(
                client.call("ReceiveMessage", {"QueueUrl": url, "VisibilityTimeout": 0})
                for _ in range(concurrency)
            )
        )
        remaining = count
        done = 0

        async def sender() -> None:
            nonlocal remaining, done
            while remaining > 0:
                n = min(BATCH, remaining)
                remaining -= n
                entries = [{"Id": str(i), "MessageBody": body} for i in range(n)]
                out = await client.call("SendMessageBatch", {"QueueUrl": url, "Entries": entries})
                if out.get("Failed"):
                    raise RuntimeError(f"send failures: {out['Failed']}")
                done += n

        async def consumer() -> None:
            nonlocal remaining, done
            while remaining > 0:
                n = min(BATCH, remaining)
                remaining -= n
                got = await client.call(
                    "ReceiveMessage", {"QueueUrl": url, "MaxNumberOfMessages": n, "VisibilityTimeout": 60}
                )
                msgs = got.get("Messages", [])
                remaining += n - len(msgs)
                if not msgs:
                    continue
                entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(msgs)]
                out = await client.call("DeleteMessageBatch", {"QueueUrl": url, "Entries": entries})
                if out.get("Failed"):
                    raise RuntimeError(f"delete failures: {out['Failed']}")
                done += len(msgs)

        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        cpu0 = time.process_time()
        work = sender if phase == "send" else consumer
        await asyncio.gather(*(work() for _ in range(concurrency)))
        return done, time.process_time() - cpu0, time.time()


def _worker(args: tuple[str, str, str, int, int, str, str, Any, Any]) -> None:
    phase, endpoint, url, count, concurrency, body, kind, go, results = args
    results.put(asyncio.run(_run_worker(phase, endpoint, url, count, concurrency, body, kind, go)))


def run_phase(
    phase: str,
    endpoint: str,
    url: str,
    server_pid: int,
    messages: int,
    clients: int,
    concurrency: int,
    body: str,
    kind: str,
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    results: Any = ctx.Queue()
    share = [messages // clients + (1 if i < messages % clients else 0) for i in range(clients)]
    workers = [
        ctx.Process(target=_worker, args=((phase, endpoint, url, n, concurrency, body, kind, go, results),))
        for n in share
    ]
    for w in workers:
        w.start()
    time.sleep(3.0)  # let the workers import and warm up before the clock starts
    cpu0 = _proc_cpu(server_pid)
    t0 = time.time()
    go.set()
    outs = [results.get(timeout=600) for _ in workers]
    wall = max(o[2] for o in outs) - t0
    server_cpu = _proc_cpu(server_pid) - cpu0
    for w in workers:
        w.join()
    done = sum(o[0] for o in outs)
    return {
        "messages": done,
        "seconds": round(wall, 3),
        "rate_per_s": round(done / wall, 1),
        "server_cpu_s": round(server_cpu, 3),
        "server_cpu_us_per_message": round(server_cpu / done * 1e6, 1),
        "server_cpu_share_of_wall": round(server_cpu / wall, 2),
        "client_cpu_s": round(sum(o[1] for o in outs), 3),
        "client_cpu_us_per_message": round(sum(o[1] for o in outs) / done * 1e6, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_sqs", description=__doc__.split("\n")[0])
    parser.add_argument("--queued", type=int, default=10_000, help="messages kept queued (default 10,000)")
    parser.add_argument("--messages", type=int, default=20_000, help="messages per phase (default 20,000)")
    parser.add_argument("--clients", type=int, default=3, help="client worker processes (default 3)")
    parser.add_argument(
        "--concurrency", type=int, default=64, help="requests in flight per worker (default 64)"
    )
    parser.add_argument("--body-bytes", type=int, default=256, help="message body size (default 256)")
    parser.add_argument("--client", choices=["aiobotocore", "raw"], default="aiobotocore")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this path")
    args = parser.parse_args(argv)

    import boto3

    port = procs.free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = procs.start(
        [
            sys.executable,
            "-m",
            "infra.local.sqs",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "WARNING",
        ]
    )
    try:
        procs.wait_for_port("127.0.0.1", port, timeout=30, proc=server)
        sqs = boto3.client(
            "sqs",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="b",
            aws_secret_access_key="b",
        )
        url = sqs.create_queue(QueueName="bench", Attributes={"VisibilityTimeout": "60"})["QueueUrl"]
        body = json.dumps({"broadcastId": "b" * 26, "pad": "x" * max(0, args.body_bytes - 50)})[
            : args.body_bytes
        ]

        def depth() -> int:
            attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
            return int(attrs["Attributes"]["ApproximateNumberOfMessages"])

        common = (endpoint, url, server.pid)
        knobs = (args.clients, args.concurrency, body, args.client)
        fill = run_phase("send", *common, args.queued, *knobs)
        queued_before_send = depth()
        send = run_phase("send", *common, args.messages, *knobs)
        queued_before_receive = depth()
        receive = run_phase("receive", *common, args.messages, *knobs)
        queued_after = depth()
    finally:
        procs.stop(server)

    report = {
        "benchmark": "bench_sqs",
        "config": {
            "client": args.client,
            "clients": args.clients,
            "concurrency": args.concurrency,
            "body_bytes": len(body),
            "messages": args.messages,
            "queued": args.queued,
            "cpus": os.cpu_count(),
            "loadavg_1m": os.getloadavg()[0],
        },
        "queue_depth": {
            "before_send": queued_before_send,
            "before_receive": queued_before_receive,
            "after_receive": queued_after,
        },
        "fill": fill,
        "send": send,
        "receive_delete": receive,
    }
    print(
        f"send:           {send['rate_per_s']:>9,.0f} msg/s  "
        f"(server {send['server_cpu_us_per_message']:.0f} us CPU/msg, "
        f"{send['server_cpu_share_of_wall']:.0%} of a core; "
        f"clients {send['client_cpu_us_per_message']:.0f} us CPU/msg)"
    )
    print(
        f"receive+delete: {receive['rate_per_s']:>9,.0f} msg/s  "
        f"(server {receive['server_cpu_us_per_message']:.0f} us CPU/msg, "
        f"{receive['server_cpu_share_of_wall']:.0%} of a core; "
        f"clients {receive['client_cpu_us_per_message']:.0f} us CPU/msg)"
    )
    print(f"queue depth: {report['queue_depth']}")
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
