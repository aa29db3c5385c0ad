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

``python -m infra.local.ddb_strict --upstream URL --port P`` runs it as a process;
``StrictDynamoDBThread`` runs it on its own loop in a thread (tests). ``GET /_strict/stats`` reports
what it refused; ``POST /_strict/release`` ends every transaction hold now.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import re
import signal
import socket
import sys
import threading
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import aiohttp
import uvloop
from aiohttp import web
from pydantic import BaseModel, Field

log = logging.getLogger("fanout.local.ddb_strict")

TARGET_PREFIX = "DynamoDB_20120810."
JSON_CONTENT_TYPE = "application/x-amz-json-1.0"
ERROR_PREFIX = "com.amazonaws.dynamodb.v20120810#"
CONFLICT_MESSAGE = "Transaction is ongoing for the item"
ACCOUNT_ID = "000000000000"

# AWS's TransactWriteItems median is ~25 ms (5 items) against ~8 ms for PutItem; DynamoDB Local
# commits one in less than half that (docs/architecture.md has both figures and their sources).
DEFAULT_TRANSACTION_HOLD_MS = 25.0
# Of the throttled requests, the share answered ThrottlingException rather than
# ProvisionedThroughputExceededException (the engine must handle both; botocore retries both).
DEFAULT_THROTTLING_EXCEPTION_SHARE = 0.2

READS = frozenset({"GetItem", "Query", "Scan", "BatchGetItem", "TransactGetItems"})
WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"})
DATA_PLANE = READS | WRITES
SINGLE_WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem"})
SCHEMA_CHANGES = frozenset({"CreateTable", "DeleteTable"})
ITEM_HOLDING = WRITES | SCHEMA_CHANGES | {"TransactGetItems"}  # the requests the layer must parse

# hop-by-hop and framing headers: the two sides of the proxy frame their own messages
_NOT_FORWARDED = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive"})
_CREDENTIAL_HEADERS = frozenset({"authorization", "x-amz-date", "x-amz-security-token"})
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/[^/]*/([^/]+)/")


class StrictConfig(BaseModel):
    upstream: str = Field(description="DynamoDB Local's endpoint URL")
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="0: a free port")
    faults: bool = Field(default=True, description="False: forward everything untouched")
    throttle_rate: float = Field(default=0.0, ge=0, le=1)
    throttling_exception_share: float = Field(default=DEFAULT_THROTTLING_EXCEPTION_SHARE, ge=0, le=1)
    seed: int | None = None
    transaction_hold_ms: float = Field(default=DEFAULT_TRANSACTION_HOLD_MS, ge=0)


# --------------------------------------------------------------------------------------------------
# Item identity (plain functions over the request's JSON)
# --------------------------------------------------------------------------------------------------

Ref = tuple[str, str, str]  # (database, table, canonical primary key)


def database_of(authorization: str) -> str:
    """DynamoDB Local's database: the access key and Region of the SigV4 credential scope."""
    m = _CREDENTIAL.search(authorization)
    return f"{m[1]}/{m[2]}" if m else ""


def table_name(name: str) -> str:
    """A table may be named by its ARN (`arn:aws:dynamodb:<region>:<account>:table/<name>`)."""
    return name.rsplit(":table/", 1)[-1] if name.startswith("arn:") else name


def _canonical_value(value: Any) -> Any:
    # DynamoDB compares numbers by value: {"N": "1.0"} and {"N": "1"} are the same key
    if isinstance(value, dict) and isinstance(value.get("N"), str):
        with contextlib.suppress(InvalidOperation):
            return {"N": format(Decimal(value["N"]).normalize(), "f")}
    return value


def canonical_key(key: Mapping[str, Any]) -> str:
    return json.dumps(
        {name: _canonical_value(v) for name, v in key.items()}, sort_keys=True, separators=(",", ":")
    )


def key_from_item(item: Mapping[str, Any], key_names: Sequence[str]) -> dict[str, Any] | None:
    if not all(name in item for name in key_names):
        return None  # DynamoDB Local will answer the ValidationException
    return {name: item[name] for name in key_names}


def _ref(db: str, table: Any, key: Any) -> Ref | None:
    if not isinstance(table, str) or not isinstance(key, dict):
        return None
    return (db, table_name(table), canonical_key(key))


