"""DynamoDB adapters for partitions and connection rows (low-level boto3 client passed in).

Transport errors become :mod:`fanout.errors` here; callers never see botocore codes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from fanout.errors import FanoutError, PermanentError, RetryableError, Throttled
from partitions.choice import ViewLoad

THROTTLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "LimitExceededException",
    }
)


def translate(exc: Exception, what: str) -> FanoutError:
    """A botocore error as the engine's own: Throttled, RetryableError (5xx, network) or PermanentError."""
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in THROTTLE_CODES:
            return Throttled(f"{what}: {code}", status=status)
        if (status is not None and status >= 500) or code in {"InternalServerError", "ServiceUnavailable"}:
            return RetryableError(f"{what}: {code}", status=status)
        return PermanentError(f"{what}: {code}", status=status)
    return RetryableError(f"{what}: {type(exc).__name__}")


def _is_condition_failure(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


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


class PartitionsTable:
    """The partitions table: `partitionId` (N) → `connectionCount` (N), `countedAt` (N, ms: the last
    stream ADD), `reconciledAt` (N, ms)."""

    def __init__(
        self, client: Any, table: str, *, max_workers: int = 8, clock: Callable[[], float] = time.time
    ) -> None:
        self.client = client
        self.table = table
        self.max_workers = max_workers
        self.clock = clock

    def load_view(self) -> ViewLoad:
        """Every partition's counter: one paginated, eventually consistent Scan (pages = reads)."""
        counts: dict[int, int] = {}
        pages = 0
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "ProjectionExpression": "partitionId, connectionCount",
        }
        try:
            while True:
                page = self.client.scan(**kwargs)
                pages += 1
                for item in page.get("Items", []):
                    pid = int(item["partitionId"]["N"])
                    counts[pid] = int(item.get("connectionCount", {"N": "0"})["N"])
                last = page.get("LastEvaluatedKey")
                if not last:
                    break
                kwargs["ExclusiveStartKey"] = last
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, "scan partitions") from exc
        return ViewLoad(counts, pages)

    def stored_counters(self) -> dict[int, StoredCounter]:
        """Every partition row's counter and when the stream last changed it."""
        rows: dict[int, StoredCounter] = {}
        kwargs: dict[str, Any] = {"TableName": self.table, "ConsistentRead": True}
        try:
            while True:
                page = self.client.scan(**kwargs)
                for item in page.get("Items", []):
                    count, at = item.get("connectionCount"), item.get("countedAt")
                    rows[int(item["partitionId"]["N"])] = StoredCounter(
                        int(count["N"]) if count else None, int(at["N"]) if at else None
                    )
                last = page.get("LastEvaluatedKey")
                if not last:
                    return rows
                kwargs["ExclusiveStartKey"] = last
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, "scan partitions") from exc

    def stored_counts(self) -> dict[int, int | None]:
        """Every partition row's counter (None for a row without one); loadtest/seed.py waits on their sum."""
        return {pid: c.count for pid, c in self.stored_counters().items()}

    def get_count(self, partition_id: int) -> int | None:
        try:
            out = self.client.get_item(
                TableName=self.table, Key={"partitionId": _n(partition_id)}, ConsistentRead=True
            )
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, "get partition") from exc
        count = out.get("Item", {}).get("connectionCount")
        return int(count["N"]) if count else None

    def add(self, partition_id: int, delta: int) -> None:
        """`ADD connectionCount :d` on one partition row (creates the row if needed), stamping
        `countedAt`: the reconciler leaves a partition the stream changed recently alone."""
        try:
            self.client.update_item(
                TableName=self.table,
                Key={"partitionId": _n(partition_id)},
                UpdateExpression="ADD connectionCount :d SET countedAt = :t",
                ExpressionAttributeValues={":d": _n(delta), ":t": _n(int(self.clock() * 1000))},
            )
        except (ClientError, BotoCoreError) as exc:
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
        if expected is None:
            condition = "attribute_not_exists(connectionCount)"
            values: dict[str, Any] = {":v": _n(value), ":t": _n(now_ms)}
        else:
            condition = "connectionCount = :old"
            values = {":v": _n(value), ":t": _n(now_ms), ":old": _n(expected)}
        try:
            self.client.update_item(
                TableName=self.table,
                Key={"partitionId": _n(partition_id)},
                UpdateExpression="SET connectionCount = :v, reconciledAt = :t",
                ConditionExpression=condition,
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if _is_condition_failure(exc):
                return False
            raise translate(exc, f"correct partition {partition_id}") from exc
        except BotoCoreError as exc:
            raise translate(exc, f"correct partition {partition_id}") from exc
        return True


class ConnectionsTable:
    """The connections table and its keys-only GSI by partition."""

    def __init__(
        self, client: Any, table: str, *, index: str, ttl_seconds: int, max_workers: int = 8
    ) -> None:
        self.client = client
        self.table = table
        self.index = index
        self.ttl_seconds = ttl_seconds
        self.max_workers = max_workers

    def put(
        self, *, connection_id: str, partition_id: int, user_id: str, source_ip: str, now: float
    ) -> dict[str, Any]:
        """Write the connection row; `expiresAt` = now + the connection TTL (epoch seconds)."""
        item = {
            "connectionId": {"S": connection_id},
            "partitionId": _n(partition_id),
            "connectedAt": _n(int(now * 1000)),
            "expiresAt": _n(int(now) + self.ttl_seconds),
            "userId": {"S": user_id},
            "sourceIp": {"S": source_ip},
        }
        try:
            self.client.put_item(TableName=self.table, Item=item)
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, "put connection") from exc
        return item

    def delete(self, connection_id: str) -> int | None:
        """Delete the row; the partition it was in, or None if there was no row."""
        try:
            out = self.client.delete_item(
                TableName=self.table, Key={"connectionId": {"S": connection_id}}, ReturnValues="ALL_OLD"
            )
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, "delete connection") from exc
        old = out.get("Attributes")
        return int(old["partitionId"]["N"]) if old and "partitionId" in old else None

    def get(self, connection_id: str) -> dict[str, Any] | None:
        try:
            out = self.client.get_item(
                TableName=self.table, Key={"connectionId": {"S": connection_id}}, ConsistentRead=True
            )
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, "get connection") from exc
        item: dict[str, Any] | None = out.get("Item")
        return item

    def count_partition(self, partition_id: int) -> tuple[int, int]:
        """(rows in the partition, pages read): Query the GSI with Select=COUNT, paginated."""
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": self.index,
            "KeyConditionExpression": "partitionId = :p",
            "ExpressionAttributeValues": {":p": _n(partition_id)},
            "Select": "COUNT",
        }
        count = pages = 0
        try:
            while True:
                page = self.client.query(**kwargs)
                pages += 1
                count += int(page.get("Count", 0))
                last = page.get("LastEvaluatedKey")
                if not last:
                    return count, pages
                kwargs["ExclusiveStartKey"] = last
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"count partition {partition_id}") from exc

    def count_partitions(self, partition_ids: Iterable[int]) -> tuple[dict[int, int], int]:
        """({partition: rows}, pages read) for every given partition, a few queries in flight."""
        ids = sorted(set(partition_ids))
        if self.max_workers <= 1 or len(ids) <= 1:
            results = [self.count_partition(pid) for pid in ids]
        else:
            with ThreadPoolExecutor(max_workers=min(self.max_workers, len(ids))) as pool:
                results = list(pool.map(self.count_partition, ids))
        counts = {pid: c for pid, (c, _) in zip(ids, results, strict=True)}
        return counts, sum(p for _, p in results)
