"""The channels table (channel occupancy): the one adapter of the table.

Per channel (partition key ``channel``), sort key ``key``:

- the counter row ``key = "#"``: ``connections`` (N), ``users`` (N), ``updatedAt`` (N, ms: the last
  stream batch the channel counter applied), ``reconciledAt`` (N, ms);
- one presence row per user ``key = "u#<userId>"``: ``connections`` (N), that user's subscribed
  connections (fanout.occupancy).

Two flavours share the request builders below and the error translation of fanout.adapters.errors:
`ChannelsTable` (boto3: the operator API, the channel counter, the channel reconciler) and
`AsyncChannelsTable` (aioboto3: the swarm sizes its channel tasks with it).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fanout.adapters.errors import AWS_ERRORS, is_condition_failure, translate
from fanout.errors import FanoutError, RetryableError
from fanout.occupancy import (
    COUNTER_KEY,
    CounterDelta,
    PresenceKey,
    PresenceUpdate,
    StoredOccupancy,
    presence_key,
    user_of_presence,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient
    from types_aiobotocore_dynamodb.client import DynamoDBClient as AsyncDynamoDBClient

# BatchGetItem reads at most 100 keys a request.
BATCH_GET_KEYS = 100
# Unprocessed keys (the table or a partition throttled) are asked again this many times, backing off.
BATCH_GET_ATTEMPTS = 8
BATCH_GET_BASE_SECONDS = 0.05
BATCH_GET_CAP_SECONDS = 2.0


def _n(value: int | float) -> dict[str, str]:
    return {"N": str(value)}


def _int(item: Mapping[str, Any], name: str) -> int | None:
    attr = item.get(name)
    return int(attr["N"]) if attr else None


def backoff_seconds(
    attempt: int, *, base: float = BATCH_GET_BASE_SECONDS, cap: float = BATCH_GET_CAP_SECONDS
) -> float:
    """Full jitter: a random pause in [0, min(cap, base * 2^attempt)]."""
    return random.uniform(0, min(cap, base * 2**attempt))


@dataclass(frozen=True)
class ChannelRequests:
    """Builders of the low-level requests on the channels table (plain data, no I/O)."""

    table: str

    def _key(self, channel: str, key: str) -> dict[str, Any]:
        return {"channel": {"S": channel}, "key": {"S": key}}

    def get_counter(self, channel: str) -> dict[str, Any]:
        return {"TableName": self.table, "Key": self._key(channel, COUNTER_KEY), "ConsistentRead": True}

    def channel_rows(self, channel: str) -> dict[str, Any]:
        """The first page of a consistent Query of every row of one channel (counter and presence)."""
        return {
            "TableName": self.table,
            "KeyConditionExpression": "channel = :c",
            "ExpressionAttributeValues": {":c": {"S": channel}},
            "ConsistentRead": True,
        }

    def scan_counters(self) -> dict[str, Any]:
        """The first page of a Scan of the channels that have a counter row."""
        return {
            "TableName": self.table,
            "ProjectionExpression": "channel",
            "FilterExpression": "#k = :counter",
            "ExpressionAttributeNames": {"#k": "key"},
            "ExpressionAttributeValues": {":counter": {"S": COUNTER_KEY}},
        }

    def add_presence(self, channel: str, user_id: str, delta: int) -> dict[str, Any]:
        """``ADD connections :d`` on a user's presence row (created if needed), answering the new value."""
        return {
            "TableName": self.table,
            "Key": self._key(channel, presence_key(user_id)),
            "UpdateExpression": "ADD connections :d",
            "ExpressionAttributeValues": {":d": _n(delta)},
            "ReturnValues": "UPDATED_NEW",
        }

    def delete_presence(self, channel: str, user_id: str, *, expected: int) -> dict[str, Any]:
        """Delete a presence row if it still holds `expected` (a later ADD may have brought it back)."""
        return {
            "TableName": self.table,
            "Key": self._key(channel, presence_key(user_id)),
            "ConditionExpression": "connections = :v",
            "ExpressionAttributeValues": {":v": _n(expected)},
        }

    def add_counter(self, channel: str, delta: CounterDelta, *, now_ms: int) -> dict[str, Any]:
        """``ADD connections, users`` on the counter row (created if needed), stamping ``updatedAt``."""
        return {
            "TableName": self.table,
            "Key": self._key(channel, COUNTER_KEY),
            "UpdateExpression": "ADD connections :c, #u :u SET updatedAt = :t",
            "ExpressionAttributeNames": {"#u": "users"},
            "ExpressionAttributeValues": {
                ":c": _n(delta.connections),
                ":u": _n(delta.users),
                ":t": _n(now_ms),
            },
        }

    def set_counter(
        self, channel: str, *, expected: tuple[int, int] | None, value: tuple[int, int], now_ms: int
    ) -> dict[str, Any]:
        """Set the counter row to `value` if it still holds `expected` (None: no row)."""
        values: dict[str, Any] = {":c": _n(value[0]), ":u": _n(value[1]), ":t": _n(now_ms)}
        if expected is None:
            condition = "attribute_not_exists(channel)"
        else:
            # a missing attribute reads as 0 (fanout.occupancy.plan_fix), so "0" matches it too
            condition = (
                "(connections = :oc OR (attribute_not_exists(connections) AND :oc = :zero)) AND "
                "(#u = :ou OR (attribute_not_exists(#u) AND :ou = :zero))"
            )
            values |= {":oc": _n(expected[0]), ":ou": _n(expected[1]), ":zero": _n(0)}
        return {
            "TableName": self.table,
            "Key": self._key(channel, COUNTER_KEY),
            "UpdateExpression": "SET connections = :c, #u = :u, reconciledAt = :t",
            "ConditionExpression": condition,
            "ExpressionAttributeNames": {"#u": "users"},
            "ExpressionAttributeValues": values,
        }

    def set_presence(self, channel: str, user_id: str, *, expected: int | None, value: int) -> dict[str, Any]:
        """Set a presence row to `value` if it still holds `expected` (None: no row)."""
        if expected is None:
            condition = "attribute_not_exists(channel)"
            values = {":v": _n(value)}
        else:
            condition = "connections = :old"
            values = {":v": _n(value), ":old": _n(expected)}
        return {
            "TableName": self.table,
            "Key": self._key(channel, presence_key(user_id)),
            "UpdateExpression": "SET connections = :v",
            "ConditionExpression": condition,
            "ExpressionAttributeValues": values,
        }

    def batch_get_counters(self, channels: Sequence[str]) -> dict[str, Any]:
        """The RequestItems of one BatchGetItem of up to 100 counter rows."""
        return {
            self.table: {
                "Keys": [self._key(ch, COUNTER_KEY) for ch in channels],
                "ProjectionExpression": "channel, connections",
            }
        }


