"""`make bench`: run the benchmarks, write loadtest/results/bench.json and docs/benchmarks.md.

Usage (from the repository root)::

    .venv/bin/python -m loadtest.bench                 # everything the machine can run
    .venv/bin/python -m loadtest.bench --only post,plan,balance   # no local stack needed
    .venv/bin/python -m loadtest.bench --sizes 1000,10000          # a shorter scale curve

Sections:

- ``post``: CPU per delivered frame, engine vs boto3 vs aioboto3 (loadtest/bench_post.py);
- ``plan``: the quota model (fanout/plan.py) fed with the measured post costs;
- ``balance``: partition balance and DynamoDB reads per connect of the engine's partition choice
  (partitions/choice.py) under churn and 50 concurrent connectors, against hash-mod-N;
- ``stack``: on the local stack (infra/local/stack.py), one fresh stack per size with ~100 connections
  per partition and simulated connections (loadtest/seed.py): the scale curve (broadcast time and CPU per
  delivered frame), engine vs the naive sender (loadtest/naive.py) at 10k connections with 0 and 20 ms
  of added latency, and engine vs a bare posting loop (the local ceiling) at 100k.

Every figure in docs/benchmarks.md comes from the JSON this run writes; a section that did not run
says "not run" with the reason. These are measurements, never pass/fail tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import traceback
import zlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "loadtest" / "results" / "bench.json"
DOC = ROOT / "docs" / "benchmarks.md"
SECTIONS = ("post", "plan", "balance", "stack")
PLAN_SCENARIOS = (
    (10_000, 10_000),
    (100_000, 10_000),
    (300_000, 10_000),
    (300_000, 100_000),
    (1_000_000, 100_000),
)


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# -- post stage cost --------------------------------------------------------------------------------------
def run_post(rounds: int) -> dict[str, Any]:
    from loadtest import bench_post

    posts = dict(bench_post.DEFAULT_POSTS)
    result = bench_post.bench(rounds, posts, list(bench_post.VARIANTS), 50, log)
    result["command"] = f".venv/bin/python -m loadtest.bench_post --rounds {rounds}"
    log("post: profiling the engine and stage variants (cProfile)")
    result["profile"] = {v: bench_post.profiled(v, posts[v]) for v in ("engine", "stage")}
    result["profile"]["command"] = ".venv/bin/python -m loadtest.bench_post --profile engine|stage"
    return result


# -- quota model ------------------------------------------------------------------------------------------
def measured_costs(post: dict[str, Any] | None) -> dict[str, Any]:
    if not post:
        return {}
    v = post["variants"]
    engine = v["engine"]["cpu_us_per_frame_median"]
    out: dict[str, Any] = {"post_frame_cpu_us": engine}
    if "stage" in v:
        out["post_batch_cpu_us"] = max(0.0, (v["stage"]["cpu_us_per_frame_median"] - engine) * 100)
    return out


def run_plan(post: dict[str, Any] | None) -> dict[str, Any]:
    from fanout.plan import Costs, plan
    from fanout.tools.plan import to_json

    costs = replace(Costs(), **measured_costs(post))
    rows = []
    for n, r in PLAN_SCENARIOS:
        p = plan(n, r, costs)
        rows.append(to_json(p, costs))
    flags = " ".join(f"--{k.replace('_', '-')} {v:g}" for k, v in measured_costs(post).items())
    return {
        "costs": to_json(plan(1000, 1000, costs), costs)["costs"],
        "scenarios": rows,
        "command": f".venv/bin/fanout plan --connections N --post-quota R {flags}".strip(),
    }


# -- partition balance ------------------------------------------------------------------------------------
def run_balance(seed: int = 6) -> dict[str, Any]:
    """100k connects + 30k random disconnects, 500 events/s, 50 connectors with 3 s views, 1 s stream lag."""
    from fanout.settings import Settings
    from partitions.choice import PartitionChooser, ViewLoad

    n_parts, connects, disconnects, connectors, rate, lag = 1000, 100_000, 30_000, 50, 500.0, 1.0
    settings = Settings()
    rng = random.Random(seed)
    now = 0.0
    stored = [0] * n_parts  # what the partitions table holds (the stream applies changes `lag` late)
    pending: list[tuple[float, int, int]] = []  # (apply_at, partition, delta)
    pages = max(1, math.ceil(n_parts / 1000))

    def loader() -> ViewLoad:
        return ViewLoad({i: c for i, c in enumerate(stored)}, pages=pages)

    choosers = [
        PartitionChooser(
            loader=loader,
            partition_count=n_parts,
            choices=settings.partition_choices,
            ttl_seconds=settings.partition_view_ttl_seconds,
            clock=lambda: now,
            rng=random.Random(rng.random()),
        )
        for _ in range(connectors)
    ]
    events = [True] * connects + [False] * disconnects
    rng.shuffle(events)
    live_engine: list[tuple[str, int]] = []
    live_hash: dict[str, int] = {}
    engine_counts = [0] * n_parts
    hash_counts = [0] * n_parts
    made = 0
    for is_connect in events:
        now += 1.0 / rate
        while pending and pending[0][0] <= now:
            _, pid, delta = pending.pop(0)
            stored[pid] += delta
        if is_connect or not live_engine:
            cid = f"c{made:08d}"
            made += 1
            pid = rng.choice(choosers).choose()
            live_engine.append((cid, pid))
            engine_counts[pid] += 1
            pending.append((now + lag, pid, 1))
            h = zlib.crc32(cid.encode()) % n_parts
            live_hash[cid] = h
            hash_counts[h] += 1
        else:
            i = rng.randrange(len(live_engine))
            cid, pid = live_engine[i]
            live_engine[i] = live_engine[-1]
            live_engine.pop()
            engine_counts[pid] -= 1
            pending.append((now + lag, pid, -1))
            hash_counts[live_hash.pop(cid)] -= 1
    mean = sum(engine_counts) / n_parts
    loads = sum(c.stats.loads for c in choosers)
    reads = sum(c.stats.pages for c in choosers)
    choices = sum(c.stats.choices for c in choosers)
    return {
        "scenario": {
            "partitions": n_parts,
            "connects": connects,
            "disconnects": disconnects,
            "connectors": connectors,
            "eventsPerSecond": rate,
            "streamLagSeconds": lag,
            "viewTtlSeconds": settings.partition_view_ttl_seconds,
            "choices": settings.partition_choices,
            "seed": seed,
        },
        "live": sum(engine_counts),
        "engine": {
            "maxOverMean": round(max(engine_counts) / mean, 3),
            "max": max(engine_counts),
            "min": min(engine_counts),
            "mean": round(mean, 2),
            "viewLoads": loads,
            "readsPerConnect": round(reads / choices, 4),
        },
        "hashModN": {
            "maxOverMean": round(max(hash_counts) / mean, 3),
            "max": max(hash_counts),
            "min": min(hash_counts),
            "mean": round(sum(hash_counts) / n_parts, 2),
            "readsPerConnect": 0.0,
        },
        "command": ".venv/bin/python -m loadtest.bench --only balance",
    }


# -- local stack ------------------------------------------------------------------------------------------
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
        stack.runtime_config({}, None, "", stack.StackOptions(), None)
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


def _cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
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


def engine_broadcast(
    state: dict[str, Any], pgids: dict[str, int], message: Any, timeout: float
) -> dict[str, Any]:
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
    return {
        "broadcastId": bid,
        "status": view["status"],
        "targeted": view["targeted"],
        "delivered": delivered,
        "gone": view["gone"],
        "failed": view["failed"],
        "seconds": round(wall, 3),
        "serverSeconds": round(((view["completedAt"] or 0) - view["createdAt"]) / 1000, 3),
        "framesPerSecond": round(delivered / wall, 1) if wall else None,
        "cpuSeconds": cpu,
        "cpuUsPerFrame": round(sum(cpu.values()) / max(1, delivered) * 1e6, 1),
        "postCpuUsPerFrame": round(cpu.get("fanout-post", 0.0) / max(1, delivered) * 1e6, 1),
        "stackCpuSeconds": every,
        "stackCpuUsPerFrame": round(sum(every.values()) / max(1, delivered) * 1e6, 1),
        "gateway": _find_broadcast(sim, bid),
    }


def _find_broadcast(sim: Any, bid: str) -> Any:
    if isinstance(sim, dict):
        for key in ("broadcasts", "perBroadcast"):
            if isinstance(sim.get(key), dict) and bid in sim[key]:
                return sim[key][bid]
    return None


def naive_broadcast(state_path: Path, timeout: float, pgids: dict[str, int] | None = None) -> dict[str, Any]:
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
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if pgids:
        result["stackCpuSeconds"] = _cpu_delta(cpu0, stack_cpu(pgids))
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
    print(json.dumps({"start": start, "end": end, "delivered": ok, "cpuSeconds": round(cpu, 3)}))
    return 0


def ceiling(
    state: dict[str, Any], workers: int, concurrency: int, tmp: Path, pgids: dict[str, int] | None = None
) -> dict[str, Any]:
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
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    wall = max(o["end"] for o in outs) - min(o["start"] for o in outs)
    delivered = sum(o["delivered"] for o in outs)
    out = {
        "connections": len(ids),
        "workers": workers,
        "concurrency": concurrency,
        "delivered": delivered,
        "seconds": round(wall, 3),
        "framesPerSecond": round(delivered / wall, 1),
        "loopCpuSeconds": round(sum(o.get("cpuSeconds", 0.0) for o in outs), 3),
    }
    if pgids:
        out["stackCpuSeconds"] = _cpu_delta(cpu0, stack_cpu(pgids))
    return out


def run_stack(sizes: list[int], post_workers: int, timeout: float) -> dict[str, Any]:
    out: dict[str, Any] = {
        "scale": [],
        "failed": [],
        "naive": None,
        "ceiling": None,
        "postWorkers": post_workers,
        "command": f".venv/bin/python -m loadtest.bench --only stack --sizes {','.join(map(str, sizes))}",
    }
    for size in sizes:
        try:
            stack_size(out, size, post_workers, timeout)
        except Exception as exc:  # one size failing keeps the others' figures
            log(traceback.format_exc())
            out["failed"].append({"connections": size, "error": f"{exc!r}"[:500]})
    return with_slope(out)


def stack_post_batch_size(size: int) -> int:
    """B as `fanout plan` recommends it for `size` connections (above the largest partition)."""
    from fanout.plan import recommend_deployment

    return recommend_deployment(size, 10_000).post_batch_size


def stack_size(out: dict[str, Any], size: int, post_workers: int, timeout: float) -> None:
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
        point = engine_broadcast(state, pgids, {"size": size}, timeout)
        point |= {
            "connections": size,
            "partitions": partitions,
            "postBatchSize": batch,
            "largestPartition": seeded.get("perPartitionMax"),
            "seedSeconds": seeded.get("totalSeconds"),
        }
        out["scale"].append(point)
        log(f"{size}: {point['seconds']} s, {point['cpuUsPerFrame']} us CPU/frame")
        if size == 10_000:
            naive: dict[str, Any] = {"connections": size}
            for latency in (0, 20):
                _http("POST", f"{state['adminUrl']}/faults", {"latencyMs": latency})
                engine = point if latency == 0 else engine_broadcast(state, pgids, {"l": 20}, timeout)
                baseline = naive_broadcast(state_dir / "local.json", timeout=3600, pgids=pgids)
                naive[f"{latency}ms"] = {
                    "engineSeconds": engine["seconds"],
                    "engineDelivered": engine["delivered"],
                    "naiveSeconds": baseline["seconds"],
                    "naiveDelivered": baseline["delivered"],
                    "naiveCpuSeconds": baseline["cpuSeconds"],
                    "engineStackCpuSeconds": engine.get("stackCpuSeconds"),
                    "naiveStackCpuSeconds": baseline.get("stackCpuSeconds"),
                    "speedup": round(baseline["seconds"] / engine["seconds"], 1),
                }
                log(f"naive at {latency} ms: {naive[f'{latency}ms']}")
            _http("POST", f"{state['adminUrl']}/faults", {"latencyMs": 0})
            out["naive"] = naive
        if size == 100_000:
            bare = ceiling(state, post_workers, stack.options.post_concurrency, Path(tmp), pgids)
            bare["engineFramesPerSecond"] = point["framesPerSecond"]
            bare["ratio"] = round(point["framesPerSecond"] / bare["framesPerSecond"], 3)
            out["ceiling"] = bare
            log(f"ceiling: {bare}")


def with_slope(out: dict[str, Any]) -> dict[str, Any]:
    """The least-squares slope of CPU per frame against log10(connections), in us per decade."""
    out.pop("cpuSlopeUsPerDecade", None)
    if len(out["scale"]) >= 2:
        xs = [math.log10(p["connections"]) for p in out["scale"]]
        ys = [p["cpuUsPerFrame"] for p in out["scale"]]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
        out["cpuSlopeUsPerDecade"] = round(slope, 1)
    return out


def merge_stack(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """Keep the earlier run's sizes (and naive/ceiling figures) that this run did not measure again."""
    if not old or old.get("error"):
        return new
    sizes = {p["connections"] for p in new["scale"]}
    kept = [p | {"run": old.get("command")} for p in old.get("scale", []) if p["connections"] not in sizes]
    merged = new | {"scale": sorted(kept + new["scale"], key=lambda p: p["connections"])}
    for key in ("naive", "ceiling"):
        if merged.get(key) is None and old.get(key) is not None:
            merged[key] = old[key] | {"run": old.get("command")}
    if kept:
        merged["command"] = f"{old.get('command')}; then {new['command']}"
    return with_slope(merged)


