"""A strict DynamoDB layer: an HTTP proxy in front of DynamoDB Local that enforces AWS's rules.

DynamoDB Local applies concurrent transactions one after another and never reports a conflict, so
code that passes against it can fail on AWS. This proxy sits between the engine and DynamoDB Local
(AWS JSON 1.0 protocol, ``X-Amz-Target: DynamoDB_20120810.<Op>``) and refuses, as AWS does:

- a ``TransactWriteItems`` touching an item held by another in-flight ``TransactWriteItems`` or
  ``PutItem``/``UpdateItem``/``DeleteItem``: ``TransactionCanceledException`` with one
  ``CancellationReasons`` entry per action (``TransactionConflict`` on the contended ones);
- a ``PutItem``/``UpdateItem``/``DeleteItem`` on an item held by an in-flight transaction:
  ``TransactionConflictException``;
- a ``TransactGetItems`` on an item held by an in-flight ``TransactWriteItems``, ``BatchWriteItem``
  or single-item write, or written while the read is in flight: ``TransactionCanceledException``;
- at a configured rate, any data-plane request: ``ProvisionedThroughputExceededException`` (or
  ``ThrottlingException`` for a share of them), decided by a seeded generator.

An item (database, table, primary key) is in flight from the moment its request arrives until
DynamoDB Local answers; a transaction is held at least ``transaction_hold_ms`` (DynamoDB Local
commits in a fraction of AWS's time, which would make conflicts rarer than on AWS). Everything
else, DynamoDB Streams included, is forwarded unchanged: method, path, headers, body and status.
DynamoDB Local does not check signatures but picks its database by the access key and Region of
the ``Authorization`` header, so that header travels with the request and also names the
database in the item identity.

The rules are plain functions in ``infra/local/ddb_strict_rules.py``; this module is the proxy that
applies them. ``python -m infra.local.ddb_strict --upstream URL --port P`` runs it as a process;
``StrictDynamoDBThread`` runs it on its own loop in a thread (tests). ``GET /_strict/stats`` reports
what it refused; ``POST /_strict/release`` ends every transaction hold now.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import socket
import sys
import threading
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import aiohttp
import uvloop
from aiohttp import web
from pydantic import BaseModel, Field

from infra.local.ddb_strict_rules import (
    DATA_PLANE,
    DEFAULT_THROTTLING_EXCEPTION_SHARE,
    DEFAULT_TRANSACTION_HOLD_MS,
    ITEM_HOLDING,
    PROVISIONED,
    SCHEMA_CHANGES,
    SINGLE_WRITES,
    TARGET_PREFIX,
    THROTTLING,
    ItemHolds,
    Ref,
    ThrottleDice,
    cancellation_body,
    conflict_body,
    database_of,
    first_table,
    item_refs,
    table_name,
    tables_needing_schema,
    throttle_body,
)
from infra.local.logs import json_stderr_handler

log = logging.getLogger("fanout.local.ddb_strict")

JSON_CONTENT_TYPE = "application/x-amz-json-1.0"

# hop-by-hop and framing headers: the two sides of the proxy frame their own messages
_NOT_FORWARDED = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive"})
_CREDENTIAL_HEADERS = frozenset({"authorization", "x-amz-date", "x-amz-security-token"})


class StrictConfig(BaseModel):
    upstream: str = Field(description="DynamoDB Local's endpoint URL")
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="0: a free port")
    faults: bool = Field(default=True, description="False: forward everything untouched")
    throttle_rate: float = Field(default=0.0, ge=0, le=1)
    throttling_exception_share: float = Field(default=DEFAULT_THROTTLING_EXCEPTION_SHARE, ge=0, le=1)
    seed: int | None = None
    transaction_hold_ms: float = Field(default=DEFAULT_TRANSACTION_HOLD_MS, ge=0)


def _error_response(body: dict[str, Any], status: int = 400) -> web.Response:
    raw = json.dumps(body, separators=(",", ":")).encode()
    return web.Response(
        status=status,
        body=raw,
        headers={
            "Content-Type": JSON_CONTENT_TYPE,
            "x-amzn-RequestId": uuid.uuid4().hex.upper(),
            "x-amz-crc32": str(zlib.crc32(raw)),  # botocore checks it when present, as AWS sends it
        },
    )


# --------------------------------------------------------------------------------------------------
# The proxy
# --------------------------------------------------------------------------------------------------


class StrictDynamoDB:
    """The aiohttp proxy. ``await start()`` binds and returns the endpoint URL."""

    def __init__(self, config: StrictConfig) -> None:
        self.config = config
        self.upstream = config.upstream.rstrip("/")
        self.holds = ItemHolds()
        self.dice = ThrottleDice(config.throttle_rate, config.throttling_exception_share, config.seed)
        self.stats: dict[str, int] = {
            "forwarded": 0,
            "transactionsCancelled": 0,
            "writesRejected": 0,
            "transactGetsCancelled": 0,
            PROVISIONED: 0,
            THROTTLING: 0,
        }
        self.endpoint = ""
        self.held = 0  # transactions in flight
        self.listeners: list[Callable[[], None]] = []  # run on the loop after every count changes
        self._schemas: dict[tuple[str, str], tuple[str, ...]] = {}
        self._schema_generation: Counter[tuple[str, str]] = Counter()
        self._releases: set[asyncio.Event] = set()
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None

    # -- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> str:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.config.host, self.config.port))
        self.endpoint = f"http://{self.config.host}:{sock.getsockname()[1]}"
        # one session with kept-alive connections (no TCP handshake per forwarded request); no
        # decompression, so bodies pass through byte for byte
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=60),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/_strict/stats", self._stats)
        app.router.add_post("/_strict/release", self._release)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        log.info(
            "listening", extra={"endpoint": self.endpoint, "upstream": self.upstream, **self._settings()}
        )
        return self.endpoint

    async def stop(self) -> None:
        self.release_holds()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        log.info("stopped", extra={"endpoint": self.endpoint, **self.stats})

    def _settings(self) -> dict[str, Any]:
        return self.config.model_dump(exclude={"upstream", "host", "port"})

    def snapshot(self) -> dict[str, Any]:
        return {**self.stats, "heldTransactions": self.held, "settings": self._settings()}

    def release_holds(self) -> None:
        """End every transaction's minimum hold now (each still waits for DynamoDB Local's answer)."""
        for event in list(self._releases):
            event.set()

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.snapshot())

    async def _release(self, request: web.Request) -> web.Response:
        self.release_holds()
        return web.json_response({"released": True})

    # -- forwarding ---------------------------------------------------------------------------------
    async def _forward(self, request: web.Request, body: bytes) -> web.Response:
        assert self._session is not None
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED]
        try:
            async with self._session.request(
                request.method, self.upstream + request.path_qs, headers=headers, data=body
            ) as up:
                payload = await up.read()
                out = [(k, v) for k, v in up.headers.items() if k.lower() not in _NOT_FORWARDED]
                self.stats["forwarded"] += 1
                return web.Response(status=up.status, body=payload, headers=out)  # type: ignore[arg-type]
        except aiohttp.ClientError as exc:
            log.warning("upstream unreachable", extra={"upstream": self.upstream, "error": str(exc)})
            return web.Response(status=502, text=f"DynamoDB Local at {self.upstream} is unreachable: {exc}")

    async def _describe_key(self, request: web.Request, db: str, table: str) -> tuple[str, ...] | None:
        """The table's key attribute names: DescribeTable upstream once, then cached."""
        cache_key = (db, table)
        if cache_key in self._schemas:
            return self._schemas[cache_key]
        assert self._session is not None
        generation = self._schema_generation[cache_key]
        # the caller's credentials: DynamoDB Local answers from the database they name
        headers = {k: v for k, v in request.headers.items() if k.lower() in _CREDENTIAL_HEADERS}
        headers.update({"X-Amz-Target": TARGET_PREFIX + "DescribeTable", "Content-Type": JSON_CONTENT_TYPE})
        try:
            async with self._session.post(
                self.upstream + "/", headers=headers, data=json.dumps({"TableName": table}).encode()
            ) as up:
                if up.status != 200:
                    return None
                description = json.loads(await up.read())
        except (aiohttp.ClientError, ValueError):
            return None
        names = tuple(e["AttributeName"] for e in description.get("Table", {}).get("KeySchema", []))
        # a CreateTable/DeleteTable that ran meanwhile makes this answer stale
        if names and self._schema_generation[cache_key] == generation:
            self._schemas[cache_key] = names
        return names or None

    def _invalidate(self, db: str, params: Mapping[str, Any]) -> None:
        if isinstance(params.get("TableName"), str):
            key = (db, table_name(params["TableName"]))
            self._schemas.pop(key, None)
            self._schema_generation[key] += 1

    async def _refs(
        self, request: web.Request, op: str, params: Mapping[str, Any], db: str
    ) -> list[Ref | None]:
        schemas: dict[str, Sequence[str]] = {}
        for table in tables_needing_schema(op, params):
            names = await self._describe_key(request, db, table)
            if names:
                schemas[table] = names
        return item_refs(op, params, db, schemas)

    def _held_changed(self, delta: int) -> None:
        self.held += delta
        for listener in self.listeners:
            listener()

    def _count(self, name: str) -> None:
        self.stats[name] += 1
        for listener in self.listeners:
            listener()

    async def _hold(self, released: asyncio.Event, seconds: float) -> None:
        handle = asyncio.get_running_loop().call_later(seconds, released.set)
        try:
            await released.wait()
        finally:
            handle.cancel()

    # -- the rules ----------------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        target = request.headers.get("X-Amz-Target", "")
        op = target[len(TARGET_PREFIX) :] if target.startswith(TARGET_PREFIX) else ""
        if not self.config.faults or not (op in DATA_PLANE or op in SCHEMA_CHANGES):
            return await self._forward(request, body)
        throttled = self.dice.roll() if op in DATA_PLANE else None
        if throttled is None and op not in ITEM_HOLDING:
            return await self._forward(request, body)  # a plain read: nothing to parse
        try:
            params = json.loads(body) if body else {}
        except ValueError:
            params = None
        if not isinstance(params, dict):
            params = None
        db = database_of(request.headers.get("Authorization", ""))

        if throttled is not None:
            self._count(throttled)
            region = db.split("/", 1)[1] if "/" in db else "us-east-1"
            log.debug("throttled", extra={"operation": op, "code": throttled})
            return _error_response(throttle_body(throttled, op, first_table(op, params or {}), region))
        if params is None:
            return await self._forward(request, body)  # DynamoDB Local answers SerializationException

        if op in SCHEMA_CHANGES:
            self._invalidate(db, params)
            try:
                return await self._forward(request, body)
            finally:
                self._invalidate(db, params)

        if op == "TransactWriteItems":
            return await self._transact_write(request, body, params, db)
        if op in SINGLE_WRITES:
            return await self._single_write(request, body, op, params, db)
        if op == "BatchWriteItem":
            refs = await self._refs(request, op, params, db)
            self.holds.begin_batch_write(refs)
            try:
                return await self._forward(request, body)
            finally:
                self.holds.end_batch_write(refs)
        if op == "TransactGetItems":
            return await self._transact_get(request, body, params, db)
        return await self._forward(request, body)

    async def _transact_write(
        self, request: web.Request, body: bytes, params: dict[str, Any], db: str
    ) -> web.Response:
        refs = await self._refs(request, "TransactWriteItems", params, db)
        contended = self.holds.begin_transaction(refs)
        if contended is not None:
            self._count("transactionsCancelled")
            log.info(
                "transaction cancelled: conflict",
                extra={"items": [r[1:] for r, c in zip(refs, contended, strict=True) if c and r]},
            )
            return _error_response(cancellation_body(contended))
        loop = asyncio.get_running_loop()
        started = loop.time()
        # registered before forwarding, so that a release that comes while DynamoDB Local works ends
        # this transaction's hold too
        released = asyncio.Event()
        self._releases.add(released)
        self._held_changed(+1)
        try:
            response = await self._forward(request, body)
            remaining = self.config.transaction_hold_ms / 1000 - (loop.time() - started)
            if remaining > 0 and not released.is_set():
                await self._hold(released, remaining)
            return response
        finally:
            self._releases.discard(released)
            self.holds.end_transaction(refs)
            self._held_changed(-1)

    async def _single_write(
        self, request: web.Request, body: bytes, op: str, params: dict[str, Any], db: str
    ) -> web.Response:
        [ref] = await self._refs(request, op, params, db)
        if not self.holds.begin_write(ref):
            self._count("writesRejected")
            log.info(
                "write rejected: transaction in progress", extra={"operation": op, "item": ref and ref[1:]}
            )
            return _error_response(conflict_body())
        try:
            return await self._forward(request, body)
        finally:
            self.holds.end_write(ref)

    async def _transact_get(
        self, request: web.Request, body: bytes, params: dict[str, Any], db: str
    ) -> web.Response:
        refs = await self._refs(request, "TransactGetItems", params, db)
        read = self.holds.begin_read(refs)
        if isinstance(read, list):
            self._count("transactGetsCancelled")
            return _error_response(cancellation_body(read))
        try:
            response = await self._forward(request, body)
        finally:
            conflicted = self.holds.end_read(read)
        if conflicted is not None and response.status == 200:
            self._count("transactGetsCancelled")
            return _error_response(cancellation_body(conflicted))
        return response


