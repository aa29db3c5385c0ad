"""Settings: one pydantic-settings model per function, composed from shared parts, built at cold start.

Every field is read from an environment variable named ``FANOUT_<FIELD>`` (upper case); lists are
JSON (``FANOUT_POST_QUEUE_URLS='["https://...","https://..."]'``). AWS endpoints are not settings
of the engine: boto3/aioboto3 read ``AWS_ENDPOINT_URL_DYNAMODB``, ``AWS_ENDPOINT_URL_SQS`` and
``AWS_ENDPOINT_URL_LAMBDA`` themselves, which is how the local stack points the same code at its
emulators.

A function's model declares without a default what the function cannot run without (its tables,
queue URLs, the @connections endpoint, the token secret, the swarm function), so a missing or empty
variable fails the construction, once per container (``load``), with a ConfigurationError that
names the variable, before the first record is touched. Tables get no default because the CDK app
lets CloudFormation name them: a default would name a table that does not exist in AWS.

``Settings`` is every part at once with the local stack's defaults, for the tools and tests that
provision or drive the whole system; no function reads it.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, TypeVar, cast

from pydantic import AliasChoices, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from fanout.errors import ConfigurationError

# API Gateway's WebSocket message limit (128 KB); frames above it are refused up front.
MAX_FRAME_BYTES = 128 * 1024
# API Gateway closes a WebSocket after 2 hours at most; rows outlive that a little (TTL).
CONNECTION_TTL_SECONDS = 2 * 3600 + 15 * 60
ENV_PREFIX = "FANOUT_"

# Set and not empty: an empty value is as unusable as a missing one.
Name = Annotated[str, Field(min_length=1)]
Urls = Annotated[list[Name], Field(min_length=1)]


def env_name(model: type[BaseSettings], field: str) -> str:
    """The environment variable a field of `model` is read from."""
    info = model.model_fields.get(field)
    alias = info.validation_alias if info is not None else None
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    if isinstance(alias, str):
        return alias
    name = f"{model.model_config.get('env_prefix', ENV_PREFIX)}{field}"
    return name if model.model_config.get("case_sensitive") else name.upper()


def describe(model: type[BaseSettings], exc: ValidationError) -> str:
    """The problems of a failed construction, each under the variable to fix (values left out: a
    setting may be sensitive)."""
    missing: list[str] = []
    invalid: list[str] = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = error.get("loc") or ()
        if not loc:  # a model validator's: its message names the variables
            invalid.append(str(error["msg"]).removeprefix("Value error, "))
        elif error["type"] == "missing":
            missing.append(env_name(model, str(loc[0])))
        else:
            where = "".join(f"[{p}]" for p in loc[1:])
            invalid.append(f"{env_name(model, str(loc[0]))}{where}: {error['msg']}")
    parts = []
    if missing:
        parts.append(f"missing settings: {', '.join(missing)}")
    if invalid:
        parts.append(f"invalid settings: {'; '.join(invalid)}")
    return f"{model.__name__}: {'; '.join(parts)}"


class FunctionSettings(BaseSettings):
    """What every function's settings share: the ``FANOUT_`` prefix, immutability, the region."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    region: str = Field(
        default="us-east-1",
        validation_alias=AliasChoices("FANOUT_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"),
    )

    def __init__(self, **values: Any) -> None:
        # pydantic names the field; whoever fixes a deployment needs the variable (and a
        # ConfigurationError, which the handlers never mistake for a bad event).
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigurationError(describe(type(self), exc)) from exc
        except SettingsError as exc:  # a value the env source could not parse (lists are JSON)
            found = re.search(r'field "(\w+)"', str(exc))
            env = env_name(type(self), found.group(1)) if found else "a FANOUT_* variable"
            raise ConfigurationError(
                f"{type(self).__name__}: invalid settings: {env} is not valid JSON"
            ) from exc


# -- parts ------------------------------------------------------------------------------------------
class ConnectionsPart(FunctionSettings):
    connections_table: Name
    connections_index: str = "byPartition"
    connection_ttl_seconds: int = Field(default=CONNECTION_TTL_SECONDS, ge=60)


