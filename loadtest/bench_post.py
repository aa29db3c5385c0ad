"""Post stage cost: CPU microseconds per delivered frame in the posting process, side by side.

Usage (from the repository root)::

    .venv/bin/python -m loadtest.bench_post --rounds 5 --json loadtest/results/bench_post.json

A sink (a minimal aiohttp server answering 200 to ``POST /{stage}/@connections/{id}``, and canned
DynamoDB answers for the full-stage variant) runs in its own process. Each variant runs in a fresh
worker process per round, so that imports, client construction and connection set-up stay out of the
measurement: the worker warms up, then measures ``time.process_time()`` (user + system CPU of the
worker process only, never the sink) around the timed posts. Rounds interleave the variants, so every
variant sees the same machine noise; the report gives the median of the rounds and the ratios.

Variants:

- ``engine``: `fanout.delivery.deliver` with `fanout.postclient.ConnectionsClient` (SigV4-signed, cached
  key) at the engine's default concurrency (`Settings().post_concurrency`), one call over all ids.
- ``stage``: the whole post stage per SQS record, `fanout.stages.run_post_batch` on post batches of
  `Settings().post_batch_size` ids, records of one 10-message SQS batch processed concurrently (as
  Powertools' AsyncBatchProcessor does), with its per-batch DynamoDB calls (ledger read, counting
  transaction, completion check) made by the real aioboto3 client against the sink.
- ``boto3``: the boto3 ``apigatewaymanagementapi`` client, sequential (``endpoint_url`` = the sink).
- ``aioboto3``: the aioboto3 ``apigatewaymanagementapi`` client, ``--aio-inflight`` posts in flight.
- ``floor``: bare aiohttp, unsigned, as many workers over one iterator as the engine's concurrency, no
  error handling: the floor of this HTTP stack.

Every async variant runs on the engine's event loop (`fanout.container.new_loop`: uvloop unless
``FANOUT_UVLOOP=false``), so that ratios compare clients, not loops; ``FANOUT_UVLOOP=false`` measures all
of them on asyncio's own loop.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from loadtest.bench_models import Measure, MeasureRecord, PostMachine, PostResult, Profile, VariantSummary
from loadtest.bench_post_workers import loop_name, make_frame, run_sink, worker
from loadtest.bench_profile import profile_breakdown

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("engine", "stage", "boto3", "aioboto3", "floor")
DEFAULT_POSTS = {"engine": 5000, "stage": 5000, "boto3": 1000, "aioboto3": 2000, "floor": 5000}


# -- orchestration ----------------------------------------------------------------------------------
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sink exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("sink did not listen")


class Sink:
    """The sink in its own process (and process group), stopped on exit."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Sink:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "loadtest.bench_post", "sink", "--port", str(self.port)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait_port(self.port, self.proc)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def run_worker(variant: str, posts: int, sink: str, inflight: int, profile: str | None = None) -> Measure:
    cmd = [
        sys.executable,
        "-m",
        "loadtest.bench_post",
        "worker",
        "--variant",
        variant,
        "--posts",
        str(posts),
        "--sink",
        sink,
        "--aio-inflight",
        str(inflight),
    ]
    if profile:
        cmd += ["--profile", profile]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{variant} worker failed:\n{out.stderr[-3000:]}")
    return Measure.model_validate_json(out.stdout.strip().splitlines()[-1])


def summarize(measures: list[Measure]) -> dict[str, VariantSummary]:
    out: dict[str, VariantSummary] = {}
    for variant in VARIANTS:
        ms = [m for m in measures if m.variant == variant]
        if not ms:
            continue
        per = [m.us_per_frame() for m in ms]
        out[variant] = VariantSummary(
            variant=variant,
            posts=ms[0].posts,
            rounds=len(ms),
            cpu_us_per_frame_median=round(statistics.median(per), 1),
            cpu_us_per_frame_min=round(min(per), 1),
            cpu_us_per_frame_max=round(max(per), 1),
            frames_per_s_median=round(statistics.median(m.delivered / m.wall_s for m in ms), 0),
            samples=[round(p, 1) for p in per],
        )
    return out


def ratios(summary: dict[str, VariantSummary]) -> dict[str, float]:
    """The ratios of medians the report compares: boto3 against the engine and the stage, and so on."""
    med = {v: s.cpu_us_per_frame_median for v, s in summary.items()}
    out: dict[str, float] = {}
    if "boto3" in med:
        for v in ("engine", "stage"):
            if v in med:
                out[f"boto3/{v}"] = round(med["boto3"] / med[v], 2)
    if "aioboto3" in med and "engine" in med:
        out["aioboto3/engine"] = round(med["aioboto3"] / med["engine"], 2)
    if "floor" in med and "engine" in med:
        out["engine/floor"] = round(med["engine"] / med["floor"], 2)
    return out


