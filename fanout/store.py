"""The broadcasts table and the delivery ledger: DynamoDB requests and answers as plain data.

Request builders are pure (they return the keyword arguments of a low-level DynamoDB call) and so are
the parsers of the answers, so the two flavours of the adapter (fanout.adapters.broadcasts: boto3 for
the operator API and the sweeper, aioboto3 for the stages) share them, and unit tests read them without
a client. This module does no I/O; it is kept apart from the adapter because the local stack's table
definitions (the sparse index's name) and the tests read it too, and neither needs a client for that.

Exactly-once accounting (fanout.accounting): a broadcast's counts live in counter shards in the
ledger table, each entry added by one conditional UpdateItem that also records the entry's key, so a
replay counts nothing. The query stage also keeps, per partition, the ids it targeted (the plan), so
that a replayed task re-sends the same post batches, which the post stage's entries deduplicate.

Why not Powertools' idempotency utility here: it is synchronous (it would block the stages' event
loop) and its record is not written atomically with the counter update, so a crash between the two
would count a batch twice or never. The operator API's Idempotency-Key does use it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from fanout.accounting import Totals, chunk_ids, is_counter, shard_of, sum_shards
from fanout.models import Audience, BroadcastRecord, BroadcastStatus
from fanout.swarming import StoredBroadcast

_ser = TypeSerializer()
_de = TypeDeserializer()
LEDGER_TTL_SECONDS = 7 * 24 * 3600
PENDING = "1"
PENDING_INDEX = "byPending"
MAX_ERROR_CHARS = 1000


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
    # `pending` is set while a broadcast is queued or running and removed when it ends: the sparse
    # index on it (PENDING_INDEX) is how the sweeper finds broadcasts that never finished.
    def create(
        self,
        broadcast_id: str,
        created_at: int,
        frame: str,
        idempotency_key: str | None,
        audience: Audience | None = None,
        positions: Mapping[str, tuple[int, str]] | None = None,
        *,
        exclude_connection: str | None = None,
    ) -> dict[str, Any]:
        item = {
            "broadcastId": broadcast_id,
            "status": BroadcastStatus.QUEUED.value,
            "partitions": 0,
            "createdAt": created_at,
            "frame": frame,
            "idempotencyKey": idempotency_key,
            "pending": PENDING,
            # who it goes to (absent: everyone), as the operator gave it, deduplicated
            "audience": audience.model_dump_json(exclude_none=True) if audience is not None else None,
            # a client's message sent with echo off: its own connection is never targeted
            "excludeConnection": exclude_connection,
            # each channel's offset and epoch in its history (fanout.history), as JSON
            "positions": json.dumps({c: list(p) for c, p in positions.items()}) if positions else None,
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
            "createdAt",
            "completedAt",
            "partitionIds",
            "counterShards",
            "error",
            "sweeps",
            "sweptAt",
            "sweptProgress",
            "audience",
            "excludeConnection",
            "positions",
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

    def start(self, broadcast_id: str, partition_ids: list[int], shards: int) -> dict[str, Any]:
        """queued → running, recording the partitions targeted and the counter shards (so that a retried
        swarm reuses them)."""
        return {
            "TableName": self.table,
            "Key": {"broadcastId": {"S": broadcast_id}},
            "UpdateExpression": "SET #s = :running, #p = :n, partitionIds = :ids, counterShards = :k",
            "ConditionExpression": "#s = :queued",
            "ExpressionAttributeNames": {"#s": "status", "#p": "partitions"},
            "ExpressionAttributeValues": {
                ":running": {"S": BroadcastStatus.RUNNING.value},
                ":queued": {"S": BroadcastStatus.QUEUED.value},
                ":n": {"N": str(len(partition_ids))},
                ":ids": _ser.serialize(partition_ids),
                ":k": {"N": str(shards)},
            },
        }

    def finish(
        self, broadcast_id: str, status: BroadcastStatus, at_ms: int, *, error: str | None = None
    ) -> dict[str, Any]:
        """running/queued → completed or failed (with the reason), once."""
        values: dict[str, Any] = {
            ":done": {"S": status.value},
            ":at": {"N": str(at_ms)},
            ":running": {"S": BroadcastStatus.RUNNING.value},
            ":queued": {"S": BroadcastStatus.QUEUED.value},
        }
        update = "SET #s = :done, completedAt = :at"
        if error:
            update += ", #e = :error"
            values[":error"] = {"S": error[:MAX_ERROR_CHARS]}
        return {
            "TableName": self.table,
            "Key": {"broadcastId": {"S": broadcast_id}},
            "UpdateExpression": update + " REMOVE pending",
            "ConditionExpression": "#s IN (:running, :queued)",
            "ExpressionAttributeNames": {"#s": "status", **({"#e": "error"} if error else {})},
            "ExpressionAttributeValues": values,
        }

    def note_error(self, broadcast_id: str, error: str) -> dict[str, Any]:
        """Record why the last attempt at a broadcast failed, while it is still pending."""
        return {
            "TableName": self.table,
            "Key": {"broadcastId": {"S": broadcast_id}},
            "UpdateExpression": "SET #e = :error",
            "ConditionExpression": "attribute_exists(pending)",
            "ExpressionAttributeNames": {"#e": "error"},
            "ExpressionAttributeValues": {":error": {"S": error[:MAX_ERROR_CHARS]}},
        }

    def pending(self, exclusive_start: dict[str, Any] | None = None) -> dict[str, Any]:
        """One page of the broadcasts still queued or running, oldest first (the sparse index)."""
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": PENDING_INDEX,
            "KeyConditionExpression": "pending = :p",
            "ExpressionAttributeValues": {":p": {"S": PENDING}},
        }
        if exclusive_start:
            kwargs["ExclusiveStartKey"] = exclusive_start
        return kwargs

    def swept(
        self, broadcast_id: str, *, sweeps: int, next_sweeps: int, progress: int, at_ms: int
    ) -> dict[str, Any]:
        """Record one sweep of a pending broadcast (the condition makes two sweepers racing record one)."""
        return {
            "TableName": self.table,
            "Key": {"broadcastId": {"S": broadcast_id}},
            "UpdateExpression": "SET sweeps = :n, sweptAt = :at, sweptProgress = :progress",
            "ConditionExpression": "attribute_exists(pending) AND "
            "(attribute_not_exists(sweeps) OR sweeps = :prev)",
            "ExpressionAttributeValues": {
                ":n": {"N": str(next_sweeps)},
                ":prev": {"N": str(sweeps)},
                ":at": {"N": str(at_ms)},
                ":progress": {"N": str(progress)},
            },
        }

    # -- counter shards --------------------------------------------------------------------------
    @staticmethod
    def shard_key(broadcast_id: str, shard: int) -> str:
        return f"acct#{broadcast_id}#{shard}"

    def count(self, broadcast_id: str, entry: str, counts: dict[str, int], shards: int) -> dict[str, Any]:
        """Add `counts` to the entry's shard unless the entry was applied before (the condition fails)."""
        names = {"#ap": "applied", "#ex": "expiration"}
        values: dict[str, Any] = {
            ":e": {"S": entry},
            ":es": {"SS": [entry]},
            ":exp": {"N": str(int(time.time()) + LEDGER_TTL_SECONDS)},
        }
        adds = ["#ap :es"]
        for i, (name, value) in enumerate(counts.items()):
            if not is_counter(name):
                raise ValueError(f"unknown counter {name}")
            names[f"#c{i}"] = name
            values[f":v{i}"] = {"N": str(value)}
            adds.append(f"#c{i} :v{i}")
        return {
            "TableName": self.ledger,
            "Key": {"id": {"S": self.shard_key(broadcast_id, shard_of(entry, shards))}},
            "UpdateExpression": "SET #ex = if_not_exists(#ex, :exp) ADD " + ", ".join(adds),
            "ConditionExpression": "NOT contains(#ap, :e)",
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
        }

    def get_applied(self, broadcast_id: str, entry: str, shards: int) -> dict[str, Any]:
        """Read the entry's shard's `applied` set (consistent), to skip work already counted."""
        return {
            "TableName": self.ledger,
            "Key": {"id": {"S": self.shard_key(broadcast_id, shard_of(entry, shards))}},
            "ConsistentRead": True,
            "ProjectionExpression": "applied",
        }

    def get_shards(self, broadcast_id: str, shards: int) -> dict[str, Any]:
        """BatchGetItem of every shard of the broadcast (consistent)."""
        return {
            "RequestItems": {
                self.ledger: {
                    "Keys": [{"id": {"S": self.shard_key(broadcast_id, k)}} for k in range(shards)],
                    "ConsistentRead": True,
                }
            }
        }

    # -- query plans --------------------------------------------------------------------------------
    @staticmethod
    def plan_key(broadcast_id: str, partition_id: int, chunk: int = 0) -> str:
        base = f"query#{broadcast_id}#{partition_id}"
        return base if chunk == 0 else f"{base}#{chunk}"

    def put_plan(
        self, broadcast_id: str, partition_id: int, connection_ids: list[str]
    ) -> tuple[str, dict[str, Any]]:
        """The write of a partition's plan, once: ("put_item", kwargs), or ("transact_write_items", kwargs)
        when the ids need several items (an item holds 400 KB at most): all of them or none."""
        chunks = chunk_ids(connection_ids)
        expiration = int(time.time()) + LEDGER_TTL_SECONDS
        puts = []
        for n, ids in enumerate(chunks):
            values: dict[str, Any] = {
                "id": self.plan_key(broadcast_id, partition_id, n),
                "expiration": expiration,
                "connectionIds": ids or None,
            }
            if n == 0:
                values["chunks"] = len(chunks)
            puts.append(
                {
                    "TableName": self.ledger,
                    "Item": to_item(values),
                    "ConditionExpression": "attribute_not_exists(id)",
                }
            )
        if len(puts) == 1:
            return "put_item", puts[0]
        return "transact_write_items", {"TransactItems": [{"Put": p} for p in puts]}

    def get_plan(self, broadcast_id: str, partition_id: int, chunk: int = 0) -> dict[str, Any]:
        return {
            "TableName": self.ledger,
            "Key": {"id": {"S": self.plan_key(broadcast_id, partition_id, chunk)}},
            "ConsistentRead": True,
        }