class SubscriptionsPart(FunctionSettings):
    subscriptions_table: Name
    max_subscriptions: int = Field(
        default=100, ge=1, le=1_000, description="channels one connection may be subscribed to at once"
    )


class ChannelsPart(FunctionSettings):
    channels_table: Name = Field(description="channel occupancy: connections and users per channel")


class HistoryPart(FunctionSettings):
    history_table: Name = Field(description="channel history: offsets, epochs, the last messages")
    history_keep: int = Field(default=100, ge=1, le=10_000, description="K messages kept per channel")
    history_ttl_seconds: int = Field(default=3600, ge=60, le=7 * 24 * 3600, description="T: kept this long")
    history_meta_ttl_seconds: int = Field(
        default=24 * 3600,
        ge=60,
        le=30 * 24 * 3600,
        description="a channel idle this long loses its offsets: the next message starts a new epoch",
    )
    history_page_size: int = Field(default=50, ge=1, le=1_000, description="messages per history page")


class RecoveryInvokerPart(FunctionSettings):
    # Optional: the topology always wires it; without it a ?recover= cannot be served and $connect
    # refuses it (500), every other connect is unaffected.
    recovery_function_name: str = Field(
        default="", description="the function recovering a reconnected connection (?recover=)"
    )


class PartitionsPart(FunctionSettings):
    partitions_table: Name
    partition_count: int = Field(default=100, ge=1, le=100_000, description="N partitions")


class BroadcastsPart(FunctionSettings):
    broadcasts_table: Name
    idempotency_table: Name


class ChatPart(FunctionSettings):
    """Client messages to others (fanout.chat): token buckets per connection and per user, shared by
    every container through the rate limits table."""

    rate_limits_table: Name = Field(description="token buckets of client messages (fanout.ratelimit)")
    connection_message_rate: float = Field(default=10.0, gt=0, le=10_000, description="messages/s")
    connection_message_burst: int = Field(default=20, ge=1, le=100_000, description="messages at once")
    user_message_rate: float = Field(default=10.0, gt=0, le=10_000, description="messages/s per user")
    user_message_burst: int = Field(default=20, ge=1, le=100_000, description="per user, at once")
    message_idempotency_seconds: int = Field(
        default=600, ge=60, le=86_400, description="how long a client message id returns its first ack"
    )


class PlacementPart(FunctionSettings):
    partition_choices: int = Field(default=2, ge=1, le=64, description="d candidates (docs/partitions.md)")
    partition_view_ttl_seconds: float = Field(default=3.0, gt=0, le=300)


class ReconcilePart(FunctionSettings):
    reconcile_quiet_seconds: float = Field(
        default=15.0,
        ge=0,
        description="the reconciler leaves a partition alone if the stream changed it this recently "
        "(above the stream's processing lag, or recounts race the records in flight)",
    )
    reconcile_partitions_per_run: int = Field(
        default=100,
        ge=1,
        le=100_000,
        description="partitions one reconciler run recounts, in turn: with more partitions than this, "
        "each is recounted every ceil(partitions/this) runs (a recount reads every row)",
    )


class BroadcastApiPart(FunctionSettings):
    max_frame_bytes: int = Field(default=MAX_FRAME_BYTES, ge=1, le=MAX_FRAME_BYTES)
    idempotency_ttl_seconds: int = Field(default=3600, ge=60)


class SwarmInvokerPart(FunctionSettings):
    swarm_function_name: Name


class SweepPart(FunctionSettings):
    sweep_after_seconds: float = Field(
        default=300, gt=0, description="a broadcast still queued or running this long is re-driven"
    )
    sweep_attempts: int = Field(default=3, ge=0, le=20, description="re-drives before it is marked failed")


class TokenPart(FunctionSettings):
    token_secret_arn: Name = Field(description="Secrets Manager secret of the HS256 key")