def bench(
    rounds: int, posts: dict[str, int], variants: list[str], inflight: int, log: Callable[[str], None]
) -> PostResult:
    measures: list[Measure] = []
    with Sink() as sink:
        for r in range(rounds):
            order = variants[r % len(variants) :] + variants[: r % len(variants)]  # rotate the order
            for v in order:
                m = run_worker(v, posts[v], sink.url, inflight)
                if m.delivered != m.posts:
                    raise RuntimeError(f"{v}: {m.delivered} of {m.posts} delivered")
                measures.append(m)
                log(f"round {r + 1}/{rounds} {v:9s} {m.us_per_frame():8.1f} us/frame  {m.posts} posts")
    summary = summarize(measures)
    return PostResult(
        benchmark="post_cost",
        frame_bytes=len(make_frame()),
        aioboto3_inflight=inflight,
        loop=loop_name(),
        machine=PostMachine(
            cpus=os.cpu_count(), python=platform.python_version(), load=list(os.getloadavg())
        ),
        variants=summary,
        ratios=ratios(summary),
        measures=[MeasureRecord(**dict(m), cpu_us_per_frame=round(m.us_per_frame(), 1)) for m in measures],
    )


TABLE_HEADER = (
    f"{'variant':10s} {'posts':>6s} {'median us/frame':>16s} {'min':>8s} {'max':>8s} {'frames/s':>9s}"
)
TABLE_ROW = "{v:10s} {s.posts:6d} {s.cpu_us_per_frame_median:16.1f} {s.cpu_us_per_frame_min:8.1f} " + (
    "{s.cpu_us_per_frame_max:8.1f} {s.frames_per_s_median:9.0f}"
)


def print_table(result: PostResult) -> None:
    print(TABLE_HEADER)
    for v, s in result.variants.items():
        print(TABLE_ROW.format(v=v, s=s))
    for k, r in result.ratios.items():
        print(f"ratio {k}: {r:.2f}x")
    print(f"event loop of the async variants: {result.loop}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_post", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd")
    s = sub.add_parser("sink")
    s.add_argument("--port", type=int, required=True)
    w = sub.add_parser("worker")
    w.add_argument("--variant", choices=VARIANTS, required=True)
    w.add_argument("--posts", type=int, required=True)
    w.add_argument("--sink", required=True)
    w.add_argument("--aio-inflight", type=int, default=50)
    w.add_argument("--profile", help="write a cProfile of the timed section here")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--posts", type=int, help="posts per round for every async variant (default: per variant)")
    p.add_argument("--boto3-posts", type=int, default=DEFAULT_POSTS["boto3"])
    p.add_argument("--aio-inflight", type=int, default=50)
    p.add_argument("--json", type=Path, help="write the result here")
    p.add_argument("--profile", metavar="VARIANT", help="profile one worker of VARIANT and print the top")
    args = p.parse_args(argv)

    if args.cmd == "sink":
        run_sink("127.0.0.1", args.port)
        return 0
    if args.cmd == "worker":
        m = worker(args.variant, args.posts, args.sink, args.aio_inflight, args.profile)
        print(json.dumps(m.to_json()))
        return 0

    variants = [v for v in args.variants.split(",") if v]
    posts = dict(DEFAULT_POSTS)
    if args.posts:
        posts.update({v: args.posts for v in ("engine", "stage", "aioboto3", "floor")})
    posts["boto3"] = args.boto3_posts
    if args.profile:
        return profile_variant(args.profile, posts[args.profile], args.aio_inflight)
    result = bench(args.rounds, posts, variants, args.aio_inflight, lambda m: print(m, file=sys.stderr))
    print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.to_json(), indent=2))
    return 0


def profile_variant(variant: str, posts: int, inflight: int, top: int = 25) -> int:
    import pstats
    import tempfile

    with Sink() as sink, tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / f"{variant}.prof")
        m = run_worker(variant, posts, sink.url, inflight, profile=path)
        print(f"{variant}: {m.us_per_frame():.1f} us/frame under cProfile (inflated by the profiler)")
        stats = pstats.Stats(path)
        stats.sort_stats("tottime").print_stats(top)
        groups = profile_breakdown(path, m.delivered).to_json()["groups"]
        print(json.dumps(groups, indent=2))
    return 0


def profiled(variant: str, posts: int, inflight: int = 50) -> Profile:
    """Run one profiled worker of `variant` against a fresh sink; the grouped breakdown."""
    import tempfile

    with Sink() as sink, tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / f"{variant}.prof")
        m = run_worker(variant, posts, sink.url, inflight, profile=path)
        out = profile_breakdown(path, m.delivered)
        out.cpu_us_per_frame_under_profiler = round(m.us_per_frame(), 1)
        return out


if __name__ == "__main__":
    sys.exit(main())