# -- report -----------------------------------------------------------------------------------------------
def _met(ok: bool | None) -> str:
    return "not run" if ok is None else ("**met**" if ok else "**not met**")


def goals(results: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """(goal, target, measured, met) rows."""
    rows: list[tuple[str, str, str, bool | None]] = []
    post = results.get("post")
    if post:
        engine = post["variants"]["engine"]["cpu_us_per_frame_median"]
        ratio = post["ratios"].get("boto3/engine")
        stage = post["variants"].get("stage", {}).get("cpu_us_per_frame_median")
        rows.append(("1. post path CPU per delivered frame", "<= 400 us", f"{engine:.0f} us", engine <= 400))
        if stage is not None:
            rows.append(
                (
                    "1. whole post stage (ledger, counting) per frame",
                    "<= 400 us",
                    f"{stage:.0f} us",
                    stage <= 400,
                )
            )
        rows.append(
            ("1. engine vs boto3", ">= 5x cheaper", f"{ratio:.2f}x", ratio is not None and ratio >= 5)
        )
    else:
        rows.append(
            ("1. post stage CPU per delivered frame", "<= 400 us, >= 5x cheaper than boto3", "-", None)
        )
    stack = results.get("stack") or {}
    naive = stack.get("naive")
    for latency, target in (("20ms", 40), ("0ms", 5)):
        if naive and latency in naive:
            s = naive[latency]["speedup"]
            rows.append(
                (f"2. engine vs naive, 10k, {latency} added", f">= {target}x faster", f"{s}x", s >= target)
            )
        else:
            rows.append((f"2. engine vs naive, 10k, {latency} added", f">= {target}x faster", "-", None))
    c = stack.get("ceiling")
    if c:
        rows.append(
            ("3. engine vs bare loop, 100k", ">= 70% of ceiling", f"{c['ratio']:.0%}", c["ratio"] >= 0.7)
        )
    else:
        rows.append(("3. engine vs bare loop, 100k", ">= 70% of ceiling", "-", None))
    scale = stack.get("scale") or []
    if len(scale) >= 2:
        first, last = scale[0]["cpuUsPerFrame"], scale[-1]["cpuUsPerFrame"]
        flat = last <= first * 1.25
        rows.append(
            (
                "4. CPU per frame flat over the scale curve",
                "largest size <= 1.25x smallest",
                f"{first:.0f} -> {last:.0f} us (slope {stack.get('cpuSlopeUsPerDecade')} us/decade)",
                flat,
            )
        )
    else:
        rows.append(
            ("4. CPU per frame flat over the scale curve", "largest size <= 1.25x smallest", "-", None)
        )
    bal = results.get("balance")
    if bal:
        e, h = bal["engine"], bal["hashModN"]
        rows.append(
            (
                "5. partition balance under churn",
                "max/mean <= 1.10, O(1) reads/connect",
                f"{e['maxOverMean']} ({e['readsPerConnect']} reads/connect); hash-mod-N {h['maxOverMean']}",
                e["maxOverMean"] <= 1.10 and e["readsPerConnect"] < 1,
            )
        )
    else:
        rows.append(("5. partition balance under churn", "max/mean <= 1.10", "-", None))
    plan = results.get("plan")
    if plan:
        for s in plan["scenarios"]:
            p = s["prediction"]
            rows.append(
                (
                    f"6. quota model, {p['connections']:,} at {p['quota']:,.0f}/s",
                    "predicted <= 1.10 x N/R",
                    f"{p['seconds']:.2f} s vs {p['floor_seconds']:.2f} s ({p['ratio']:.3f}x)",
                    bool(p["target_met"]),
                )
            )
    return rows


def write_markdown(results: dict[str, Any], path: Path) -> None:
    m = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`.venv/bin/python -m loadtest.bench`) from "
        "`loadtest/results/bench.json`; every figure below comes from the runs recorded there, each "
        "section with its exact command (sections can be rerun alone with `--only ... --merge`). "
        "Benchmarks measure and report; they are never pass/fail tests.",
        "",
        f"Last run: {results['startedAt']} (`{results.get('command')}`), "
        f"{m['cpus']} CPUs, Python {m['python']}, load average at start "
        f"{m['loadStart']}, at end {m['loadEnd']}. **The machine is noisy**: 2 cores shared with other "
        "engineers' work during the run, so compare figures of one run side by side (ratios), "
        "not across runs."
        + (
            " 1-minute load average while each section ran (min / median / max): "
            + "; ".join(
                f"{k} {x['min']} / {x['median']} / {x['max']}" for k, x in results.get("load", {}).items()
            )
            + "."
            if results.get("load")
            else ""
        ),
        "",
        "## Goals",
        "",
        "| goal | target | measured | |",
        "| --- | --- | --- | --- |",
    ]
    rows = goals(results)
    lines += [f"| {g} | {t} | {v} | {_met(ok)} |" for g, t, v, ok in rows]
    unmet = [g for g, _t, _v, ok in rows if ok is False]
    if unmet:
        lines += ["", "### What limits the goals not met", ""]
        lines += [f"- **{g}**: {limit(results, g)}" for g in unmet]
    lines += ["", *section_notes(results)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def _groups(prof: dict[str, Any], n: int = 3, *, but: str = "") -> str:
    """The `n` largest shares of a grouped profile (except `but`), as text."""
    top = sorted(((k, g) for k, g in prof["groups"].items() if k != but), key=lambda kv: -kv[1]["share"])[:n]
    return ", ".join(f"{name} {g['share']:.0%}" for name, g in top)


def _per_process(cpu: dict[str, float], delivered: int, n: int = 4) -> str:
    """The `n` largest CPU consumers of the stack, in us per delivered frame."""
    top = sorted(((k, v) for k, v in cpu.items() if v > 0), key=lambda kv: -kv[1])[:n]
    return ", ".join(f"{k} {v / max(1, delivered) * 1e6:.0f}" for k, v in top)


def _us(seconds: float, frames: int) -> float:
    return seconds / max(1, frames) * 1e6


def limit(results: dict[str, Any], goal: str) -> str:
    """What limits one goal not met, from the figures and profiles of this run."""
    post = results.get("post") or {}
    med = {k: x["cpu_us_per_frame_median"] for k, x in post.get("variants", {}).items()}
    prof = post.get("profile", {})
    stack = results.get("stack") or {}
    points = {p["connections"]: p for p in stack.get("scale", [])}
    if goal.startswith(("1. engine vs boto3", "1. post path")):
        return _limit_engine(med, prof)
    if goal.startswith("1. whole post stage"):
        return _limit_stage(med, prof)
    if goal.startswith("2. engine vs naive"):
        latency, target = ("20ms", 40) if "20ms" in goal else ("0ms", 5)
        return _limit_naive(stack.get("naive") or {}, points.get(10_000), latency, target)
    if goal.startswith("3. engine vs bare loop"):
        return _limit_ceiling(stack.get("ceiling") or {}, points.get(100_000))
    if goal.startswith("4. CPU per frame flat") and len(points) >= 2:
        return "from the smallest to the largest size, " + _growth(points[min(points)], points[max(points)])
    for sc in (results.get("plan") or {}).get("scenarios", []):
        pr = sc["prediction"]
        if goal.startswith(f"6. quota model, {pr['connections']:,} at {pr['quota']:,.0f}/s"):
            return (
                f"the pipeline's fixed start latency ({pr['start_seconds']:.2f} s: async invoke, swarm, "
                f"two SQS hops, query), the post workers' ramp ({pr['ramp_seconds']:.2f} s) and the tail "
                f"({pr['tail_seconds']:.2f} s) against N/R = {pr['floor_seconds']:.2f} s; steady state is "
                f"bound by {pr['bottleneck']}."
            )
    return "see its section below."


def _growth(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Which processes' CPU per frame grew most from point `a` to point `b`."""
    names = set(a.get("stackCpuSeconds", {})) | set(b.get("stackCpuSeconds", {}))
    growth = {
        k: _us(b.get("stackCpuSeconds", {}).get(k, 0.0), b["delivered"])
        - _us(a.get("stackCpuSeconds", {}).get(k, 0.0), a["delivered"])
        for k in names
    }
    top = sorted(growth.items(), key=lambda kv: -kv[1])[:4]
    return "CPU per frame grew most in: " + ", ".join(f"{k} {g:+.0f} us" for k, g in top)


def _limit_engine(med: dict[str, float], prof: dict[str, Any]) -> str:
    e, b3, fl = med.get("engine"), med.get("boto3"), med.get("floor")
    text = ""
    if e and b3 and fl:
        text = (
            f"bare unsigned aiohttp (the floor) costs {fl:.0f} us per frame in this run, so boto3 / floor = "
            f"{b3 / fl:.2f}x is the best ratio any aiohttp-based post path can show here; the engine is "
            f"{e - fl:.0f} us above the floor (signing, error translation, the client wrapper). "
        )
    if "engine" in prof:
        text += f"Engine profile (section 1): {_groups(prof['engine'])}: the HTTP client, not the engine."
    return text or "see section 1."


def _limit_stage(med: dict[str, float], prof: dict[str, Any]) -> str:
    from fanout.settings import Settings
    from loadtest.bench_post import BOTO_GROUP

    e, st = med.get("engine"), med.get("stage")
    b = Settings().post_batch_size
    text = ""
    if e and st:
        text = (
            f"the stage costs {st - e:.0f} us per frame more than the engine's posting alone, "
            f"{(st - e) * b / 1000:.1f} ms of CPU per batch of {b} ids: the per-batch DynamoDB calls "
            "(ledger GetItem, counting TransactWriteItems, completion GetItem) through aioboto3, decoding "
            "and metrics. "
        )
    if "stage" in prof:
        boto = prof["stage"]["groups"].get(BOTO_GROUP, {}).get("share", 0.0)
        text += (
            f"Stage profile (section 1): {BOTO_GROUP} {boto:.0%}, and the HTTP of "
            f"those requests counts under aiohttp; {_groups(prof['stage'], but=BOTO_GROUP)}. Larger post "
            "batches amortize the per-batch calls: "
            f"`fanout plan` recommends B = {stack_post_batch_size(10_000)} for ~100 connections per "
            "partition (the stack runs use it)."
        )
    return text or "see section 1."


def _limit_naive(naive: dict[str, Any], p10: dict[str, Any] | None, latency: str, target: int) -> str:
    n = naive.get(latency) or {}
    if not n:
        return "see section 2-4."
    text = (
        f"{target}x needs the engine to finish in {n['naiveSeconds'] / target:.2f} s "
        f"(naive {n['naiveSeconds']} s / {target}); it took {n['engineSeconds']} s. "
    )
    cpu = n.get("engineStackCpuSeconds") or (p10 or {}).get("stackCpuSeconds")
    frames = n.get("engineDelivered") or (p10 or {}).get("delivered", 0)
    if cpu and frames:
        per = _us(sum(cpu.values()), frames)
        busy = sum(cpu.values()) / n["engineSeconds"]
        bound = (
            "CPU-bound on this machine's 2 cores"
            if busy >= 1.6
            else f"not CPU-bound ({busy:.2f} of 2 cores busy)"
        )
        text += (
            f"That broadcast is {bound}: the whole stack spent {per:.0f} us of CPU per delivered frame, "
            f"{busy:.2f} cores busy on average (largest, us/frame: {_per_process(cpu, frames)}). "
        )
    if "0ms" in naive and "20ms" in naive:
        text += (
            f"Engine {naive['0ms']['engineSeconds']} s with 0 ms added, {naive['20ms']['engineSeconds']} s "
            "with 20 ms. "
        )
    if n.get("naiveCpuSeconds"):
        own = _us(n["naiveCpuSeconds"], n["naiveDelivered"])
        text += (
            f"The naive sender needs only its own process ({own:.0f} us/frame of boto3 CPU) and the gateway"
        )
        gateway = (n.get("naiveStackCpuSeconds") or {}).get("gateway")
        if gateway:
            text += f" ({_us(gateway, n['naiveDelivered']):.0f} us/frame)"
        text += (
            ". In AWS the pipeline's DynamoDB, SQS and API Gateway cost no worker CPU and each post worker "
            "has its own vCPU."
        )
    return text


def _limit_ceiling(c: dict[str, Any], p100: dict[str, Any] | None) -> str:
    if not (c and p100):
        return "see section 2-4."
    largest = _per_process(p100.get("stackCpuSeconds", {}), p100["delivered"])
    text = (
        f"the engine ({p100['framesPerSecond']:,} frames/s) spent {p100['stackCpuUsPerFrame']:.0f} us of "
        f"stack CPU per frame at 100k (largest, us/frame: {largest}); "
    )
    if c.get("stackCpuSeconds"):
        own = c.get("loopCpuSeconds", 0.0)
        total = sum(c["stackCpuSeconds"].values()) + own
        text += (
            f"the bare loop ({c['framesPerSecond']:,} frames/s) {_us(total, c['delivered']):.0f} us "
            f"(its own posting {_us(own, c['delivered']):.0f}, "
            f"{_per_process(c['stackCpuSeconds'], c['delivered'], 2)}). "
        )
    return text + (
        "On 2 shared cores frames/s is set by CPU per frame: the queues, tables and per-batch DynamoDB calls "
        "are the difference, on the same 2 cores as the gateway."
    )


def section_notes(results: dict[str, Any]) -> list[str]:
    out: list[str] = []
    post = results.get("post")
    out += ["## 1. Post stage cost", ""]
    if post:
        rounds = len(post["measures"]) // len(post["variants"])
        out += [
            f"Command: `{post['command']}`. A sink (aiohttp, answering 200) runs in its own process; each "
            "variant runs in a fresh worker process per round, warms up, then `time.process_time()` of the "
            f"worker only (never the sink) is divided by the frames delivered. Frame: {post['frame_bytes']} "
            f"bytes. Rounds interleave the variants (rotating order); median of {rounds} rounds.",
            "",
            "| variant | posts per round | CPU us per frame, median | min | max | frames/s |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for v, s in post["variants"].items():
            out.append(
                f"| {v} | {s['posts']:,} | **{s['cpu_us_per_frame_median']:.0f}** "
                f"| {s['cpu_us_per_frame_min']:.0f} "
                f"| {s['cpu_us_per_frame_max']:.0f} | {s['frames_per_s_median']:,.0f} |"
            )
        out += [
            "",
            "Ratios of medians: " + ", ".join(f"{k} = {v:.2f}x" for k, v in post["ratios"].items()),
            "",
        ]
        loop = post.get("loop", "asyncio")
        out += [
            "Variants: *engine* = `fanout.delivery.deliver` + `fanout.postclient.ConnectionsClient` "
            "(signed) at `post_concurrency` 64, one call over all ids; *stage* = "
            "`fanout.stages.run_post_batch` on SQS-shaped records of 100 ids, 10 records at once, including "
            "its per-batch DynamoDB calls through aioboto3 (answered by the sink); *boto3* = "
            "`apigatewaymanagementapi` client, sequential; *aioboto3* = its aioboto3 client with 50 in "
            "flight; *floor* = bare aiohttp, unsigned, 64 workers over one iterator, no error handling. "
            f"Every async variant runs on the engine's event loop ({loop}; `FANOUT_UVLOOP=false` for "
            "asyncio's), so the ratios compare clients, not loops.",
            "",
        ]
        v = post["variants"]
        if {"engine", "boto3", "floor"} <= set(v):
            e, b3, fl = (v[k]["cpu_us_per_frame_median"] for k in ("engine", "boto3", "floor"))
            out += [
                f"How far the engine can go on this HTTP stack: bare unsigned aiohttp costs {fl:.0f} us per "
                f"frame, so boto3 / floor = {b3 / fl:.2f}x is the best ratio any aiohttp-based post path can "
                f"show here; the engine is {e / fl:.2f}x the floor ({e - fl:.0f} us above it: signing, "
                "error translation, the client wrapper). "
                + (
                    "The 5x goal needs the engine within "
                    f"{(b3 / 5) - fl:.0f} us of the floor, or a cheaper HTTP stack."
                    if b3 / e < 5
                    else ""
                ),
                "",
            ]
        titles = {
            "engine": "Where the engine's CPU goes",
            "stage": "Where the whole stage's CPU goes (aiohttp includes the DynamoDB requests' HTTP)",
        }
        for variant, title in titles.items():
            prof = post.get("profile", {}).get(variant)
            if not prof:
                continue
            out += [
                f"{title} (`{post['profile']['command'].replace('engine|stage', variant)}`; cProfile "
                f"inflates the total to {prof['cpuUsPerFrameUnderProfiler']:.0f} us/frame, so read the "
                "shares):",
                "",
                "| where | share of CPU | us per frame (under the profiler) |",
                "| --- | --- | --- |",
            ]
            for name, g in sorted(prof["groups"].items(), key=lambda kv: -kv[1]["share"]):
                if g["usPerFrame"] >= 0.5:
                    out.append(f"| {name} | {g['share']:.0%} | {g['usPerFrame']:.0f} |")
            out += ["", "Top functions by own time:", "", "| own s | calls | cumulative s | function |"]
            out += ["| --- | --- | --- | --- |"]
            out += [
                f"| {t['tottimeS']} | {t['ncalls']} | {t['cumtimeS']} | `{t['function']}` |"
                for t in prof["top"]
            ]
            out.append("")
    else:
        out += ["Not run.", ""]
    out += ["## 2-4. End to end on the local stack", ""]
    stack = results.get("stack")
    if stack and not stack.get("error"):
        out += [
            f"Command: `{stack.get('command')}`. One fresh local stack per size "
            f"(~100 connections per partition, 4 shards, {stack['postWorkers']} post workers, post batch B "
            "as `fanout plan` recommends it: above the largest partition, so one post batch per partition), "
            "simulated connections seeded by `loadtest/seed.py`; a warm-up broadcast first, so cold starts "
            "stay out. CPU: all processes of the local Lambda runtime (every function), read from /proc; "
            "processes that exited during the broadcast are not counted.",
            "",
            "| connections | partitions | largest partition | B | broadcast s | frames/s "
            "| CPU us/frame (all functions) | post CPU us/frame |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for p in stack["scale"]:
            out.append(
                f"| {p['connections']:,} | {p['partitions']:,} | {p.get('largestPartition', '-')} "
                f"| {p.get('postBatchSize', 100)} | {p['seconds']} | {p['framesPerSecond']:,} "
                f"| {p['cpuUsPerFrame']} | {p['postCpuUsPerFrame']} |"
            )
        out.append("")
        for f in stack.get("failed", []):
            out += [f"**{f['connections']:,} connections: failed**: `{f['error']}`", ""]
        scale = stack["scale"]
        if len(scale) >= 2:
            cheapest = min(scale, key=lambda p: p["cpuUsPerFrame"])
            largest = max(scale, key=lambda p: p["connections"])
            if cheapest is not largest:
                out += [
                    f"Goal 4 compares the largest size with the smallest; from the cheapest size "
                    f"({cheapest['connections']:,}: {cheapest['cpuUsPerFrame']:.0f} us/frame) to the largest "
                    f"({largest['connections']:,}: {largest['cpuUsPerFrame']:.0f} us/frame) the functions' "
                    f"CPU per frame grew {largest['cpuUsPerFrame'] / cheapest['cpuUsPerFrame']:.2f}x; "
                    + _growth(cheapest, largest)
                    + " (whole stack, per process).",
                    "",
                ]
        with_cpu = [p for p in stack["scale"] if p.get("stackCpuSeconds")]
        if with_cpu:
            names = sorted({k for p in with_cpu for k, v in p["stackCpuSeconds"].items() if v > 0})
            out += [
                "CPU of every process of the stack during the broadcast, us per delivered frame (2 cores: "
                "at most ~2,000,000 us of CPU per second of broadcast):",
                "",
                "| connections | " + " | ".join(names) + " | total |",
                "| --- " * (len(names) + 2) + "|",
            ]
            for p in with_cpu:
                per = {k: v / max(1, p["delivered"]) * 1e6 for k, v in p["stackCpuSeconds"].items()}
                cells = " | ".join(f"{per.get(k, 0):.0f}" for k in names)
                out.append(f"| {p['connections']:,} | {cells} | {p['stackCpuUsPerFrame']:.0f} |")
            out.append("")
        if stack.get("naive"):
            out += [
                "Naive sender (`loadtest/naive.py`: Scan, then PostToConnection in a loop with boto3):",
                "",
            ]
            out += ["| added latency | engine s | naive s | speedup |", "| --- | --- | --- | --- |"]
            for k, v in stack["naive"].items():
                if isinstance(v, dict):
                    out.append(f"| {k} | {v['engineSeconds']} | {v['naiveSeconds']} | {v['speedup']}x |")
            out.append("")
        if stack.get("ceiling"):
            c = stack["ceiling"]
            out += [
                f"Ceiling: a bare loop ({c['workers']} processes x {c['concurrency']} in flight, "
                "pre-known ids, `ConnectionsClient` on the engine's event loop) "
                f"delivered {c['framesPerSecond']:,} frames/s; the engine {c['engineFramesPerSecond']:,} "
                f"frames/s ({c['ratio']:.0%}).",
                "",
            ]
            if c.get("stackCpuSeconds"):
                per = {k: _us(x, c["delivered"]) for k, x in c["stackCpuSeconds"].items() if x > 0}
                per["bare loop processes"] = _us(c.get("loopCpuSeconds", 0.0), c["delivered"])
                out += [
                    "CPU during the bare loop, us per delivered frame: "
                    + ", ".join(f"{k} {x:.0f}" for k, x in sorted(per.items(), key=lambda kv: -kv[1]))
                    + f"; total {sum(per.values()):.0f}.",
                    "",
                ]
    else:
        reason = (stack or {}).get("error") or results.get("skipped", {}).get("stack", "not requested")
        out += [
            f"**Not run yet**: {reason}. The code is in `loadtest/bench.py` (`run_stack`) and "
            "`loadtest/naive.py`; run `.venv/bin/python -m loadtest.bench --only stack` once the local "
            "stack starts.",
            "",
        ]
    bal = results.get("balance")
    out += ["## 5. Partition balance", ""]
    if bal:
        s = bal["scenario"]
        out += [
            f"Command: `{bal['command']}`. Pure simulation with the engine's "
            f"`partitions.choice.PartitionChooser` (d = {s['choices']}, views refreshed every "
            f"{s['viewTtlSeconds']} s, counters {s['streamLagSeconds']} s "
            f"late as through the stream): {s['partitions']:,} partitions, {s['connects']:,} connects and "
            f"{s['disconnects']:,} random disconnects interleaved at {s['eventsPerSecond']:.0f} events/s "
            "over "
            f"{s['connectors']} connectors; against crc32(connectionId) mod N on the same events.",
            "",
            "| assignment | max/mean | max | min | DynamoDB reads per connect |",
            "| --- | --- | --- | --- | --- |",
            f"| engine (least loaded of d) | {bal['engine']['maxOverMean']} | {bal['engine']['max']} | "
            f"{bal['engine']['min']} | {bal['engine']['readsPerConnect']} |",
            f"| hash mod N | {bal['hashModN']['maxOverMean']} | {bal['hashModN']['max']} "
            f"| {bal['hashModN']['min']} | 0 |",
            "",
        ]
    else:
        out += ["Not run.", ""]
    plan = results.get("plan")
    out += ["## 6. Quota model", ""]
    if plan:
        out += [
            f"`fanout plan` (`fanout/plan.py`), fed with the post costs measured above: `{plan['command']}`. "
            "Costs not measured here (DynamoDB and SQS round trips, SQS delivery, invocation overhead, "
            "PostToConnection latency 20 ms) are typical AWS figures, overridable by flags. Provisioned "
            "concurrency is recommended (three cold starts sit on the critical path otherwise).",
            "",
            "| connections | quota/s | N/R s | predicted s | ratio | shards | post workers x rate/s "
            "| ESM batch | met |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for s in plan["scenarios"]:
            p, d = s["prediction"], s["deployment"]
            out.append(
                f"| {p['connections']:,} | {p['quota']:,.0f} | {p['floor_seconds']:.2f} | {p['seconds']:.2f} "
                f"| {p['ratio']:.3f} | {d['shards']} | {d['postWorkers']} x {d['post_rate_per_worker']:g} "
                f"| {d['post_sqs_batch_size']} | {_met(bool(p['target_met']))} |"
            )
        mins = {s["prediction"]["quota"]: s["minConnectionsForTarget"] for s in plan["scenarios"]}
        out += [
            "",
            "Within 10% of N/R from about: "
            + ", ".join(f"{n:,} connections at {q:,.0f}/s" for q, n in mins.items() if n)
            + ". Below that, the pipeline's fixed start latency (async invoke, swarm, two SQS hops, query) "
            "is more than 10% of N/R.",
            "",
        ]
    else:
        out += ["Not run.", ""]
    notes = results.get("notes")
    if notes:
        out += ["## Notes", ""]
        for note in notes:
            out += [note, ""]
    return out


class LoadSampler:
    """The 1-minute load average every 10 s while a section runs (other work on the 2 shared cores)."""

    def __init__(self, every: float = 10.0) -> None:
        import threading

        self.samples: list[float] = []
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(self._every):
                return

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        xs = self.samples or [os.getloadavg()[0]]
        return {"min": round(min(xs), 2), "median": round(statistics.median(xs), 2), "max": round(max(xs), 2)}


# -- main -------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n")[0] if __doc__ else None)
    sub = p.add_subparsers(dest="cmd")
    b = sub.add_parser("bare-loop")
    b.add_argument("--ids", required=True)
    b.add_argument("--endpoint", required=True)
    b.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--only", default=",".join(SECTIONS), help=f"sections among {','.join(SECTIONS)}")
    p.add_argument("--rounds", type=int, default=5, help="rounds of the post benchmark")
    p.add_argument("--sizes", default="1000,10000,100000,300000", help="scale curve sizes")
    p.add_argument("--post-workers", type=int, default=2)
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--json", type=Path, default=RESULTS)
    p.add_argument("--doc", type=Path, default=DOC)
    p.add_argument("--merge", action="store_true", help="keep sections of an earlier JSON not run now")
    p.add_argument("--note", action="append", default=[], help="add a note to the JSON and the doc")
    p.add_argument("--render", action="store_true", help="only re-render the doc from the JSON")
    args = p.parse_args(argv)
    if args.cmd == "bare-loop":
        return bare_loop_main(args)
    if args.render:
        saved = json.loads(args.json.read_text())
        saved["notes"] = [*saved.get("notes", []), *args.note]
        args.json.write_text(json.dumps(saved, indent=2))
        write_markdown(saved, args.doc)
        log(f"rendered {args.doc} from {args.json}")
        return 0

    only = [s for s in args.only.split(",") if s]
    results: dict[str, Any] = {}
    if args.merge and args.json.exists():
        results = json.loads(args.json.read_text())
    results |= {
        "startedAt": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "command": " ".join(
            [".venv/bin/python -m loadtest.bench", *(argv if argv is not None else sys.argv[1:])]
        ),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadStart": [round(x, 2) for x in os.getloadavg()],
        },
    }
    results.setdefault("skipped", {})
    results["notes"] = [*results.get("notes", []), *args.note]
    runners: dict[str, Callable[[], Any]] = {
        "post": lambda: run_post(args.rounds),
        "plan": lambda: run_plan(results.get("post")),
        "balance": run_balance,
    }
    loads = results.setdefault("load", {})
    for section in ("post", "plan", "balance"):
        if section in only:
            log(f"{section} ...")
            with LoadSampler() as sampler:
                results[section] = runners[section]()
            loads[section] = sampler.summary()
            results["skipped"].pop(section, None)
    if "stack" in only:
        why = stack_status()
        if why:
            log(f"stack: not run: {why}")
            results["skipped"]["stack"] = why
            results.pop("stack", None)
        else:
            try:
                sizes = [int(s) for s in args.sizes.split(",") if s]
                with LoadSampler() as sampler:
                    fresh = run_stack(sizes, args.post_workers, args.timeout)
                loads["stack"] = sampler.summary()
                results["stack"] = merge_stack(results.get("stack") if args.merge else None, fresh)
                results["skipped"].pop("stack", None)
            except Exception as exc:
                log(traceback.format_exc())
                results["stack"] = {"error": f"failed: {exc!r}"}
    results["machine"]["loadEnd"] = [round(x, 2) for x in os.getloadavg()]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    write_markdown(results, args.doc)
    log(f"wrote {args.json} and {args.doc}")
    for g, t, v, ok in goals(results):
        print(f"{_met(ok).strip('*'):9s} {g}: {v} (target {t})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