def stored_of(items: Iterable[Mapping[str, Any]]) -> StoredOccupancy:
    """A channel's counter and presence rows, read by `ChannelRequests.channel_rows`."""
    connections = users = updated = None
    presence: dict[str, int] = {}
    for item in items:
        key = item["key"]["S"]
        if key == COUNTER_KEY:
            connections, users, updated = (
                _int(item, "connections"),
                _int(item, "users"),
                _int(item, "updatedAt"),
            )
            if connections is None and users is None:  # a row with neither reads as none
                connections = users = None
        else:
            user = user_of_presence(key)
            if user is not None:
                presence[user] = _int(item, "connections") or 0
    return StoredOccupancy(connections, users, updated, presence)


@dataclass(frozen=True)
class AppliedPresence:
    landed: list[PresenceUpdate] = field(default_factory=list)
    failed: dict[PresenceKey, FanoutError] = field(default_factory=dict)


class ChannelsTable:
    """The channels table for the synchronous functions (boto3 client passed in)."""

    def __init__(
        self,
        client: DynamoDBClient,
        table: str,
        *,
        max_workers: int = 8,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.requests = ChannelRequests(table)
        self.max_workers = max_workers
        self.clock = clock

    @property
    def table(self) -> str:
        return self.requests.table

    def _map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        if len(items) <= 1 or self.max_workers <= 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(items))) as pool:
            return list(pool.map(fn, items))

    # -- reads ---------------------------------------------------------------------------------------
    def occupancy(self, channel: str) -> tuple[int, int]:
        """(connections, users) of a channel, from its counter row; (0, 0) when it has none.
        A consistent read: what the last applied stream batch left."""
        try:
            out = self.client.get_item(**self.requests.get_counter(channel))
        except AWS_ERRORS as exc:
            raise translate(exc, f"get occupancy of {channel}") from exc
        item = out.get("Item") or {}
        return _int(item, "connections") or 0, _int(item, "users") or 0

    def stored(self, channel: str) -> StoredOccupancy:
        """The channel's counter and presence rows (consistent, paginated)."""
        kwargs = self.requests.channel_rows(channel)
        items: list[dict[str, Any]] = []
        try:
            while True:
                page = self.client.query(**kwargs)
                items.extend(page.get("Items", []))
                if not page.get("LastEvaluatedKey"):
                    return stored_of(items)
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        except AWS_ERRORS as exc:
            raise translate(exc, f"query channel {channel}") from exc

    def counted_channels(self) -> set[str]:
        """Every channel with a counter row (a paginated Scan)."""
        kwargs = self.requests.scan_counters()
        channels: set[str] = set()
        try:
            while True:
                page = self.client.scan(**kwargs)
                channels.update(item["channel"]["S"] for item in page.get("Items", []))
                if not page.get("LastEvaluatedKey"):
                    return channels
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        except AWS_ERRORS as exc:
            raise translate(exc, "scan channel counters") from exc

    # -- the channel counter ---------------------------------------------------------------------------
    def add_presence(self, channel: str, user_id: str, delta: int) -> PresenceUpdate:
        """ADD to a user's presence row; the update with the value it now holds. A row left at or below
        0 is deleted, if it still holds that value (best effort: a 0 row counts no user either)."""
        try:
            out = self.client.update_item(**self.requests.add_presence(channel, user_id, delta))
        except AWS_ERRORS as exc:
            raise translate(exc, f"add to presence {channel}/{user_id}") from exc
        after = int(out.get("Attributes", {}).get("connections", {"N": "0"})["N"])
        update = PresenceUpdate(channel, user_id, delta, after)
        if update.vacated:
            # Best effort: refused when a later ADD brought the row back (then it must stay); if it
            # fails, a row at or below 0 counts no user anyway and the reconciler deletes it.
            with contextlib.suppress(*AWS_ERRORS):
                self.client.delete_item(**self.requests.delete_presence(channel, user_id, expected=after))
        return update

    def apply_presence(self, deltas: Mapping[PresenceKey, int]) -> AppliedPresence:
        """One ADD per touched (channel, user), a few in flight; failures are collected, never raised."""
        todo = [(key, d) for key, d in deltas.items() if d]
        result = AppliedPresence()

        def one(item: tuple[PresenceKey, int]) -> tuple[PresenceKey, PresenceUpdate | FanoutError]:
            (channel, user), d = item
            try:
                return item[0], self.add_presence(channel, user, d)
            except FanoutError as exc:
                return item[0], exc

        for key, outcome in self._map(one, todo):
            if isinstance(outcome, PresenceUpdate):
                result.landed.append(outcome)
            else:
                result.failed[key] = outcome
        return result

    def add_counter(self, channel: str, delta: CounterDelta) -> None:
        request = self.requests.add_counter(channel, delta, now_ms=int(self.clock() * 1000))
        try:
            self.client.update_item(**request)
        except AWS_ERRORS as exc:
            raise translate(exc, f"add to channel counter {channel}") from exc

    def apply_counters(self, deltas: Mapping[str, CounterDelta]) -> dict[str, FanoutError]:
        """One ADD per channel counter row; the channels whose ADD failed (never raised)."""
        todo = [(ch, d) for ch, d in deltas.items() if d]

        def one(item: tuple[str, CounterDelta]) -> tuple[str, FanoutError | None]:
            try:
                self.add_counter(*item)
            except FanoutError as exc:
                return item[0], exc
            return item[0], None

        return {ch: err for ch, err in self._map(one, todo) if err is not None}

    # -- the channel reconciler ------------------------------------------------------------------------
    def set_counter(
        self, channel: str, *, expected: tuple[int, int] | None, value: tuple[int, int], now_ms: int
    ) -> bool:
        """Set the counter row if it still holds `expected`; False if the stream moved it meanwhile."""
        request = self.requests.set_counter(channel, expected=expected, value=value, now_ms=now_ms)
        try:
            self.client.update_item(**request)
        except AWS_ERRORS as exc:
            if is_condition_failure(exc):
                return False
            raise translate(exc, f"set channel counter {channel}") from exc
        return True

    def set_presence(self, channel: str, user_id: str, *, expected: int | None, value: int) -> bool:
        """Set (value 0: delete) a presence row if it still holds `expected`; False if it moved."""
        try:
            if value == 0:
                if expected is None:
                    return True
                self.client.delete_item(**self.requests.delete_presence(channel, user_id, expected=expected))
            else:
                self.client.update_item(
                    **self.requests.set_presence(channel, user_id, expected=expected, value=value)
                )
        except AWS_ERRORS as exc:
            if is_condition_failure(exc):
                return False
            raise translate(exc, f"set presence {channel}/{user_id}") from exc
        return True


