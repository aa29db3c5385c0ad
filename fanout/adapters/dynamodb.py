"""The stages' DynamoDB adapter (aioboto3, low level): broadcasts, counter shards, plans, connections.

Every request is built by fanout.store (pure); this module sends it, walks its pages and turns botocore
errors into answers (a failed condition means "already done") or fanout.errors exceptions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from botocore.exceptions import ClientError

from fanout.accounting import Totals
from fanout.adapters.errors import THROTTLING, cancellation_codes, error_code
from fanout.errors import BroadcastNotFound, RetryableError, Throttled
from fanout.models import BroadcastRecord, BroadcastStatus
from fanout.retry import backoff_delay
from fanout.store import (
    BroadcastRequests,
    from_item,
    now_ms,
    parse_broadcast,
    totals_of,
)

T = TypeVar("T")

CONDITION_FAILED = "ConditionalCheckFailedException"
# A transaction cancelled because another one held an item (TransactionConflict), or a single-item
# write refused because a transaction holds the item: botocore retries neither, DynamoDB expects the
# caller to, with backoff.
CONFLICT_ATTEMPTS = 10
CONFLICT_BASE_SECONDS = 0.02
CONFLICT_CAP_SECONDS = 1.0
DELETE_CONCURRENCY = 16


class Conflicted(RetryableError):
    """A write kept conflicting with transactions on the same items."""


def _is_conflict(exc: BaseException) -> bool:
    code = error_code(exc)
    if code == "TransactionConflictException":
        return True
    return code == "TransactionCanceledException" and "TransactionConflict" in cancellation_codes(exc)


class PipelineTables:
    """What the stages read and write in DynamoDB. `on_conflict` is told of every conflict retried."""

    def __init__(
        self,
        client: Any,
        requests: BroadcastRequests,
        *,
        connections_table: str,
        connections_index: str,
        partitions_table: str,
        on_conflict: Callable[[], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.client = client
        self.requests = requests
        self.connections_table = connections_table
        self.connections_index = connections_index
        self.partitions_table = partitions_table
        self.on_conflict = on_conflict
        self._sleep = sleep

    async def _retry_conflicts(self, call: Callable[[], Awaitable[T]]) -> T:
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            try:
                return await call()
            except ClientError as exc:
                if not _is_conflict(exc):
                    if error_code(exc) in THROTTLING:
                        raise Throttled(f"DynamoDB kept throttling: {exc}") from exc
                    raise
                if self.on_conflict is not None:
                    self.on_conflict()
                if attempt == CONFLICT_ATTEMPTS:
                    raise Conflicted(f"DynamoDB write conflicted {attempt} times: {exc}") from exc
            await self._sleep(backoff_delay(attempt, base=CONFLICT_BASE_SECONDS, cap=CONFLICT_CAP_SECONDS))
        raise AssertionError("unreachable")

    # -- broadcasts ---------------------------------------------------------------------------------
    async def load_broadcast(self, broadcast_id: str, *, frame: bool = False) -> tuple[BroadcastRecord, dict]:
        out = await self.client.get_item(**self.requests.get(broadcast_id, frame=frame))
        if "Item" not in out:
            raise BroadcastNotFound(f"no broadcast {broadcast_id}")
        return parse_broadcast(out["Item"])

    async def start(self, broadcast_id: str, partition_ids: list[int], shards: int) -> bool:
        """queued → running; False if it was not queued any more (another invocation started it)."""
        return await self._conditional(self.requests.start(broadcast_id, partition_ids, shards))

    async def finish(self, broadcast_id: str, status: BroadcastStatus, *, error: str | None = None) -> bool:
        """→ completed/failed; False if it had already ended."""
        return await self._conditional(self.requests.finish(broadcast_id, status, now_ms(), error=error))

    async def note_error(self, broadcast_id: str, error: str) -> None:
        await self._conditional(self.requests.note_error(broadcast_id, error))

    async def _conditional(self, request: dict[str, Any]) -> bool:
        async def call() -> bool:
            try:
                await self.client.update_item(**request)
            except ClientError as exc:
                if error_code(exc) == CONDITION_FAILED:
                    return False
                raise
            return True

        return await self._retry_conflicts(call)

    # -- accounting ---------------------------------------------------------------------------------
    async def is_applied(self, broadcast_id: str, entry: str, shards: int) -> bool:
        out = await self.client.get_item(**self.requests.get_applied(broadcast_id, entry, shards))
        applied = out.get("Item", {}).get("applied", {}).get("SS", [])
        return entry in applied

    async def count(self, broadcast_id: str, entry: str, counts: dict[str, int], shards: int) -> bool:
        """Add an entry's counts once; False if the entry had been counted before (a replay)."""
        return await self._conditional(self.requests.count(broadcast_id, entry, counts, shards))

    async def totals(self, broadcast_id: str, shards: int) -> Totals:
        """The sum of the broadcast's counter shards (consistent reads; unprocessed keys read again)."""
        request = self.requests.get_shards(broadcast_id, shards)
        responses: list[dict[str, Any]] = []
        for attempt in range(1, 9):
            out = await self.client.batch_get_item(**request)
            responses.append(out)
            unprocessed = out.get("UnprocessedKeys") or {}
            if not unprocessed:
                return totals_of(responses, self.requests.ledger)
            request = {"RequestItems": unprocessed}
            await self._sleep(backoff_delay(attempt, base=0.05, cap=1.0))
        raise Throttled(f"BatchGetItem left counter shards of {broadcast_id} unread")

    # -- plans --------------------------------------------------------------------------------------
    async def load_plan(self, broadcast_id: str, partition_id: int) -> list[str] | None:
        """The ids a partition task targeted, if it ran before; None if it never did."""
        out = await self.client.get_item(**self.requests.get_plan(broadcast_id, partition_id))
        if "Item" not in out:
            return None
        head = from_item(out["Item"])
        ids = [str(i) for i in head.get("connectionIds") or []]
        for chunk in range(1, int(head.get("chunks") or 1)):
            part = await self.client.get_item(**self.requests.get_plan(broadcast_id, partition_id, chunk))
            ids.extend(str(i) for i in from_item(part["Item"]).get("connectionIds") or [])
        return ids

    async def save_plan(self, broadcast_id: str, partition_id: int, ids: list[str]) -> bool:
        """Store a partition task's ids once; False if a plan was stored before (keep that one)."""
        op, request = self.requests.put_plan(broadcast_id, partition_id, ids)

        async def call() -> bool:
            try:
                await getattr(self.client, op)(**request)
            except ClientError as exc:
                code = error_code(exc)
                if code == CONDITION_FAILED:
                    return False
                if code == "TransactionCanceledException" and "ConditionalCheckFailed" in cancellation_codes(
                    exc
                ):
                    return False
                raise
            return True

        return await self._retry_conflicts(call)

    # -- partitions and connections -----------------------------------------------------------------
    async def non_empty_partitions(self) -> dict[int, int]:
        """partitionId → connectionCount for every partition with connections."""
        counts: dict[int, int] = {}
        kwargs: dict[str, Any] = {
            "TableName": self.partitions_table,
            "ProjectionExpression": "partitionId, connectionCount",
            "FilterExpression": "connectionCount > :zero",
            "ExpressionAttributeValues": {":zero": {"N": "0"}},
        }
        while True:
            out = await self.client.scan(**kwargs)
            for i in out.get("Items", []):
                counts[int(i["partitionId"]["N"])] = int(i["connectionCount"]["N"])
            if "LastEvaluatedKey" not in out:
                return dict(sorted(counts.items()))
            kwargs["ExclusiveStartKey"] = out["LastEvaluatedKey"]

    async def partition_connection_ids(self, partition_id: int) -> list[str]:
        """Page through the keys-only GSI for one partition (1 MB a page)."""
        ids: list[str] = []
        kwargs: dict[str, Any] = {
            "TableName": self.connections_table,
            "IndexName": self.connections_index,
            "KeyConditionExpression": "partitionId = :p",
            "ExpressionAttributeValues": {":p": {"N": str(partition_id)}},
            "ProjectionExpression": "connectionId",
        }
        while True:
            out = await self.client.query(**kwargs)
            ids.extend(i["connectionId"]["S"] for i in out.get("Items", []))
            if "LastEvaluatedKey" not in out:
                return ids
            kwargs["ExclusiveStartKey"] = out["LastEvaluatedKey"]

    async def prune(self, connection_ids: Sequence[str], *, grace_ms: int) -> tuple[list[str], list[str]]:
        """Delete the rows of connections that answered 410, unless a row is younger than `grace_ms`.

        API Gateway answers 410 to a connection whose $connect has not finished, and the row is written
        during $connect: such a row is kept (and its id returned as still connecting) rather than
        deleting a live client. The age test is the delete's own condition, so it is atomic.
        Returns (pruned or already gone, still connecting).
        """
        cutoff = now_ms() - grace_ms
        gone: list[str] = []
        connecting: list[str] = []
        semaphore = asyncio.Semaphore(DELETE_CONCURRENCY)

        async def one(connection_id: str) -> None:
            async with semaphore:
                try:
                    await self.client.delete_item(
                        TableName=self.connections_table,
                        Key={"connectionId": {"S": connection_id}},
                        ConditionExpression="attribute_not_exists(connectionId) OR connectedAt < :cutoff",
                        ExpressionAttributeValues={":cutoff": {"N": str(cutoff)}},
                    )
                except ClientError as exc:
                    if error_code(exc) != CONDITION_FAILED:
                        raise
                    connecting.append(connection_id)
                else:
                    gone.append(connection_id)

        await asyncio.gather(*(one(c) for c in connection_ids))
        return gone, connecting
