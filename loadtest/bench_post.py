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
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STAGE = "bench"
REGION = "us-east-1"
BROADCAST_ID = "b-0123456789abcdef0123456789abcdef"
VARIANTS = ("engine", "stage", "boto3", "aioboto3", "floor")
DEFAULT_POSTS = {"engine": 5000, "stage": 5000, "boto3": 1000, "aioboto3": 2000, "floor": 5000}


def make_frame(broadcast_id: str = BROADCAST_ID) -> bytes:
    """The delivered envelope (~200 bytes), serialized once, as the operator API does."""
    message = {"title": "Scheduled maintenance", "body": "The service restarts at 02:00 UTC.", "n": 1}
    envelope = {"type": "broadcast", "broadcastId": broadcast_id, "sentAt": 1795000000000, "data": message}
    return json.dumps(envelope, separators=(",", ":")).encode()


def connection_ids(n: int, prefix: str = "") -> list[str]:
    """API Gateway-like connection ids (base64-ish, 16 chars, ending in '=')."""
    return [f"{prefix}Cx{i:012d}=" for i in range(n)]


# -- sink (its own process) -------------------------------------------------------------------------
def run_sink(host: str, port: int) -> None:
    from aiohttp import web

    posts = 0
    running_item = {
        "Item": {
            "broadcastId": {"S": BROADCAST_ID},
            "status": {"S": "running"},
            "partitions": {"N": "1000000"},
            "partitionsDone": {"N": "0"},
            "targeted": {"N": "0"},
            "delivered": {"N": "0"},
            "gone": {"N": "0"},
            "failed": {"N": "0"},
            "createdAt": {"N": "1795000000000"},
        }
    }
    broadcast_body = json.dumps(running_item).encode()

    async def post(request: web.Request) -> web.Response:
        nonlocal posts
        await request.read()
        posts += 1
        return web.Response(status=200)

    async def dynamodb(request: web.Request) -> web.Response:
        target = request.headers.get("X-Amz-Target", "")
        body = await request.json()
        if target.endswith(".GetItem") and "broadcastId" in body.get("Key", {}):
            out = broadcast_body
        else:  # counter shard reads (not a replay; never complete), counting updates
            out = b"{}"
        return web.Response(body=out, content_type="application/x-amz-json-1.0")

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"posts": posts})

    app = web.Application()
    app.router.add_post(f"/{STAGE}/@connections/{{id}}", post)
    app.router.add_post("/", dynamodb)
    app.router.add_get("/_stats", stats)
    web.run_app(app, host=host, port=port, access_log=None, print=None)


# -- workers (one process per variant and round) ----------------------------------------------------
@dataclass
class Measure:
    variant: str
    posts: int
    delivered: int
    cpu_s: float
    wall_s: float

    @property
    def cpu_us_per_frame(self) -> float:
        return self.cpu_s / max(1, self.delivered) * 1e6


def _timed(
    variant: str, posts: int, warm: Callable[[], int], run: Callable[[], int], profile: str | None
) -> Measure:
    warm()
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    c0, w0 = time.process_time(), time.perf_counter()
    delivered = run()
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    if prof is not None and profile:
        prof.disable()
        prof.dump_stats(profile)
    return Measure(variant, posts, delivered, cpu, wall)


def engine_loop() -> asyncio.AbstractEventLoop:
    from fanout.container import new_loop
    from fanout.settings import Settings

    return new_loop(Settings().uvloop)


def loop_name() -> str:
    loop = engine_loop()
    try:
        return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
    finally:
        loop.close()


def _async_timed(
    variant: str,
    posts: int,
    setup: Callable[[], Coroutine[Any, Any, Any]],
    body: Callable[[Any, list[str]], Coroutine[Any, Any, int]],
    profile: str | None,
) -> Measure:
    """Set up the clients, warm up with 200 posts, then time `body` over `posts` ids, on one loop: the
    engine's (`fanout.container.new_loop`, uvloop unless FANOUT_UVLOOP=false), for every async variant."""
    loop = engine_loop()
    asyncio.set_event_loop(loop)
    try:
        ctx, close = loop.run_until_complete(setup())
        try:
            return _timed(
                variant,
                posts,
                lambda: loop.run_until_complete(body(ctx, connection_ids(200, "w"))),
                lambda: loop.run_until_complete(body(ctx, connection_ids(posts))),
                profile,
            )
        finally:
            loop.run_until_complete(close())
    finally:
        loop.close()


