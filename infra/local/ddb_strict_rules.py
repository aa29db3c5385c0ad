"""The strict DynamoDB layer's rules, as plain functions and classes over the requests' JSON, with no
I/O (the proxy, `infra/local/ddb_strict.py`, applies them): which items a request touches, which
in-flight requests hold them and what a new request may do with them (AWS's transaction conflict
rules), which requests are throttled, and the error bodies AWS answers.

The AWS page behind the conflict rules:
https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/transaction-apis.html#transaction-conflict-handling
"""

from __future__ import annotations

import contextlib
import json
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

TARGET_PREFIX = "DynamoDB_20120810."
ERROR_PREFIX = "com.amazonaws.dynamodb.v20120810#"
CONFLICT_MESSAGE = "Transaction is ongoing for the item"
ACCOUNT_ID = "000000000000"

# The minimum time a transaction holds its items: AWS's TransactWriteItems median (~25 ms for 5 items,
# against ~8 ms for a PutItem). DynamoDB Local commits in less than half that, which would make
# conflicts rarer than on AWS (docs/architecture.md, "The transaction window": figures and sources).
DEFAULT_TRANSACTION_HOLD_MS = 25.0
# Of the throttled requests, the share answered ThrottlingException rather than
# ProvisionedThroughputExceededException (the engine must handle both; botocore retries both).
DEFAULT_THROTTLING_EXCEPTION_SHARE = 0.2

READS = frozenset({"GetItem", "Query", "Scan", "BatchGetItem", "TransactGetItems"})
WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"})
DATA_PLANE = READS | WRITES
SINGLE_WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem"})
SCHEMA_CHANGES = frozenset({"CreateTable", "DeleteTable"})
ITEM_HOLDING = WRITES | SCHEMA_CHANGES | {"TransactGetItems"}  # the requests the layer must parse

_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/[^/]*/([^/]+)/")


# --------------------------------------------------------------------------------------------------
# Item identity (plain functions over the request's JSON)
# --------------------------------------------------------------------------------------------------

Ref = tuple[str, str, str]  # (database, table, canonical primary key)


def database_of(authorization: str) -> str:
    """DynamoDB Local's database: the access key and Region of the SigV4 credential scope."""
    m = _CREDENTIAL.search(authorization)
    return f"{m[1]}/{m[2]}" if m else ""


def table_name(name: str) -> str:
    """A table may be named by its ARN (`arn:aws:dynamodb:<region>:<account>:table/<name>`)."""
    return name.rsplit(":table/", 1)[-1] if name.startswith("arn:") else name


def _canonical_value(value: Any) -> Any:
    # DynamoDB compares numbers by value: {"N": "1.0"} and {"N": "1"} are the same key
    if isinstance(value, dict) and isinstance(value.get("N"), str):
        with contextlib.suppress(InvalidOperation):
            return {"N": format(Decimal(value["N"]).normalize(), "f")}
    return value


def canonical_key(key: Mapping[str, Any]) -> str:
    return json.dumps(
        {name: _canonical_value(v) for name, v in key.items()}, sort_keys=True, separators=(",", ":")
    )


def key_from_item(item: Mapping[str, Any], key_names: Sequence[str]) -> dict[str, Any] | None:
    if not all(name in item for name in key_names):
        return None  # DynamoDB Local will answer the ValidationException
    return {name: item[name] for name in key_names}


def _ref(db: str, table: Any, key: Any) -> Ref | None:
    if not isinstance(table, str) or not isinstance(key, dict):
        return None
    return (db, table_name(table), canonical_key(key))


def tables_needing_schema(op: str, params: Mapping[str, Any]) -> set[str]:
    """Tables whose key schema is needed to find the items of this request (the Puts)."""
    if op == "PutItem":
        return {table_name(params["TableName"])} if isinstance(params.get("TableName"), str) else set()
    if op == "TransactWriteItems":
        return {
            table_name(entry["Put"]["TableName"])
            for entry in params.get("TransactItems") or []
            if isinstance(entry, dict)
            and isinstance(entry.get("Put"), dict)
            and isinstance(entry["Put"].get("TableName"), str)
        }
    if op == "BatchWriteItem":
        items = params.get("RequestItems") or {}
        return {
            table_name(t)
            for t, requests in items.items()
            if isinstance(requests, list) and any(isinstance(r, dict) and "PutRequest" in r for r in requests)
        }
    return set()


