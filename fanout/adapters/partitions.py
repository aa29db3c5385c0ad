"""The partitions table: the one adapter of the table.

`partitionId` (N) → `connectionCount` (N), `countedAt` (N, ms: the last stream ADD), `reconciledAt`
(N, ms). Two flavours share the request builders below and the error translation of
fanout.adapters.errors: `PartitionsTable` (boto3: connect's view, the stream counter, the reconciler)
and `AsyncPartitionsTable` (aioboto3: the swarm's list of non-empty partitions).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fanout.adapters.errors import AWS_ERRORS, is_condition_failure, translate
from fanout.errors import FanoutError
from partitions.choice import ViewLoad

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient
    from types_aiobotocore_dynamodb.client import DynamoDBClient as AsyncDynamoDBClient


def _n(value: int | float) -> dict[str, str]:
    return {"N": str(value)}


@dataclass(frozen=True)
class AppliedDeltas:
    applied: dict[int, int] = field(default_factory=dict)
    failed: dict[int, FanoutError] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredCounter:
    count: int | None  # None: the row has no counter
    counted_at_ms: int | None  # when the stream last changed it (None: never, or before this field)


@dataclass(frozen=True)
class PartitionRequests:
    """Builders of the low-level requests on the partitions table (plain data, no I/O)."""

    table: str

    def scan_counts(self, *, non_empty: bool = False) -> dict[str, Any]:
        """The first page of a Scan of every counter (eventually consistent: what a view needs)."""
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "ProjectionExpression": "partitionId, connectionCount",
        }
        if non_empty:
            kwargs["FilterExpression"] = "connectionCount > :zero"
            kwargs["ExpressionAttributeValues"] = {":zero": _n(0)}
        return kwargs

    def scan_rows(self) -> dict[str, Any]:
        """The first page of a consistent Scan of whole rows (the reconciler's read)."""
        return {"TableName": self.table, "ConsistentRead": True}

    def get(self, partition_id: int) -> dict[str, Any]:
        return {"TableName": self.table, "Key": {"partitionId": _n(partition_id)}, "ConsistentRead": True}

    def add(self, partition_id: int, delta: int, *, now_ms: int) -> dict[str, Any]:
        """`ADD connectionCount :d` (creating the row if needed), stamping `countedAt`."""
        return {
            "TableName": self.table,
            "Key": {"partitionId": _n(partition_id)},
            "UpdateExpression": "ADD connectionCount :d SET countedAt = :t",
            "ExpressionAttributeValues": {":d": _n(delta), ":t": _n(now_ms)},
        }

    def correct(self, partition_id: int, *, expected: int | None, value: int, now_ms: int) -> dict[str, Any]:
        """Set the counter to `value` if it still holds `expected` (None: absent)."""
        if expected is None:
            condition = "attribute_not_exists(connectionCount)"
            values: dict[str, Any] = {":v": _n(value), ":t": _n(now_ms)}
        else:
            condition = "connectionCount = :old"
            values = {":v": _n(value), ":t": _n(now_ms), ":old": _n(expected)}
        return {
            "TableName": self.table,
            "Key": {"partitionId": _n(partition_id)},
            "UpdateExpression": "SET connectionCount = :v, reconciledAt = :t",
            "ConditionExpression": condition,
            "ExpressionAttributeValues": values,
        }


def counts_of(items: list[dict[str, Any]]) -> dict[int, int]:
    """partitionId → connectionCount of the items of a Scan page (0 for a row without a counter)."""
    return {
        int(item["partitionId"]["N"]): int(item.get("connectionCount", {"N": "0"})["N"]) for item in items
    }


class PartitionsTable:
    """The partitions table for the synchronous functions (boto3 client passed in)."""

    def __init__(
        self,
        client: DynamoDBClient,
        table: str,
        *,
        max_workers: int = 8,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.requests = PartitionRequests(table)
        self.max_workers = max_workers
        self.clock = clock

    @property
    def table(self) -> str:
        return self.requests.table

    def _scan(self, kwargs: dict[str, Any], what: str) -> tuple[list[dict[str, Any]], int]:
        items: list[dict[str, Any]] = []
        pages = 0
        try:
            while True:
                page = self.client.scan(**kwargs)
                pages += 1
                items.extend(page.get("Items", []))
                last = page.get("LastEvaluatedKey")
                if not last:
                    return items, pages
                kwargs["ExclusiveStartKey"] = last
        except AWS_ERRORS as exc:
            raise translate(exc, what) from exc

    def load_view(self) -> ViewLoad:
        """Every partition's counter: one paginated, eventually consistent Scan (pages = reads)."""
        items, pages = self._scan(self.requests.scan_counts(), "scan partitions")
        return ViewLoad(counts_of(items), pages)

    def stored_counters(self) -> dict[int, StoredCounter]:
        """Every partition row's counter and when the stream last changed it."""
        items, _ = self._scan(self.requests.scan_rows(), "scan partitions")
        rows: dict[int, StoredCounter] = {}
        for item in items:
            count, at = item.get("connectionCount"), item.get("countedAt")
            rows[int(item["partitionId"]["N"])] = StoredCounter(
                int(count["N"]) if count else None, int(at["N"]) if at else None
            )
        return rows

    def stored_counts(self) -> dict[int, int | None]:
        """Every partition row's counter (None for a row without one); loadtest/seed.py waits on their sum."""
        return {pid: c.count for pid, c in self.stored_counters().items()}

    def get_count(self, partition_id: int) -> int | None:
        try:
            out = self.client.get_item(**self.requests.get(partition_id))
        except AWS_ERRORS as exc:
            raise translate(exc, "get partition") from exc
        count = out.get("Item", {}).get("connectionCount")
        return int(count["N"]) if count else None

    def add(self, partition_id: int, delta: int) -> None:
        """`ADD connectionCount :d` on one partition row (creates the row if needed), stamping
        `countedAt`: the reconciler leaves a partition the stream changed recently alone."""
        try:
            self.client.update_item(**self.requests.add(partition_id, delta, now_ms=int(self.clock() * 1000)))
        except AWS_ERRORS as exc:
            raise translate(exc, f"add to partition {partition_id}") from exc

    def apply_deltas(self, deltas: Mapping[int, int]) -> AppliedDeltas:
        """One ADD per touched partition, a few in flight; failures are collected, never raised."""
        todo = [(pid, d) for pid, d in deltas.items() if d]
        result = AppliedDeltas()

        def one(item: tuple[int, int]) -> tuple[int, int, FanoutError | None]:
            pid, d = item
            try:
                self.add(pid, d)
            except FanoutError as exc:
                return pid, d, exc
            return pid, d, None

        if len(todo) <= 1 or self.max_workers <= 1:
            outcomes = [one(item) for item in todo]
        else:
            with ThreadPoolExecutor(max_workers=min(self.max_workers, len(todo))) as pool:
                outcomes = list(pool.map(one, todo))
        for pid, d, err in outcomes:
            if err is None:
                result.applied[pid] = d
            else:
                result.failed[pid] = err
        return result

    def correct(self, partition_id: int, *, expected: int | None, value: int, now_ms: int) -> bool:
        """Set the counter to `value` if it still holds `expected` (None: absent); False if it moved.

        The condition is what keeps a stream ADD that lands between the read and this write from
        being overwritten.
        """
        request = self.requests.correct(partition_id, expected=expected, value=value, now_ms=now_ms)
        try:
            self.client.update_item(**request)
        except AWS_ERRORS as exc:
            if is_condition_failure(exc):
                return False
            raise translate(exc, f"correct partition {partition_id}") from exc
        return True


class AsyncPartitionsTable:
    """The partitions table for the pipeline's stages (aioboto3 client passed in)."""

    def __init__(self, client: AsyncDynamoDBClient, table: str) -> None:
        self.client = client
        self.requests = PartitionRequests(table)

    async def non_empty(self) -> dict[int, int]:
        """partitionId → connectionCount for every partition with connections, by partition id."""
        counts: dict[int, int] = {}
        kwargs = self.requests.scan_counts(non_empty=True)
        try:
            while True:
                out = await self.client.scan(**kwargs)
                counts.update(counts_of(out.get("Items", [])))
                if "LastEvaluatedKey" not in out:
                    return dict(sorted(counts.items()))
                kwargs["ExclusiveStartKey"] = out["LastEvaluatedKey"]
        except AWS_ERRORS as exc:
            raise translate(exc, "scan partitions") from exc
