"""The functions of docs/architecture.md, each with its own role, log group and event source.

Roles start empty (no AWS managed policy): each gets write access to its own log group, X-Ray
(``Tracing.ACTIVE``) and then exactly the statements its stage needs, added here and in stack.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_destinations as destinations
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_logs as logs
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from infra.cdk import bundling
from infra.cdk.config import FanoutConfig, RemovalMode
from infra.cdk.constructs.queues import Queues
from infra.cdk.constructs.tables import BROADCASTS_PENDING_INDEX, CONNECTIONS_INDEX, Tables
from infra.cdk.nag import acknowledge


@dataclass(frozen=True)
class Spec:
    key: str  # <prefix>-<key> is the function name; handlers.<module>.handler the handler
    module: str
    memory: int
    timeout: Duration
    description: str
    env: dict[str, str] = field(default_factory=dict)


# Timeouts of the queue consumers set their queues' visibility timeouts (sizing.py).
QUERY_TIMEOUT = Duration.seconds(60)
POST_TIMEOUT = Duration.seconds(60)
# Lambda's asynchronous invocation of the swarm: its two retries, and the longest an event may wait.
SWARM_ASYNC_RETRIES = 2
SWARM_MAX_EVENT_AGE = Duration.hours(6)

SPECS = [
    Spec("authorizer", "authorizer", 512, Duration.seconds(10), "WebSocket $connect REQUEST authorizer"),
    Spec("connect", "connect", 512, Duration.seconds(10), "$connect: place the connection in a partition"),
    Spec("disconnect", "disconnect", 256, Duration.seconds(10), "$disconnect: delete the connection row"),
    Spec("default", "default", 256, Duration.seconds(10), "$default: ping/pong and errors (two-way)"),
    Spec("partition-counter", "partition_counter", 512, Duration.seconds(60), "stream: partition counts"),
    Spec("reconciler", "reconciler", 512, Duration.seconds(55), "every minute: recount partitions, skew"),
    Spec("operator-api", "operator_api", 512, Duration.seconds(15), "operator HTTP API (IAM)"),
    Spec("swarm", "swarm", 1024, Duration.seconds(300), "one task per non-empty partition"),
    Spec("query", "query", 1024, QUERY_TIMEOUT, "partition task -> post batches"),
    # 1,769 MB is one full vCPU: the post stage is CPU-bound on request signing (FACTS.md).
    Spec("post", "post", 1769, POST_TIMEOUT, "post batch -> PostToConnection"),
    Spec("sweeper", "sweeper", 256, Duration.seconds(55), "every minute: re-drive lost swarm events"),
]


class Functions(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: FanoutConfig,
        tables: Tables,
        queues: Queues,
        token_secret: secretsmanager.ISecret,
    ) -> None:
        super().__init__(scope, id)
        self.config = config
        self.tables = tables
        code = bundling.function_code()
        self.dependencies = lambda_.LayerVersion(
            self,
            "Dependencies",
            code=bundling.dependencies_code(),
            compatible_runtimes=[bundling.RUNTIME],
            compatible_architectures=[bundling.ARCHITECTURE],
            description="fanout runtime dependencies (pyproject.toml), Powertools included",
        )
        plan = config.post_plan
        common = {
            "POWERTOOLS_SERVICE_NAME": "fanout",
            "POWERTOOLS_METRICS_NAMESPACE": "Fanout",
            "POWERTOOLS_LOG_LEVEL": "INFO",
            "FANOUT_CONNECTIONS_TABLE": tables.connections.table_name,
            "FANOUT_CONNECTIONS_INDEX": CONNECTIONS_INDEX,
            "FANOUT_PARTITIONS_TABLE": tables.partitions.table_name,
            "FANOUT_BROADCASTS_TABLE": tables.broadcasts.table_name,
            "FANOUT_BROADCASTS_PENDING_INDEX": BROADCASTS_PENDING_INDEX,
            "FANOUT_IDEMPOTENCY_TABLE": tables.idempotency.table_name,
            "FANOUT_PARTITION_COUNT": str(config.partitions),
            "FANOUT_SHARD_COUNT": str(config.shards),
            "FANOUT_POST_BATCH_SIZE": str(config.post_batch_size),
        }
        partition_urls = json.dumps([s.queue.queue_url for s in queues.partition_shards])
        post_urls = json.dumps([s.queue.queue_url for s in queues.post_shards])
        extra: dict[str, dict[str, str]] = {
            "authorizer": {"FANOUT_TOKEN_SECRET_ARN": token_secret.secret_arn},
            "swarm": {"FANOUT_PARTITION_QUEUE_URLS": partition_urls},
            "query": {"FANOUT_POST_QUEUE_URLS": post_urls},
            "post": {
                "FANOUT_POST_QUEUE_URLS": post_urls,
                "FANOUT_POST_DEAD_LETTER_QUEUE_URLS": json.dumps(
                    [s.dlq.queue_url for s in queues.post_shards]
                ),
                "FANOUT_POST_CONCURRENCY": str(config.post_concurrency),
                "FANOUT_POST_RATE_PER_WORKER": str(plan.rate_per_worker),
            },
            "sweeper": {
                "FANOUT_SWEEP_AFTER_SECONDS": str(config.sweep_after_seconds),
                "FANOUT_SWEEP_ATTEMPTS": str(config.sweep_attempts),
            },
        }
        self.reserved: dict[str, int] = reserved_concurrency(config)
        self.by_key: dict[str, lambda_.Function] = {}
        self.roles: dict[str, iam.Role] = {}
        for spec in SPECS:
            self.by_key[spec.key] = self._function(
                spec, code, {**common, **extra.get(spec.key, {})}, self.reserved.get(spec.key)
            )
        swarm = self.by_key["swarm"]
        for key in ("operator-api", "sweeper"):
            self.by_key[key].add_environment("FANOUT_SWARM_FUNCTION_NAME", swarm.function_name)
        # Lambda retries a failed asynchronous invocation twice, then drops the event unless it has
        # somewhere to go; the sweeper re-drives the broadcast, and this queue keeps the evidence.
        swarm.configure_async_invoke(
            on_failure=destinations.SqsDestination(queues.swarm_failures),
            retry_attempts=SWARM_ASYNC_RETRIES,
            max_event_age=SWARM_MAX_EVENT_AGE,
        )

        self._grant(tables, queues, token_secret)
        self._wire_events(queues)

    # -- functions -----------------------------------------------------------------------------
    def _function(
        self, spec: Spec, code: lambda_.Code, env: dict[str, str], reserved: int | None
    ) -> lambda_.Function:
        name = self.config.name(spec.key)
        # No log_group_name: a retained group with a fixed name would make a deploy after `cdk destroy`
        # fail with "already exists"; the function writes to this group whatever its name.
        log_group = logs.LogGroup(
            self,
            f"{spec.key}-logs",
            retention=self.config.log_retention,
            removal_policy=(
                RemovalPolicy.DESTROY
                if self.config.removal_policy is RemovalMode.DESTROY
                else RemovalPolicy.RETAIN
            ),
        )
        role = iam.Role(
            self,
            f"{spec.key}-role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"{name}: least privilege for {spec.description}",
        )
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["logs:CreateLogStream", "logs:PutLogEvents"],
                resources=[log_group.log_group_arn],
            )
        )
        fn = lambda_.Function(
            self,
            spec.key,
            function_name=name,
            description=spec.description,
            code=code,
            handler=f"handlers.{spec.module}.handler",
            runtime=bundling.RUNTIME,
            architecture=bundling.ARCHITECTURE,
            memory_size=spec.memory,
            timeout=spec.timeout,
            layers=[self.dependencies],
            environment=env,
            role=role,
            log_group=log_group,
            logging_format=lambda_.LoggingFormat.JSON,
            tracing=lambda_.Tracing.ACTIVE,
            reserved_concurrent_executions=reserved,
        )
        acknowledge(
            fn,
            "AwsSolutions-L1",
            f"Pinned to {bundling.RUNTIME.name}, the runtime the dependencies layer is built for "
            "(bundling.py); move the runtime and the layer's --python-version together.",
        )
        # Tracing.ACTIVE adds xray:PutTraceSegments/PutTelemetryRecords to the role's policy.
        acknowledge(
            role,
            "AwsSolutions-IAM5[Resource::*]",
            "X-Ray PutTraceSegments/PutTelemetryRecords support no resource-level permissions "
            "(the Service Authorization Reference lists only '*'); nothing else in this role uses '*'.",
        )
        self.roles[spec.key] = role
        return fn

    # -- permissions ---------------------------------------------------------------------------
    def _allow(self, key: str, actions: list[str], resources: list[str]) -> None:
        self.roles[key].add_to_policy(iam.PolicyStatement(actions=actions, resources=resources))

    def _grant(self, t: Tables, q: Queues, token_secret: secretsmanager.ISecret) -> None:
        conn, parts, bcast, idem = (
            t.connections.table_arn,
            t.partitions.table_arn,
            t.broadcasts.table_arn,
            t.idempotency.table_arn,
        )
        read_partitions = ["dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:Scan", "dynamodb:Query"]
        # plans (GetItem, PutItem; TransactWriteItems checks each Put), counter shards (UpdateItem, and
        # BatchGetItem to sum them)
        ledger = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:BatchGetItem"]
        read_counts = ["dynamodb:BatchGetItem"]
        partition_queues = [s.queue.queue_arn for s in q.partition_shards]
        post_queues = [s.queue.queue_arn for s in q.post_shards]
        post_dlqs = [s.dlq.queue_arn for s in q.post_shards]

        token_secret.grant_read(self.roles["authorizer"])
        self._allow("connect", ["dynamodb:PutItem"], [conn])
        self._allow("connect", read_partitions, [parts])
        self._allow("disconnect", ["dynamodb:DeleteItem", "dynamodb:GetItem"], [conn])
        self._allow("partition-counter", ["dynamodb:UpdateItem"], [parts])
        self._allow("reconciler", ["dynamodb:Query"], [t.connections_index_arn])
        self._allow("reconciler", [*read_partitions, "dynamodb:UpdateItem", "dynamodb:PutItem"], [parts])
        self._allow(
            "operator-api",
            ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"],
            [bcast],
        )
        self._allow(
            "operator-api",
            [
                "dynamodb:GetItem",
                "dynamodb:PutItem",
                "dynamodb:UpdateItem",
                "dynamodb:DeleteItem",
                *read_counts,
            ],
            [idem],
        )
        self._allow("operator-api", ["lambda:InvokeFunction"], [self.by_key["swarm"].function_arn])
        self._allow("sweeper", ["dynamodb:Query"], [t.broadcasts_pending_index_arn])
        self._allow("sweeper", ["dynamodb:GetItem", "dynamodb:UpdateItem"], [bcast])
        self._allow("sweeper", ["lambda:InvokeFunction"], [self.by_key["swarm"].function_arn])
        self._allow("sweeper", read_counts, [idem])
        self._allow("swarm", read_counts, [idem])
        self._allow("swarm", ["dynamodb:Scan", "dynamodb:GetItem"], [parts])
        self._allow("swarm", ["dynamodb:GetItem", "dynamodb:UpdateItem"], [bcast])
        self._allow("swarm", ["sqs:SendMessage", "sqs:GetQueueAttributes"], partition_queues)
        self._allow("query", ["dynamodb:Query"], [t.connections_index_arn])
        self._allow("query", ["dynamodb:GetItem", "dynamodb:UpdateItem"], [bcast])
        self._allow("query", ledger, [idem])
        self._allow("query", ["sqs:SendMessage", "sqs:GetQueueAttributes"], post_queues)
        self._allow("post", ["dynamodb:DeleteItem"], [conn])
        self._allow("post", ["dynamodb:GetItem", "dynamodb:UpdateItem"], [bcast])
        self._allow("post", ledger, [idem])
        self._allow("post", ["sqs:SendMessage", "sqs:GetQueueAttributes"], post_queues + post_dlqs)

    def allow_post_to_connections(self, connections_arn: str) -> None:
        """The post function may call PostToConnection on this API's stage and nothing else."""
        self._allow("post", ["execute-api:ManageConnections"], [connections_arn])
        acknowledge(
            self.roles["post"],
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:execute-api:<AWS::Region>:<AWS::AccountId>:"
            "<WebSocketApi273F6915>/" + self.config.stage_name + "/POST/@connections/*]",
            "Connection ids are created at run time, so the ARN ends in a wildcard; it is scoped to this "
            "API, this stage and POST (PostToConnection) only.",
        )

    # -- triggers ------------------------------------------------------------------------------
    def _wire_events(self, q: Queues) -> None:
        c = self.config
        window = Duration.seconds(c.sqs_batching_window_seconds) if c.sqs_batching_window_seconds else None
        for shard in q.partition_shards:
            self.by_key["query"].add_event_source(
                sources.SqsEventSource(
                    shard.queue,
                    batch_size=c.query_sqs_batch_size,
                    max_batching_window=window,
                    report_batch_item_failures=True,
                    max_concurrency=c.query_max_concurrency,
                )
            )
        for shard in q.post_shards:
            self.by_key["post"].add_event_source(
                sources.SqsEventSource(
                    shard.queue,
                    batch_size=c.post_sqs_batch_size,
                    max_batching_window=window,
                    report_batch_item_failures=True,
                    max_concurrency=c.post_plan.max_concurrency_per_shard,
                )
            )
        self.by_key["partition-counter"].add_event_source(
            sources.DynamoEventSource(
                self.tables.connections,
                starting_position=lambda_.StartingPosition.TRIM_HORIZON,
                batch_size=c.stream_batch_size,
                max_batching_window=Duration.seconds(1),
                bisect_batch_on_error=True,
                retry_attempts=10,
                max_record_age=Duration.hours(6),
                parallelization_factor=c.stream_parallelization,
                report_batch_item_failures=True,
                on_failure=sources.SqsDlq(q.stream_failures),
            )
        )
        acknowledge(
            self.roles["partition-counter"],
            "AwsSolutions-IAM5[Resource::*]",
            "dynamodb:ListStreams (added by the stream event source) and X-Ray accept only '*' "
            "resources; GetRecords/GetShardIterator/DescribeStream are scoped to the table's stream.",
        )
        rule = events.Rule(
            self,
            "ReconcileEveryMinute",
            rule_name=c.name("reconcile"),
            description="run the partition reconciler every minute",
            schedule=events.Schedule.rate(Duration.minutes(1)),
        )
        rule.add_target(targets.LambdaFunction(self.by_key["reconciler"], retry_attempts=0))
        sweep = events.Rule(
            self,
            "SweepEveryMinute",
            rule_name=c.name("sweep"),
            description="run the broadcast sweeper every minute",
            schedule=events.Schedule.rate(Duration.minutes(1)),
        )
        sweep.add_target(targets.LambdaFunction(self.by_key["sweeper"], retry_attempts=0))

    @property
    def all(self) -> list[lambda_.Function]:
        return list(self.by_key.values())


def reserved_concurrency(config: FanoutConfig) -> dict[str, int]:
    """Reserved concurrency per function key: none unless ``reserveConcurrency`` is on.

    With it, the post fleet keeps its workers and the scheduled reconciler and sweeper never run twice
    at once; the account then needs sum(reservations) + 100 concurrency (AWS keeps 100 unreserved).
    """
    if not config.reserve_concurrency:
        return {}
    return {"post": config.post_plan.total_workers, "reconciler": 1, "sweeper": 1}
