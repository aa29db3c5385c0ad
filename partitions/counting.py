"""Counter aggregation: a batch of connections-table stream records → one net delta per partition.

Pure: records are the plain dicts of a Lambda DynamoDB Streams event (DynamoDB JSON images).

- INSERT: +1 on the new image's partition.
- REMOVE: -1 on the old image's partition, whether `$disconnect` deleted the row or TTL expired it
  (TTL deletions carry `userIdentity.principalId == "dynamodb.amazonaws.com"`; counted the same,
  reported apart).
- MODIFY: nothing, unless `partitionId` changed: then -1 on the old, +1 on the new.

Partial batches. Lambda retries a stream batch from the lowest sequence number reported as failed,
so every record after the first failure comes back, including those that succeeded. Counting them
now would count them twice. So only the prefix before the first failed record is applied
(:func:`prefix_before_failure`); the rest is counted when it is redelivered. If an `ADD` then fails
for some partition, :func:`plan_checkpoint` moves the checkpoint back to the first record touching
that partition and computes the compensating deltas for the partitions whose `ADD` did land, so that
the redelivered records are not counted twice there either.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

TTL_PRINCIPAL = "dynamodb.amazonaws.com"


class MalformedRecord(ValueError):
    """A stream record that cannot be counted (wrong view type, unreadable partitionId)."""


@dataclass(frozen=True)
class StreamChange:
    """What one stream record means for the counters."""

    sequence: str
    event_name: str
    old_partition: int | None = None
    new_partition: int | None = None
    expired: bool = False

    def deltas(self) -> dict[int, int]:
        out: dict[int, int] = {}
        if self.old_partition == self.new_partition:
            return out
        if self.old_partition is not None:
            out[self.old_partition] = out.get(self.old_partition, 0) - 1
        if self.new_partition is not None:
            out[self.new_partition] = out.get(self.new_partition, 0) + 1
        return out


def _partition_of(image: Mapping[str, Any] | None) -> int | None:
    if image is None:
        return None
    attr = image.get("partitionId")
    if attr is None:
        return None  # not a connection row of any partition: nothing to count
    raw = attr.get("N") if isinstance(attr, Mapping) else attr
    try:
        pid = int(str(raw))
    except (TypeError, ValueError) as exc:
        raise MalformedRecord(f"partitionId is not a number: {raw!r}") from exc
    if pid < 0:
        raise MalformedRecord(f"partitionId is negative: {pid}")
    return pid


def change_from_record(record: Mapping[str, Any]) -> StreamChange:
    """The counter change of one stream record; raises MalformedRecord if it cannot be counted."""
    body = record.get("dynamodb")
    if not isinstance(body, Mapping):
        raise MalformedRecord("no dynamodb section")
    sequence = str(body.get("SequenceNumber", ""))
    name = record.get("eventName")
    old_image = body.get("OldImage")
    new_image = body.get("NewImage")
    if name == "INSERT":
        if new_image is None:
            raise MalformedRecord("INSERT without NewImage: the stream must be NEW_AND_OLD_IMAGES")
        return StreamChange(sequence, name, None, _partition_of(new_image))
    if name == "REMOVE":
        if old_image is None:
            raise MalformedRecord("REMOVE without OldImage: the stream must be NEW_AND_OLD_IMAGES")
        identity = record.get("userIdentity") or {}
        expired = isinstance(identity, Mapping) and identity.get("principalId") == TTL_PRINCIPAL
        return StreamChange(sequence, name, _partition_of(old_image), None, expired=expired)
    if name == "MODIFY":
        if old_image is None or new_image is None:
            raise MalformedRecord("MODIFY without both images: the stream must be NEW_AND_OLD_IMAGES")
        return StreamChange(sequence, name, _partition_of(old_image), _partition_of(new_image))
    raise MalformedRecord(f"unknown eventName {name!r}")


def aggregate(changes: Iterable[StreamChange]) -> dict[int, int]:
    """One net delta per touched partition; partitions whose changes cancel out are left out."""
    total: dict[int, int] = {}
    for change in changes:
        for pid, delta in change.deltas().items():
            total[pid] = total.get(pid, 0) + delta
    return {pid: delta for pid, delta in sorted(total.items()) if delta}


def prefix_before_failure(changes: Sequence[StreamChange | None]) -> list[StreamChange]:
    """The changes before the first failed record (None), in stream order."""
    out: list[StreamChange] = []
    for change in changes:
        if change is None:
            break
        out.append(change)
    return out


@dataclass(frozen=True)
class Checkpoint:
    """Where Lambda must resume after the ADDs of a batch, and what to undo so nothing counts twice.

    `index` is the position (in the applied prefix) of the first record to redeliver, or None when
    the whole prefix counted. `compensation` are deltas to ADD to partitions whose ADD landed but
    included records at or after `index`.
    """

    index: int | None
    compensation: dict[int, int]


def plan_checkpoint(applied: Sequence[StreamChange], failed_partitions: Iterable[int]) -> Checkpoint:
    """After ADDs of `aggregate(applied)` where those of `failed_partitions` did not land."""
    failed = set(failed_partitions)
    if not failed:
        return Checkpoint(None, {})
    index = next(
        (i for i, change in enumerate(applied) if failed.intersection(change.deltas())),
        None,
    )
    if index is None:  # the failed partitions had no net change from any single record
        return Checkpoint(None, {})
    undo = aggregate(applied[index:])
    compensation = {pid: -delta for pid, delta in undo.items() if pid not in failed}
    return Checkpoint(index, compensation)
