"""The sections of loadtest/bench.py that need no local stack: post cost, quota model, partition balance."""

from __future__ import annotations

import math
import os
import random
import statistics
import sys
import zlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from loadtest.bench_models import (
    Assignment,
    BalanceResult,
    BalanceScenario,
    LoadSummary,
    PlanResult,
    PlanScenario,
    PostProfiles,
    PostResult,
)

# (connections, account quota per second) of the quota model's table.
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
def run_post(rounds: int, log: Callable[[str], None] = log) -> PostResult:
    from loadtest import bench_post

    posts = dict(bench_post.DEFAULT_POSTS)
    result = bench_post.bench(rounds, posts, list(bench_post.VARIANTS), 50, log)
    result.command = f".venv/bin/python -m loadtest.bench_post --rounds {rounds}"
    log("post: profiling the engine and stage variants (cProfile)")
    result.profile = PostProfiles(
        engine=bench_post.profiled("engine", posts["engine"]),
        stage=bench_post.profiled("stage", posts["stage"]),
        command=".venv/bin/python -m loadtest.bench_post --profile engine|stage",
    )
    return result


# -- quota model ------------------------------------------------------------------------------------------
def measured_costs(post: PostResult | None) -> dict[str, float]:
    """The quota model's costs this run measured: CPU per frame and per post batch."""
    if not post:
        return {}
    engine = post.variants["engine"].cpu_us_per_frame_median
    out = {"post_frame_cpu_us": engine}
    stage = post.median("stage")
    if stage is not None:
        out["post_batch_cpu_us"] = max(0.0, (stage - engine) * 100)
    return out


def run_plan(post: PostResult | None) -> PlanResult:
    from fanout.plan import Costs, plan
    from fanout.tools.plan import to_json

    measured: dict[str, Any] = measured_costs(post)  # the Costs fields it sets
    costs = replace(Costs(), **measured)
    flags = " ".join(f"--{k.replace('_', '-')} {v:g}" for k, v in measured.items())
    return PlanResult(
        costs=to_json(plan(1000, 1000, costs), costs)["costs"],
        scenarios=[PlanScenario.model_validate(to_json(plan(n, r, costs), costs)) for n, r in PLAN_SCENARIOS],
        command=f".venv/bin/fanout plan --connections N --post-quota R {flags}".strip(),
    )


# -- partition balance ------------------------------------------------------------------------------------
def run_balance(seed: int = 6) -> BalanceResult:
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
    return BalanceResult(
        scenario=BalanceScenario(
            partitions=n_parts,
            connects=connects,
            disconnects=disconnects,
            connectors=connectors,
            events_per_second=rate,
            stream_lag_seconds=lag,
            view_ttl_seconds=settings.partition_view_ttl_seconds,
            choices=settings.partition_choices,
            seed=seed,
        ),
        live=sum(engine_counts),
        engine=Assignment(
            max_over_mean=round(max(engine_counts) / mean, 3),
            max=max(engine_counts),
            min=min(engine_counts),
            mean=round(mean, 2),
            view_loads=loads,
            reads_per_connect=round(reads / choices, 4),
        ),
        hash_mod_n=Assignment(
            max_over_mean=round(max(hash_counts) / mean, 3),
            max=max(hash_counts),
            min=min(hash_counts),
            mean=round(sum(hash_counts) / n_parts, 2),
            reads_per_connect=0.0,
        ),
        command=".venv/bin/python -m loadtest.bench --only balance",
    )


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

    def summary(self) -> LoadSummary:
        xs = self.samples or [os.getloadavg()[0]]
        return LoadSummary(
            min=round(min(xs), 2), median=round(statistics.median(xs), 2), max=round(max(xs), 2)
        )