def _put_ref(db: str, table: Any, item: Any, schemas: Mapping[str, Sequence[str]]) -> Ref | None:
    if not isinstance(table, str) or not isinstance(item, dict):
        return None
    names = schemas.get(table_name(table))
    key = key_from_item(item, names) if names else None
    return _ref(db, table, key) if key else None


def item_refs(
    op: str, params: Mapping[str, Any], db: str, schemas: Mapping[str, Sequence[str]]
) -> list[Ref | None]:
    """The items a request touches, in request order (None where the request is malformed or the
    table unknown: DynamoDB Local answers those itself, so they are never held)."""
    if op in ("UpdateItem", "DeleteItem"):
        return [_ref(db, params.get("TableName"), params.get("Key"))]
    if op == "PutItem":
        return [_put_ref(db, params.get("TableName"), params.get("Item"), schemas)]
    if op in ("TransactWriteItems", "TransactGetItems"):
        refs: list[Ref | None] = []
        for entry in params.get("TransactItems") or []:
            action = next(iter(entry.values()), None) if isinstance(entry, dict) and len(entry) == 1 else None
            if not isinstance(action, dict):
                refs.append(None)
            elif "Put" in entry:
                refs.append(_put_ref(db, action.get("TableName"), action.get("Item"), schemas))
            else:
                refs.append(_ref(db, action.get("TableName"), action.get("Key")))
        return refs
    if op == "BatchWriteItem":
        refs = []
        for table, requests in (params.get("RequestItems") or {}).items():
            for r in requests if isinstance(requests, list) else []:
                if isinstance(r, dict) and isinstance(r.get("PutRequest"), dict):
                    refs.append(_put_ref(db, table, r["PutRequest"].get("Item"), schemas))
                elif isinstance(r, dict) and isinstance(r.get("DeleteRequest"), dict):
                    refs.append(_ref(db, table, r["DeleteRequest"].get("Key")))
        return refs
    return []


def first_table(op: str, params: Mapping[str, Any]) -> str:
    """The table a throttled request is reported against."""
    if isinstance(params.get("TableName"), str):
        return table_name(params["TableName"])
    if op in ("BatchGetItem", "BatchWriteItem"):
        return table_name(next(iter(params.get("RequestItems") or {"": None})))
    for entry in params.get("TransactItems") or []:
        for action in entry.values() if isinstance(entry, dict) else []:
            if isinstance(action, dict) and isinstance(action.get("TableName"), str):
                return table_name(action["TableName"])
    return ""


# --------------------------------------------------------------------------------------------------
# Holds: which items are in flight, and what a new request may do with them
# --------------------------------------------------------------------------------------------------


@dataclass
class TransactionRead:
    """An in-flight TransactGetItems; a write to one of its items while it runs cancels it."""

    refs: list[Ref | None]
    conflicted: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.conflicted = [False] * len(self.refs)