def worker(variant: str, posts: int, sink: str, inflight: int, profile: str | None) -> Measure:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "AKIDBENCHEXAMPLE")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench-secret-key-example")
    os.environ.setdefault("AWS_DEFAULT_REGION", REGION)
    endpoint = f"{sink}/{STAGE}"
    frame = make_frame()

    if variant == "boto3":
        import boto3

        client = boto3.client("apigatewaymanagementapi", endpoint_url=endpoint, region_name=REGION)

        def run_boto3(ids: list[str]) -> int:
            for cid in ids:
                client.post_to_connection(ConnectionId=cid, Data=frame)
            return len(ids)

        return _timed(
            variant,
            posts,
            lambda: run_boto3(connection_ids(100, "w")),
            lambda: run_boto3(connection_ids(posts)),
            profile,
        )

    if variant == "aioboto3":
        import aioboto3

        async def aio_setup() -> tuple[Any, Callable[[], Coroutine[Any, Any, None]]]:
            from botocore.config import Config

            cm = aioboto3.Session().client(
                "apigatewaymanagementapi",
                endpoint_url=endpoint,
                region_name=REGION,
                config=Config(max_pool_connections=inflight),
            )
            client = await cm.__aenter__()

            async def close() -> None:
                await cm.__aexit__(None, None, None)

            return client, close

        async def aio_body(client: Any, ids: list[str]) -> int:
            sem = asyncio.Semaphore(inflight)

            async def one(cid: str) -> None:
                async with sem:
                    await client.post_to_connection(ConnectionId=cid, Data=frame)

            await asyncio.gather(*(one(c) for c in ids))
            return len(ids)

        return _async_timed(variant, posts, aio_setup, aio_body, profile)

    from fanout.settings import Settings

    settings = Settings(connections_endpoint=endpoint, region=REGION)

    if variant in ("engine", "floor"):
        from fanout.delivery import deliver
        from fanout.postclient import ConnectionsClient, new_session
        from fanout.sigv4 import Credentials, payload_hash

        sha = payload_hash(frame)
        concurrency = settings.post_concurrency

        async def http_setup() -> tuple[Any, Callable[[], Coroutine[Any, Any, None]]]:
            session = new_session(concurrency)
            poster = ConnectionsClient(
                session,
                endpoint,
                region=REGION,
                credentials=lambda: Credentials("AKIDBENCHEXAMPLE", "bench-secret-key-example"),
                timeout=settings.post_timeout_seconds,
            )
            return (session, poster), session.close

        async def engine_body(ctx: Any, ids: list[str]) -> int:
            _, poster = ctx
            outcome = await deliver(
                ids,
                frame,
                sha,
                poster,
                concurrency=concurrency,
                retries=settings.post_in_call_retries,
                base_delay=settings.retry_base_seconds,
                cap_delay=settings.retry_cap_seconds,
            )
            return len(outcome.delivered)

        async def floor_body(ctx: Any, ids: list[str]) -> int:
            session, _ = ctx
            delivered = 0
            it = iter(ids)

            async def worker() -> None:  # the engine's pattern: workers over one iterator, no task per id
                nonlocal delivered
                for cid in it:
                    async with session.post(f"{endpoint}/%40connections/{cid}", data=frame) as resp:
                        if resp.status == 200:
                            delivered += 1

            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return delivered

        return _async_timed(
            variant, posts, http_setup, engine_body if variant == "engine" else floor_body, profile
        )

    if variant == "stage":
        return _stage(settings, posts, sink, frame, profile)
    raise SystemExit(f"unknown variant {variant}")