def parse_broadcast(item: dict[str, Any]) -> StoredBroadcast:
    """The record (without its counts: fanout.completion.with_totals), its frame and its plan."""
    values = from_item(item)
    ints = {k: int(v) for k, v in values.items() if k != "partitionIds" and hasattr(v, "as_integer_ratio")}
    audience = values.pop("audience", None)
    positions = json.loads(str(values.pop("positions", None) or "{}"))
    record = BroadcastRecord.model_validate({**values, **ints})
    if audience is not None:
        record = record.model_copy(update={"audience": Audience.model_validate_json(str(audience))})
    frame = values.get("frame")
    return StoredBroadcast(
        record,
        frame=str(frame) if frame is not None else None,
        partition_ids=tuple(int(p) for p in values.get("partitionIds") or ()),
        positions={str(c): (int(p[0]), str(p[1])) for c, p in positions.items()},
    )


def totals_of(responses: list[dict[str, Any]], ledger_table: str) -> Totals:
    """Sum the shards found in BatchGetItem responses."""
    items = [from_item(i) for out in responses for i in out.get("Responses", {}).get(ledger_table, [])]
    return sum_shards(items)


def plan_ids(item: dict[str, Any]) -> tuple[list[str], int]:
    """The ids of one item of a partition's plan, and how many items the plan has (on its first)."""
    values = from_item(item)
    return [str(i) for i in values.get("connectionIds") or []], int(values.get("chunks") or 1)


def applied_entries(item: dict[str, Any] | None) -> set[str]:
    """The entries a counter shard has applied (GetItem's answer; None: the shard does not exist yet)."""
    return set((item or {}).get("applied", {}).get("SS", []))