class ItemHolds:
    """In-flight items and AWS's conflict rules between them. Every method runs to completion
    without awaiting, so a check and its acquisition are atomic on the proxy's event loop."""

    def __init__(self) -> None:
        self.transactions: Counter[Ref] = Counter()
        self.writes: Counter[Ref] = Counter()  # PutItem/UpdateItem/DeleteItem
        self.batch_writes: Counter[Ref] = Counter()
        self.reads: dict[Ref, list[TransactionRead]] = {}

    @staticmethod
    def _release(counter: Counter[Ref], refs: Sequence[Ref | None]) -> None:
        for ref in refs:
            if ref is not None:
                counter[ref] -= 1
                if counter[ref] <= 0:
                    del counter[ref]

    def _written(self, refs: Sequence[Ref | None]) -> None:
        for ref in refs:
            for read in self.reads.get(ref, ()) if ref is not None else ():
                for i, r in enumerate(read.refs):
                    if r == ref:
                        read.conflicted[i] = True

    def begin_transaction(self, refs: Sequence[Ref | None]) -> list[bool] | None:
        """Hold the items of a TransactWriteItems; if any is held by another transaction or a
        single-item write, hold nothing and return which ones are contended."""
        contended = [r is not None and (r in self.transactions or r in self.writes) for r in refs]
        if any(contended):
            return contended
        self.transactions.update(r for r in refs if r is not None)
        self._written(refs)
        return None

    def end_transaction(self, refs: Sequence[Ref | None]) -> None:
        self._release(self.transactions, refs)

    def begin_write(self, ref: Ref | None) -> bool:
        """Hold the item of a PutItem/UpdateItem/DeleteItem; False if a transaction holds it."""
        if ref is not None and ref in self.transactions:
            return False
        if ref is not None:
            self.writes[ref] += 1
            self._written([ref])
        return True

    def end_write(self, ref: Ref | None) -> None:
        self._release(self.writes, [ref])

    def begin_batch_write(self, refs: Sequence[Ref | None]) -> None:
        self.batch_writes.update(r for r in refs if r is not None)
        self._written(refs)

    def end_batch_write(self, refs: Sequence[Ref | None]) -> None:
        self._release(self.batch_writes, refs)

    def begin_read(self, refs: Sequence[Ref | None]) -> TransactionRead | list[bool]:
        """Register a TransactGetItems, or return which items are contended by a write in flight."""
        contended = [
            r is not None and (r in self.transactions or r in self.writes or r in self.batch_writes)
            for r in refs
        ]
        if any(contended):
            return contended
        read = TransactionRead(list(refs))
        for ref in refs:
            if ref is not None:
                self.reads.setdefault(ref, []).append(read)
        return read

    def end_read(self, read: TransactionRead) -> list[bool] | None:
        """Unregister a TransactGetItems; the contended items if a write came meanwhile."""
        for ref in read.refs:
            readers = self.reads.get(ref, []) if ref is not None else []
            if read in readers:
                readers.remove(read)
                if not readers:
                    del self.reads[ref]  # type: ignore[arg-type]
        return read.conflicted if any(read.conflicted) else None


# --------------------------------------------------------------------------------------------------
# Throttling and error bodies
# --------------------------------------------------------------------------------------------------

PROVISIONED = "ProvisionedThroughputExceededException"
THROTTLING = "ThrottlingException"


class ThrottleDice:
    """Which data-plane requests are throttled: the n-th roll depends only on the seed."""

    def __init__(self, rate: float, share: float, seed: int | None) -> None:
        self.rate = rate
        self.share = share
        self._rng = random.Random(seed)

    def roll(self) -> str | None:
        if self.rate <= 0:
            return None
        if self._rng.random() >= self.rate:
            return None
        return THROTTLING if self._rng.random() < self.share else PROVISIONED


def throttle_outcomes(rate: float, share: float, seed: int | None, n: int) -> list[str | None]:
    dice = ThrottleDice(rate, share, seed)
    return [dice.roll() for _ in range(n)]


def cancellation_body(contended: Sequence[bool]) -> dict[str, Any]:
    reasons: list[dict[str, str]] = [
        {"Code": "TransactionConflict", "Message": CONFLICT_MESSAGE} if c else {"Code": "None"}
        for c in contended
    ]
    codes = ", ".join(r["Code"] for r in reasons)
    return {
        "__type": ERROR_PREFIX + "TransactionCanceledException",
        "CancellationReasons": reasons,
        "Message": f"Transaction cancelled, please refer cancellation reasons for specific reasons [{codes}]",
    }


def conflict_body() -> dict[str, Any]:
    return {"__type": ERROR_PREFIX + "TransactionConflictException", "message": CONFLICT_MESSAGE}


def throttle_body(code: str, op: str, table: str, region: str) -> dict[str, Any]:
    kind = "Read" if op in READS else "Write"
    resource = f"arn:aws:dynamodb:{region}:{ACCOUNT_ID}:table/{table}"
    if code == THROTTLING:
        reason = {"reason": f"Table{kind}MaxOnDemandThroughputExceeded", "resource": resource}
        return {
            "__type": ERROR_PREFIX + THROTTLING,
            "message": "Rate of requests exceeds the allowed throughput.",
            "throttlingReasons": [reason],
        }
    reason = {"reason": f"Table{kind}KeyRangeThroughputExceeded", "resource": resource}
    return {
        "__type": ERROR_PREFIX + PROVISIONED,
        "message": (
            "Throughput exceeds the current capacity of your table or index. DynamoDB is automatically "
            "scaling your table or index so please try again shortly. If exceptions persist, check if "
            "you have a hot key: "
            "https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/bp-partition-key-design.html"
        ),
        "ThrottlingReasons": [reason],
    }
