"""The processes the post stage benchmark (loadtest/bench_post.py) starts: the sink and the workers.

The sink answers 200 to ``POST /{stage}/@connections/{id}`` and gives canned DynamoDB answers for the
full-stage variant. A worker runs one variant once: it sets up its clients, warms up, then measures
``time.process_time()`` around the timed posts only. Every async variant runs on the engine's event
loop (`fanout.container.new_loop`), so that the variants compare clients, not loops.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any

from loadtest.bench_models import Measure

STAGE = "bench"
REGION = "us-east-1"
BROADCAST_ID = "b-0123456789abcdef0123456789abcdef"


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
    return Measure(variant=variant, posts=posts, delivered=delivered, cpu_s=cpu, wall_s=wall)


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
