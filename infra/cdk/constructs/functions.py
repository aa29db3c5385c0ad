"""The topology's functions (fanout/topology.py), each with its own role, log group and triggers.

Roles start empty (no AWS managed policy): each gets write access to its own log group, X-Ray
(``Tracing.ACTIVE``) and then exactly the statements its stage needs, added here and in stack.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable

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

from fanout.topology import ALIAS_NAME, POWERTOOLS_ENVIRONMENT, Ref, RefKind, Topology, environment
from fanout.topology import Function as TopologyFunction
from infra.cdk import bundling
from infra.cdk.config import FanoutConfig, RemovalMode
from infra.cdk.constructs.queues import Queues
from infra.cdk.constructs.tables import Tables
from infra.cdk.nag import acknowledge


class Functions(Construct):
    """Every function of the topology, its alias when it has provisioned concurrency, and its triggers.

    ``by_key`` holds the functions; ``targets`` what their callers and triggers invoke: the ``live``
    alias of a function with provisioned concurrency (Lambda provisions a version, never $LATEST),
    else the function itself.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: FanoutConfig,
        topology: Topology,
        tables: Tables,
        queues: Queues,
        token_secret: secretsmanager.ISecret,
    ) -> None:
        super().__init__(scope, id)
        self.config = config
        self.topology = topology
        self.tables = tables
        self.queues = queues
        self.token_secret = token_secret
        code = bundling.function_code()
        self.dependencies = lambda_.LayerVersion(
            self,
            "Dependencies",
            code=bundling.dependencies_code(),
            compatible_runtimes=[bundling.RUNTIME],
            compatible_architectures=[bundling.ARCHITECTURE],
            description="fanout runtime dependencies (pyproject.toml), Powertools included",
        )
        self.by_key: dict[str, lambda_.Function] = {}
        self.targets: dict[str, lambda_.IFunction] = {}
        self.roles: dict[str, iam.Role] = {}
        for spec in topology.functions:
            env = {**POWERTOOLS_ENVIRONMENT, **environment(spec.settings, self._resolve)}
            self.by_key[spec.key] = fn = self._function(spec, code, env)
            self.targets[spec.key] = self._alias(spec, fn) if spec.provisioned_concurrency else fn
        # settings that name another function: known once every function exists
        self._add_deferred({RefKind.FUNCTION_NAME}, self._function_ref)
        for spec in topology.functions:
            if spec.async_invoke is not None:
                failures = self.queues.by_key[spec.async_invoke.on_failure_queue]
                self.targets[spec.key].configure_async_invoke(
                    on_failure=destinations.SqsDestination(failures),
                    retry_attempts=spec.async_invoke.retry_attempts,
                    max_event_age=Duration.seconds(spec.async_invoke.maximum_event_age_seconds),
                )

        self._grant(tables, queues, token_secret)
        self._wire_events(queues)

    # -- settings ------------------------------------------------------------------------------
    def _resolve(self, ref: Ref) -> str | None:
        """A setting's resource, or None while it does not exist yet (functions, the API)."""
        if ref.kind is RefKind.TABLE_NAME:
            return self.tables.by_key[ref.key].table_name
        if ref.kind is RefKind.QUEUE_URLS:
            return json.dumps([s.queue.queue_url for s in self.queues.stages[ref.key]])
        if ref.kind is RefKind.DEAD_LETTER_QUEUE_URLS:
            return json.dumps([s.dlq.queue_url for s in self.queues.stages[ref.key]])
        if ref.kind is RefKind.TOKEN_SECRET_ARN:
            return self.token_secret.secret_arn
        return None

    def _function_ref(self, ref: Ref) -> str | None:
        target = self.targets[ref.key]
        # an alias is invoked by its ARN (its name alone would invoke $LATEST)
        return target.function_name if target is self.by_key[ref.key] else target.function_arn

    def _add_deferred(self, kinds: set[RefKind], resolve: Callable[[Ref], str | None]) -> None:
        for spec in self.topology.functions:
            refs = {k: v for k, v in spec.settings.items() if isinstance(v, Ref) and v.kind in kinds}
            for name, value in environment(refs, resolve).items():
                self.by_key[spec.key].add_environment(name, value)

    def set_connections_endpoint(self, url: str) -> None:
        """The WebSocket API's @connections base, for the functions whose settings name it."""
        self._add_deferred({RefKind.CONNECTIONS_ENDPOINT}, lambda _ref: url)

    # -- functions -----------------------------------------------------------------------------
    def _function(self, spec: TopologyFunction, code: lambda_.Code, env: dict[str, str]) -> lambda_.Function:
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
            memory_size=spec.memory_mb,
            timeout=Duration.seconds(spec.timeout_seconds),
            layers=[self.dependencies],
            environment=env,
            role=role,
            log_group=log_group,
            logging_format=lambda_.LoggingFormat.JSON,
            tracing=lambda_.Tracing.ACTIVE,
            reserved_concurrent_executions=spec.reserved_concurrency,
            # Versions exist for the alias only: an old one goes once the alias has moved on (kept,
            # they would pile up against the account's code storage quota).
            current_version_options=lambda_.VersionOptions(removal_policy=RemovalPolicy.DESTROY),
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

    def _alias(self, spec: TopologyFunction, fn: lambda_.Function) -> lambda_.Alias:
        return lambda_.Alias(
            self,
            f"{spec.key}-alias",
            alias_name=ALIAS_NAME,
            version=fn.current_version,
            provisioned_concurrent_executions=spec.provisioned_concurrency,
            description=f"{fn.function_name}'s provisioned concurrency; its triggers invoke it",
        )

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
        subs, chans = t.subscriptions.table_arn, t.channels.table_arn
        # A connection's subscription rows: written one at a time or in batches (?channels= on connect,
        # subscribe/unsubscribe on $default), deleted with the connection.
        write_subscriptions = ["dynamodb:PutItem", "dynamodb:DeleteItem", "dynamodb:BatchWriteItem"]
        partition_queues = [s.queue.queue_arn for s in q.partition_shards]
        post_queues = [s.queue.queue_arn for s in q.post_shards]
        post_dlqs = [s.dlq.queue_arn for s in q.post_shards]

        token_secret.grant_read(self.roles["authorizer"])
        self._allow("connect", ["dynamodb:PutItem", "dynamodb:UpdateItem"], [conn])
        self._allow("connect", read_partitions, [parts])
        self._allow("connect", write_subscriptions, [subs])
        self._allow("disconnect", ["dynamodb:DeleteItem", "dynamodb:GetItem"], [conn])
        self._allow("disconnect", write_subscriptions, [subs])
        # $default subscribes and unsubscribes: the subscription rows and the connection row's channels
        self._allow("default", ["dynamodb:GetItem", "dynamodb:UpdateItem"], [conn])
        self._allow("default", write_subscriptions, [subs])
        # ... and starts a client's broadcast as the operator API does: the broadcast row (PutItem;
        # UpdateItem marks it failed if the swarm cannot be invoked), the id's idempotency record
        # (Powertools: get, put, update, and delete when the send fails), the swarm; and takes its
        # tokens (one conditional UpdateItem per bucket; GetItem when the refusal carries no row).
        self._allow("default", ["dynamodb:PutItem", "dynamodb:UpdateItem"], [bcast])
        self._allow(
            "default",
            ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"],
            [idem],
        )
        self._allow("default", ["lambda:InvokeFunction"], [self.targets["swarm"].function_arn])
        self._allow("default", ["dynamodb:UpdateItem", "dynamodb:GetItem"], [t.rate_limits.table_arn])
        self._allow("partition-counter", ["dynamodb:UpdateItem"], [parts])
        # presence ADDs (and the deletion of a presence row back at 0), counter ADDs
        self._allow("channel-counter", ["dynamodb:UpdateItem", "dynamodb:DeleteItem"], [chans])
        # recount every channel and delete the expired subscription rows
        self._allow("channel-reconciler", ["dynamodb:Scan", "dynamodb:Query", "dynamodb:DeleteItem"], [subs])
        self._allow(
            "channel-reconciler",
            ["dynamodb:Scan", "dynamodb:Query", "dynamodb:UpdateItem", "dynamodb:DeleteItem"],
            [chans],
        )
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
        self._allow("operator-api", ["lambda:InvokeFunction"], [self.targets["swarm"].function_arn])
        self._allow("operator-api", ["dynamodb:GetItem"], [chans])  # GET /channels/{name}: occupancy
        self._allow("sweeper", ["dynamodb:Query"], [t.broadcasts_pending_index_arn])
        self._allow("sweeper", ["dynamodb:GetItem", "dynamodb:UpdateItem"], [bcast])
        self._allow("sweeper", ["lambda:InvokeFunction"], [self.targets["swarm"].function_arn])
        self._allow("sweeper", read_counts, [idem])
        self._allow("swarm", read_counts, [idem])
        self._allow("swarm", ["dynamodb:Scan", "dynamodb:GetItem"], [parts])
        self._allow("swarm", ["dynamodb:GetItem", "dynamodb:UpdateItem"], [bcast])
        self._allow("swarm", ["sqs:SendMessage", "sqs:GetQueueAttributes"], partition_queues)
        # a small audience is read by the swarm itself: its plan, its count, its post batches
        self._allow("swarm", ledger, [idem])
        self._allow("swarm", ["sqs:SendMessage", "sqs:GetQueueAttributes"], post_queues)
        # audiences: a channel's members (sized by its counter row), a user's connections
        for stage in ("swarm", "query"):
            self._allow(stage, ["dynamodb:Query"], [subs, t.users_index_arn])
            self._allow(stage, ["dynamodb:GetItem", "dynamodb:BatchGetItem"], [chans])
        self._allow("query", ["dynamodb:Query"], [t.connections_index_arn])
        self._allow("query", ["dynamodb:GetItem", "dynamodb:UpdateItem"], [bcast])
        self._allow("query", ledger, [idem])
        self._allow("query", ["sqs:SendMessage", "sqs:GetQueueAttributes"], post_queues)
        self._allow("post", ["dynamodb:DeleteItem"], [conn])
        self._allow("post", ["dynamodb:BatchWriteItem"], [subs])  # a 410 prunes its subscriptions too
        self._allow("post", ["dynamodb:GetItem", "dynamodb:UpdateItem"], [bcast])
        self._allow("post", ledger, [idem])
        self._allow("post", ["sqs:SendMessage", "sqs:GetQueueAttributes"], post_queues + post_dlqs)
        # History: a channel message's offset (one transaction: the meta row's head, the message row,
        # the row trimmed), read by the history action, GET /channels/{name}/history and recovery.
        hist = t.history.table_arn
        read_history = ["dynamodb:GetItem", "dynamodb:Query"]
        append_history = ["dynamodb:UpdateItem", "dynamodb:PutItem", "dynamodb:DeleteItem"]
        self._allow("operator-api", [*read_history, *append_history], [hist])
        # $default appends a client's channel message (publish) and reads for the history action
        self._allow("default", [*read_history, *append_history], [hist])
        self._allow("connect", ["lambda:InvokeFunction"], [self.targets["recovery"].function_arn])
        # recovery reads the history, then hands over: a condition on the head, liveFrom on the row
        self._allow("recovery", [*read_history, "dynamodb:ConditionCheckItem"], [hist])
        self._allow("recovery", ["dynamodb:UpdateItem"], [subs])

    def allow_post_to_connections(self, connections_arn: str) -> None:
        """The post function may call PostToConnection on this API's stage and nothing else."""
        for key in ("post", "recovery"):
            self._allow(key, ["execute-api:ManageConnections"], [connections_arn])
            acknowledge(
                self.roles[key],
                "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:execute-api:<AWS::Region>:<AWS::AccountId>:"
                "<WebSocketApi273F6915>/" + self.config.stage_name + "/POST/@connections/*]",
                "Connection ids are created at run time, so the ARN ends in a wildcard; it is scoped to "
                "this API, this stage and POST (PostToConnection) only.",
            )

    # -- triggers ------------------------------------------------------------------------------
    def _wire_events(self, q: Queues) -> None:
        for spec in self.topology.functions:
            target = self.targets[spec.key]
            if spec.sqs is not None:
                t = spec.sqs
                window = t.maximum_batching_window_seconds
                for shard in q.stages[t.stage]:
                    target.add_event_source(
                        sources.SqsEventSource(
                            shard.queue,
                            batch_size=t.batch_size,
                            max_batching_window=Duration.seconds(window) if window else None,
                            report_batch_item_failures=t.report_batch_item_failures,
                            max_concurrency=t.maximum_concurrency,
                        )
                    )
            if spec.stream is not None:
                self._stream(spec, target)
            if spec.schedule is not None:
                rule = events.Rule(
                    self,
                    _RULE_IDS.get(spec.schedule.name, spec.schedule.name),
                    rule_name=self.config.name(spec.schedule.name),
                    description=spec.schedule.description,
                    schedule=events.Schedule.rate(Duration.seconds(spec.schedule.rate_seconds)),
                )
                rule.add_target(targets.LambdaFunction(target, retry_attempts=spec.schedule.retry_attempts))

    def _stream(self, spec: TopologyFunction, target: lambda_.IFunction) -> None:
        s = spec.stream
        assert s is not None
        target.add_event_source(
            sources.DynamoEventSource(
                self.tables.by_key[s.table],
                starting_position=lambda_.StartingPosition(s.starting_position),
                batch_size=s.batch_size,
                max_batching_window=Duration.seconds(s.maximum_batching_window_seconds),
                bisect_batch_on_error=s.bisect_batch_on_error,
                retry_attempts=s.retry_attempts,
                max_record_age=Duration.seconds(s.maximum_record_age_seconds),
                parallelization_factor=s.parallelization_factor,
                report_batch_item_failures=s.report_batch_item_failures,
                on_failure=sources.SqsDlq(self.queues.by_key[s.on_failure_queue]),
            )
        )
        acknowledge(
            self.roles[spec.key],
            "AwsSolutions-IAM5[Resource::*]",
            "dynamodb:ListStreams (added by the stream event source) and X-Ray accept only '*' "
            "resources; GetRecords/GetShardIterator/DescribeStream are scoped to the table's stream.",
        )

    @property
    def all(self) -> list[lambda_.Function]:
        return list(self.by_key.values())


# The rules' construct ids as first deployed (a new id would replace the rule).
_RULE_IDS = {
    "reconcile": "ReconcileEveryMinute",
    "reconcile-channels": "ReconcileChannelsEveryMinute",
    "sweep": "SweepEveryMinute",
}
