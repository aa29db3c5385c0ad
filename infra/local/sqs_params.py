"""Validation of the local SQS server's action parameters (the JSON body of a request): plain
functions raising `SqsError` with the code and message SQS answers."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from typing import Any

from infra.local.sqs_model import MAX_BATCH_ENTRIES, SqsError, invalid

_BATCH_ID = re.compile(r"^[A-Za-z0-9_-]{1,80}$")


def int_param(params: dict[str, Any], name: str, default: int, lo: int, hi: int, reason: str) -> int:
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise invalid(f"Value {value} for parameter {name} is invalid. Reason: {reason}")
    return value


def str_param(params: dict[str, Any], name: str) -> str:
    value = params.get(name)
    if not isinstance(value, str) or not value:
        raise SqsError("MissingParameter", f"The request must contain the parameter {name}.")
    return value


def message_size(body: str, attributes: dict[str, dict[str, Any]]) -> int:
    size = len(body.encode())
    for name, value in attributes.items():
        size += len(name.encode()) + len(str(value.get("DataType", "")).encode())
        if "BinaryValue" in value:
            size += len(base64.b64decode(value["BinaryValue"]))
        else:
            size += len(str(value.get("StringValue", "")).encode())
    return size


def validate_message_attributes(attributes: Any) -> dict[str, dict[str, Any]]:
    if not attributes:
        return {}
    if not isinstance(attributes, dict) or len(attributes) > 10:
        raise invalid(f"Number of message attributes [{len(attributes)}] exceeds the allowed maximum [10].")
    for name, value in attributes.items():
        if not isinstance(value, dict):
            raise invalid(f"The message attribute '{name}' must contain a non-empty value.")
        data_type = value.get("DataType")
        if not isinstance(data_type, str) or not data_type:
            raise invalid(f"The message attribute '{name}' must contain non-empty message attribute type.")
        base = data_type.split(".", 1)[0]
        if base not in ("String", "Number", "Binary"):
            raise invalid(
                f"The type of message (user) attribute '{name}' is invalid. You must use only the following "
                "supported type prefixes: Binary, Number, String."
            )
        key = "BinaryValue" if base == "Binary" else "StringValue"
        if value.get(key) in (None, ""):
            raise invalid(f"The message attribute '{name}' must contain a non-empty message attribute value.")
        if base == "Number":
            try:
                float(value["StringValue"])
            except ValueError as exc:
                raise invalid(
                    f"Can't cast the value of message (user) attribute '{name}' to a number."
                ) from exc
    return attributes


def attribute_filter(names: Any) -> Callable[[str], bool] | None:
    """A predicate over message attribute names from MessageAttributeNames, or None for none."""
    if not names:
        return None
    names = list(names)
    if "All" in names or ".*" in names:
        return lambda _name: True
    exact = {n for n in names if not n.endswith(".*")}
    prefixes = tuple(n[:-1] for n in names if n.endswith(".*"))
    return lambda name: name in exact or (bool(prefixes) and name.startswith(prefixes))


def batch_entries(params: dict[str, Any], noun: str) -> list[dict[str, Any]]:
    entries = params.get("Entries")
    if not entries:
        raise SqsError("EmptyBatchRequest", f"There should be at least one {noun} in the request.")
    if not isinstance(entries, list):
        raise invalid("Entries must be a list.")
    if len(entries) > MAX_BATCH_ENTRIES:
        raise SqsError(
            "TooManyEntriesInBatchRequest",
            f"Maximum number of entries per request are {MAX_BATCH_ENTRIES}. You have sent {len(entries)}.",
        )
    seen: set[str] = set()
    for entry in entries:
        entry_id = entry.get("Id") if isinstance(entry, dict) else None
        if not isinstance(entry_id, str) or not _BATCH_ID.match(entry_id):
            raise SqsError(
                "InvalidBatchEntryId",
                "A batch entry id can only contain alphanumeric characters, hyphens and underscores. "
                "It can be at most 80 letters long.",
            )
        if entry_id in seen:
            raise SqsError("BatchEntryIdsNotDistinct", f"Id {entry_id} repeated.")
        seen.add(entry_id)
    return entries


def failed_entry(entry_id: str, err: SqsError) -> dict[str, Any]:
    return {"Id": entry_id, "SenderFault": True, "Code": err.code, "Message": err.message}
