"""Benchmark of the strict DynamoDB layer: what one forwarded request costs, and DynamoDB Local's
transaction window.

Starts DynamoDB Local and the layer as a child process (`python -m infra.local.ddb_strict`), then
sends GetItem directly and through the layer in alternating rounds (one boto3 client each,
sequential calls), and reports the median latency of each path, the layer's CPU time per request
(from /proc) and DynamoDB Local's own TransactWriteItems latency (the window in which a conflict
can happen without the layer's minimum hold).

    python -m infra.local.ddb_strict_bench --rounds 10 --calls 200
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from infra.local import procs
from infra.local.dynamodb import ROOT, DynamoDBLocal

TABLE = "bench-strict"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _client(endpoint: str) -> Any:
    return boto3.client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
    )


def _timed(call: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        out.append((time.perf_counter() - t0) * 1e6)
    return out


def run(rounds: int, calls: int) -> dict[str, Any]:
    with DynamoDBLocal() as ddb:
        port = procs.free_port()
        proxy = procs.start(
            [sys.executable, "-m", "infra.local.ddb_strict", "--upstream", ddb.endpoint, "--port", str(port)],
            cwd=ROOT,
        )
        try:
            procs.wait_for_port("127.0.0.1", port, timeout=30, proc=proxy)
            direct, strict = _client(ddb.endpoint), _client(f"http://127.0.0.1:{port}")
            direct.create_table(
                TableName=TABLE,
                KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                BillingMode="PAY_PER_REQUEST",
            )
            key = {"pk": {"S": "item"}}
            direct.put_item(TableName=TABLE, Item={**key, "data": {"S": "x" * 100}})

            def get(c: Any) -> Any:
                return lambda: c.get_item(TableName=TABLE, Key=key)

            _timed(get(direct), 100)  # warm both paths (JIT, connections)
            _timed(get(strict), 100)
            direct_us: list[float] = []
            strict_us: list[float] = []
            cpu = 0.0
            for _ in range(rounds):
                direct_us += _timed(get(direct), calls)
                c0 = _cpu_seconds(proxy.pid)
                strict_us += _timed(get(strict), calls)
                cpu += _cpu_seconds(proxy.pid) - c0
            n = 0

            def transaction() -> None:
                nonlocal n
                n += 1
                direct.transact_write_items(
                    TransactItems=[
                        {"Put": {"TableName": TABLE, "Item": {"pk": {"S": f"ledger-{n}"}}}},
                        {
                            "Update": {
                                "TableName": TABLE,
                                "Key": key,
                                "UpdateExpression": "ADD n :one",
                                "ExpressionAttributeValues": {":one": {"N": "1"}},
                            }
                        },
                    ]
                )

            _timed(transaction, 50)
            transact_us = _timed(transaction, rounds * 20)
        finally:
            procs.stop(proxy)
    return {
        "getItemDirectMedianUs": round(statistics.median(direct_us)),
        "getItemStrictMedianUs": round(statistics.median(strict_us)),
        "addedLatencyMedianUs": round(statistics.median(strict_us) - statistics.median(direct_us)),
        "strictCpuPerRequestUs": round(cpu / (rounds * calls) * 1e6),
        "transactWriteItemsDirectMedianMs": round(statistics.median(transact_us) / 1000, 1),
        "requests": rounds * calls,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.local.ddb_strict_bench", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds (default %(default)s)")
    parser.add_argument("--calls", type=int, default=200, help="GetItem calls per round and path")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.rounds, args.calls), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
