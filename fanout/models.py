"""Models shared by the stages: queue messages, broadcast records, API bodies."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from fanout.channels import MAX_CHANNELS_PER_BROADCAST, channel_problem


class BroadcastStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


def _channel_name(name: str) -> str:
    problem = channel_problem(name)
    if problem is not None:
        raise ValueError(problem)
    return name


def _distinct(values: list[str] | None) -> list[str] | None:
    return list(dict.fromkeys(values)) if values is not None else None


ChannelName = Annotated[str, AfterValidator(_channel_name)]
UserId = Annotated[str, Field(min_length=1, max_length=256)]
# API Gateway's connection ids are short base64 strings; 128 leaves room for any other gateway's.
ConnectionId = Annotated[str, Field(min_length=1, max_length=128)]
MAX_AUDIENCE_IDS = 1_000


class AudienceKind(StrEnum):
    EVERYONE = "everyone"
    CHANNELS = "channels"
    USERS = "users"
    CONNECTIONS = "connections"


class Audience(BaseModel):
    """Who a broadcast goes to (the operator API's ``"to"``): exactly one of the three lists.

    No audience at all means every connection. Repeated names count once, in their first order.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    channels: list[ChannelName] | None = Field(
        default=None, min_length=1, max_length=MAX_CHANNELS_PER_BROADCAST, description="channel names"
    )
    users: list[UserId] | None = Field(
        default=None, min_length=1, max_length=MAX_AUDIENCE_IDS, description="every connection of each"
    )
    connections: list[ConnectionId] | None = Field(
        default=None, min_length=1, max_length=MAX_AUDIENCE_IDS, description="connection ids"
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Audience:
        given = [name for name in ("channels", "users", "connections") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError('"to" takes exactly one of "channels", "users" or "connections"')
        for name in given:
            object.__setattr__(self, name, _distinct(getattr(self, name)))
        return self

    @property
    def kind(self) -> AudienceKind:
        if self.channels is not None:
            return AudienceKind.CHANNELS
        if self.users is not None:
            return AudienceKind.USERS
        return AudienceKind.CONNECTIONS

    @property
    def ids(self) -> list[str]:
        return list(self.channels or self.users or self.connections or [])

    def public(self) -> dict[str, list[str]]:
        return {self.kind.value: self.ids}


class _Message(BaseModel):
    """A queue message body: camelCase on the wire, compact and frozen."""

    model_config = ConfigDict(populate_by_name=True, frozen=True, extra="forbid")


class SwarmRequest(_Message):
    """What the operator API hands the swarm function (async invoke)."""

    broadcast_id: str = Field(alias="broadcastId")


class RecoverItem(_Message):
    channel: ChannelName
    since: int = Field(ge=0)
    epoch: str = Field(min_length=1, max_length=64)


class RecoveryRequest(_Message):
    """What $connect hands the recovery function (async invoke): the channels of ?recover=."""

    connection_id: str = Field(alias="connectionId", min_length=1, max_length=128)
    items: list[RecoverItem] = Field(min_length=1, max_length=1_000)


class PartitionTask(_Message):
    """One partition of one broadcast, for the query stage."""

    broadcast_id: str = Field(alias="broadcastId")
    partition_id: int = Field(alias="partitionId", ge=0)
    # The broadcast's shape, fixed by the swarm: partitions targeted and counter shards (accounting).
    partitions: int = Field(ge=1)
    counter_shards: int = Field(alias="counterShards", ge=1, le=100)
    # The frame travels inline when small; otherwise the query/post stages load it by broadcastId.
    frame: str | None = None
    # Set on the task of a channel's bucket range (its partitionId is the unit: fanout.channels).
    channel: ChannelName | None = None
    # A client's message sent with echo off: the sender's connection, left out of the unit's ids.
    exclude_connection: str | None = Field(default=None, alias="excludeConnection")
    # The message's place in the channel's history (fanout.history): in the envelope, and which
    # subscription rows take it live.
    offset: int | None = Field(default=None, ge=1)
    epoch: str | None = None


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
    # A channel broadcast's batch: the envelope names the channel, and the channel's counts add up.
    channel: ChannelName | None = None
    offset: int | None = Field(default=None, ge=1)
    epoch: str | None = None


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
    audience: Audience | None = Field(default=None, alias="to")
    # per channel of a channel broadcast: targeted, delivered, gone, failed
    channels: dict[str, dict[str, int]] | None = None
    # a client's message sent with echo off: its sender's connection, never targeted
    exclude_connection: str | None = Field(default=None, alias="excludeConnection")

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
            **({"to": self.audience.public()} if self.audience is not None else {}),
            **({"channels": self.channels} if self.channels is not None else {}),
            **({"error": self.error} if self.error else {}),
        }