def tables_needing_schema(op: str, params: Mapping[str, Any]) -> set[str]:
    """Tables whose key schema is needed to find the items of this request (the Puts)."""
    if op == "PutItem":
        return {table_name(params["TableName"])} if isinstance(params.get("TableName"), str) else set()
    if op == "TransactWriteItems":
        return {
            table_name(entry["Put"]["TableName"])
            for entry in params.get("TransactItems") or []
            if isinstance(entry, dict)
            and isinstance(entry.get("Put"), dict)
            and isinstance(entry["Put"].get("TableName"), str)
        }
    if op == "BatchWriteItem":
        items = params.get("RequestItems") or {}
        return {
            table_name(t)
            for t, requests in items.items()
            if isinstance(requests, list) and any(isinstance(r, dict) and "PutRequest" in r for r in requests)
        }
    return set()


def _put_ref(db: str, table: Any, item: Any, schemas: Mapping[str, Sequence[str]]) -> Ref | None:
    if not isinstance(table, str) or not isinstance(item, dict):
        return None
    names = schemas.get(table_name(table))
    key = key_from_item(item, names) if names else None
    return _ref(db, table, key) if key else None


def item_refs(
    op: str, params: Mapping[str, Any], db: str, schemas: Mapping[str, Sequence[str]]
) -> list[Ref | None]:
    """The items a request touches, in request order (None where the request is malformed or the
    table unknown: DynamoDB Local answers those itself, so they are never held)."""
    if op in ("UpdateItem", "DeleteItem"):
        return [_ref(db, params.get("TableName"), params.get("Key"))]
    if op == "PutItem":
        return [_put_ref(db, params.get("TableName"), params.get("Item"), schemas)]
    if op in ("TransactWriteItems", "TransactGetItems"):
        refs: list[Ref | None] = []
        for entry in params.get("TransactItems") or []:
            action = next(iter(entry.values()), None) if isinstance(entry, dict) and len(entry) == 1 else None
            if not isinstance(action, dict):
                refs.append(None)
            elif "Put" in entry:
                refs.append(_put_ref(db, action.get("TableName"), action.get("Item"), schemas))
            else:
                refs.append(_ref(db, action.get("TableName"), action.get("Key")))
        return refs
    if op == "BatchWriteItem":
        refs = []
        for table, requests in (params.get("RequestItems") or {}).items():
            for r in requests if isinstance(requests, list) else []:
                if isinstance(r, dict) and isinstance(r.get("PutRequest"), dict):
                    refs.append(_put_ref(db, table, r["PutRequest"].get("Item"), schemas))
                elif isinstance(r, dict) and isinstance(r.get("DeleteRequest"), dict):
                    refs.append(_ref(db, table, r["DeleteRequest"].get("Key")))
        return refs
    return []


def first_table(op: str, params: Mapping[str, Any]) -> str:
    """The table a throttled request is reported against."""
    if isinstance(params.get("TableName"), str):
        return table_name(params["TableName"])
    if op in ("BatchGetItem", "BatchWriteItem"):
        return table_name(next(iter(params.get("RequestItems") or {"": None})))
    for entry in params.get("TransactItems") or []:
        for action in entry.values() if isinstance(entry, dict) else []:
            if isinstance(action, dict) and isinstance(action.get("TableName"), str):
                return table_name(action["TableName"])
    return ""


# --------------------------------------------------------------------------------------------------
# Holds: which items are in flight, and what a new request may do with them
# --------------------------------------------------------------------------------------------------


@dataclass
class TransactionRead:
    """An in-flight TransactGetItems; a write to one of its items while it runs cancels it."""

    refs: list[Ref | None]
    conflicted: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.conflicted = [False] * len(self.refs)


