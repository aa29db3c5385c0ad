"""Reads of the subscriptions table for channel occupancy: recounts and expired rows.

The subscriptions table's writes (subscribe, unsubscribe, connect, disconnect) belong to its adapter
(fanout.adapters.subscriptions); the channel reconciler needs only these reads and the deletion of
expired rows, kept apart here so the two can be folded into one adapter without touching callers.

A subscription row: ``channel`` (partition key), ``member`` = ``"<bucket>#<connectionId>"`` (sort key),
``connectionId``, ``userId``, ``expiresAt`` (epoch s, the TTL attribute).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fanout.adapters.errors import AWS_ERRORS, is_condition_failure, translate

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient


# `member` is one of DynamoDB's reserved words: every name goes through a placeholder.
_NAMES = {"#c": "channel", "#m": "member", "#u": "userId", "#e": "expiresAt"}
_PROJECTION = "#c, #m, #u, #e"


@dataclass(frozen=True)
class SubscriptionRow:
    channel: str
    member: str
    user_id: str
    expires_at: int | None


def _row(item: dict[str, Any]) -> SubscriptionRow:
    expires = item.get("expiresAt")
    user = item.get("userId")
    return SubscriptionRow(
        item["channel"]["S"],
        item["member"]["S"],
        user["S"] if user else "",
        int(expires["N"]) if expires else None,
    )


@dataclass(frozen=True)
class SubscriptionReadRequests:
    """Builders of the reads of the subscriptions table (plain data, no I/O)."""

    table: str

    def scan(self) -> dict[str, Any]:
        """The first page of a Scan of every row's keys, user and expiry."""
        return {
            "TableName": self.table,
            "ProjectionExpression": _PROJECTION,
            "ExpressionAttributeNames": _NAMES,
        }

    def of_channel(self, channel: str) -> dict[str, Any]:
        """The first page of a consistent Query of one channel's rows (its user and expiry only)."""
        return {
            "TableName": self.table,
            "KeyConditionExpression": "#c = :c",
            "ExpressionAttributeValues": {":c": {"S": channel}},
            "ProjectionExpression": _PROJECTION,
            "ExpressionAttributeNames": _NAMES,
            "ConsistentRead": True,
        }

    def delete_expired(self, channel: str, member: str, *, now_s: int) -> dict[str, Any]:
        """Delete a row whose expiry has passed (not one renewed since it was read)."""
        return {
            "TableName": self.table,
            "Key": {"channel": {"S": channel}, "member": {"S": member}},
            "ConditionExpression": "expiresAt < :now",
            "ExpressionAttributeValues": {":now": {"N": str(now_s)}},
        }


class SubscriptionReads:
    """The occupancy reads of the subscriptions table (boto3 client passed in)."""

    def __init__(self, client: DynamoDBClient, table: str, *, max_workers: int = 8) -> None:
        self.client = client
        self.requests = SubscriptionReadRequests(table)
        self.max_workers = max_workers

    def _pages(self, call: Any, kwargs: dict[str, Any], what: str) -> tuple[list[SubscriptionRow], int]:
        rows: list[SubscriptionRow] = []
        pages = 0
        try:
            while True:
                page = call(**kwargs)
                pages += 1
                rows.extend(_row(item) for item in page.get("Items", []))
                if not page.get("LastEvaluatedKey"):
                    return rows, pages
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        except AWS_ERRORS as exc:
            raise translate(exc, what) from exc

    def all_rows(self) -> list[SubscriptionRow]:
        """Every subscription row (a paginated Scan): the channels that have members, and the expired."""
        rows, _ = self._pages(self.client.scan, self.requests.scan(), "scan subscriptions")
        return rows

    def channel_rows(self, channel: str) -> tuple[list[SubscriptionRow], int]:
        """(rows of one channel, pages read): a consistent Query, paginated."""
        return self._pages(self.client.query, self.requests.of_channel(channel), f"query channel {channel}")

    def delete_expired(self, rows: Sequence[tuple[str, str]], *, now_s: int) -> int:
        """Delete these (channel, member) rows if their expiry has passed; how many were deleted.

        Each deletion reaches the channel counter through the stream, as a TTL deletion would.
        """

        def one(key: tuple[str, str]) -> bool:
            try:
                self.client.delete_item(**self.requests.delete_expired(*key, now_s=now_s))
            except AWS_ERRORS as exc:
                if is_condition_failure(exc):
                    return False  # renewed, or already gone
                raise translate(exc, f"delete expired subscription {key[0]}/{key[1]}") from exc
            return True

        keys = list(rows)
        if len(keys) <= 1 or self.max_workers <= 1:
            return sum(one(k) for k in keys)
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(keys))) as pool:
            return sum(pool.map(one, keys))
