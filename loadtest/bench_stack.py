"""The `stack` section of loadtest/bench.py: broadcasts on the local stack, measured.

One fresh local stack (infra/local/stack.py) per size, with ~100 connections per partition and
simulated connections (loadtest/seed.py): the scale curve (broadcast time and CPU per delivered frame),
engine vs the naive sender (loadtest/naive.py) at 10k connections with 0 and 20 ms of added latency,
and engine vs a bare posting loop (the local ceiling) at 100k. CPU is read from /proc for every
process of the stack, the Lambda runtime's by function.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field

from loadtest.bench_models import (
    BroadcastRun,
    Ceiling,
    CpuSeconds,
    FailedSize,
    NaiveComparison,
    NaiveRun,
    NaiveSenderRun,
    Record,
    ScalePoint,
    StackFailure,
    StackRun,
)

ROOT = Path(__file__).resolve().parents[1]
NAIVE_SIZE = 10_000
NAIVE_LATENCIES_MS = (0, 20)
CEILING_SIZE = 100_000


def stack_status() -> str | None:
    """None when the local stack can start here, else why not."""
    try:
        from infra.local import stack
    except Exception as exc:  # an import error of a component still being written
        return f"infra.local.stack does not import: {exc!r}"
    for name in ("sqs", "runtime", "gateway"):
        if not (ROOT / "infra" / "local" / f"{name}.py").exists():
            return f"infra/local/{name}.py is missing"
    try:
        stack.runtime_config({}, None, {}, stack.StackOptions(), None)
    except NotImplementedError as exc:
        return f"infra/local/stack.py is not finished: {exc}"
    except Exception:
        pass
    return None


def _http(method: str, url: str, body: Any = None, timeout: float = 120.0) -> Any:
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


# -- CPU of the stack's processes ------------------------------------------------------------------------
def _group_cpu(pgid: int) -> dict[str, float]:
    """CPU seconds of the live processes of a process group, by Lambda function name (else 'other')."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) != pgid and int(entry.name) != pgid:
                continue
            cpu = (int(fields[11]) + int(fields[12])) / tick
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        name = "other"
        for kv in env:
            if kv.startswith(b"AWS_LAMBDA_FUNCTION_NAME="):
                name = kv.split(b"=", 1)[1].decode()
        out[name] = out.get(name, 0.0) + cpu
    return out


def _cpu_delta(before: dict[str, float], after: dict[str, float]) -> CpuSeconds:
    return {k: round(after.get(k, 0.0) - before.get(k, 0.0), 3) for k in sorted(set(before) | set(after))}