class PostingPart(FunctionSettings):
    post_concurrency: int = Field(default=64, ge=1, le=2_000, description="posts in flight per worker")
    post_rate_per_worker: float = Field(default=0.0, ge=0, description="posts/s per worker; 0 = unpaced")
    post_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    post_in_call_retries: int = Field(default=2, ge=0, le=10, description="retries inside one invocation")
    max_post_attempts: int = Field(default=5, ge=1, le=50, description="re-enqueues before dead-letter")
    retry_base_seconds: float = Field(default=0.05, gt=0)
    retry_cap_seconds: float = Field(default=2.0, gt=0)
    requeue_base_delay_seconds: int = Field(default=1, ge=0, le=900)
    prune_grace_seconds: float = Field(
        default=10.0,
        ge=0,
        le=900,
        description="a 410 on a connection row younger than this is retried, not pruned: its $connect may "
        "still be running (the connect function's timeout is the bound)",
    )


class PipelinePart(
    ConnectionsPart, PartitionsPart, BroadcastsPart, PostingPart, SubscriptionsPart, ChannelsPart
):
    """What the swarm, query and post stages share (one StageDeps, one container type).

    The queue URLs and the endpoint are optional here, for the stages that do not use them; the
    function that does redeclares them without a default.
    """

    shard_count: int = Field(default=4, ge=1, le=1_000, description="Q queue shards per stage")
    post_batch_size: int = Field(default=100, ge=1, le=5_000, description="B ids per post batch")
    partition_queue_urls: list[str] = Field(default_factory=list)
    post_queue_urls: list[str] = Field(default_factory=list)
    post_dead_letter_queue_urls: list[str] = Field(
        default_factory=list, description="where ids still failing after max_post_attempts go"
    )
    connections_endpoint: str = Field(
        default="",
        description="https://{api-id}.execute-api.{region}.amazonaws.com/{stage} (the @connections base)",
    )
    swarm_send_concurrency: int = Field(default=32, ge=1, le=1_000, description="SendMessageBatch in flight")
    inline_payload_limit: int = Field(
        default=4096, ge=0, le=MAX_FRAME_BYTES, description="larger messages travel by reference"
    )
    counter_shards: int = Field(
        default=4, ge=1, le=100, description="fewest counter shards per broadcast (fanout.accounting)"
    )
    uvloop: bool = Field(default=True, description="run the container's event loop on uvloop if importable")
    users_index: str = "byUser"
    channel_task_members: int = Field(
        default=1_000,
        ge=1,
        le=1_000_000,
        description="members per channel task: a bigger channel fans out over ceil(members/this) tasks",
    )

    @model_validator(mode="after")
    def _shards_match(self) -> PipelinePart:
        for name in ("partition_queue_urls", "post_queue_urls", "post_dead_letter_queue_urls"):
            urls = getattr(self, name)
            if urls and len(urls) != self.shard_count:
                raise ValueError(
                    f"{env_name(type(self), name)} has {len(urls)} urls "
                    f"but {env_name(type(self), 'shard_count')} is {self.shard_count}"
                )
        return self


# -- one model per function -------------------------------------------------------------------------
class AuthorizerSettings(TokenPart):
    pass


class ConnectSettings(ConnectionsPart, PartitionsPart, PlacementPart, SubscriptionsPart, RecoveryInvokerPart):
    pass


class DisconnectSettings(ConnectionsPart, SubscriptionsPart):
    pass


class DefaultSettings(
    ConnectionsPart,
    BroadcastsPart,
    SubscriptionsPart,
    BroadcastApiPart,
    SwarmInvokerPart,
    ChatPart,
    HistoryPart,
):
    # Optional here: ping, subscribe and unsubscribe never read it; without it the history action
    # answers an internal error and a publish is not kept in history (the topology always wires it).
    history_table: str = Field(default="", description="channel history, for the history action")


class RecoverySettings(SubscriptionsPart, HistoryPart):
    connections_endpoint: Name = Field(
        description="https://{api-id}.execute-api.{region}.amazonaws.com/{stage} (the @connections base)"
    )
    recovery_connect_grace_seconds: float = Field(
        default=10.0, gt=0, le=60, description="how long a just-opened connection may answer 410"
    )


class ChannelCounterSettings(ChannelsPart):
    pass


class ChannelReconcilerSettings(SubscriptionsPart, ChannelsPart, ReconcilePart):
    pass


class PartitionCounterSettings(PartitionsPart):
    pass


