"""The broadcasts table and the ledger (counter shards, query plans): the one adapter of the two.

Every request is built by fanout.store (pure) and every answer parsed there; this module sends the
requests, walks their pages, retries what DynamoDB expects the caller to retry, and turns botocore
errors into answers (a failed condition means "already done") or fanout.errors exceptions.
Two flavours: `AsyncBroadcastsTable` (aioboto3) for the stages, `BroadcastsTable` (boto3) for the
operator API and the sweeper.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from fanout.accounting import Totals
from fanout.adapters.errors import AWS_ERRORS, is_condition_failure, is_conflict, translate
from fanout.errors import BroadcastNotFound, RetryableError, Throttled
from fanout.models import Audience, BroadcastStatus
from fanout.retry import backoff_delay
from fanout.store import (
    BroadcastRequests,
    applied_entries,
    now_ms,
    parse_broadcast,
    plan_ids,
    totals_of,
)
from fanout.swarming import StoredBroadcast

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient
    from types_aiobotocore_dynamodb.client import DynamoDBClient as AsyncDynamoDBClient

T = TypeVar("T")

# A transaction cancelled because another one held an item (TransactionConflict), or a single-item
# write refused because a transaction holds the item: botocore retries neither, DynamoDB expects the
# caller to, with backoff.
CONFLICT_ATTEMPTS = 10
CONFLICT_BASE_SECONDS = 0.02
CONFLICT_CAP_SECONDS = 1.0
# BatchGetItem of the counter shards: unprocessed keys (throttling) are read again this many times.
SHARD_READ_ATTEMPTS = 8


class Conflicted(RetryableError):
    """A write kept conflicting with transactions on the same items."""


def _unprocessed(out: Any) -> dict[str, Any]:
    keys: dict[str, Any] = out.get("UnprocessedKeys") or {}
    return keys


class AsyncBroadcastsTable:
    """What the stages read and write in the broadcasts and ledger tables. `on_conflict` is told of
    every conflict retried (the stages count them)."""

    def __init__(
        self,
        client: AsyncDynamoDBClient,
        requests: BroadcastRequests,
        *,
        on_conflict: Callable[[], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.client = client
        self.requests = requests
        self.on_conflict = on_conflict
        self._sleep = sleep

    async def _retry_conflicts(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            try:
                return await call()
            except AWS_ERRORS as exc:
                if not is_conflict(exc):
                    raise translate(exc, what) from exc
                if self.on_conflict is not None:
                    self.on_conflict()
                if attempt == CONFLICT_ATTEMPTS:
                    raise Conflicted(f"{what}: DynamoDB write conflicted {attempt} times: {exc}") from exc
            await self._sleep(backoff_delay(attempt, base=CONFLICT_BASE_SECONDS, cap=CONFLICT_CAP_SECONDS))
        raise AssertionError("unreachable")

    async def _read(self, call: Awaitable[T], what: str) -> T:
        try:
            return await call
        except AWS_ERRORS as exc:
            raise translate(exc, what) from exc

    # -- broadcasts ---------------------------------------------------------------------------------
    async def load(self, broadcast_id: str, *, frame: bool = False) -> StoredBroadcast:
        out = await self._read(
            self.client.get_item(**self.requests.get(broadcast_id, frame=frame)), "get broadcast"
        )
        if "Item" not in out:
            raise BroadcastNotFound(f"no broadcast {broadcast_id}")
        return parse_broadcast(dict(out["Item"]))

    async def start(self, broadcast_id: str, partition_ids: list[int], shards: int) -> bool:
        """queued → running; False if it was not queued any more (another invocation started it)."""
        return await self._conditional(self.requests.start(broadcast_id, partition_ids, shards), "start")

    async def finish(self, broadcast_id: str, status: BroadcastStatus, *, error: str | None = None) -> bool:
        """→ completed/failed; False if it had already ended."""
        request = self.requests.finish(broadcast_id, status, now_ms(), error=error)
        return await self._conditional(request, "finish broadcast")

    async def note_error(self, broadcast_id: str, error: str) -> None:
        await self._conditional(self.requests.note_error(broadcast_id, error), "note error")

    async def _conditional(self, request: dict[str, Any], what: str) -> bool:
        async def call() -> bool:
            try:
                await self.client.update_item(**request)
            except AWS_ERRORS as exc:
                if is_condition_failure(exc):
                    return False
                raise
            return True

        return await self._retry_conflicts(call, what)

    # -- accounting ---------------------------------------------------------------------------------
    async def is_applied(self, broadcast_id: str, entry: str, shards: int) -> bool:
        out = await self._read(
            self.client.get_item(**self.requests.get_applied(broadcast_id, entry, shards)), "read ledger"
        )
        return entry in applied_entries(out.get("Item"))

    async def count(self, broadcast_id: str, entry: str, counts: dict[str, int], shards: int) -> bool:
        """Add an entry's counts once; False if the entry had been counted before (a replay)."""
        return await self._conditional(self.requests.count(broadcast_id, entry, counts, shards), "count")

    async def totals(self, broadcast_id: str, shards: int) -> Totals:
        """The sum of the broadcast's counter shards (consistent reads; unprocessed keys read again)."""
        request = self.requests.get_shards(broadcast_id, shards)
        responses: list[dict[str, Any]] = []
        for attempt in range(1, SHARD_READ_ATTEMPTS + 1):
            out = await self._read(self.client.batch_get_item(**request), "read counter shards")
            responses.append(dict(out))
            unprocessed = _unprocessed(out)
            if not unprocessed:
                return totals_of(responses, self.requests.ledger)
            request = {"RequestItems": unprocessed}
            await self._sleep(backoff_delay(attempt, base=0.05, cap=1.0))
        raise Throttled(f"BatchGetItem left counter shards of {broadcast_id} unread")

    # -- plans --------------------------------------------------------------------------------------
    async def load_plan(self, broadcast_id: str, partition_id: int) -> list[str] | None:
        """The ids a partition task targeted, if it ran before; None if it never did."""
        get = self.requests.get_plan
        out = await self._read(self.client.get_item(**get(broadcast_id, partition_id)), "read plan")
        if "Item" not in out:
            return None
        ids, chunks = plan_ids(dict(out["Item"]))
        for chunk in range(1, chunks):
            part = await self._read(
                self.client.get_item(**get(broadcast_id, partition_id, chunk)), "read plan"
            )
            ids.extend(plan_ids(dict(part["Item"]))[0])
        return ids

    async def save_plan(self, broadcast_id: str, partition_id: int, ids: list[str]) -> bool:
        """Store a partition task's ids once; False if a plan was stored before (keep that one)."""
        op, request = self.requests.put_plan(broadcast_id, partition_id, ids)

        async def call() -> bool:
            try:
                if op == "put_item":
                    await self.client.put_item(**request)
                else:
                    await self.client.transact_write_items(**request)
            except AWS_ERRORS as exc:
                if is_condition_failure(exc):
                    return False
                raise
            return True

        return await self._retry_conflicts(call, "save plan")