def _stage(settings: Any, posts: int, sink: str, frame: bytes, profile: str | None) -> Measure:
    """The whole post stage: decode each SQS record, run_post_batch (ledger, deliver, count, check)."""
    from fanout.models import PostBatch
    from fanout.planning import plan_batches
    from fanout.stages import decode, run_post_batch

    os.environ["AWS_ENDPOINT_URL_DYNAMODB"] = sink
    os.environ["AWS_ENDPOINT_URL_SQS"] = sink
    settings = settings.model_copy(
        update={"post_queue_urls": [f"{sink}/000000000000/post-{i}" for i in range(4)]}
    )
    from fanout.container import Container

    container = Container(settings, poster=True)
    deps = container.deps

    def bodies(ids: list[str]) -> list[str]:
        return [
            PostBatch(
                broadcast_id=BROADCAST_ID,
                partition_id=0,
                batch_id=batch_id,
                connection_ids=chunk,
                partitions=1,
                counter_shards=4,
                frame=frame.decode(),
            ).model_dump_json(by_alias=True, exclude_defaults=True)
            for batch_id, chunk in plan_batches(ids, settings.post_batch_size, partition_id=0)
        ]

    async def record(body: str) -> int:
        result = await run_post_batch(deps, decode(body, PostBatch))
        return result.delivered

    async def sqs_batches(messages: list[str]) -> int:
        delivered = 0
        for start in range(0, len(messages), 10):  # one Lambda invocation per 10-message SQS batch
            results = await asyncio.gather(*(record(b) for b in messages[start : start + 10]))
            delivered += sum(results)
        return delivered

    warm_msgs, msgs = bodies(connection_ids(200, "w")), bodies(connection_ids(posts))
    try:
        return _timed(
            "stage",
            posts,
            lambda: int(container.run(sqs_batches(warm_msgs))),
            lambda: int(container.run(sqs_batches(msgs))),
            profile,
        )
    finally:
        container.close()


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
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return Measure(**data)


@dataclass
class VariantSummary:
    variant: str
    posts: int
    rounds: int
    cpu_us_per_frame_median: float
    cpu_us_per_frame_min: float
    cpu_us_per_frame_max: float
    frames_per_s_median: float
    samples: list[float]


def summarize(measures: list[Measure]) -> dict[str, VariantSummary]:
    out: dict[str, VariantSummary] = {}
    for variant in VARIANTS:
        ms = [m for m in measures if m.variant == variant]
        if not ms:
            continue
        per = [m.cpu_us_per_frame for m in ms]
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


def bench(
    rounds: int, posts: dict[str, int], variants: list[str], inflight: int, log: Callable[[str], None]
) -> dict[str, Any]:
    measures: list[Measure] = []
    with Sink() as sink:
        for r in range(rounds):
            order = variants[r % len(variants) :] + variants[: r % len(variants)]  # rotate the order
            for v in order:
                m = run_worker(v, posts[v], sink.url, inflight)
                if m.delivered != m.posts:
                    raise RuntimeError(f"{v}: {m.delivered} of {m.posts} delivered")
                measures.append(m)
                log(f"round {r + 1}/{rounds} {v:9s} {m.cpu_us_per_frame:8.1f} us/frame  {m.posts} posts")
    summary = summarize(measures)
    med = {v: s.cpu_us_per_frame_median for v, s in summary.items()}
    ratios: dict[str, float] = {}
    if "boto3" in med:
        for v in ("engine", "stage"):
            if v in med:
                ratios[f"boto3/{v}"] = round(med["boto3"] / med[v], 2)
    if "aioboto3" in med and "engine" in med:
        ratios["aioboto3/engine"] = round(med["aioboto3"] / med["engine"], 2)
    if "floor" in med and "engine" in med:
        ratios["engine/floor"] = round(med["engine"] / med["floor"], 2)
    return {
        "benchmark": "post_cost",
        "frame_bytes": len(make_frame()),
        "aioboto3_inflight": inflight,
        "loop": loop_name(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg()},
        "variants": {v: asdict(s) for v, s in summary.items()},
        "ratios": ratios,
        "measures": [asdict(m) | {"cpu_us_per_frame": round(m.cpu_us_per_frame, 1)} for m in measures],
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"{'variant':10s} {'posts':>6s} {'median us/frame':>16s} {'min':>8s} {'max':>8s} {'frames/s':>9s}")
    for v, s in result["variants"].items():
        print(
            f"{v:10s} {s['posts']:6d} {s['cpu_us_per_frame_median']:16.1f} {s['cpu_us_per_frame_min']:8.1f}"
            f" {s['cpu_us_per_frame_max']:8.1f} {s['frames_per_s_median']:9.0f}"
        )
    for k, r in result["ratios"].items():
        print(f"ratio {k}: {r:.2f}x")
    print(f"event loop of the async variants: {result['loop']}")


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
        print(json.dumps(asdict(m)))
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
        args.json.write_text(json.dumps(result, indent=2))
    return 0


