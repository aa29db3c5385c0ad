"""The one description of the deployed system: functions, triggers, tables and queues, as plain data.

``topology(config)`` turns the deploy-time knobs (``TopologyConfig``: partitions, shards, batch sizes,
concurrency...) into a ``Topology``. The CDK app (infra/cdk) builds its resources from it, the local
stack (infra/local) its tables, queues, functions and event source mappings, the infra tests compare
both against it, and ``fanout plan`` prints its recommendation as the knobs that produce it.

Pure: no AWS SDK, no I/O; it imports only pydantic and pure fanout modules. Settings reach a function
as environment variables whose names come from the settings model (``env_name``), never spelled here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel
from pydantic_settings import BaseSettings

from fanout.settings import Settings
from fanout.settings import env_name as settings_env_name
from fanout.sizing import (
    SQS_MIN_MAXIMUM_CONCURRENCY,
    PostConcurrencyPlan,
    post_concurrency_plan,
    post_rate_per_worker,
    visibility_timeout_seconds,
)

# Lambda: an SQS event source mapping with BatchSize above 10 needs a batching window of >= 1 s.
SQS_UNWINDOWED_MAX_BATCH = 10
HOUR = 3600
DAY = 24 * HOUR
QUEUE_RETENTION_SECONDS = 4 * DAY
DLQ_RETENTION_SECONDS = 14 * DAY  # SQS's longest: dead letters wait for an operator
MAX_RECEIVE_COUNT = 5  # receives of a stage message before SQS moves it to its dead-letter queue
ALIAS_NAME = "live"  # the alias that carries a function's provisioned concurrency
# Not fanout settings: Powertools reads these itself.
POWERTOOLS_ENVIRONMENT = {
    "POWERTOOLS_SERVICE_NAME": "fanout",
    "POWERTOOLS_METRICS_NAMESPACE": "Fanout",
    "POWERTOOLS_LOG_LEVEL": "INFO",
}


class TopologyConfig(BaseModel):
    """The deploy-time knobs that shape the topology. Context keys are the camelCase aliases."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    partitions: int = Field(default=100, ge=1, le=100_000, description="N partitions")
    shards: int = Field(default=4, ge=1, le=100, description="Q queue shards per stage")
    post_batch_size: int = Field(default=100, ge=1, le=5_000, description="B ids per post batch")
    query_sqs_batch_size: int = Field(default=10, ge=1, le=10_000)
    post_sqs_batch_size: int = Field(default=1, ge=1, le=10_000)
    sqs_batching_window_seconds: int = Field(default=0, ge=0, le=300, description="both stages' window")
    query_batching_window_seconds: int | None = Field(default=None, ge=0, le=300, description="wins")
    post_batching_window_seconds: int | None = Field(default=None, ge=0, le=300, description="wins")
    stream_batch_size: int = Field(default=500, ge=1, le=10_000)
    stream_parallelization: int = Field(default=2, ge=1, le=10)
    query_max_concurrency: int = Field(default=5, ge=2, le=1000, description="per partition shard")

    # Post rate budget. The account's API Gateway throttle (10,000 requests/s by default, per account
    # and Region) is shared by every API and every client message in the account, so the post stage
    # takes only a share of it unless an explicit budget is given.
    account_post_quota: float = Field(default=10_000, gt=0, description="the account's throttle, requests/s")
    post_rate_share: float = Field(default=0.8, gt=0, le=1, description="share of it the post stage uses")
    post_rate_budget: float | None = Field(
        default=None, gt=0, description="PostToConnection calls/s for this stack; wins over the share"
    )
    post_worker_capacity: float = Field(
        default=1_000, gt=0, description="posts/s one post worker sustains (measure with the benchmarks)"
    )
    post_concurrency: int = Field(default=64, ge=1, le=2_000, description="posts in flight per worker")
    post_max_concurrency: int | None = Field(
        default=None, ge=2, le=1000, description="post ESM MaximumConcurrency per shard; wins over sizing"
    )
    post_rate_per_worker: float | None = Field(
        default=None, gt=0, description="posts/s per post worker; wins over budget / workers"
    )
    # Off by default: AWS keeps 100 of the account's concurrency unreserved, so any reservation fails
    # in an account whose quota is below the reservations + 100 (new accounts may have 10). The post
    # rate is bounded without it, by the post event source mappings' MaximumConcurrency.
    reserve_concurrency: bool = Field(
        default=False,
        description="reserve the post fleet's, the reconcilers' and the sweeper's concurrency",
    )
    # Provisioned concurrency (on a version alias the triggers then invoke): no cold start on a
    # broadcast's critical path. 0: none (Lambda bills provisioned environments while they exist).
    swarm_provisioned_concurrency: int = Field(default=0, ge=0, le=1000)
    query_provisioned_concurrency: int = Field(default=0, ge=0, le=10_000)
    post_provisioned_concurrency: int = Field(default=0, ge=0, le=10_000)
    swarm_send_concurrency: int = Field(default=32, ge=1, le=1_000, description="SendMessageBatch in flight")

    # Sweeper: re-drives broadcasts whose asynchronous swarm invocation was lost
    sweep_after_seconds: float = Field(default=300, gt=0)
    sweep_attempts: int = Field(default=3, ge=1, le=20)

    @model_validator(mode="after")
    def _deployable(self) -> TopologyConfig:
        for stage, batch, window in (
            ("query", self.query_sqs_batch_size, self.query_window),
            ("post", self.post_sqs_batch_size, self.post_window),
        ):
            if batch > SQS_UNWINDOWED_MAX_BATCH and window < 1:
                raise ValueError(
                    f"a {stage} SQS batch size above {SQS_UNWINDOWED_MAX_BATCH} needs a batching window "
                    f"of at least 1 s (Lambda refuses the mapping): set {stage}BatchingWindowSeconds"
                )
        plan = self.post_plan  # raises if the budget cannot be planned
        given = self.post_rate_per_worker is not None  # the sizing's own rate rounds to 1/1000 post/s
        if given and plan.total_workers * plan.rate_per_worker > self.post_budget * (1 + 1e-9):
            raise ValueError(
                f"{plan.total_workers} post workers x {plan.rate_per_worker:g}/s exceed the post budget "
                f"of {self.post_budget:g}/s"
            )
        if self.reserve_concurrency and self.post_provisioned_concurrency > plan.total_workers:
            raise ValueError("post provisioned concurrency above the post function's reserved concurrency")
        return self

    @property
    def query_window(self) -> int:
        w = self.query_batching_window_seconds
        return self.sqs_batching_window_seconds if w is None else w

    @property
    def post_window(self) -> int:
        w = self.post_batching_window_seconds
        return self.sqs_batching_window_seconds if w is None else w

    @property
    def post_budget(self) -> float:
        """PostToConnection calls/s the post fleet may make: the explicit budget, else the share."""
        if self.post_rate_budget is not None:
            return self.post_rate_budget
        return self.account_post_quota * self.post_rate_share

    @property
    def post_plan(self) -> PostConcurrencyPlan:
        """The post fleet: sized from the budget, unless its concurrency or rate is given outright."""
        plan = post_concurrency_plan(self.post_budget, self.shards, self.post_worker_capacity)
        if self.post_max_concurrency is None and self.post_rate_per_worker is None:
            return plan
        per_shard = self.post_max_concurrency or plan.max_concurrency_per_shard
        total = per_shard * self.shards
        rate = self.post_rate_per_worker or post_rate_per_worker(self.post_budget, total)
        return PostConcurrencyPlan(per_shard, total, rate)

    def context(self, *, only_set: bool = True) -> dict[str, str]:
        """CDK context (``-c key=value``) that reproduces these knobs: the ones set, or all of them."""
        out: dict[str, str] = {}
        names = self.model_fields_set if only_set else set(type(self).model_fields)
        for name, info in type(self).model_fields.items():
            value = getattr(self, name)
            if name in names and value is not None:
                out[info.alias or name] = _context_value(value)
        return out


