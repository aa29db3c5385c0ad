"""Exactly-once accounting as plain functions over plain data (no I/O).

A broadcast's counts live in S counter shards (items ``acct#<broadcast>#<k>`` of the ledger table),
never on the broadcast item itself. Each accounting *entry* (one partition counted by the query stage,
one attempt of one post batch settled by the post stage) is added to exactly one shard, chosen by a
hash of the entry's key, by a single conditional UpdateItem that also adds the key to the shard's
``applied`` set:

    ADD delivered :d, gone :g, failed :f, applied :key   IF NOT contains(applied, :key)

so a replayed entry fails its condition and counts nothing. Why this and not a transaction with a
ledger item on one broadcast item, as before:

- DynamoDB cancels a TransactWriteItems that overlaps another transaction on the same item
  (TransactionConflict) and botocore does not retry it; every partition task and post batch wrote the
  same broadcast item, so conflicts grew with the post rate. Single-item conditional updates never
  conflict with each other: DynamoDB serializes them.
- One partition key takes at most 1,000 WCU/s. Spreading the entries over S items divides each
  item's write rate by S; S grows with the broadcast (`counter_shards`) so that every shard's
  ``applied`` set, and so the item size that each update pays for, stays small.
- A plain UpdateItem costs 1 WCU per KB; a transactional write costs 2 per item, and there were two.

Reading the counts sums the shards (one BatchGetItem of S <= 100 keys).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fanout.channels import split_counter

# BatchGetItem reads at most 100 keys in one call; the shards are read in one.
MAX_COUNTER_SHARDS = 100
# Entries per shard aimed at when sizing a broadcast's shards: ~12 bytes each in the `applied` set
# keeps a shard item near 3 KB at the end of the broadcast, so an update costs a few WCU at most.
ENTRIES_PER_SHARD = 250
# A DynamoDB item holds at most 400 KB (attribute names and values together); a query ledger chunk
# stays well under it, leaving room for the key, the other attributes and the list's own overhead.
LEDGER_CHUNK_BYTES = 300_000
COUNT_FIELDS = ("targeted", "partitionsDone", "delivered", "gone", "failed")
# What a channel broadcast also counts per channel (fanout.channels.counter_name).
CHANNEL_COUNT_FIELDS = ("targeted", "delivered", "gone", "failed")


@dataclass(frozen=True)
class Totals:
    """The sum of a broadcast's counter shards."""

    targeted: int = 0
    partitions_done: int = 0
    delivered: int = 0
    gone: int = 0
    failed: int = 0
    # every entry key applied so far (the query entries name the partitions already counted)
    applied: frozenset[str] = frozenset()
    # a channel broadcast's counts per channel: {channel: {targeted, delivered, gone, failed}}
    channels: Mapping[int, Mapping[str, int]] = field(default_factory=dict)  # by audience index

    @property
    def accounted(self) -> int:
        return self.delivered + self.gone + self.failed

    def counted_partitions(self) -> set[int]:
        return {int(e[1:]) for e in self.applied if e.startswith("q")}


def query_entry(partition_id: int) -> str:
    """The entry of one partition's count (targeted, partitionsDone)."""
    return f"q{partition_id}"


def post_entry(batch_id: str, attempt: int) -> str:
    """The entry of one attempt of one post batch (delivered, gone, failed)."""
    return f"{batch_id}.{attempt}"


def shard_of(entry: str, shards: int) -> int:
    """The counter shard an entry always goes to (stable across processes: crc32, not hash())."""
    return zlib.crc32(entry.encode()) % shards


def counter_shards(partition_counts: Iterable[int], batch_size: int, *, minimum: int) -> int:
    """How many counter shards a broadcast gets: enough for ENTRIES_PER_SHARD entries each.

    The entries are one per partition plus one per post batch (retries add a few more).
    """
    entries = 0
    for count in partition_counts:
        entries += 1 + math.ceil(max(count, 0) / batch_size)
    wanted = math.ceil(entries / ENTRIES_PER_SHARD)
    return max(1, min(MAX_COUNTER_SHARDS, max(minimum, wanted)))


def sum_shards(items: Iterable[Mapping[str, Any]]) -> Totals:
    """Add up the shards' counters (plain values, as deserialized from DynamoDB)."""
    sums = dict.fromkeys(COUNT_FIELDS, 0)
    applied: set[str] = set()
    channels: dict[int, dict[str, int]] = {}
    for item in items:
        for name in COUNT_FIELDS:
            sums[name] += int(item.get(name, 0) or 0)
        applied.update(str(e) for e in item.get("applied") or ())
        for name, value in item.items():
            parts = split_counter(str(name))
            if parts is not None and parts[1] in CHANNEL_COUNT_FIELDS:
                counts = channels.setdefault(parts[0], dict.fromkeys(CHANNEL_COUNT_FIELDS, 0))
                counts[parts[1]] += int(value or 0)
    return Totals(
        targeted=sums["targeted"],
        partitions_done=sums["partitionsDone"],
        delivered=sums["delivered"],
        gone=sums["gone"],
        failed=sums["failed"],
        applied=frozenset(applied),
        channels=channels,
    )


def is_counter(name: str) -> bool:
    """Whether a ledger entry may add to `name`: a broadcast's count, or a channel's."""
    if name in COUNT_FIELDS:
        return True
    parts = split_counter(name)
    return parts is not None and parts[1] in CHANNEL_COUNT_FIELDS


def is_complete(partitions: int, totals: Totals) -> bool:
    """Every partition was counted and every targeted connection is accounted for."""
    return totals.partitions_done >= partitions and totals.accounted >= totals.targeted


def chunk_ids(connection_ids: Sequence[str], max_bytes: int = LEDGER_CHUNK_BYTES) -> list[list[str]]:
    """Split a partition's ids into ledger chunks of at most `max_bytes` each (at least one chunk).

    A list element costs its length plus a few bytes of overhead in DynamoDB's size accounting;
    4 per element is counted to stay on the safe side.
    """
    chunks: list[list[str]] = [[]]
    size = 0
    for cid in connection_ids:
        cost = len(cid.encode()) + 4
        if chunks[-1] and size + cost > max_bytes:
            chunks.append([])
            size = 0
        chunks[-1].append(cid)
        size += cost
    return chunks
