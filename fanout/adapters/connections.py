"""The connections table and its keys-only GSI by partition: the one adapter of the table.

Two flavours share the request builders below and the error translation of fanout.adapters.errors:
`ConnectionsTable` (boto3, for the connect, disconnect and reconciler functions, which are
synchronous) and `AsyncConnectionsTable` (aioboto3, for the query and post stages, which run many
calls at once on one event loop).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fanout.adapters.errors import AWS_ERRORS, CONDITION_FAILED, error_code, is_conflict, translate
from fanout.retry import backoff_delay

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient
    from types_aiobotocore_dynamodb.client import DynamoDBClient as AsyncDynamoDBClient

# Deletes of pruned connections in flight at once, per post batch.
DELETE_CONCURRENCY = 16
# A delete refused because a transaction (a subscribe) holds the row is tried again this many times.
CONFLICT_ATTEMPTS = 10
CONFLICT_BASE_SECONDS = 0.02
CONFLICT_CAP_SECONDS = 1.0


def _n(value: int | float) -> dict[str, str]:
    return {"N": str(value)}


@dataclass(frozen=True)
class ConnectionRequests:
    """Builders of the low-level requests on the connections table (plain data, no I/O)."""

    table: str
    index: str

    def put(
        self,
        *,
        connection_id: str,
        partition_id: int,
        user_id: str,
        source_ip: str,
        now: float,
        ttl: int,
        channels: Iterable[str] | None = None,
        expires_at: int | None = None,
    ) -> dict[str, Any]:
        """The row; `expiresAt` = `expires_at`, by default now + the connection TTL (epoch seconds),
        `connectedAt` in ms, and `channels` the string set of the connection's subscriptions (absent
        when there are none: DynamoDB has no empty set)."""
        item: dict[str, Any] = {
            "connectionId": {"S": connection_id},
            "partitionId": _n(partition_id),
            "connectedAt": _n(int(now * 1000)),
            "expiresAt": _n(int(now) + ttl if expires_at is None else expires_at),
            "userId": {"S": user_id},
            "sourceIp": {"S": source_ip},
        }
        names = list(dict.fromkeys(channels or ()))
        if names:
            item["channels"] = {"SS": names}
        return {"TableName": self.table, "Item": item}

    def delete(self, connection_id: str) -> dict[str, Any]:
        return {
            "TableName": self.table,
            "Key": {"connectionId": {"S": connection_id}},
            "ReturnValues": "ALL_OLD",
        }

    def get(self, connection_id: str) -> dict[str, Any]:
        return {
            "TableName": self.table,
            "Key": {"connectionId": {"S": connection_id}},
            "ConsistentRead": True,
        }

    def prune(self, connection_id: str, *, cutoff_ms: int) -> dict[str, Any]:
        """Delete a row unless it was written after `cutoff_ms` (its $connect may still be running);
        the old row tells which subscriptions go with it."""
        return {
            "TableName": self.table,
            "Key": {"connectionId": {"S": connection_id}},
            "ConditionExpression": "attribute_not_exists(connectionId) OR connectedAt < :cutoff",
            "ExpressionAttributeValues": {":cutoff": _n(cutoff_ms)},
            "ReturnValues": "ALL_OLD",
        }

    def of_user(self, user_id: str, users_index: str) -> dict[str, Any]:
        """The first page of a Query of the users GSI: the ids of one user's connections."""
        return {
            "TableName": self.table,
            "IndexName": users_index,
            "KeyConditionExpression": "userId = :u",
            "ExpressionAttributeValues": {":u": {"S": user_id}},
            "ProjectionExpression": "connectionId",
        }

    def in_partition(self, partition_id: int, *, count: bool = False) -> dict[str, Any]:
        """The first page of a Query of the GSI for one partition: the ids, or only their number."""
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": self.index,
            "KeyConditionExpression": "partitionId = :p",
            "ExpressionAttributeValues": {":p": _n(partition_id)},
        }
        if count:
            kwargs["Select"] = "COUNT"
        else:
            kwargs["ProjectionExpression"] = "connectionId"
        return kwargs


def channels_of(row: dict[str, Any] | None) -> list[str]:
    """The channels a connection row lists (its `channels` string set), sorted; [] without any."""
    if not row or "channels" not in row:
        return []
    return sorted(row["channels"].get("SS", []))


def partition_of(deleted: dict[str, Any]) -> int | None:
    """The partition of a deleted row (DeleteItem's ALL_OLD answer), or None if there was no row."""
    old = deleted.get("Attributes")
    return int(old["partitionId"]["N"]) if old and "partitionId" in old else None