def _context_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def context_args(context: Mapping[str, str]) -> list[str]:
    """``-c key=value`` arguments of ``cdk deploy``, in the order given."""
    args: list[str] = []
    for key, value in context.items():
        args += ["-c", f"{key}={value}"]
    return args


# -- settings as environment variables ------------------------------------------------------------------
def env_name(field_name: str, model: type[BaseSettings] = Settings) -> str:
    """The environment variable a settings model reads ``field_name`` from (``FANOUT_<FIELD>``).

    A name that is not a field is an error, so a setting can never be wired under a name nothing reads.
    """
    if field_name not in model.model_fields:
        raise KeyError(f"{model.__name__} has no setting {field_name!r}")
    return settings_env_name(model, field_name)


class RefKind(StrEnum):
    TABLE_NAME = "table-name"  # key: a table key
    QUEUE_URLS = "queue-urls"  # key: a queue stage ("partition", "post"): its shards, as a JSON list
    DEAD_LETTER_QUEUE_URLS = "dead-letter-queue-urls"  # key: a stage: its shards' DLQs, a JSON list
    FUNCTION_NAME = "function-name"  # key: a function key (its alias when it has provisioned concurrency)
    TOKEN_SECRET_ARN = "token-secret-arn"
    CONNECTIONS_ENDPOINT = "connections-endpoint"  # the WebSocket API's @connections base