class ItemHolds:
    """In-flight items and AWS's conflict rules between them. Every method runs to completion
    without awaiting, so a check and its acquisition are atomic on the proxy's event loop."""

    def __init__(self) -> None:
        self.transactions: Counter[Ref] = Counter()
        self.writes: Counter[Ref] = Counter()  # PutItem/UpdateItem/DeleteItem
        self.batch_writes: Counter[Ref] = Counter()
        self.reads: dict[Ref, list[TransactionRead]] = {}

    @staticmethod
    def _release(counter: Counter[Ref], refs: Sequence[Ref | None]) -> None:
        for ref in refs:
            if ref is not None:
                counter[ref] -= 1
                if counter[ref] <= 0:
                    del counter[ref]

    def _written(self, refs: Sequence[Ref | None]) -> None:
        for ref in refs:
            for read in self.reads.get(ref, ()) if ref is not None else ():
                for i, r in enumerate(read.refs):
                    if r == ref:
                        read.conflicted[i] = True

    def begin_transaction(self, refs: Sequence[Ref | None]) -> list[bool] | None:
        """Hold the items of a TransactWriteItems; if any is held by another transaction or a
        single-item write, hold nothing and return which ones are contended."""
        contended = [r is not None and (r in self.transactions or r in self.writes) for r in refs]
        if any(contended):
            return contended
        self.transactions.update(r for r in refs if r is not None)
        self._written(refs)
        return None

    def end_transaction(self, refs: Sequence[Ref | None]) -> None:
        self._release(self.transactions, refs)

    def begin_write(self, ref: Ref | None) -> bool:
        """Hold the item of a PutItem/UpdateItem/DeleteItem; False if a transaction holds it."""
        if ref is not None and ref in self.transactions:
            return False
        if ref is not None:
            self.writes[ref] += 1
            self._written([ref])
        return True

    def end_write(self, ref: Ref | None) -> None:
        self._release(self.writes, [ref])

    def begin_batch_write(self, refs: Sequence[Ref | None]) -> None:
        self.batch_writes.update(r for r in refs if r is not None)
        self._written(refs)

    def end_batch_write(self, refs: Sequence[Ref | None]) -> None:
        self._release(self.batch_writes, refs)

    def begin_read(self, refs: Sequence[Ref | None]) -> TransactionRead | list[bool]:
        """Register a TransactGetItems, or return which items are contended by a write in flight."""
        contended = [
            r is not None and (r in self.transactions or r in self.writes or r in self.batch_writes)
            for r in refs
        ]
        if any(contended):
            return contended
        read = TransactionRead(list(refs))
        for ref in refs:
            if ref is not None:
                self.reads.setdefault(ref, []).append(read)
        return read

    def end_read(self, read: TransactionRead) -> list[bool] | None:
        """Unregister a TransactGetItems; the contended items if a write came meanwhile."""
        for ref in read.refs:
            readers = self.reads.get(ref, []) if ref is not None else []
            if read in readers:
                readers.remove(read)
                if not readers:
                    del self.reads[ref]  # type: ignore[arg-type]
        return read.conflicted if any(read.conflicted) else None


# --------------------------------------------------------------------------------------------------
# Throttling and error bodies
# --------------------------------------------------------------------------------------------------

PROVISIONED = "ProvisionedThroughputExceededException"
THROTTLING = "ThrottlingException"


class ThrottleDice:
    """Which data-plane requests are throttled: the n-th roll depends only on the seed."""

    def __init__(self, rate: float, share: float, seed: int | None) -> None:
        self.rate = rate
        self.share = share
        self._rng = random.Random(seed)

    def roll(self) -> str | None:
        if self.rate <= 0:
            return None
        if self._rng.random() >= self.rate:
            return None
        return THROTTLING if self._rng.random() < self.share else PROVISIONED


def throttle_outcomes(rate: float, share: float, seed: int | None, n: int) -> list[str | None]:
    dice = ThrottleDice(rate, share, seed)
    return [dice.roll() for _ in range(n)]


def cancellation_body(contended: Sequence[bool]) -> dict[str, Any]:
    reasons: list[dict[str, str]] = [
        {"Code": "TransactionConflict", "Message": CONFLICT_MESSAGE} if c else {"Code": "None"}
        for c in contended
    ]
    codes = ", ".join(r["Code"] for r in reasons)
    return {
        "__type": ERROR_PREFIX + "TransactionCanceledException",
        "CancellationReasons": reasons,
        "Message": f"Transaction cancelled, please refer cancellation reasons for specific reasons [{codes}]",
    }


def conflict_body() -> dict[str, Any]:
    return {"__type": ERROR_PREFIX + "TransactionConflictException", "message": CONFLICT_MESSAGE}


def throttle_body(code: str, op: str, table: str, region: str) -> dict[str, Any]:
    kind = "Read" if op in READS else "Write"
    resource = f"arn:aws:dynamodb:{region}:{ACCOUNT_ID}:table/{table}"
    if code == THROTTLING:
        reason = {"reason": f"Table{kind}MaxOnDemandThroughputExceeded", "resource": resource}
        return {
            "__type": ERROR_PREFIX + THROTTLING,
            "message": "Rate of requests exceeds the allowed throughput.",
            "throttlingReasons": [reason],
        }
    reason = {"reason": f"Table{kind}KeyRangeThroughputExceeded", "resource": resource}
    return {
        "__type": ERROR_PREFIX + PROVISIONED,
        "message": (
            "Throughput exceeds the current capacity of your table or index. DynamoDB is automatically "
            "scaling your table or index so please try again shortly. If exceptions persist, check if "
            "you have a hot key: "
            "https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/bp-partition-key-design.html"
        ),
        "ThrottlingReasons": [reason],
    }


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
    from infra.local.sqs import JsonFormatter

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

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
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
