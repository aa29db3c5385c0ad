"""When a broadcast is complete, and the record it is answered with (pure).

The counts of a broadcast are the sum of its counter shards (fanout.accounting); the record stored in
the broadcasts table carries none of them, so every reader adds them here.
"""

from __future__ import annotations

from fanout.accounting import CHANNEL_COUNT_FIELDS, Totals, is_complete
from fanout.models import BroadcastRecord

__all__ = ["completion_ms", "is_complete", "with_totals"]


def with_totals(record: BroadcastRecord, totals: Totals) -> BroadcastRecord:
    """The record with the counts of its counter shards."""
    return record.model_copy(
        update={
            "targeted": totals.targeted,
            "partitions_done": totals.partitions_done,
            "delivered": totals.delivered,
            "gone": totals.gone,
            "failed": totals.failed,
            "channels": _channel_counts(record, totals),
        }
    )


def _channel_counts(record: BroadcastRecord, totals: Totals) -> dict[str, dict[str, int]] | None:
    """Every channel of a channel broadcast, in the operator's order, counted or not yet."""
    audience = record.audience
    if audience is None or audience.channels is None:
        return None
    zero = dict.fromkeys(CHANNEL_COUNT_FIELDS, 0)
    return {name: dict(totals.channels.get(i, zero)) for i, name in enumerate(audience.channels)}


def completion_ms(record: BroadcastRecord) -> int | None:
    """How long the broadcast took from its creation to its completion (None while it has not ended)."""
    if record.completed_at is None:
        return None
    return record.completed_at - record.created_at
