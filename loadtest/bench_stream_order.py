"""Why seeding writes one row of each streamed table first: DynamoDB Local's cost of a write to a
table with a stream, after many stream records of another table, with and without one record of its
own written before them.

``.venv/bin/python -m loadtest.bench_stream_order [--first 30000] [--second 6000]``: on a DynamoDB
Local of its own, two tables with streams; `--first` rows into the first table, then `--second` rows
into the second (BatchWriteItem of 25, one in flight), rows/s per slice; once as is, once with one
row of the second table written before the first table's rows.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import boto3

from infra.local.dynamodb import DynamoDBLocal

TABLES = ("order-first", "order-second")


def _rate(client: Any, table: str, start: int, count: int) -> float:
    t0 = time.perf_counter()
    for i in range(start, start + count, 25):
        keys = range(i, min(i + 25, start + count))
        items = [{"PutRequest": {"Item": {"k": {"S": f"k{j}"}}}} for j in keys]
        client.batch_write_item(RequestItems={table: items})
    return count / (time.perf_counter() - t0)


def run(first: int, second: int, primed: bool) -> list[float]:
    with DynamoDBLocal() as ddb:
        client = boto3.client(
            "dynamodb",
            endpoint_url=ddb.endpoint,
            region_name="us-east-1",
            aws_access_key_id="local",
            aws_secret_access_key="local",
        )
        for table in TABLES:
            client.create_table(
                TableName=table,
                KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
                AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
                BillingMode="PAY_PER_REQUEST",
                StreamSpecification={"StreamEnabled": True, "StreamViewType": "KEYS_ONLY"},
            )
        if primed:
            _rate(client, TABLES[1], 10 * second, 1)
        _rate(client, TABLES[0], 0, first)
        slice_ = max(1, second // 3)
        return [round(_rate(client, TABLES[1], k, slice_), 1) for k in range(0, 3 * slice_, slice_)]


def main(argv: list[str] | None = None) -> int:
    about = __doc__.split("\n")[0] if __doc__ else None
    p = argparse.ArgumentParser(prog="bench_stream_order", description=about)
    p.add_argument("--first", type=int, default=30_000)
    p.add_argument("--second", type=int, default=6_000)
    args = p.parse_args(argv)
    for primed in (False, True):
        rates = run(args.first, args.second, primed)
        label = "one row of it first" if primed else "as is"
        print(f"second table after {args.first} rows of the first, {label}: {rates} rows/s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
