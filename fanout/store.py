"""The broadcasts table and the delivery ledger: DynamoDB requests as plain data.

Request builders are pure (they return the keyword arguments of a low-level DynamoDB call), so the
synchronous operator API (boto3) and the asynchronous stages (aioboto3) share them.

Exactly-once accounting. SQS delivers at least once and a worker may die mid-batch, so counters are
never bumped by a bare ``ADD``: each count travels in a transaction with a ledger item (in the
idempotency table) that can be written only once:

- the query stage writes ``query#<broadcast>#<partition>`` holding the partition's ids, together with
  ``ADD targeted :n, partitionsDone :1``; a replayed task finds the ledger and re-sends the same plan;
- the post stage writes ``post#<broadcast>#<batch>#<attempt>`` together with
  ``ADD delivered, gone, failed``; a replayed batch finds the ledger and is skipped.

Why not Powertools' idempotency utility here: it is synchronous (it would block the stages' event
loop) and its record is not written atomically with the counter update, so a crash between the two
would count a batch twice or never. The operator API's Idempotency-Key does use it.
"""

from __future__ import annotations

import time
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from fanout.models import BroadcastRecord, BroadcastStatus

_ser = TypeSerializer()
_de = TypeDeserializer()
LEDGER_TTL_SECONDS = 7 * 24 * 3600


def to_item(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _ser.serialize(v) for k, v in values.items() if v is not None}


def from_item(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _de.deserialize(v) for k, v in item.items()}


def now_ms() -> int:
    return int(time.time() * 1000)


