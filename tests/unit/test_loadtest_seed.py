"""loadtest/seed.py without a stack: ids, partition assignment with the engine's chooser, batch writes."""

from __future__ import annotations

import base64
import random
from collections import Counter
from typing import Any

import pytest

from loadtest.seed import (
    assign_partitions,
    chunks,
    connection_item,
    new_connection_ids,
    partition_major,
    write_all,
    write_batch,
)
from partitions.choice import PartitionChooser, ViewLoad


def test_ids_are_distinct_and_shaped_like_api_gateways() -> None:
    ids = new_connection_ids(5000, random.Random(7))
    assert len(set(ids)) == 5000
    for cid in ids[:200]:
        assert len(cid) == 16 and cid.endswith("=") and not cid.endswith("==")
        assert len(base64.b64decode(cid)) == 11
    assert new_connection_ids(10, random.Random(7)) == ids[:10]


def test_assignment_uses_the_chooser_and_evens_out_the_partitions() -> None:
    # Given partitions that already hold uneven counts
    loads = []

    def loader() -> ViewLoad:
        loads.append(1)
        return ViewLoad({0: 50, 1: 0, 2: 10, 3: 0})

    chooser = PartitionChooser(
        loader, partition_count=4, choices=2, ttl_seconds=float("inf"), rng=random.Random(1)
    )
    # When 1,000 ids are assigned
    assigned = assign_partitions(new_connection_ids(1000, random.Random(1)), chooser)
    # Then the view was read once, every partition is used, and the totals end up close to even
    assert len(loads) == 1
    totals = Counter(assigned)
    totals.update({0: 50, 2: 10})
    assert set(assigned) <= {0, 1, 2, 3}
    assert max(totals.values()) - min(totals.values()) <= 20


def test_items_match_the_connections_table_row() -> None:
    item = connection_item("abc=", 7, now=1_700_000_000.5, ttl_seconds=7200)
    assert item == {
        "connectionId": {"S": "abc="},
        "partitionId": {"N": "7"},
        "connectedAt": {"N": "1700000000500"},
        "expiresAt": {"N": "1700007200"},
        "userId": {"S": "simulated"},
        "sourceIp": {"S": "127.0.0.1"},
    }


class FlakyDynamo:
    """Leaves the last item of each request unprocessed `leave` times, then accepts everything."""

    def __init__(self, leave: int) -> None:
        self.leave = leave
        self.written: list[str] = []
        self.calls = 0

    def batch_write_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        [(table, requests)] = RequestItems.items()
        assert len(requests) <= 25
        if self.leave > 0 and len(requests) > 1:
            self.leave -= 1
            self.written += [r["PutRequest"]["Item"]["connectionId"]["S"] for r in requests[:-1]]
            return {"UnprocessedItems": {table: requests[-1:]}}
        self.written += [r["PutRequest"]["Item"]["connectionId"]["S"] for r in requests]
        return {"UnprocessedItems": {}}


def test_unprocessed_items_are_retried_until_written() -> None:
    items = [connection_item(f"id{i}", 0, now=0, ttl_seconds=60) for i in range(25)]
    client = FlakyDynamo(leave=3)
    from loadtest.seed import WriteStats

    stats = WriteStats()
    write_batch(client, "t", items, stats, sleep=lambda _: None)
    assert sorted(client.written) == sorted(f"id{i}" for i in range(25))
    assert stats.unprocessed_retries == 1 and stats.requests == 2


def test_write_batch_gives_up_after_the_last_attempt() -> None:
    class Never:
        def batch_write_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
            return {"UnprocessedItems": RequestItems}

    from loadtest.seed import WriteStats

    with pytest.raises(RuntimeError, match="unprocessed"):
        write_batch(
            Never(),
            "t",
            [connection_item("x", 0, now=0, ttl_seconds=60)],
            WriteStats(),
            max_attempts=3,
            sleep=lambda _: None,
        )


def test_write_all_writes_every_item_once_in_parallel() -> None:
    items = [connection_item(f"id{i}", i % 5, now=0, ttl_seconds=60) for i in range(1003)]
    client = FlakyDynamo(leave=10)
    progress: list[int] = []
    stats = write_all(client, "t", items, workers=4, on_progress=progress.append)
    assert Counter(client.written) == Counter(f"id{i}" for i in range(1003))
    assert sum(progress) == 1003
    assert stats.requests == client.calls


def test_chunks() -> None:
    assert [list(c) for c in chunks([1, 2, 3, 4, 5], 2)] == [[1, 2], [3, 4], [5]]


def test_rows_are_written_partition_by_partition_keeping_every_id_once() -> None:
    ids = [f"c{i}" for i in range(9)]
    assigned = [2, 0, 1, 2, 0, 1, 2, 0, 1]
    pairs = partition_major(ids, assigned)
    assert [pid for _, pid in pairs] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [cid for cid, pid in pairs if pid == 2] == ["c0", "c3", "c6"]  # first order kept
    assert sorted(pairs) == sorted(zip(ids, assigned, strict=True))


def test_a_seeded_subscription_is_found_in_its_bucket_range_and_expires_with_its_connection() -> None:
    from fanout.channels import bucket_of, connection_of, member_range
    from loadtest.seed import SIMULATED_USER, subscription_item

    row = subscription_item("room:1", "abcdefghijklmno=", now=1_000.5, ttl_seconds=3600)
    connection = connection_item("abcdefghijklmno=", 3, now=1_000.5, ttl_seconds=3600)
    assert row["channel"] == {"S": "room:1"}
    assert connection_of(row["member"]["S"]) == "abcdefghijklmno="
    lo, hi = member_range(bucket_of("abcdefghijklmno="), bucket_of("abcdefghijklmno="))
    assert lo <= row["member"]["S"] <= hi
    assert row["expiresAt"] == connection["expiresAt"]
    assert row["userId"] == connection["userId"] == {"S": SIMULATED_USER}