@dataclass(frozen=True)
class Ref:
    """A setting whose value is a resource known only where the topology is built (CDK or local)."""

    kind: RefKind
    key: str = ""


SettingValue = str | Ref


def environment(
    settings: Mapping[str, SettingValue],
    resolve: Callable[[Ref], str | None],
    model: type[BaseSettings] = Settings,
) -> dict[str, str]:
    """Environment variables of these settings; a reference ``resolve`` returns None for is left out."""
    env: dict[str, str] = {}
    for name, value in settings.items():
        resolved = value if isinstance(value, str) else resolve(value)
        if resolved is not None:
            env[env_name(name, model)] = resolved
    return env


# -- tables ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Key:
    name: str
    type: Literal["S", "N"]


@dataclass(frozen=True)
class Index:
    name: str
    partition_key: Key
    sort_key: Key | None = None
    projection: Literal["KEYS_ONLY", "ALL"] = "KEYS_ONLY"


@dataclass(frozen=True)
class Table:
    key: str  # connections, partitions, broadcasts, idempotency
    setting: str  # the Settings field holding its (generated) name
    partition_key: Key
    indexes: tuple[Index, ...] = ()
    stream: Literal["NEW_AND_OLD_IMAGES"] | None = None
    ttl_attribute: str | None = None
    sort_key: Key | None = None

    @property
    def attributes(self) -> tuple[Key, ...]:
        """Every key attribute of the table and its indexes, once (DynamoDB's AttributeDefinitions)."""
        keys = [self.partition_key, *([self.sort_key] if self.sort_key else [])]
        for index in self.indexes:
            keys += [k for k in (index.partition_key, index.sort_key) if k is not None]
        return tuple(dict.fromkeys(keys))


# The operator HTTP API's routes ("METHOD /path/{param}"), one integration: the operator-api function.
OPERATOR_ROUTES = (
    "POST /broadcasts",
    "GET /broadcasts/{broadcastId}",
    "GET /channels/{name}",
    "GET /channels/{name}/history",
)

CONNECTIONS_INDEX = "byPartition"
USERS_INDEX = "byUser"
BROADCASTS_PENDING_INDEX = "byPending"


def _tables() -> tuple[Table, ...]:
    connection_id = Key("connectionId", "S")
    return (
        Table(
            "connections",
            "connections_table",
            connection_id,
            # Keys only: the query stage needs the ids of a partition and nothing else, and a thin GSI
            # keeps connect writes cheap (an under-provisioned GSI throttles the base table).
            (
                Index(CONNECTIONS_INDEX, Key("partitionId", "N"), connection_id),
                # A user's connections (every device), for user-addressed sends: keys only, as above.
                Index(USERS_INDEX, Key("userId", "S"), connection_id),
            ),
            stream="NEW_AND_OLD_IMAGES",  # feeds the partition counter
            ttl_attribute="expiresAt",  # covers a missed $disconnect
        ),
        # One row per (channel, connection): the channel is the partition key, so a channel's members
        # are read by Query, O(members); the sort key "<bucket>#<connectionId>" spreads them over
        # bucket ranges that many tasks read at once (fanout.channels). The rows expire with their
        # connection (the same expiresAt) and feed the channel counter.
        Table(
            "subscriptions",
            "subscriptions_table",
            Key("channel", "S"),
            stream="NEW_AND_OLD_IMAGES",
            ttl_attribute="expiresAt",
            sort_key=Key("member", "S"),
        ),
        # Channel occupancy: the counter row ("#") and one presence row per user ("u#<userId>"),
        # kept by the channel counter from the subscriptions stream.
        Table("channels", "channels_table", Key("channel", "S"), sort_key=Key("key", "S")),
        # Channel history: per channel the meta row (offset 0: head offset, epoch) and the last K
        # messages (offset N: the envelope as sent), which expire after T (fanout.history).
        Table(
            "history",
            "history_table",
            Key("channel", "S"),
            ttl_attribute="expiresAt",
            sort_key=Key("offset", "N"),
        ),
        Table("partitions", "partitions_table", Key("partitionId", "N")),
        # Sparse: only broadcasts still queued or running carry `pending`, so the sweeper reads the
        # unfinished ones, oldest first, without scanning the history. Keys only: it reads each row.
        Table(
            "broadcasts",
            "broadcasts_table",
            Key("broadcastId", "S"),
            (Index(BROADCASTS_PENDING_INDEX, Key("pending", "S"), Key("createdAt", "N")),),
        ),
        # Token buckets of client messages (fanout.ratelimit): one row per connection and per user,
        # gone once its bucket is full again.
        Table("rate_limits", "rate_limits_table", Key("key", "S"), ttl_attribute="expiresAt"),
        # Powertools idempotency records and the stages' delivery ledger; both expire via `expiration`.
        Table("idempotency", "idempotency_table", Key("id", "S"), ttl_attribute="expiration"),
    )


