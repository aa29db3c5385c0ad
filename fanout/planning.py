"""Pure planning of the pipeline: shards and post batches (completion: fanout.accounting)."""

from __future__ import annotations

from collections.abc import Sequence


def partition_shard(partition_id: int, shards: int) -> int:
    """Partition tasks of one partition always go to the same shard."""
    return partition_id % shards


def plan_batches(
    connection_ids: Sequence[str], batch_size: int, *, partition_id: int
) -> list[tuple[str, list[str]]]:
    """Split a partition's ids into post batches of at most `batch_size`, with deterministic batch ids.

    The ids come in the GSI's order, so a replay of the same plan gives the same batch ids, which the
    post stage's ledger deduplicates.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    return [
        (f"p{partition_id}-b{n}", list(connection_ids[start : start + batch_size]))
        for n, start in enumerate(range(0, len(connection_ids), batch_size))
    ]