class BroadcastRequests:
    """Builders of the DynamoDB requests on the broadcasts and ledger tables."""

    def __init__(self, broadcasts_table: str, ledger_table: str) -> None:
        self.table = broadcasts_table
        self.ledger = ledger_table

    # -- broadcasts ---------------------------------------------------------------------------------
    def create(
        self, broadcast_id: str, created_at: int, frame: str, idempotency_key: str | None
    ) -> dict[str, Any]:
        item = {
            "broadcastId": broadcast_id,
            "status": BroadcastStatus.QUEUED.value,
            "partitions": 0,
            "partitionsDone": 0,
            "targeted": 0,
            "delivered": 0,
            "gone": 0,
            "failed": 0,
            "createdAt": created_at,
            "frame": frame,
            "idempotencyKey": idempotency_key,
        }
        return {
            "TableName": self.table,
            "Item": to_item(item),
            "ConditionExpression": "attribute_not_exists(broadcastId)",
        }

    def get(self, broadcast_id: str, *, frame: bool = False) -> dict[str, Any]:
        names = [
            "broadcastId",
            "status",
            "partitions",
            "partitionsDone",
            "targeted",
            "delivered",
            "gone",
            "failed",
            "createdAt",
            "completedAt",
            "partitionIds",
        ]
        if frame:
            names.append("frame")
        return {
            "TableName": self.table,
            "Key": {"broadcastId": {"S": broadcast_id}},
            "ConsistentRead": True,
            "ProjectionExpression": ", ".join(f"#a{i}" for i in range(len(names))),
            "ExpressionAttributeNames": {f"#a{i}": n for i, n in enumerate(names)},
        }

    def start(self, broadcast_id: str, partition_ids: list[int]) -> dict[str, Any]:
        """queued → running, recording the partitions targeted (so that a retried swarm reuses them)."""
        return {
            "TableName": self.table,
            "Key": {"broadcastId": {"S": broadcast_id}},
            "UpdateExpression": "SET #s = :running, #p = :n, partitionIds = :ids",
            "ConditionExpression": "#s = :queued",
            "ExpressionAttributeNames": {"#s": "status", "#p": "partitions"},
            "ExpressionAttributeValues": {
                ":running": {"S": BroadcastStatus.RUNNING.value},
                ":queued": {"S": BroadcastStatus.QUEUED.value},
                ":n": {"N": str(len(partition_ids))},
                ":ids": _ser.serialize(partition_ids),
            },
        }

    def finish(self, broadcast_id: str, status: BroadcastStatus, at_ms: int) -> dict[str, Any]:
        """running/queued → completed or failed, once."""
        return {
            "TableName": self.table,
            "Key": {"broadcastId": {"S": broadcast_id}},
            "UpdateExpression": "SET #s = :done, completedAt = :at",
            "ConditionExpression": "#s IN (:running, :queued)",
            "ExpressionAttributeNames": {"#s": "status"},
            "ExpressionAttributeValues": {
                ":done": {"S": status.value},
                ":at": {"N": str(at_ms)},
                ":running": {"S": BroadcastStatus.RUNNING.value},
                ":queued": {"S": BroadcastStatus.QUEUED.value},
            },
        }

    # -- ledger transactions ------------------------------------------------------------------------
    def _ledger_put(self, key: str, extra: dict[str, Any]) -> dict[str, Any]:
        values = {"id": key, "expiration": int(time.time()) + LEDGER_TTL_SECONDS, **extra}
        return {
            "Put": {
                "TableName": self.ledger,
                "Item": to_item(values),
                "ConditionExpression": "attribute_not_exists(id)",
            }
        }

    def _add(self, broadcast_id: str, counts: dict[str, int]) -> dict[str, Any]:
        names = {f"#c{i}": k for i, k in enumerate(counts)}
        values = {f":v{i}": {"N": str(v)} for i, v in enumerate(counts.values())}
        return {
            "Update": {
                "TableName": self.table,
                "Key": {"broadcastId": {"S": broadcast_id}},
                "UpdateExpression": "ADD " + ", ".join(f"#c{i} :v{i}" for i in range(len(counts))),
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": values,
            }
        }

    @staticmethod
    def query_ledger_key(broadcast_id: str, partition_id: int) -> str:
        return f"query#{broadcast_id}#{partition_id}"

    @staticmethod
    def post_ledger_key(broadcast_id: str, batch_id: str, attempt: int) -> str:
        return f"post#{broadcast_id}#{batch_id}#{attempt}"

    def count_partition(
        self, broadcast_id: str, partition_id: int, connection_ids: list[str]
    ) -> dict[str, Any]:
        return {
            "TransactItems": [
                self._ledger_put(
                    self.query_ledger_key(broadcast_id, partition_id),
                    {"connectionIds": connection_ids or None},
                ),
                self._add(broadcast_id, {"targeted": len(connection_ids), "partitionsDone": 1}),
            ]
        }

    def count_batch(
        self, broadcast_id: str, batch_id: str, attempt: int, counts: dict[str, int]
    ) -> dict[str, Any]:
        return {
            "TransactItems": [
                self._ledger_put(self.post_ledger_key(broadcast_id, batch_id, attempt), {}),
                self._add(broadcast_id, counts),
            ]
        }

    def get_ledger(self, key: str) -> dict[str, Any]:
        return {"TableName": self.ledger, "Key": {"id": {"S": key}}, "ConsistentRead": True}


def parse_broadcast(item: dict[str, Any]) -> tuple[BroadcastRecord, dict[str, Any]]:
    """The record, and the raw values (frame, partitionIds) that are not part of the public view."""
    values = from_item(item)
    ints = {k: int(v) for k, v in values.items() if k != "partitionIds" and hasattr(v, "as_integer_ratio")}
    record = BroadcastRecord.model_validate({**values, **ints})
    return record, values


def is_transaction_duplicate(exc: BaseException) -> bool:
    """True when a ledger transaction was cancelled because its ledger item already exists."""
    response = getattr(exc, "response", None) or {}
    if response.get("Error", {}).get("Code") != "TransactionCanceledException":
        return False
    reasons = response.get("CancellationReasons") or []
    return bool(reasons) and reasons[0].get("Code") == "ConditionalCheckFailed"