# -- queues ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Queue:
    key: str  # the readable name is <prefix>-<key>
    retention_seconds: int
    visibility_timeout_seconds: int | None = None  # None: SQS's default (30 s)
    dead_letter: Queue | None = None
    max_receive_count: int | None = None
    purpose: str = ""


@dataclass(frozen=True)
class QueueStage:
    """Q shards of one stage's queue, each with its dead-letter queue, consumed by one function."""

    stage: Literal["partition", "post"]
    consumer: str
    shards: tuple[Queue, ...]

    @property
    def dead_letters(self) -> tuple[Queue, ...]:
        return tuple(q.dead_letter for q in self.shards if q.dead_letter is not None)


def _stage(stage: Literal["partition", "post"], consumer: Function, shards: int, window: int) -> QueueStage:
    visibility = visibility_timeout_seconds(consumer.timeout_seconds, window)
    return QueueStage(
        stage,
        consumer.key,
        tuple(
            Queue(
                f"{stage}-{i}",
                QUEUE_RETENTION_SECONDS,
                visibility,
                Queue(f"{stage}-{i}-dlq", DLQ_RETENTION_SECONDS, purpose=f"{stage} messages given up on"),
                MAX_RECEIVE_COUNT,
                purpose=f"{stage} shard {i}",
            )
            for i in range(shards)
        ),
    )


# -- functions ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SqsTrigger:
    stage: Literal["partition", "post"]  # one event source mapping per shard of that stage's queue
    batch_size: int
    maximum_batching_window_seconds: int
    maximum_concurrency: int  # per mapping, so per shard
    report_batch_item_failures: bool = True


@dataclass(frozen=True)
class StreamTrigger:
    table: str
    batch_size: int
    maximum_batching_window_seconds: int
    parallelization_factor: int
    starting_position: Literal["TRIM_HORIZON", "LATEST"] = "TRIM_HORIZON"
    bisect_batch_on_error: bool = True
    retry_attempts: int = 10
    maximum_record_age_seconds: int = 6 * HOUR
    report_batch_item_failures: bool = True
    on_failure_queue: str = "partition-counter-failures"


@dataclass(frozen=True)
class Schedule:
    name: str  # the rule is <prefix>-<name>
    rate_seconds: int
    description: str
    retry_attempts: int = 0  # the next run retries


@dataclass(frozen=True)
class AsyncInvoke:
    """Lambda's handling of the function's asynchronous invocations."""

    retry_attempts: int
    maximum_event_age_seconds: int
    on_failure_queue: str


@dataclass(frozen=True)
class Function:
    key: str  # <prefix>-<key> is the function's name
    module: str  # handlers.<module>.handler
    memory_mb: int
    timeout_seconds: int
    description: str
    settings: Mapping[str, SettingValue] = field(default_factory=dict)
    sqs: SqsTrigger | None = None
    stream: StreamTrigger | None = None
    schedule: Schedule | None = None
    async_invoke: AsyncInvoke | None = None
    reserved_concurrency: int | None = None
    provisioned_concurrency: int = 0

    @property
    def handler(self) -> str:
        return f"handlers.{self.module}.handler"

    def name(self, prefix: str) -> str:
        return f"{prefix}-{self.key}"


