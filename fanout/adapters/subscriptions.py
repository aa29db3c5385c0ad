"""The subscriptions table: the one adapter of the table (and of the `channels` set on the connection
row, which a subscribe changes in the same transaction).

A subscription is the row (channel, member = fanout.channels.member_key(connectionId)), carrying the
connection, its user and the connection's expiresAt (TTL). The connection row's string set `channels`
lists the same channels, so that $disconnect knows which rows to delete and the subscription limit is
a condition on one item. A run-time subscribe or unsubscribe changes both in one TransactWriteItems;
the rows written at $connect are written before the connection row, which is what makes them
reachable.

Two flavours share the request builders: `SubscriptionsTable` (boto3) for $connect, $default and
$disconnect, and `AsyncSubscriptionsTable` (aioboto3) for the pipeline's stages.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from botocore.exceptions import ClientError

from fanout.adapters.errors import AWS_ERRORS, TRANSACTION_CANCELED, error_code, is_conflict, translate
from fanout.channels import connection_of, member_key, member_range
from fanout.errors import RetryableError, Throttled
from fanout.history import delivers_live
from fanout.protocol import Outcome
from fanout.retry import backoff_delay

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient
    from types_aiobotocore_dynamodb.client import DynamoDBClient as AsyncDynamoDBClient

T = TypeVar("T")

# DynamoDB's BatchWriteItem limit.
BATCH_WRITE_LIMIT = 25
# Calls of one batch while DynamoDB leaves items unprocessed (throttling), with backoff in between.
BATCH_ATTEMPTS = 8
BATCH_BASE_SECONDS = 0.05
BATCH_CAP_SECONDS = 1.0
# A transaction cancelled by another on the same connection row (two subscribes at once, a subscribe
# racing $disconnect): botocore does not retry it; DynamoDB expects the caller to, with backoff. Each
# round lets one of the contenders through, so the attempts outnumber the subscribes one connection
# can have in flight at once, and the sleeps (jittered, ~0.5 s at most on average) stay within the
# $default function's 10 s.
CONFLICT_ATTEMPTS = 16
CONFLICT_BASE_SECONDS = 0.02
CONFLICT_CAP_SECONDS = 1.0
# BatchWriteItem calls in flight at once in the async remove.
REMOVE_CONCURRENCY = 8

Batch = dict[str, Any]  # BatchWriteItem's RequestItems: table → write requests


def _chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


@dataclass(frozen=True)
class SubscriptionRequests:
    """Builders of the low-level requests on the subscriptions table (plain data, no I/O)."""

    table: str
    connections_table: str

    def key(self, channel: str, connection_id: str) -> dict[str, Any]:
        return {"channel": {"S": channel}, "member": {"S": member_key(connection_id)}}

    def row(
        self, *, channel: str, connection_id: str, user_id: str, expires_at: int, live_from: int | None = None
    ) -> dict[str, Any]:
        # liveFrom: the live messages of offsets up to it are not delivered to this row (a recovering
        # connection's: recovery delivers them, fanout.history.delivers_live)
        live = {"liveFrom": {"N": str(live_from)}} if live_from is not None else {}
        return {
            **self.key(channel, connection_id),
            "connectionId": {"S": connection_id},
            "userId": {"S": user_id},
            "expiresAt": {"N": str(expires_at)},
            **live,
        }

    def put_batches(
        self,
        *,
        connection_id: str,
        user_id: str,
        channels: Iterable[str],
        expires_at: int,
        live_from: Mapping[str, int] | None = None,
    ) -> list[Batch]:
        """BatchWriteItem RequestItems putting one row per channel, 25 a call."""
        starts = live_from or {}
        puts = [
            {
                "PutRequest": {
                    "Item": self.row(
                        channel=c,
                        connection_id=connection_id,
                        user_id=user_id,
                        expires_at=expires_at,
                        live_from=starts.get(c),
                    )
                }
            }
            for c in dict.fromkeys(channels)
        ]
        return [{self.table: list(chunk)} for chunk in _chunks(puts, BATCH_WRITE_LIMIT)]

    def delete_batches(self, rows: Mapping[str, Iterable[str]]) -> list[Batch]:
        """BatchWriteItem RequestItems deleting the rows of each connection's channels, 25 a call (a
        key once: BatchWriteItem refuses a call naming one item twice)."""
        keys = dict.fromkeys((c, cid) for cid, channels in rows.items() for c in channels)
        deletes = [{"DeleteRequest": {"Key": self.key(c, cid)}} for c, cid in keys]
        return [{self.table: list(chunk)} for chunk in _chunks(deletes, BATCH_WRITE_LIMIT)]

    def subscribe(
        self, *, connection_id: str, user_id: str, channel: str, expires_at: int, limit: int
    ) -> dict[str, Any]:
        """One transaction: the channel joins the connection row's set (if the row exists and holds
        fewer than `limit` channels, or holds this one already) and its subscription row is written
        (its liveFrom, if any, kept)."""
        return {
            "TransactItems": [
                {
                    "Update": {
                        "TableName": self.connections_table,
                        "Key": {"connectionId": {"S": connection_id}},
                        "UpdateExpression": "ADD channels :set",
                        "ConditionExpression": "attribute_exists(connectionId) AND "
                        "(attribute_not_exists(channels) OR size(channels) < :limit "
                        "OR contains(channels, :name))",
                        "ExpressionAttributeValues": {
                            ":set": {"SS": [channel]},
                            ":limit": {"N": str(limit)},
                            ":name": {"S": channel},
                        },
                        # tells a full set from a missing row when the condition fails
                        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                    }
                },
                {
                    # An update, not a put: subscribing again to a channel the connection is still
                    # recovering keeps the row's liveFrom (fanout.recovery), so nothing arrives twice.
                    "Update": {
                        "TableName": self.table,
                        "Key": self.key(channel, connection_id),
                        "UpdateExpression": "SET connectionId = :cid, userId = :uid, expiresAt = :exp",
                        "ExpressionAttributeValues": {
                            ":cid": {"S": connection_id},
                            ":uid": {"S": user_id},
                            ":exp": {"N": str(expires_at)},
                        },
                    }
                },
            ]
        }

    def unsubscribe(self, *, connection_id: str, channel: str) -> dict[str, Any]:
        """One transaction: the channel leaves the connection row's set and its row is deleted."""
        return {
            "TransactItems": [
                {
                    "Update": {
                        "TableName": self.connections_table,
                        "Key": {"connectionId": {"S": connection_id}},
                        "UpdateExpression": "DELETE channels :set",
                        "ConditionExpression": "attribute_exists(connectionId)",
                        "ExpressionAttributeValues": {":set": {"SS": [channel]}},
                    }
                },
                {"Delete": {"TableName": self.table, "Key": self.key(channel, connection_id)}},
            ]
        }

    def delete(self, channel: str, connection_id: str) -> dict[str, Any]:
        return {"TableName": self.table, "Key": self.key(channel, connection_id)}

    def members(self, channel: str, lo: int, hi: int) -> dict[str, Any]:
        """The first page of a Query of one channel's members in buckets lo..hi."""
        low, high = member_range(lo, hi)
        return {
            "TableName": self.table,
            "KeyConditionExpression": "channel = :c AND #m BETWEEN :lo AND :hi",
            "ExpressionAttributeNames": {"#m": "member"},
            "ExpressionAttributeValues": {":c": {"S": channel}, ":lo": {"S": low}, ":hi": {"S": high}},
            "ProjectionExpression": "#m, liveFrom",
        }


