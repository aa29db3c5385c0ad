"""Models shared by the stages: queue messages, broadcast records, API bodies."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class BroadcastStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class _Message(BaseModel):
    """A queue message body: camelCase on the wire, compact and frozen."""

    model_config = ConfigDict(populate_by_name=True, frozen=True, extra="forbid")


class SwarmRequest(_Message):
    """What the operator API hands the swarm function (async invoke)."""

    broadcast_id: str = Field(alias="broadcastId")


class PartitionTask(_Message):
    """One partition of one broadcast, for the query stage."""

    broadcast_id: str = Field(alias="broadcastId")
    partition_id: int = Field(alias="partitionId", ge=0)
    # The broadcast's shape, fixed by the swarm: partitions targeted and counter shards (accounting).
    partitions: int = Field(ge=1)
    counter_shards: int = Field(alias="counterShards", ge=1, le=100)
    # The frame travels inline when small; otherwise the query/post stages load it by broadcastId.
    frame: str | None = None


class PostBatch(_Message):
    """Up to B connection ids of one broadcast, for the post stage."""

    broadcast_id: str = Field(alias="broadcastId")
    partition_id: int = Field(alias="partitionId", ge=0)
    batch_id: str = Field(alias="batchId", description="stable across re-enqueues of the same ids")
    connection_ids: list[str] = Field(alias="connectionIds", min_length=1)
    partitions: int = Field(ge=1)
    counter_shards: int = Field(alias="counterShards", ge=1, le=100)
    attempt: int = Field(default=1, ge=1)
    # True when this batch is a retry of ids that already counted toward `targeted`.
    retry: bool = False
    # Set on batches sent to the dead-letter queue: their ids already count as failed, so a redriven
    # batch moves what it delivers from `failed` to `delivered`/`gone`.
    dead_lettered: bool = Field(default=False, alias="deadLettered")
    frame: str | None = None


class BroadcastRecord(BaseModel):
    """A broadcast as stored in the broadcasts table and answered by GET /broadcasts/{id}."""

    model_config = ConfigDict(populate_by_name=True)

    broadcast_id: str = Field(alias="broadcastId")
    status: BroadcastStatus
    partitions: int = 0
    partitions_done: int = Field(default=0, alias="partitionsDone")
    targeted: int = 0
    delivered: int = 0
    gone: int = 0
    failed: int = 0
    created_at: int = Field(alias="createdAt", description="epoch ms")
    completed_at: int | None = Field(default=None, alias="completedAt")
    counter_shards: int = Field(default=0, alias="counterShards")
    # why the broadcast failed (or why its last attempt failed, while it is still pending)
    error: str | None = None
    sweeps: int = 0
    swept_at: int | None = Field(default=None, alias="sweptAt")
    swept_progress: int = Field(default=0, alias="sweptProgress")

    @property
    def accounted(self) -> int:
        return self.delivered + self.gone + self.failed

    def public(self) -> dict[str, Any]:
        return {
            "broadcastId": self.broadcast_id,
            "status": self.status.value,
            "partitions": self.partitions,
            "targeted": self.targeted,
            "delivered": self.delivered,
            "gone": self.gone,
            "failed": self.failed,
            "createdAt": self.created_at,
            "completedAt": self.completed_at,
            **({"error": self.error} if self.error else {}),
        }
