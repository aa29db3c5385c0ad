"""Register many socketless ("simulated") connections with the local stack.

One machine cannot hold more than ~15k sockets per process. This tool makes a broadcast to hundreds
of thousands of connections run end to end here anyway:

1. generates connection ids shaped like API Gateway's (16 base64 characters ending in `=`);
2. assigns each a partition with the engine's own partition choice (`partitions.choice.PartitionChooser`
   over the partitions table's counters, least loaded of d candidates), as the `$connect` handler does;
3. registers the ids with the gateway emulator (`POST {adminUrl}/simulated`), which from then on
   counts the frames posted to them instead of sending them;
4. writes the connection rows with BatchWriteItem, in parallel, retrying unprocessed items;
5. waits until the partition counters (kept by the DynamoDB Stream and the partition counter
   function) add up to what was written. Writing the counters here would count every row twice,
   since the stream counts these rows too.

Usage (from the repository root, with the local stack up)::

    .venv/bin/python -m loadtest.seed --count 200000

Afterwards `GET {adminUrl}/simulated/stats` gives the frames and duplicates per broadcast;
`loadtest/report.py` merges them with Locust's figures.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fanout.adapters.partitions import PartitionsTable
from fanout.adapters.subscriptions import SubscriptionRequests
from fanout.settings import Settings
from partitions.choice import PartitionChooser

BATCH = 25  # BatchWriteItem's limit
REGISTER_CHUNK = 10_000
SIMULATED_USER = "simulated"

console = Console(stderr=True)


def new_connection_ids(count: int, rng: random.Random) -> list[str]:
    """`count` distinct ids like API Gateway's: base64 of 11 random bytes, 16 characters, one `=`."""
    ids: set[str] = set()
    out: list[str] = []
    while len(out) < count:
        cid = base64.b64encode(rng.randbytes(11)).decode()
        if cid not in ids:
            ids.add(cid)
            out.append(cid)
    return out


def assign_partitions(ids: Sequence[str], chooser: PartitionChooser) -> list[int]:
    """One partition per id, chosen as the connect handler chooses (the chooser counts its own picks)."""
    return [chooser.choose() for _ in ids]


def partition_major(ids: Sequence[str], assigned: Sequence[int]) -> list[tuple[str, int]]:
    """(id, partition) pairs ordered by partition, in their first order within one.

    The stream-fed counters add one net delta per partition per stream batch. Rows written in the
    order they were drawn spread a batch of 500 records over ~400 of 1,000 partitions (one counter
    update per record); written partition by partition, a batch touches a handful, so the counters
    catch up on a big seed in a fraction of the time (docs/loadtest.md gives the figures).
    """
    return sorted(zip(ids, assigned, strict=True), key=lambda pair: pair[1])


def connection_item(cid: str, partition_id: int, *, now: float, ttl_seconds: int) -> dict[str, Any]:
    """A row of the connections table, as `fanout.adapters.connections.ConnectionsTable.put` writes it."""
    return {
        "connectionId": {"S": cid},
        "partitionId": {"N": str(partition_id)},
        "connectedAt": {"N": str(int(now * 1000))},
        "expiresAt": {"N": str(int(now) + ttl_seconds)},
        "userId": {"S": SIMULATED_USER},
        "sourceIp": {"S": "127.0.0.1"},
    }


def subscription_item(channel: str, cid: str, *, now: float, ttl_seconds: int) -> dict[str, Any]:
    """A row of the subscriptions table, as `$connect` writes it for ``?channels=`` (the adapter's own
    builder): the connection's user and expiry copied, so it expires with its connection."""
    requests = SubscriptionRequests(table="", connections_table="")
    return requests.row(
        channel=channel, connection_id=cid, user_id=SIMULATED_USER, expires_at=int(now) + ttl_seconds
    )


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass
class WriteStats:
    requests: int = 0
    unprocessed_retries: int = 0