# --------------------------------------------------------------------------------------------------
# In-process form (tests)
# --------------------------------------------------------------------------------------------------


class StrictDynamoDBThread:
    """``with StrictDynamoDBThread(StrictConfig(upstream=...)) as proxy:`` runs the proxy on its own
    event loop in a daemon thread; ``proxy.endpoint`` is its URL."""

    def __init__(self, config: StrictConfig) -> None:
        self.server = StrictDynamoDB(config)
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._changed = threading.Condition()
        self.server.listeners.append(self._notify)

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def start(self) -> StrictDynamoDBThread:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self.server.start())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self.server.stop())
            self._loop.close()

        self._thread = threading.Thread(target=run, name="ddb-strict", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._thread = None

    def stats(self) -> dict[str, Any]:
        async def snap() -> dict[str, Any]:
            return self.server.snapshot()

        return asyncio.run_coroutine_threadsafe(snap(), self._loop).result(timeout=10)

    def release_holds(self) -> None:
        self._loop.call_soon_threadsafe(self.server.release_holds)

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0) -> None:
        """Block until `predicate(snapshot)` holds, re-checked whenever a count changes."""
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self.server.snapshot()), timeout=timeout):
                raise TimeoutError(f"the strict layer did not reach the expected state in {timeout:.0f} s")

    def wait_held(self, count: int = 1, timeout: float = 30.0) -> None:
        """Block until `count` transactions are held (in flight) by the proxy."""
        self.wait_for(lambda s: s["heldTransactions"] >= count, timeout)

    def __enter__(self) -> StrictDynamoDBThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def strict_endpoint(upstream: str, **options: Any) -> Iterator[str]:
    """The strict layer in front of `upstream` for the duration of the block; yields its URL."""
    with StrictDynamoDBThread(StrictConfig(upstream=upstream, **options)) as proxy:
        yield proxy.endpoint


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


