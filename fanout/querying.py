"""What the query stage sends for one partition task (pure): its count, its post batches, and the post
queue shard each batch goes to.

A partition task may run twice (SQS delivers at least once); the ids of its first run are stored (the
plan), so a replay sends the same batches with the same ids, which the post stage's ledger entries
deduplicate, and counts nothing (the count's entry was applied).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from fanout.channels import channel_index, with_channel_counts
from fanout.models import PartitionTask, PostBatch
from fanout.planning import plan_batches


@dataclass
class ShardCycle:
    """Round-robin over `shards` queue shards, from a random start, so that the workers of one
    container spread their post batches evenly and different containers do not start on the same one."""

    shards: int
    rand: Callable[[int], int] = random.randrange
    _next: int = field(default=-1, init=False)

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ValueError("shards must be at least 1")

    def __call__(self) -> int:
        if self._next < 0:
            self._next = self.rand(self.shards)
        shard = self._next
        self._next = (shard + 1) % self.shards
        return shard


def query_counts(connection_ids: Sequence[str], task: PartitionTask) -> dict[str, int]:
    """What one partition task adds to the broadcast's counters, once (the query entry); a channel's
    unit adds to the channel's `targeted` too."""
    counts = {"targeted": len(connection_ids), "partitionsDone": 1}
    return with_channel_counts(counts, channel_index(task.partition_id, task.channel))


def post_batches(task: PartitionTask, connection_ids: Sequence[str], batch_size: int) -> list[PostBatch]:
    """The partition's post batches of at most `batch_size` ids, with ids stable across replays."""
    return [
        PostBatch(
            broadcast_id=task.broadcast_id,
            partition_id=task.partition_id,
            batch_id=batch_id,
            connection_ids=chunk,
            partitions=task.partitions,
            counter_shards=task.counter_shards,
            frame=task.frame,
            channel=task.channel,
            offset=task.offset,
            epoch=task.epoch,
        )
        for batch_id, chunk in plan_batches(connection_ids, batch_size, partition_id=task.partition_id)
    ]


def by_shard(batches: Sequence[PostBatch], next_shard: Callable[[], int]) -> dict[int, list[str]]:
    """The batches' bodies (compact: defaults left out), by the post queue shard each goes to."""
    out: dict[int, list[str]] = {}
    for batch in batches:
        out.setdefault(next_shard(), []).append(batch.model_dump_json(by_alias=True, exclude_defaults=True))
    return out


def checks_completion(connection_ids: Sequence[str], counted: bool) -> bool:
    """An empty partition counted now may be the last thing the broadcast waited for; a partition with
    connections leaves the check to the post batches that account for them."""
    return counted and not connection_ids