def stack_cpu(pgids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of the stack's processes: the runtime's by function, the others whole."""
    out: dict[str, float] = {}
    for name, pgid in pgids.items():
        groups = _group_cpu(pgid)
        if name == "runtime":
            out |= {("runtime (pollers)" if k == "other" else k): v for k, v in groups.items()}
        else:
            out[name] = sum(groups.values())
    return out


# -- the engine, the naive sender and the bare loop ------------------------------------------------------
def engine_broadcast(
    state: dict[str, Any], pgids: dict[str, int], message: Any, timeout: float
) -> BroadcastRun:
    from fanout.tools.operator_client import OperatorClient

    api = OperatorClient(state["httpApiUrl"], bearer_token=state["operatorToken"])
    cpu0 = stack_cpu(pgids)
    t0 = time.perf_counter()
    bid = api.start(message)
    view = api.wait(bid, timeout=timeout, interval=0.2)  # polls cost operator-API CPU
    wall = time.perf_counter() - t0
    every = _cpu_delta(cpu0, stack_cpu(pgids))
    cpu = {k: v for k, v in every.items() if k.startswith("fanout-") or k == "runtime (pollers)"}
    sim = _http("GET", f"{state['adminUrl']}/simulated/stats")
    delivered = int(view["delivered"])
    return BroadcastRun(
        broadcast_id=bid,
        status=view["status"],
        targeted=view["targeted"],
        delivered=delivered,
        gone=view["gone"],
        failed=view["failed"],
        seconds=round(wall, 3),
        server_seconds=round(((view["completedAt"] or 0) - view["createdAt"]) / 1000, 3),
        frames_per_second=round(delivered / wall, 1) if wall else None,
        cpu_seconds=cpu,
        cpu_us_per_frame=round(sum(cpu.values()) / max(1, delivered) * 1e6, 1),
        post_cpu_us_per_frame=round(cpu.get("fanout-post", 0.0) / max(1, delivered) * 1e6, 1),
        stack_cpu_seconds=every,
        stack_cpu_us_per_frame=round(sum(every.values()) / max(1, delivered) * 1e6, 1),
        gateway=_find_broadcast(sim, bid),
    )


def _find_broadcast(sim: Any, bid: str) -> Any:
    if isinstance(sim, dict):
        for key in ("broadcasts", "perBroadcast"):
            if isinstance(sim.get(key), dict) and bid in sim[key]:
                return sim[key][bid]
    return None


def naive_broadcast(state_path: Path, timeout: float, pgids: dict[str, int] | None = None) -> NaiveSenderRun:
    cpu0 = stack_cpu(pgids) if pgids else {}
    out = subprocess.run(
        [sys.executable, "-m", "loadtest.naive", "--state", str(state_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"naive sender failed: {out.stderr[-2000:]}")
    result = NaiveSenderRun.model_validate_json(out.stdout.strip().splitlines()[-1])
    if pgids:
        result.stack_cpu_seconds = _cpu_delta(cpu0, stack_cpu(pgids))
    return result


def _all_connection_ids(state: dict[str, Any]) -> list[str]:
    import boto3

    ddb = boto3.client(  # type: ignore[call-overload]
        "dynamodb",
        endpoint_url=state["dynamodbUrl"],
        region_name=state.get("region", "us-east-1"),
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    ids: list[str] = []
    kwargs: dict[str, Any] = {"TableName": "fanout-connections", "ProjectionExpression": "connectionId"}
    while True:
        page = ddb.scan(**kwargs)
        ids.extend(i["connectionId"]["S"] for i in page.get("Items", []))
        if "LastEvaluatedKey" not in page:
            return ids
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


class BareLoopRun(Record):
    """What one `bare-loop` process prints: its posting window, frames delivered and CPU."""

    start: float
    end: float
    delivered: int
    cpu_seconds: float = Field(alias="cpuSeconds")


async def _bare_loop(endpoint: str, ids: list[str], concurrency: int) -> tuple[float, float, int]:
    """Post one frame to each id with `concurrency` in flight: no queues, no tables. (start, end, ok)."""
    from fanout.postclient import ConnectionsClient, new_session
    from fanout.sigv4 import Credentials, payload_hash

    frame = json.dumps(
        {"type": "broadcast", "broadcastId": "ceiling", "sentAt": int(time.time() * 1000), "data": {"c": 1}},
        separators=(",", ":"),
    ).encode()
    sha = payload_hash(frame)
    ok = 0
    async with new_session(concurrency) as session:
        poster = ConnectionsClient(
            session, endpoint, region="us-east-1", credentials=lambda: Credentials("l", "l")
        )
        it = iter(ids)
        start = time.time()

        async def worker() -> None:
            nonlocal ok
            for cid in it:
                try:
                    await poster.post(cid, frame, sha)
                    ok += 1
                except Exception:
                    continue

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return start, time.time(), ok


def bare_loop_main(args: argparse.Namespace) -> int:
    from fanout.container import new_loop
    from fanout.settings import Settings

    ids = json.loads(Path(args.ids).read_text())
    loop = new_loop(Settings().uvloop)  # the engine's event loop, so that the ceiling compares like with like
    try:
        cpu0 = time.process_time()
        start, end, ok = loop.run_until_complete(_bare_loop(args.endpoint, ids, args.concurrency))
        cpu = time.process_time() - cpu0
    finally:
        loop.close()
    run = BareLoopRun(start=start, end=end, delivered=ok, cpu_seconds=round(cpu, 3))
    print(json.dumps(run.to_json()))
    return 0


def ceiling(
    state: dict[str, Any],
    workers: int,
    concurrency: int,
    tmp: Path,
    engine: BroadcastRun,
    pgids: dict[str, int] | None = None,
) -> Ceiling:
    """The bare loop in `workers` processes of `concurrency` each, as many posts in flight as the engine."""
    ids = _all_connection_ids(state)
    cpu0 = stack_cpu(pgids) if pgids else {}
    procs = []
    for w in range(workers):
        path = tmp / f"ids-{w}.json"
        path.write_text(json.dumps(ids[w::workers]))
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "loadtest.bench",
                    "bare-loop",
                    "--ids",
                    str(path),
                    "--endpoint",
                    state["connectionsUrl"],
                    "--concurrency",
                    str(concurrency),
                ],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    outs = []
    for p in procs:
        stdout, _ = p.communicate(timeout=1800)
        outs.append(BareLoopRun.model_validate_json(stdout.strip().splitlines()[-1]))
    wall = max(o.end for o in outs) - min(o.start for o in outs)
    delivered = sum(o.delivered for o in outs)
    fps = round(delivered / wall, 1)
    stack = {"stack_cpu_seconds": _cpu_delta(cpu0, stack_cpu(pgids))} if pgids else {}
    return Ceiling(
        connections=len(ids),
        workers=workers,
        concurrency=concurrency,
        delivered=delivered,
        seconds=round(wall, 3),
        frames_per_second=fps,
        loop_cpu_seconds=round(sum(o.cpu_seconds for o in outs), 3),
        **stack,
        engine_frames_per_second=engine.frames_per_second,
        ratio=round((engine.frames_per_second or 0) / fps, 3),
    )


# -- the section -----------------------------------------------------------------------------------------
def run_stack(sizes: list[int], post_workers: int, timeout: float, log: Callable[[str], None]) -> StackRun:
    out = StackRun(
        scale=[],
        failed=[],
        naive=None,
        ceiling=None,
        post_workers=post_workers,
        command=f".venv/bin/python -m loadtest.bench --only stack --sizes {','.join(map(str, sizes))}",
    )
    for size in sizes:
        try:
            stack_size(out, size, post_workers, timeout, log)
        except Exception as exc:  # one size failing keeps the others' figures
            log(traceback.format_exc())
            out.failed.append(FailedSize(connections=size, error=f"{exc!r}"[:500]))
    return with_slope(out)


def stack_post_batch_size(size: int) -> int:
    """B as `fanout plan` recommends it for `size` connections (above the largest partition)."""
    from fanout.plan import recommend_deployment

    return recommend_deployment(size, 10_000).post_batch_size


def stack_size(
    out: StackRun, size: int, post_workers: int, timeout: float, log: Callable[[str], None]
) -> None:
    import tempfile

    from infra.local.stack import LocalStack, StackOptions
    from loadtest.seed import seed

    partitions = max(1, math.ceil(size / 100))
    batch = stack_post_batch_size(size)
    state_dir = ROOT / ".fanout" / "bench"
    options = StackOptions(
        partitions=partitions,
        shards=4,
        post_workers=post_workers,
        post_batch_size=batch,
        state_dir=state_dir,
    )
    log(f"stack for {size} connections ({partitions} partitions, B = {batch}, {post_workers} post workers)")
    with LocalStack(options, log=log) as stack, tempfile.TemporaryDirectory() as tmp:
        state = stack.state
        pgids = {name: proc.pid for name, proc in stack.children}
        if stack.ddb is not None and stack.ddb.proc is not None:
            pgids["dynamodb"] = stack.ddb.proc.pid
        t0 = time.monotonic()
        seeded = seed(state, size, workers=8, rng_seed=size, wait=True, timeout=timeout, log=log)
        log(f"seeded {size} in {time.monotonic() - t0:.1f} s")
        engine_broadcast(state, pgids, {"warmup": True}, timeout)  # cold starts out of the figure
        run = engine_broadcast(state, pgids, {"size": size}, timeout)
        point = ScalePoint(
            **dict(run),
            connections=size,
            partitions=partitions,
            post_batch_size=batch,
            largest_partition=seeded.get("perPartitionMax"),
            seed_seconds=seeded.get("totalSeconds"),
        )
        out.scale.append(point)
        log(f"{size}: {point.seconds} s, {point.cpu_us_per_frame} us CPU/frame")
        if size == NAIVE_SIZE:
            out.naive = naive_comparison(state, pgids, point, state_dir / "local.json", timeout, log)
        if size == CEILING_SIZE:
            out.ceiling = ceiling(
                state, post_workers, stack.options.post_concurrency, Path(tmp), point, pgids
            )
            log(f"ceiling: {out.ceiling.to_json()}")


def naive_comparison(
    state: dict[str, Any],
    pgids: dict[str, int],
    point: BroadcastRun,
    state_path: Path,
    timeout: float,
    log: Callable[[str], None],
) -> NaiveComparison:
    """The naive sender against the engine at each added latency (the engine's 0 ms run is `point`)."""
    naive = NaiveComparison(connections=NAIVE_SIZE, runs={})
    for latency in NAIVE_LATENCIES_MS:
        _http("POST", f"{state['adminUrl']}/faults", {"latencyMs": latency})
        engine = point if latency == 0 else engine_broadcast(state, pgids, {"l": latency}, timeout)
        baseline = naive_broadcast(state_path, timeout=3600, pgids=pgids)
        run = NaiveRun(
            engine_seconds=engine.seconds,
            engine_delivered=engine.delivered,
            naive_seconds=baseline.seconds,
            naive_delivered=baseline.delivered,
            naive_cpu_seconds=baseline.cpu_seconds,
            engine_stack_cpu_seconds=engine.stack_cpu_seconds,
            naive_stack_cpu_seconds=baseline.stack_cpu_seconds,
            speedup=round(baseline.seconds / engine.seconds, 1),
        )
        naive.runs[f"{latency}ms"] = run
        log(f"naive at {latency} ms: {run.to_json()}")
    _http("POST", f"{state['adminUrl']}/faults", {"latencyMs": 0})
    return naive


def cpu_slope(points: list[ScalePoint]) -> float | None:
    """The least-squares slope of CPU per frame against log10(connections), in us per decade."""
    if len(points) < 2:
        return None
    xs = [math.log10(p.connections) for p in points]
    ys = [p.cpu_us_per_frame for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return round(slope, 1)


def with_slope(run: StackRun) -> StackRun:
    """`run` with the slope of its scale curve, or none when it has fewer than two sizes."""
    data = run.to_json()
    data.pop("cpuSlopeUsPerDecade", None)
    slope = cpu_slope(run.scale)
    if slope is not None:
        data["cpuSlopeUsPerDecade"] = slope
    return StackRun.model_validate(data)


def merge_stack(old: StackRun | StackFailure | None, new: StackRun) -> StackRun:
    """Keep the earlier run's sizes (and naive/ceiling figures) that this run did not measure again."""
    if not isinstance(old, StackRun):
        return new
    sizes = {p.connections for p in new.scale}
    kept = [p.model_copy(update={"run": old.command}) for p in old.scale if p.connections not in sizes]
    update: dict[str, Any] = {"scale": sorted(kept + new.scale, key=lambda p: p.connections)}
    if new.naive is None and old.naive is not None:
        update["naive"] = old.naive.model_copy(update={"run": old.command})
    if new.ceiling is None and old.ceiling is not None:
        update["ceiling"] = old.ceiling.model_copy(update={"run": old.command})
    if kept:
        update["command"] = f"{old.command}; then {new.command}"
    return with_slope(new.model_copy(update=update))