async def _serve(config: StrictConfig) -> None:
    server = StrictDynamoDB(config)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()


def _on_off(value: str) -> bool:
    if value not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected on or off, not {value!r}")
    return value == "on"


def parse_rate(value: str) -> float:
    """argparse type of a share between 0 and 1 (this layer's flags and `fanout local up`'s)."""
    try:
        rate = float(value)
    except ValueError:
        rate = -1.0
    if not 0.0 <= rate <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a rate between 0 and 1, not {value!r}")
    return rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.local.ddb_strict", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--upstream", required=True, help="DynamoDB Local's endpoint URL")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="listen port (default 0: a free one, logged)")
    parser.add_argument(
        "--faults", type=_on_off, default=True, help="on (default): AWS's rules; off: pass through"
    )
    parser.add_argument(
        "--throttle-rate", type=parse_rate, default=0.0, help="share of data-plane requests throttled"
    )
    parser.add_argument(
        "--throttling-exception-share",
        type=parse_rate,
        default=DEFAULT_THROTTLING_EXCEPTION_SHARE,
        help="share of the throttled requests answered ThrottlingException (default %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the throttling decisions")
    parser.add_argument(
        "--transaction-hold-ms",
        type=float,
        default=DEFAULT_TRANSACTION_HOLD_MS,
        help="minimum time a TransactWriteItems holds its items (default %(default)s)",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if args.transaction_hold_ms < 0:
        parser.error("--transaction-hold-ms must be 0 or more")

    logging.basicConfig(level=args.log_level.upper(), handlers=[json_stderr_handler()])
    config = StrictConfig(
        upstream=args.upstream,
        host=args.host,
        port=args.port,
        faults=args.faults,
        throttle_rate=args.throttle_rate,
        throttling_exception_share=args.throttling_exception_share,
        seed=args.seed,
        transaction_hold_ms=args.transaction_hold_ms,
    )
    try:
        # uvloop, the engine's loop too (fanout.container.new_loop): less CPU per forwarded request
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_serve(config))
    except OSError as exc:
        print(f"ddb_strict: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