def write_batch(
    client: Any,
    table: str,
    items: Sequence[dict[str, Any]],
    stats: WriteStats,
    *,
    max_attempts: int = 12,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """BatchWriteItem of up to 25 items; unprocessed items are retried with exponential backoff."""
    pending: dict[str, Any] = {table: [{"PutRequest": {"Item": item}} for item in items]}
    for attempt in range(max_attempts):
        out = client.batch_write_item(RequestItems=pending)
        stats.requests += 1
        pending = out.get("UnprocessedItems") or {}
        if not pending:
            return
        stats.unprocessed_retries += 1
        sleep(min(2.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.0))
    left = sum(len(v) for v in pending.values())
    raise RuntimeError(f"{left} items still unprocessed after {max_attempts} attempts")


def write_all(
    client: Any,
    table: str,
    items: Sequence[dict[str, Any]],
    *,
    workers: int = 8,
    on_progress: Callable[[int], None] | None = None,
) -> WriteStats:
    """Every item written with BatchWriteItem, `workers` requests in flight."""
    stats = WriteStats()
    lock = threading.Lock()

    def one(batch: Sequence[dict[str, Any]]) -> None:
        local = WriteStats()
        write_batch(client, table, batch, local)
        with lock:
            stats.requests += local.requests
            stats.unprocessed_retries += local.unprocessed_retries
        if on_progress:
            on_progress(len(batch))

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for future in [pool.submit(one, b) for b in chunks(items, BATCH)]:
            future.result()
    return stats


def post_json(url: str, body: Any, timeout: float = 60.0) -> Any:
    data = json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return json.loads(resp.read() or b"{}")


def get_json(url: str, timeout: float = 60.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read() or b"{}")


def register(admin_url: str, ids: Sequence[str], on_progress: Callable[[int], None] | None = None) -> None:
    """Register the ids with the gateway emulator (before their rows exist, so no post ever finds a
    row whose id the gateway does not know: that would answer 410 and prune the row)."""
    for chunk in chunks(ids, REGISTER_CHUNK):
        post_json(f"{admin_url.rstrip('/')}/simulated", {"connectionIds": list(chunk)})
        if on_progress:
            on_progress(len(chunk))


def counters_total(partitions: PartitionsTable) -> int:
    return sum(c or 0 for c in partitions.stored_counts().values())


def wait_for_counters(
    partitions: PartitionsTable,
    expected: int,
    *,
    timeout: float,
    on_progress: Callable[[int], None] | None = None,
    interval: float = 1.0,
) -> int:
    """Poll the partition counters until they add up to `expected`; the last total seen."""
    deadline = time.monotonic() + timeout
    total = counters_total(partitions)
    while total != expected:
        if on_progress:
            on_progress(total)
        if time.monotonic() > deadline:
            raise TimeoutError(f"partition counters add up to {total}, expected {expected}")
        time.sleep(interval)
        total = counters_total(partitions)
    if on_progress:
        on_progress(total)
    return total


def dynamodb_client(endpoint: str, region: str, workers: int) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(  # type: ignore[call-overload]
        "dynamodb",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id="local",
        aws_secret_access_key="local",
        config=Config(max_pool_connections=max(10, workers * 2), retries={"max_attempts": 10}),
    )


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def seed(
    state: dict[str, Any],
    count: int,
    *,
    workers: int = 8,
    rng_seed: int | None = None,
    wait: bool = True,
    timeout: float = 1800.0,
    log: Callable[[str], None] = console.print,
    channel: str | None = None,
    members: int = 0,
) -> dict[str, Any]:
    """Register `count` simulated connections with the stack described by `state` (its local.json).

    With `channel`, the first `members` of them are subscribed to it, as ``?channels=`` at $connect
    would, and their connection rows carry the channel. The order of the writes matters on DynamoDB
    Local: on every write to a table with a stream it looks for that stream's earliest record by
    walking every table's stream records from the oldest, so a table whose first record comes after
    many of another's pays that walk on each write (10,000 subscription rows written after 100,000
    connection rows took minutes; docs/loadtest.md gives the figures). One connection row goes first,
    then the subscription rows, then the other connection rows: each stream then starts near the
    front.
    """
    env = state.get("settings", {})
    partition_count = int(env.get("FANOUT_PARTITION_COUNT") or Settings().partition_count)
    settings = Settings(partition_count=partition_count)
    client = dynamodb_client(state["dynamodbUrl"], state.get("region", "us-east-1"), workers)
    partitions = PartitionsTable(client, settings.partitions_table)
    rng = random.Random(rng_seed)

    t0 = time.monotonic()
    ids = new_connection_ids(count, rng)
    before = counters_total(partitions)
    chooser = PartitionChooser(
        loader=partitions.load_view,
        partition_count=partition_count,
        choices=settings.partition_choices,
        ttl_seconds=float("inf"),  # one read of the view; the chooser counts its own assignments
        clock=time.monotonic,
        rng=rng,
    )
    assigned = assign_partitions(ids, chooser)
    now = time.time()
    items = [
        connection_item(cid, pid, now=now, ttl_seconds=settings.connection_ttl_seconds)
        for cid, pid in partition_major(ids, assigned)
    ]
    subscribed = set(ids[:members]) if channel else set()
    for item in items:
        if item["connectionId"]["S"] in subscribed:
            item["channels"] = {"SS": [channel]}
    log(
        f"{count} ids generated and assigned to {len(set(assigned))} of {partition_count} partitions "
        f"in {time.monotonic() - t0:.1f} s"
    )

    with _progress() as progress:
        task = progress.add_task("registering with the gateway", total=count)
        t1 = time.monotonic()
        register(state["adminUrl"], ids, on_progress=lambda n: progress.advance(task, n))
        register_seconds = time.monotonic() - t1
        connections_task = progress.add_task("writing connection rows", total=count)
        written_first = 1 if channel and subscribed else 0

        subscribe_seconds = None
        if channel and subscribed:
            # One connection row before the subscription rows: see the docstring.
            write_all(client, settings.connections_table, items[:1], workers=1)
            progress.advance(connections_task, 1)
            task = progress.add_task(f"subscribing to {channel}", total=len(subscribed))
            t_sub = time.monotonic()
            write_all(
                client,
                settings.subscriptions_table,
                [subscription_item(channel, cid, now=now, ttl_seconds=settings.connection_ttl_seconds)
                 for cid in ids[:members]],
                workers=workers,
                on_progress=lambda n: progress.advance(task, n),
            )  # fmt: skip
            subscribe_seconds = time.monotonic() - t_sub

        t2 = time.monotonic()
        stats = write_all(
            client,
            settings.connections_table,
            items[written_first:],
            workers=workers,
            on_progress=lambda n: progress.advance(connections_task, n),
        )
        write_seconds = time.monotonic() - t2

        counters_seconds = None
        if wait:
            task = progress.add_task("waiting for partition counters", total=before + count)
            t3 = time.monotonic()
            wait_for_counters(
                partitions,
                before + count,
                timeout=timeout,
                on_progress=lambda total: progress.update(task, completed=total),
            )
            counters_seconds = time.monotonic() - t3

    per_partition = [0] * partition_count
    for pid in assigned:
        per_partition[pid] += 1
    summary = {
        "simulated": count,
        "partitions": partition_count,
        "perPartitionMin": min(per_partition),
        "perPartitionMax": max(per_partition),
        "registerSeconds": round(register_seconds, 2),
        "writeSeconds": round(write_seconds, 2),
        "rowsPerSecond": round(count / write_seconds, 1) if write_seconds else None,
        "batchRequests": stats.requests,
        "unprocessedRetries": stats.unprocessed_retries,
        "countersSeconds": round(counters_seconds, 2) if counters_seconds is not None else None,
        "subscribed": len(subscribed),
        "subscribeSeconds": round(subscribe_seconds, 2) if subscribe_seconds is not None else None,
        "countersBefore": before,
        "totalSeconds": round(time.monotonic() - t0, 2),
    }
    log(
        f"seeded {count} simulated connections: rows at {summary['rowsPerSecond']}/s, "
        f"counters caught up after {summary['countersSeconds']} s"
    )
    return summary


def load_state(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise SystemExit(f"{path} not found: start the local stack first (`fanout local up`)")
    state: dict[str, Any] = json.loads(path.read_text())
    return state


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=200_000, help="simulated connections to register")
    parser.add_argument("--state", type=Path, default=Path(".fanout/local.json"))
    parser.add_argument("--workers", type=int, default=8, help="BatchWriteItem requests in flight")
    parser.add_argument("--seed", type=int, default=None, help="random seed for ids and choices")
    parser.add_argument("--no-wait", action="store_true", help="do not wait for the partition counters")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the counters")
    parser.add_argument("--json", type=Path, default=None, help="write the summary there")
    parser.add_argument("--stats", action="store_true", help="print the gateway's simulated stats and exit")
    args = parser.parse_args(list(argv) if argv is not None else None)
    state = load_state(args.state)
    if args.stats:
        print(json.dumps(get_json(f"{state['adminUrl'].rstrip('/')}/simulated/stats"), indent=2))
        return 0
    summary = seed(
        state,
        args.count,
        workers=args.workers,
        rng_seed=args.seed,
        wait=not args.no_wait,
        timeout=args.timeout,
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
