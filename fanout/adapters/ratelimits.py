"""The rate limits table: one row per token bucket (fanout.ratelimit), the one adapter of the table.

A bucket row is ``{"key": "c#<connectionId>" | "u#<userId>", "tat": <epoch ms>, "expiresAt": <epoch
s>}``. Taking a token is one conditional UpdateItem: "the row is absent or its tat is past" for a full
bucket, "the tat is still the one I read" otherwise, so two containers taking tokens of one bucket at
once never both spend the same one. A failed condition (ConditionalCheckFailedException) is no error
here: it returns the row as it is (ReturnValuesOnConditionCheckFailure), the decision is made again
on it, and what comes out is admitted or "limited, retry after N ms". Nothing above this module sees
a botocore error code.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fanout.adapters.errors import AWS_ERRORS, is_condition_failure, translate
from fanout.ratelimit import Admitted, BucketLimit, Decision, Limited, decide, fresh
from fanout.store import now_ms

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

# Another container took a token of the same bucket between our read and our write: decide again on
# the row it wrote. Each round one of the contenders wins, so a few rounds settle a burst; past them
# the message is refused for one interval rather than waiting.
TAKE_ATTEMPTS = 4
# A row outlives the time its bucket takes to refill by this much (TTL; DynamoDB deletes late anyway).
TTL_MARGIN_SECONDS = 60


def _number(value: float) -> str:
    return f"{value:.3f}"


@dataclass(frozen=True)
class BucketRequests:
    """Builders of the low-level requests on the rate limits table (plain data)."""

    table: str

    def take(
        self, key: str, *, old_tat: float | None, new_tat: float, now: float, limit: BucketLimit
    ) -> dict[str, Any]:
        expires = math.ceil((new_tat + limit.idle_ms()) / 1000) + TTL_MARGIN_SECONDS
        values: dict[str, Any] = {":tat": {"N": _number(new_tat)}, ":exp": {"N": str(expires)}}
        if fresh(old_tat, now):
            condition = "attribute_not_exists(tat) OR tat <= :now"
            values[":now"] = {"N": _number(now)}
        else:
            assert old_tat is not None
            condition = "tat = :old"
            values[":old"] = {"N": _number(old_tat)}
        return {
            "TableName": self.table,
            "Key": {"key": {"S": key}},
            "UpdateExpression": "SET tat = :tat, expiresAt = :exp",
            "ConditionExpression": condition,
            "ExpressionAttributeValues": values,
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }

    def get(self, key: str) -> dict[str, Any]:
        return {"TableName": self.table, "Key": {"key": {"S": key}}, "ConsistentRead": True}


def _tat_of(item: dict[str, Any] | None) -> float | None:
    if not item or "tat" not in item:
        return None
    return float(item["tat"]["N"])


class RateLimitsTable:
    """Token buckets in DynamoDB (boto3 client passed in), for $default."""

    def __init__(self, client: DynamoDBClient, table: str, *, clock_ms: Callable[[], float] = now_ms) -> None:
        self.client = client
        self.requests = BucketRequests(table)
        self._clock = clock_ms

    def take(self, key: str, limit: BucketLimit) -> Decision:
        """Take one token of bucket `key`: Admitted, or Limited(retry after N ms)."""
        now = self._clock()
        tat: float | None = None  # first guess: a full bucket, the common case for a chatting client
        for _ in range(TAKE_ATTEMPTS):
            decision = decide(tat, now, limit)
            if isinstance(decision, Limited):
                return decision
            request = self.requests.take(key, old_tat=tat, new_tat=decision.tat, now=now, limit=limit)
            try:
                self.client.update_item(**request)
                return decision
            except AWS_ERRORS as exc:
                if not is_condition_failure(exc):
                    raise translate(exc, "take a rate limit token") from exc
                tat = self._current(key, exc)
        return Limited(math.ceil(limit.interval_ms))

    def _current(self, key: str, exc: BaseException) -> float | None:
        """The row as the failed condition found it: in the error when the service returns it, read
        again (consistently) when it does not."""
        item = getattr(exc, "response", {}).get("Item")
        if item is not None:
            return _tat_of(item)
        try:
            out = self.client.get_item(**self.requests.get(key))
        except AWS_ERRORS as read_exc:
            raise translate(read_exc, "read a rate limit bucket") from read_exc
        return _tat_of(out.get("Item"))

    def take_all(self, buckets: list[tuple[str, BucketLimit]]) -> Decision:
        """One token of each bucket, in order; the first refusal stops (a token already taken from an
        earlier bucket is spent: the refused message still counted against that one)."""
        last: Decision = Admitted(0.0)
        for key, limit in buckets:
            last = self.take(key, limit)
            if isinstance(last, Limited):
                return last
        return last
