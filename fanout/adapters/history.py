"""The history table: the one adapter of it (boto3 client passed in).

Per channel, the meta row (``offset`` 0: ``head``, ``epoch``, ``expiresAt``) and one row per message
(``offset`` N: ``epoch``, ``envelope``, ``expiresAt``). A message is appended by one
TransactWriteItems: the meta row's head moves from H to H+1 on the condition that it still is H (of
the same epoch), the message row H+1 is written and row H+1-K deleted. Two appends to one channel at
once: one wins, the other is cancelled (condition or conflict) and tries again from a fresh read, so
offsets never repeat and never skip. Without a meta row (or with an expired one) the append creates
it: a new epoch from offset 1.

`go_live` ends a recovery: the connection's subscription row starts taking live messages after the
head, on the condition that the head has not moved since recovery read it (fanout.history).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fanout.adapters.errors import AWS_ERRORS, is_condition_failure, is_conflict, translate
from fanout.channels import member_key
from fanout.errors import RetryableError
from fanout.history import Head, Stored, new_epoch, next_head, trimmed
from fanout.retry import backoff_delay

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

    from fanout.settings import HistoryPart

META = 0
# Appends to one channel at once each lose a round to one winner; the attempts outnumber the
# publishers one channel has at once, and the jittered sleeps stay within a function's timeout.
APPEND_ATTEMPTS = 16
APPEND_BASE_SECONDS = 0.02
APPEND_CAP_SECONDS = 0.5
# Rows read per Query page (a history page holds fewer).
READ_LIMIT = 100


def _head_of(item: dict[str, Any] | None, now: float) -> Head | None:
    if not item:
        return None
    # TTL deletes late (within days on AWS): an expired meta row is no history.
    if "expiresAt" in item and int(item["expiresAt"]["N"]) <= int(now):
        return None
    return Head(int(item["head"]["N"]), item["epoch"]["S"])


class HistoryTable:
    def __init__(
        self,
        client: DynamoDBClient,
        table: str,
        *,
        keep: int,
        ttl_seconds: int,
        meta_ttl_seconds: int,
        subscriptions_table: str = "",
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        make_epoch: Callable[[], str] = new_epoch,
        on_conflict: Callable[[], None] = lambda: None,
    ) -> None:
        self.client = client
        self.table = table
        self.keep = keep
        self.ttl_seconds = ttl_seconds
        self.meta_ttl_seconds = max(meta_ttl_seconds, ttl_seconds)
        self.subscriptions_table = subscriptions_table
        self._clock = clock
        self._sleep = sleep
        self._make_epoch = make_epoch
        self._on_conflict = on_conflict

    @classmethod
    def of(
        cls,
        client: DynamoDBClient,
        settings: HistoryPart,
        *,
        subscriptions_table: str = "",
        on_conflict: Callable[[], None] = lambda: None,
    ) -> HistoryTable:
        """The history table as a function's settings configure it (every handler builds it so)."""
        return cls(
            client,
            settings.history_table,
            keep=settings.history_keep,
            ttl_seconds=settings.history_ttl_seconds,
            meta_ttl_seconds=settings.history_meta_ttl_seconds,
            subscriptions_table=subscriptions_table,
            on_conflict=on_conflict,
        )

    def _key(self, channel: str, offset: int) -> dict[str, Any]:
        return {"channel": {"S": channel}, "offset": {"N": str(offset)}}

    def head(self, channel: str) -> Head | None:
        """The channel's head (None: no history now)."""
        try:
            out = self.client.get_item(
                TableName=self.table, Key=self._key(channel, META), ConsistentRead=True
            )
        except AWS_ERRORS as exc:
            raise translate(exc, f"read the history head of {channel}") from exc
        return _head_of(out.get("Item"), self._clock())

    def append(self, channel: str, envelope_at: Callable[[Head], str]) -> Head:
        """Give the channel's next offset to one message and store its envelope (`envelope_at` builds it
        for that offset and epoch); retried on a lost race, so every offset is given once."""
        what = f"append to the history of {channel}"
        for attempt in range(1, APPEND_ATTEMPTS + 1):
            now = self._clock()
            current = self.head(channel)
            head = next_head(current, self._make_epoch)
            try:
                request: dict[str, Any] = {
                    "TransactItems": self._append_items(channel, current, head, envelope_at(head), now)
                }
                self.client.transact_write_items(**request)
                return head
            except AWS_ERRORS as exc:
                if not (is_conflict(exc) or is_condition_failure(exc)):
                    raise translate(exc, what) from exc
                self._on_conflict()
                if attempt == APPEND_ATTEMPTS:
                    raise RetryableError(f"{what}: lost the race {attempt} times") from exc
            self._sleep(backoff_delay(attempt, base=APPEND_BASE_SECONDS, cap=APPEND_CAP_SECONDS))
        raise AssertionError("unreachable")

    def _append_items(
        self, channel: str, current: Head | None, head: Head, envelope: str, now: float
    ) -> list[dict[str, Any]]:
        meta: dict[str, Any] = {
            "TableName": self.table,
            "Key": self._key(channel, META),
            "UpdateExpression": "SET head = :new, epoch = :epoch, expiresAt = :mexp",
            "ExpressionAttributeValues": {
                ":new": {"N": str(head.offset)},
                ":epoch": {"S": head.epoch},
                ":mexp": {"N": str(int(now) + self.meta_ttl_seconds)},
            },
        }
        if current is None:
            meta["ConditionExpression"] = "attribute_not_exists(head) OR expiresAt <= :now"
            meta["ExpressionAttributeValues"][":now"] = {"N": str(int(now))}
        else:
            meta["ConditionExpression"] = "head = :old AND epoch = :epoch"
            meta["ExpressionAttributeValues"][":old"] = {"N": str(current.offset)}
        items: list[dict[str, Any]] = [
            {"Update": meta},
            {
                # unconditional: a row left from an earlier epoch at this offset is replaced
                "Put": {
                    "TableName": self.table,
                    "Item": {
                        **self._key(channel, head.offset),
                        "epoch": {"S": head.epoch},
                        "envelope": {"S": envelope},
                        "expiresAt": {"N": str(int(now) + self.ttl_seconds)},
                    },
                }
            },
        ]
        old = trimmed(head.offset, self.keep)
        if old is not None:
            items.append({"Delete": {"TableName": self.table, "Key": self._key(channel, old)}})
        return items

    def rows(self, channel: str, after: int, limit: int = READ_LIMIT) -> list[Stored]:
        """Up to `limit` message rows after offset `after`, in offset order (expired ones left out)."""
        now = int(self._clock())
        try:
            out = self.client.query(
                TableName=self.table,
                KeyConditionExpression="channel = :c AND #o > :after",
                ExpressionAttributeNames={"#o": "offset"},
                ExpressionAttributeValues={":c": {"S": channel}, ":after": {"N": str(max(after, META))}},
                ConsistentRead=True,
                Limit=limit,
            )
        except AWS_ERRORS as exc:
            raise translate(exc, f"read the history of {channel}") from exc
        return [
            Stored(int(i["offset"]["N"]), i["epoch"]["S"], i["envelope"]["S"])
            for i in out.get("Items", [])
            if int(i["expiresAt"]["N"]) > now
        ]

    def live_from(self, channel: str, connection_id: str) -> int | None:
        """The subscription row's liveFrom (None: no row, or a row taking every message live)."""
        key = {"channel": {"S": channel}, "member": {"S": member_key(connection_id)}}
        try:
            out = self.client.get_item(
                TableName=self.subscriptions_table,
                Key=key,
                ConsistentRead=True,
                ProjectionExpression="liveFrom",
            )
        except AWS_ERRORS as exc:
            raise translate(exc, f"read the subscription of {connection_id} to {channel}") from exc
        item = out.get("Item") or {}
        return int(item["liveFrom"]["N"]) if "liveFrom" in item else None

    def go_live(self, channel: str, connection_id: str, head: Head | None) -> bool | None:
        """Let the connection's subscription row take the live messages after `head` (None: after
        nothing, for a channel without history), if the head is still that. True: done; False: the head
        moved (read again and recover the rest); None: the subscription row is gone."""
        key = {"channel": {"S": channel}, "member": {"S": member_key(connection_id)}}
        check: dict[str, Any] = {"TableName": self.table, "Key": self._key(channel, META)}
        if head is None:
            check["ConditionExpression"] = "attribute_not_exists(head) OR expiresAt <= :now"
            check["ExpressionAttributeValues"] = {":now": {"N": str(int(self._clock()))}}
        else:
            check["ConditionExpression"] = "head = :h AND epoch = :e"
            check["ExpressionAttributeValues"] = {":h": {"N": str(head.offset)}, ":e": {"S": head.epoch}}
        items = [
            {"ConditionCheck": check},
            {
                "Update": {
                    "TableName": self.subscriptions_table,
                    "Key": key,
                    "UpdateExpression": "SET liveFrom = :from",
                    "ConditionExpression": "attribute_exists(connectionId)",
                    "ExpressionAttributeValues": {":from": {"N": str(head.offset if head else 0)}},
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            },
        ]
        what = f"hand {connection_id} over to live messages of {channel}"
        for attempt in range(1, APPEND_ATTEMPTS + 1):
            try:
                handover: dict[str, Any] = {"TransactItems": items}
                self.client.transact_write_items(**handover)
                return True
            except AWS_ERRORS as exc:
                if is_conflict(exc):
                    self._on_conflict()
                    if attempt == APPEND_ATTEMPTS:
                        raise RetryableError(f"{what}: conflicted {attempt} times") from exc
                    self._sleep(backoff_delay(attempt, base=APPEND_BASE_SECONDS, cap=APPEND_CAP_SECONDS))
                    continue
                if not is_condition_failure(exc):
                    raise translate(exc, what) from exc
                reasons = getattr(exc, "response", {}).get("CancellationReasons") or []
                if len(reasons) > 1 and reasons[1].get("Code") == "ConditionalCheckFailed":
                    return None
                return False
        raise AssertionError("unreachable")