def refused_outcome(exc: BaseException) -> Outcome | None:
    """What a cancelled subscribe transaction means: the connection row's condition failed on a full
    set (TOO_MANY) or on a missing row (NOT_CONNECTED); None for any other cancellation."""
    if not isinstance(exc, ClientError) or error_code(exc) != TRANSACTION_CANCELED:
        return None
    reasons = exc.response.get("CancellationReasons") or []
    if not reasons or reasons[0].get("Code") != "ConditionalCheckFailed":
        return None
    # ALL_OLD: the row as it was when its condition failed; no row means no connection
    return Outcome.TOO_MANY if reasons[0].get("Item") else Outcome.NOT_CONNECTED


class SubscriptionsTable:
    """The subscriptions table for $connect, $default and $disconnect (boto3 client passed in)."""

    def __init__(
        self,
        client: DynamoDBClient,
        table: str,
        *,
        connections_table: str,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.requests = SubscriptionRequests(table, connections_table)
        self._sleep = sleep

    def _retry_conflicts(self, call: Callable[[], T], what: str) -> T:
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            try:
                return call()
            except AWS_ERRORS as exc:
                if not is_conflict(exc):
                    raise
                if attempt == CONFLICT_ATTEMPTS:
                    raise RetryableError(f"{what}: DynamoDB write conflicted {attempt} times: {exc}") from exc
            self._sleep(backoff_delay(attempt, base=CONFLICT_BASE_SECONDS, cap=CONFLICT_CAP_SECONDS))
        raise AssertionError("unreachable")

    def _batch_write(self, items: Batch, what: str) -> Any:
        try:
            return self._retry_conflicts(lambda: self.client.batch_write_item(RequestItems=items), what)
        except AWS_ERRORS as exc:
            raise translate(exc, what) from exc

    def _write(self, batches: list[Batch], what: str) -> None:
        for batch in batches:
            pending = batch
            for attempt in range(1, BATCH_ATTEMPTS + 1):
                out = self._batch_write(pending, what)
                pending = dict(out.get("UnprocessedItems") or {})
                if not pending:
                    break
                if attempt == BATCH_ATTEMPTS:
                    raise Throttled(f"{what}: BatchWriteItem left items unprocessed {attempt} times")
                self._sleep(backoff_delay(attempt, base=BATCH_BASE_SECONDS, cap=BATCH_CAP_SECONDS))

    def put_rows(
        self,
        connection_id: str,
        user_id: str,
        channels: Iterable[str],
        expires_at: int,
        live_from: Mapping[str, int] | None = None,
    ) -> None:
        """Write a connection's subscription rows (at $connect, before its connection row); the
        channels in `live_from` start taking live messages after that offset."""
        batches = self.requests.put_batches(
            connection_id=connection_id,
            user_id=user_id,
            channels=channels,
            expires_at=expires_at,
            live_from=live_from,
        )
        self._write(batches, "put subscriptions")

    def subscribe(
        self, connection_id: str, user_id: str, channel: str, *, expires_at: int, limit: int
    ) -> Outcome:
        """SUBSCRIBED (also when it already was), TOO_MANY at the limit, or NOT_CONNECTED."""
        request = self.requests.subscribe(
            connection_id=connection_id, user_id=user_id, channel=channel, expires_at=expires_at, limit=limit
        )

        def call() -> Outcome:
            try:
                self.client.transact_write_items(**request)
            except AWS_ERRORS as exc:
                refused = refused_outcome(exc)
                if refused is None:
                    raise
                return refused
            return Outcome.SUBSCRIBED

        try:
            return self._retry_conflicts(call, f"subscribe to {channel}")
        except AWS_ERRORS as exc:
            raise translate(exc, f"subscribe to {channel}") from exc

    def unsubscribe(self, connection_id: str, channel: str) -> Outcome:
        """UNSUBSCRIBED, whether or not it was subscribed; without a connection row the subscription
        row is deleted alone (what is left of a connection is never kept)."""
        request = self.requests.unsubscribe(connection_id=connection_id, channel=channel)

        def call() -> bool:
            try:
                self.client.transact_write_items(**request)
            except AWS_ERRORS as exc:
                if refused_outcome(exc) is None:
                    raise
                return False
            return True

        what = f"unsubscribe from {channel}"
        try:
            if not self._retry_conflicts(call, what):
                self._retry_conflicts(
                    lambda: self.client.delete_item(**self.requests.delete(channel, connection_id)), what
                )
        except AWS_ERRORS as exc:
            raise translate(exc, what) from exc
        return Outcome.UNSUBSCRIBED

    def remove(self, connection_id: str, channels: Iterable[str]) -> None:
        """Delete a connection's subscription rows (at $disconnect)."""
        self._write(self.requests.delete_batches({connection_id: channels}), "remove subscriptions")


class AsyncSubscriptionsTable:
    """The subscriptions table for the pipeline's stages (aioboto3 client passed in)."""

    def __init__(
        self,
        client: AsyncDynamoDBClient,
        table: str,
        *,
        connections_table: str = "",
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.client = client
        self.requests = SubscriptionRequests(table, connections_table)
        self._sleep = sleep

    async def member_ids(self, channel: str, lo: int, hi: int, offset: int | None = None) -> list[str]:
        """The connection ids subscribed to `channel` in buckets lo..hi (every page of the Query) that
        take the live message of `offset` (fanout.history.delivers_live)."""
        kwargs = self.requests.members(channel, lo, hi)
        ids: list[str] = []
        try:
            while True:
                out = await self.client.query(**kwargs)
                ids.extend(
                    connection_of(item["member"]["S"])
                    for item in out.get("Items", [])
                    if delivers_live(int(item["liveFrom"]["N"]) if "liveFrom" in item else None, offset)
                )
                if "LastEvaluatedKey" not in out:
                    return ids
                kwargs["ExclusiveStartKey"] = out["LastEvaluatedKey"]
        except AWS_ERRORS as exc:
            raise translate(exc, f"query members of {channel}") from exc

    async def remove(self, rows: Mapping[str, Iterable[str]]) -> None:
        """Delete the subscription rows of each connection's channels (connection id → channels)."""
        semaphore = asyncio.Semaphore(REMOVE_CONCURRENCY)

        async def one(batch: Batch) -> None:
            async with semaphore:
                await self._write(batch)

        await asyncio.gather(*(one(b) for b in self.requests.delete_batches(rows)))

    async def _write(self, batch: Batch) -> None:
        what = "remove subscriptions"
        pending = batch
        for attempt in range(1, BATCH_ATTEMPTS + 1):
            out = await self._batch_write(pending, what)
            pending = dict(out.get("UnprocessedItems") or {})
            if not pending:
                return
            if attempt == BATCH_ATTEMPTS:
                raise Throttled(f"{what}: BatchWriteItem left items unprocessed {attempt} times")
            await self._sleep(backoff_delay(attempt, base=BATCH_BASE_SECONDS, cap=BATCH_CAP_SECONDS))

    async def _batch_write(self, items: Batch, what: str) -> Any:
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            try:
                return await self.client.batch_write_item(RequestItems=items)
            except AWS_ERRORS as exc:
                if not is_conflict(exc):
                    raise translate(exc, what) from exc
                if attempt == CONFLICT_ATTEMPTS:
                    raise RetryableError(f"{what}: DynamoDB write conflicted {attempt} times: {exc}") from exc
            await self._sleep(backoff_delay(attempt, base=CONFLICT_BASE_SECONDS, cap=CONFLICT_CAP_SECONDS))
        raise AssertionError("unreachable")