class ReconcilerSettings(ConnectionsPart, PartitionsPart, ReconcilePart):
    pass


class OperatorApiSettings(BroadcastsPart, BroadcastApiPart, SwarmInvokerPart, ChannelsPart, HistoryPart):
    pass


class SweeperSettings(BroadcastsPart, SweepPart, SwarmInvokerPart):
    pass


class SwarmSettings(PipelinePart):
    partition_queue_urls: Urls
    # a small audience (a user's devices, a short list, a small channel) is read by the swarm, which
    # queues its post batches itself
    post_queue_urls: Urls


class QuerySettings(PipelinePart):
    post_queue_urls: Urls


class PostSettings(PipelinePart):
    post_queue_urls: Urls
    connections_endpoint: Name = Field(
        description="https://{api-id}.execute-api.{region}.amazonaws.com/{stage} (the @connections base)"
    )


# The settings model of each function, by the module of its handler (handlers/<module>.py).
FUNCTION_SETTINGS: dict[str, type[FunctionSettings]] = {
    "authorizer": AuthorizerSettings,
    "connect": ConnectSettings,
    "disconnect": DisconnectSettings,
    "default": DefaultSettings,
    "channel_counter": ChannelCounterSettings,
    "channel_reconciler": ChannelReconcilerSettings,
    "partition_counter": PartitionCounterSettings,
    "reconciler": ReconcilerSettings,
    "operator_api": OperatorApiSettings,
    "sweeper": SweeperSettings,
    "swarm": SwarmSettings,
    "query": QuerySettings,
    "post": PostSettings,
    "recovery": RecoverySettings,
}


def required_env(model: type[BaseSettings]) -> list[str]:
    """The variables `model` cannot be built without."""
    return [env_name(model, name) for name, info in model.model_fields.items() if info.is_required()]


RESOURCES = (
    "connections_table",
    "partitions_table",
    "broadcasts_table",
    "idempotency_table",
    "subscriptions_table",
    "channels_table",
    "rate_limits_table",
    "history_table",
    "swarm_function_name",
    "recovery_function_name",
)


class Settings(
    SwarmSettings,
    QuerySettings,
    PostSettings,
    ConnectSettings,
    DisconnectSettings,
    DefaultSettings,
    ChannelCounterSettings,
    ChannelReconcilerSettings,
    PartitionCounterSettings,
    ReconcilerSettings,
    OperatorApiSettings,
    SweeperSettings,
    AuthorizerSettings,
    RecoverySettings,
):
    """Every setting, with the names the local stack provisions, for the tools and tests that build
    or drive the whole system (tables, queues, seeding); it is an instance of every function's model."""

    connections_table: str = "fanout-connections"
    partitions_table: str = "fanout-partitions"
    broadcasts_table: str = "fanout-broadcasts"
    idempotency_table: str = "fanout-idempotency"
    subscriptions_table: str = "fanout-subscriptions"
    channels_table: str = "fanout-channels"
    rate_limits_table: str = "fanout-rate-limits"
    history_table: str = "fanout-history"
    swarm_function_name: str = "fanout-swarm"
    recovery_function_name: str = "fanout-recovery"
    token_secret_arn: str = ""
    partition_queue_urls: list[str] = Field(default_factory=list)
    post_queue_urls: list[str] = Field(default_factory=list)
    connections_endpoint: str = ""

    def resource_environment(self) -> dict[str, str]:
        """The variables naming what a stack built from these settings provisions (tables, the swarm
        function): the functions require them and have no defaults of their own."""
        return {env_name(type(self), name): str(getattr(self, name)) for name in RESOURCES}


S = TypeVar("S", bound=FunctionSettings)


class Loader:
    """``load(Model)``: the process's settings of that model, built and validated once (at cold start)."""

    def __init__(self) -> None:
        self._built: dict[type[FunctionSettings], FunctionSettings] = {}

    def __call__(self, model: type[S]) -> S:
        built = self._built.get(model)
        if built is None:
            built = self._built[model] = model()
        return cast(S, built)

    def cache_clear(self) -> None:
        """Forget every model built (tests, or a new container's environment)."""
        self._built.clear()


load = Loader()