@dataclass(frozen=True)
class Topology:
    config: TopologyConfig
    functions: tuple[Function, ...]
    tables: tuple[Table, ...]
    queue_stages: tuple[QueueStage, ...]
    stream_failures: Queue  # the partition counter's (the connections stream)
    swarm_failures: Queue
    channel_counter_failures: Queue  # the channel counter's (the subscriptions stream)
    recovery_failures: Queue  # asynchronous recovery invocations Lambda gave up on

    def function(self, key: str) -> Function:
        return _one(self.functions, key, "function")

    def table(self, key: str) -> Table:
        return _one(self.tables, key, "table")

    def stage(self, stage: str) -> QueueStage:
        for s in self.queue_stages:
            if s.stage == stage:
                return s
        raise KeyError(f"no queue stage {stage!r}")

    @property
    def stream_failure_queues(self) -> tuple[Queue, ...]:
        """The on-failure queue of every stream trigger, one per stream consumer."""
        return (self.stream_failures, self.channel_counter_failures)

    def queue(self, key: str) -> Queue:
        return _one(self.queues, key, "queue")

    @property
    def dead_letter_queues(self) -> tuple[Queue, ...]:
        """The shards' dead-letter queues, then the partition counter's, the swarm's, the channel
        counter's and the recovery's failure queues."""
        dlqs = [d for s in self.queue_stages for d in s.dead_letters]
        return (
            *dlqs,
            self.stream_failures,
            self.swarm_failures,
            self.channel_counter_failures,
            self.recovery_failures,
        )

    @property
    def queues(self) -> tuple[Queue, ...]:
        """Every queue: the stages' shards, then every dead-letter queue."""
        return (*[q for s in self.queue_stages for q in s.shards], *self.dead_letter_queues)


def _one(items: tuple[Any, ...], key: str, what: str) -> Any:
    for item in items:
        if item.key == key:
            return item
    raise KeyError(f"no {what} {key!r}")


def table_settings() -> dict[str, SettingValue]:
    """What every function gets: where the tables and indexes are."""
    settings: dict[str, SettingValue] = {t.setting: Ref(RefKind.TABLE_NAME, t.key) for t in _tables()}
    settings["connections_index"] = CONNECTIONS_INDEX
    settings["users_index"] = USERS_INDEX
    return settings