class AsyncChannelsTable:
    """The channels table for the pipeline's stages (aioboto3 client passed in)."""

    def __init__(
        self,
        client: AsyncDynamoDBClient,
        table: str,
        *,
        attempts: int = BATCH_GET_ATTEMPTS,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.client = client
        self.requests = ChannelRequests(table)
        self.attempts = attempts
        self.sleep = sleep

    async def member_counts(self, channels: Sequence[str]) -> dict[str, int]:
        """channel -> subscribed connections (its counter row; 0 without one), for every given channel.

        BatchGetItem, 100 keys a request; unprocessed keys are asked again with a jittered exponential
        backoff, and still unprocessed after the last attempt raise RetryableError. Eventually
        consistent: the count sizes a broadcast's tasks, and every task reads the members themselves.
        """
        names = list(dict.fromkeys(channels))  # BatchGetItem refuses a key twice in one request
        counts = dict.fromkeys(names, 0)
        for start in range(0, len(names), BATCH_GET_KEYS):
            pending: dict[str, Any] = self.requests.batch_get_counters(names[start : start + BATCH_GET_KEYS])
            attempt = 0
            while pending:
                try:
                    out = await self.client.batch_get_item(RequestItems=pending)
                except AWS_ERRORS as exc:
                    raise translate(exc, "read channel counters") from exc
                for item in out.get("Responses", {}).get(self.requests.table, []):
                    counts[item["channel"]["S"]] = _int(item, "connections") or 0
                pending = dict(out.get("UnprocessedKeys") or {})
                if not pending:
                    break
                attempt += 1
                if attempt >= self.attempts:
                    left = len(pending.get(self.requests.table, {}).get("Keys", []))
                    raise RetryableError(
                        f"read channel counters: {left} keys unprocessed after {attempt} tries"
                    )
                await self.sleep(backoff_seconds(attempt))
        return counts