class BroadcastsTable:
    """The broadcasts and ledger tables for the operator API and the sweeper (boto3 client passed in)."""

    def __init__(
        self,
        client: DynamoDBClient,
        requests: BroadcastRequests,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.requests = requests
        self._sleep = sleep

    def create(
        self,
        broadcast_id: str,
        created_at: int,
        frame: str,
        idempotency_key: str | None,
        audience: Audience | None = None,
        positions: Mapping[str, tuple[int, str]] | None = None,
        *,
        exclude_connection: str | None = None,
    ) -> None:
        request = self.requests.create(
            broadcast_id,
            created_at,
            frame,
            idempotency_key,
            audience,
            positions,
            exclude_connection=exclude_connection,
        )
        try:
            self.client.put_item(**request)
        except AWS_ERRORS as exc:
            raise translate(exc, "store broadcast") from exc

    def load(self, broadcast_id: str) -> StoredBroadcast:
        try:
            out = self.client.get_item(**self.requests.get(broadcast_id))
        except AWS_ERRORS as exc:
            raise translate(exc, "get broadcast") from exc
        if "Item" not in out:
            raise BroadcastNotFound(f"no broadcast {broadcast_id}")
        return parse_broadcast(dict(out["Item"]))

    def totals(self, broadcast_id: str, shards: int) -> Totals:
        """The sum of the broadcast's counter shards (consistent reads; unprocessed keys read again)."""
        request = self.requests.get_shards(broadcast_id, shards)
        responses: list[dict[str, Any]] = []
        for attempt in range(1, SHARD_READ_ATTEMPTS + 1):
            try:
                out = self.client.batch_get_item(**request)
            except AWS_ERRORS as exc:
                raise translate(exc, "read counter shards") from exc
            responses.append(dict(out))
            unprocessed = _unprocessed(out)
            if not unprocessed:
                return totals_of(responses, self.requests.ledger)
            request = {"RequestItems": unprocessed}
            self._sleep(backoff_delay(attempt, base=0.05, cap=1.0))
        raise Throttled(f"the counts of broadcast {broadcast_id} could not be read (throttled)")

    def pending_ids(self) -> list[str]:
        """Every broadcast still queued or running, oldest first (the sparse index, every page)."""
        ids: list[str] = []
        start: dict[str, Any] | None = None
        try:
            while True:
                out = self.client.query(**self.requests.pending(start))
                ids.extend(i["broadcastId"]["S"] for i in out.get("Items", []))
                start = out.get("LastEvaluatedKey")
                if not start:
                    return ids
        except AWS_ERRORS as exc:
            raise translate(exc, "query pending broadcasts") from exc

    def finish(
        self, broadcast_id: str, status: BroadcastStatus, at_ms: int, *, error: str | None = None
    ) -> bool:
        """→ completed/failed; False if it had already ended (another sweeper, or the pipeline)."""
        return self._conditional(
            self.requests.finish(broadcast_id, status, at_ms, error=error), "finish broadcast"
        )

    def swept(self, broadcast_id: str, *, sweeps: int, next_sweeps: int, progress: int, at_ms: int) -> bool:
        """Record one sweep; False if another sweeper recorded it first or the broadcast ended."""
        request = self.requests.swept(
            broadcast_id, sweeps=sweeps, next_sweeps=next_sweeps, progress=progress, at_ms=at_ms
        )
        return self._conditional(request, "record sweep")

    def _conditional(self, request: dict[str, Any], what: str) -> bool:
        try:
            self.client.update_item(**request)
        except AWS_ERRORS as exc:
            if is_condition_failure(exc):
                return False
            raise translate(exc, what) from exc
        return True