def topology(config: TopologyConfig | None = None) -> Topology:
    """The system these knobs describe."""
    c = config or TopologyConfig()
    plan = c.post_plan
    reserved: dict[str, int] = (
        # the post fleet keeps its workers; the scheduled reconciler and sweeper never run twice at once
        {"post": plan.total_workers, "reconciler": 1, "channel-reconciler": 1, "sweeper": 1}
        if c.reserve_concurrency
        else {}
    )
    common = table_settings() | {
        "partition_count": str(c.partitions),
        "shard_count": str(c.shards),
        "post_batch_size": str(c.post_batch_size),
    }
    every_minute = 60

    def fn(key: str, module: str, memory: int, timeout: int, description: str, **kw: Any) -> Function:
        settings = {**common, **kw.pop("settings", {})}
        return Function(key, module, memory, timeout, description, settings,
                        reserved_concurrency=reserved.get(key), **kw)  # fmt: skip

    swarm_name = Ref(RefKind.FUNCTION_NAME, "swarm")
    functions = (
        fn("authorizer", "authorizer", 512, 10, "WebSocket $connect REQUEST authorizer",
           settings={"token_secret_arn": Ref(RefKind.TOKEN_SECRET_ARN)}),
        fn("connect", "connect", 512, 10, "$connect: place the connection in a partition",
           settings={"recovery_function_name": Ref(RefKind.FUNCTION_NAME, "recovery")}),
        # ?recover= at $connect: the missed messages, once the connection can receive them (after
        # $connect returns), then the hand-over to live delivery (fanout.recovery).
        fn("recovery", "recovery", 512, 60, "reconnect: deliver the missed channel messages",
           settings={"connections_endpoint": Ref(RefKind.CONNECTIONS_ENDPOINT)},
           # retried twice by Lambda (recovery resumes where the subscription row says), then kept
           async_invoke=AsyncInvoke(2, HOUR, "recovery-failures")),
        fn("disconnect", "disconnect", 256, 10, "$disconnect: delete the connection row"),
        # $default also starts a client's broadcasts (publish, sendmessage), like the operator API.
        fn("default", "default", 256, 10, "$default: ping, subscriptions, publish, sendmessage (two-way)",
           settings={"swarm_function_name": swarm_name}),
        fn("partition-counter", "partition_counter", 512, 60, "stream: partition counts",
           stream=StreamTrigger("connections", c.stream_batch_size, 1, c.stream_parallelization)),
        # 55 s: the run of one minute ends before the next one starts
        fn("reconciler", "reconciler", 512, 55, "every minute: recount partitions, skew",
           schedule=Schedule("reconcile", every_minute, "run the partition reconciler every minute")),
        # The subscriptions table's stream: channel occupancy (connections and users per channel).
        fn("channel-counter", "channel_counter", 512, 60, "stream: channel occupancy",
           stream=StreamTrigger("subscriptions", c.stream_batch_size, 1, c.stream_parallelization,
                                on_failure_queue="channel-counter-failures")),
        fn("channel-reconciler", "channel_reconciler", 512, 55,
           "every minute: recount channels, delete expired subscriptions",
           schedule=Schedule("reconcile-channels", every_minute, "run the channel reconciler every minute")),
        fn("operator-api", "operator_api", 512, 15, "operator HTTP API (IAM)",
           settings={"swarm_function_name": swarm_name}),
        fn("swarm", "swarm", 1024, 300, "one task per non-empty partition",
           settings={"partition_queue_urls": Ref(RefKind.QUEUE_URLS, "partition"),
                     "post_queue_urls": Ref(RefKind.QUEUE_URLS, "post"),
                     "swarm_send_concurrency": str(c.swarm_send_concurrency)},
           # Lambda retries a failed asynchronous invocation twice, then drops the event unless it has
           # somewhere to go; the sweeper re-drives the broadcast, and this queue keeps the evidence.
           async_invoke=AsyncInvoke(2, 6 * HOUR, "swarm-failures"),
           provisioned_concurrency=c.swarm_provisioned_concurrency),
        fn("query", "query", 1024, 60, "partition task -> post batches",
           settings={"post_queue_urls": Ref(RefKind.QUEUE_URLS, "post")},
           sqs=SqsTrigger("partition", c.query_sqs_batch_size, c.query_window, c.query_max_concurrency),
           provisioned_concurrency=c.query_provisioned_concurrency),
        # 1,769 MB is one full vCPU: the post stage is CPU-bound (docs/benchmarks.md).
        fn("post", "post", 1769, 60, "post batch -> PostToConnection",
           settings={"post_queue_urls": Ref(RefKind.QUEUE_URLS, "post"),
                     "post_dead_letter_queue_urls": Ref(RefKind.DEAD_LETTER_QUEUE_URLS, "post"),
                     "post_concurrency": str(c.post_concurrency),
                     "post_rate_per_worker": str(plan.rate_per_worker),
                     "connections_endpoint": Ref(RefKind.CONNECTIONS_ENDPOINT)},
           sqs=SqsTrigger("post", c.post_sqs_batch_size, c.post_window, plan.max_concurrency_per_shard),
           provisioned_concurrency=c.post_provisioned_concurrency),
        fn("sweeper", "sweeper", 256, 55, "every minute: re-drive lost swarm events",
           settings={"sweep_after_seconds": _context_value(c.sweep_after_seconds),
                     "sweep_attempts": str(c.sweep_attempts), "swarm_function_name": swarm_name},
           schedule=Schedule("sweep", every_minute, "run the broadcast sweeper every minute")),
    )  # fmt: skip
    by_key = {f.key: f for f in functions}
    stages = (
        _stage("partition", by_key["query"], c.shards, c.query_window),
        _stage("post", by_key["post"], c.shards, c.post_window),
    )
    return Topology(
        config=c,
        functions=functions,
        tables=_tables(),
        queue_stages=stages,
        # Stream records the partition counter gave up on (the reconciler corrects the counts anyway).
        stream_failures=Queue("partition-counter-failures", DLQ_RETENTION_SECONDS,
                              purpose="connections stream records the partition counter gave up on"),
        # Asynchronous swarm invocations Lambda gave up on (after its retries or the event's maximum
        # age): without a destination they are dropped and their broadcast stays queued.
        swarm_failures=Queue("swarm-failures", DLQ_RETENTION_SECONDS,
                             purpose="asynchronous swarm invocations Lambda gave up on"),
        # Subscriptions stream records the channel counter gave up on (the channel reconciler
        # corrects the counts anyway).
        channel_counter_failures=Queue("channel-counter-failures", DLQ_RETENTION_SECONDS,
                                       purpose="subscriptions stream records the channel counter gave up on"),
        recovery_failures=Queue("recovery-failures", DLQ_RETENTION_SECONDS,
                                purpose="asynchronous recovery invocations Lambda gave up on"),
    )  # fmt: skip


def per_shard(workers: int, shards: int) -> int:
    """MaximumConcurrency of each of ``shards`` mappings that together run ``workers`` at most."""
    return max(SQS_MIN_MAXIMUM_CONCURRENCY, math.ceil(workers / shards))