class ConnectionsTable:
    """The connections table for the synchronous functions (boto3 client passed in)."""

    def __init__(
        self, client: DynamoDBClient, table: str, *, index: str, ttl_seconds: int, max_workers: int = 8
    ) -> None:
        self.client = client
        self.requests = ConnectionRequests(table, index)
        self.ttl_seconds = ttl_seconds
        self.max_workers = max_workers

    @property
    def table(self) -> str:
        return self.requests.table

    @property
    def index(self) -> str:
        return self.requests.index

    def put(
        self,
        *,
        connection_id: str,
        partition_id: int,
        user_id: str,
        source_ip: str,
        now: float,
        channels: Iterable[str] | None = None,
        expires_at: int | None = None,
    ) -> dict[str, Any]:
        """Write the connection row; returns it (`expiresAt` = `expires_at`, by default now + the
        connection TTL; `channels` the string set of its subscriptions, if any)."""
        request = self.requests.put(
            connection_id=connection_id,
            partition_id=partition_id,
            user_id=user_id,
            source_ip=source_ip,
            now=now,
            ttl=self.ttl_seconds,
            channels=channels,
            expires_at=expires_at,
        )
        try:
            self.client.put_item(**request)
        except AWS_ERRORS as exc:
            raise translate(exc, "put connection") from exc
        item: dict[str, Any] = request["Item"]
        return item

    def delete(self, connection_id: str) -> int | None:
        """Delete the row; the partition it was in, or None if there was no row."""
        old = self.delete_row(connection_id)
        return partition_of({"Attributes": old}) if old is not None else None

    def delete_row(self, connection_id: str) -> dict[str, Any] | None:
        """Delete the row; the row as it was (DynamoDB's ALL_OLD), or None if there was none.

        A subscribe's transaction may hold the row for a moment (TransactionConflict): the delete is
        tried again with backoff, botocore does not.
        """
        request = self.requests.delete(connection_id)
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            try:
                out = self.client.delete_item(**request)
            except AWS_ERRORS as exc:
                if not is_conflict(exc) or attempt == CONFLICT_ATTEMPTS:
                    raise translate(exc, "delete connection") from exc
                time.sleep(backoff_delay(attempt, base=CONFLICT_BASE_SECONDS, cap=CONFLICT_CAP_SECONDS))
                continue
            old: dict[str, Any] | None = out.get("Attributes")
            return dict(old) if old else None
        raise AssertionError("unreachable")

    def get(self, connection_id: str) -> dict[str, Any] | None:
        try:
            out = self.client.get_item(**self.requests.get(connection_id))
        except AWS_ERRORS as exc:
            raise translate(exc, "get connection") from exc
        item: dict[str, Any] | None = out.get("Item")
        return item

    def count_partition(self, partition_id: int) -> tuple[int, int]:
        """(rows in the partition, pages read): Query the GSI with Select=COUNT, paginated."""
        kwargs = self.requests.in_partition(partition_id, count=True)
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
        except AWS_ERRORS as exc:
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


class AsyncConnectionsTable:
    """The connections table for the pipeline's stages (aioboto3 client passed in)."""

    def __init__(
        self, client: AsyncDynamoDBClient, table: str, *, index: str, users_index: str = "byUser"
    ) -> None:
        self.client = client
        self.requests = ConnectionRequests(table, index)
        self.users_index = users_index

    async def user_ids(self, user_id: str) -> list[str]:
        """Every connection of one user (all devices): pages through the keys-only users GSI."""
        ids: list[str] = []
        kwargs = self.requests.of_user(user_id, self.users_index)
        try:
            while True:
                out = await self.client.query(**kwargs)
                ids.extend(i["connectionId"]["S"] for i in out.get("Items", []))
                if "LastEvaluatedKey" not in out:
                    return ids
                kwargs["ExclusiveStartKey"] = out["LastEvaluatedKey"]
        except AWS_ERRORS as exc:
            raise translate(exc, f"query connections of user {user_id}") from exc

    async def partition_ids(self, partition_id: int) -> list[str]:
        """Every connection id of one partition: pages through the keys-only GSI (1 MB a page)."""
        ids: list[str] = []
        kwargs = self.requests.in_partition(partition_id)
        try:
            while True:
                out = await self.client.query(**kwargs)
                ids.extend(i["connectionId"]["S"] for i in out.get("Items", []))
                if "LastEvaluatedKey" not in out:
                    return ids
                kwargs["ExclusiveStartKey"] = out["LastEvaluatedKey"]
        except AWS_ERRORS as exc:
            raise translate(exc, f"query partition {partition_id}") from exc

    async def prune(
        self, connection_ids: Sequence[str], *, now_ms: int, grace_ms: int
    ) -> tuple[list[str], list[str], dict[str, list[str]]]:
        """Delete the rows of connections that answered 410, unless a row is younger than `grace_ms`.

        API Gateway answers 410 to a connection whose $connect has not finished, and the row is written
        during $connect: such a row is kept (and its id returned as still connecting) rather than
        deleting a live client. The age test is the delete's own condition, so it is atomic.
        Returns (pruned or already gone, still connecting, the channels of each pruned subscriber).
        """
        cutoff = now_ms - grace_ms
        gone: list[str] = []
        connecting: list[str] = []
        subscribed: dict[str, list[str]] = {}
        semaphore = asyncio.Semaphore(DELETE_CONCURRENCY)

        async def one(connection_id: str) -> None:
            async with semaphore:
                try:
                    out = await self.client.delete_item(
                        **self.requests.prune(connection_id, cutoff_ms=cutoff)
                    )
                except AWS_ERRORS as exc:
                    if error_code(exc) != CONDITION_FAILED:
                        raise translate(exc, f"prune connection {connection_id}") from exc
                    connecting.append(connection_id)
                else:
                    gone.append(connection_id)
                    channels = channels_of(out.get("Attributes"))  # type: ignore[arg-type]
                    if channels:
                        subscribed[connection_id] = channels

        await asyncio.gather(*(one(c) for c in connection_ids))
        return gone, connecting, subscribed
