"""Post batches and their outcomes, built for the unit tests of the post stage's decisions."""

from __future__ import annotations

from hypothesis import strategies as st

from fanout.models import PostBatch
from fanout.settlement import PostOutcome


def post_batch(n: int, *, attempt: int = 1, dead: bool = False) -> PostBatch:
    return PostBatch(
        broadcast_id="b",
        partition_id=0,
        batch_id="p0-b0",
        connection_ids=[f"c{i}" for i in range(n)],
        attempt=attempt,
        dead_lettered=dead,
        partitions=1,
        counter_shards=4,
    )


@st.composite
def outcomes(draw: st.DrawFn) -> tuple[PostBatch, PostOutcome]:
    """A batch of 1-40 ids, each delivered (d), gone (g), retried (r), failed (f) or connecting (c)."""
    n = draw(st.integers(1, 40))
    b = post_batch(n, attempt=draw(st.integers(1, 6)), dead=draw(st.booleans()))
    kinds = draw(st.lists(st.sampled_from("dgrfc"), min_size=n, max_size=n))
    lists: dict[str, list[str]] = {k: [] for k in "dgrfc"}
    for cid, kind in zip(b.connection_ids, kinds, strict=True):
        lists[kind].append(cid)
    return b, PostOutcome(lists["d"], lists["g"], lists["r"], lists["f"], lists["c"])