BOTO_GROUP = "botocore/aiobotocore (DynamoDB requests)"
CATEGORIES = (
    (
        "signing (fanout/sigv4.py, urllib quote, hashlib/hmac)",
        ("fanout/sigv4.py", "urllib/parse.py", "_hashlib", "hmac"),
    ),
    (
        "engine delivery (fanout/delivery.py, fanout/postclient.py)",
        ("fanout/delivery.py", "fanout/postclient.py"),
    ),
    (
        "post stage (fanout/stages.py, models, pydantic, json)",
        ("fanout/stages.py", "fanout/models.py", "fanout/store.py", "pydantic", "json/"),
    ),
    (BOTO_GROUP, ("botocore/", "aiobotocore/", "aioboto3/", "jmespath/", "email/", "dateutil/")),
    ("aiohttp/yarl/multidict client machinery", ("aiohttp/", "yarl/", "multidict/")),
    ("socket send/recv (kernel calls)", ("_socket.socket", "select.epoll")),
    ("asyncio event loop, tasks, futures", ("asyncio/", "_asyncio", "_contextvars")),
    (
        # uvloop is C: its scheduling, epoll and socket reads show as the own time of the call running it
        "uvloop (C; own time of the call that runs the loop)",
        ("uvloop", "loadtest/bench_post.py", "fanout/container.py"),
    ),
)


def profile_breakdown(path: str, frames: int, top: int = 12) -> dict[str, Any]:
    """Own (tottime) CPU of a cProfile dump, per frame, grouped by where it is spent, plus the top entries."""
    import pstats

    stats = pstats.Stats(path)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values())
    groups = {name: 0.0 for name, _ in CATEGORIES} | {"other": 0.0}
    rows = []
    for (filename, line, func), (_cc, ncalls, tottime, cumtime, _callers) in raw.items():
        where = f"{filename}:{line}({func})"
        for name, needles in CATEGORIES:
            if any(n in where for n in needles):
                groups[name] += tottime
                break
        else:
            groups["other"] += tottime
        rows.append((tottime, ncalls, cumtime, where.replace(str(ROOT) + "/", "")))
    rows.sort(reverse=True)
    return {
        "totalSeconds": round(total, 3),
        "frames": frames,
        "groups": {
            k: {"share": round(v / total, 3), "usPerFrame": round(v / frames * 1e6, 1)}
            for k, v in groups.items()
        },
        "top": [
            {
                "tottimeS": round(t, 3),
                "ncalls": n,
                "cumtimeS": round(c, 3),
                "function": w.split("site-packages/")[-1],
            }
            for t, n, c, w in rows[:top]
        ],
    }


def profile_variant(variant: str, posts: int, inflight: int, top: int = 25) -> int:
    import pstats
    import tempfile

    with Sink() as sink, tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / f"{variant}.prof")
        m = run_worker(variant, posts, sink.url, inflight, profile=path)
        print(f"{variant}: {m.cpu_us_per_frame:.1f} us/frame under cProfile (inflated by the profiler)")
        stats = pstats.Stats(path)
        stats.sort_stats("tottime").print_stats(top)
        print(json.dumps(profile_breakdown(path, m.delivered)["groups"], indent=2))
    return 0


def profiled(variant: str, posts: int, inflight: int = 50) -> dict[str, Any]:
    """Run one profiled worker of `variant` against a fresh sink; the grouped breakdown."""
    import tempfile

    with Sink() as sink, tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / f"{variant}.prof")
        m = run_worker(variant, posts, sink.url, inflight, profile=path)
        out = profile_breakdown(path, m.delivered)
        out["cpuUsPerFrameUnderProfiler"] = round(m.cpu_us_per_frame, 1)
        return out


if __name__ == "__main__":
    sys.exit(main())
