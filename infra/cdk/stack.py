"""FanoutStack: a thin stack composing one construct per concern."""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput, RemovalPolicy, Stack
from aws_cdk import aws_apigateway as apigw_v1
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from fanout.topology import env_name, topology
from infra.cdk.config import FanoutConfig, RemovalMode
from infra.cdk.constructs.apis import OperatorApi, WebSocketApi
from infra.cdk.constructs.functions import Functions
from infra.cdk.constructs.monitoring import Monitoring
from infra.cdk.constructs.queues import Queues
from infra.cdk.constructs.seed import PartitionSeed
from infra.cdk.constructs.tables import Tables
from infra.cdk.nag import acknowledge


class FanoutStack(Stack):
    def __init__(self, scope: Construct, id: str, *, config: FanoutConfig, **kwargs: Any) -> None:
        super().__init__(
            scope, id, description="fanout: broadcast engine for API Gateway WebSockets", **kwargs
        )
        # Readable names (functions, queues, ...) carry this stack's prefix, so stacks never collide.
        self.config = config = config.for_stack(self.stack_name)
        self.removal = removal = (
            RemovalPolicy.DESTROY if config.removal_policy is RemovalMode.DESTROY else RemovalPolicy.RETAIN
        )

        # No secret_name: a retained secret keeps its name after `cdk destroy` (and Secrets Manager
        # holds a deleted one's name for its recovery window), so a fixed name fails the next deploy.
        self.token_secret = secretsmanager.Secret(
            self,
            "TokenSecret",
            description="HS256 key of the client connect tokens (fanout.tokens)",
            generate_secret_string=secretsmanager.SecretStringGenerator(
                password_length=64, exclude_punctuation=True
            ),
            removal_policy=removal,
        )
        acknowledge(
            self.token_secret,
            "AwsSolutions-SMG4",
            "The token key is shared with the application backend that issues connect tokens; "
            "rotation is an operator-driven procedure (docs/deploy.md), not a Lambda rotation.",
        )
        # The one description of functions, triggers, tables and queues; the constructs build it.
        self.topology = system = topology(config)
        self.tables = Tables(self, "Tables", config=config, topology=system)
        self.queues = Queues(self, "Queues", config=config, topology=system)
        self.functions = Functions(
            self,
            "Functions",
            config=config,
            topology=system,
            tables=self.tables,
            queues=self.queues,
            token_secret=self.token_secret,
        )
        api_logs = logs.LogGroup(
            self, "WebSocketAccessLogs", retention=config.log_retention, removal_policy=removal
        )
        self.websocket = WebSocketApi(
            self, "WebSocket", config=config, functions=self.functions.targets, access_logs=api_logs
        )
        if config.api_gateway_cloudwatch_role:
            self._api_gateway_logging_role()
        self.functions.set_connections_endpoint(self.websocket.callback_url)
        self.functions.allow_post_to_connections(self.websocket.connections_arn)

        operator_logs = logs.LogGroup(
            self, "OperatorAccessLogs", retention=config.log_retention, removal_policy=removal
        )
        self.operator = OperatorApi(
            self,
            "Operator",
            config=config,
            handler=self.functions.targets["operator-api"],
            access_logs=operator_logs,
        )
        self.seed = PartitionSeed(
            self,
            "PartitionSeed",
            config=config,
            table_name=self.tables.partitions.table_name,
            table_arn=self.tables.partitions.table_arn,
            removal_policy=removal,
        )
        self.monitoring = Monitoring(
            self,
            "Monitoring",
            config=config,
            queues=self.queues,
            functions=self.functions.by_key,
            stream_consumers=[f.key for f in system.functions if f.stream is not None],
        )
        self._outputs()

    def _api_gateway_logging_role(self) -> None:
        """API Gateway writes WebSocket stage logs only with a Region-wide CloudWatch role set.

        The role and the account setting share the stack's removal policy (as CDK's own
        ``cloudWatchRoleRemovalPolicy`` does): retained, the setting never points at a deleted role,
        which would stop the stage logs of every API in the Region. The role's name is generated, so
        a deploy after `cdk destroy` creates a new one and points the setting at it.
        """
        role = iam.Role(
            self,
            "ApiGatewayCloudWatchRole",
            assumed_by=iam.ServicePrincipal("apigateway.amazonaws.com"),
            managed_policies=[
                iam.ManagedPolicy.from_aws_managed_policy_name(
                    "service-role/AmazonAPIGatewayPushToCloudWatchLogs"
                )
            ],
        )
        acknowledge(
            role,
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs]",
            "The Region-wide API Gateway logging role must write to log groups API Gateway names "
            "itself (one per API and stage); AWS's managed policy for exactly that purpose is the scope.",
        )
        role.apply_removal_policy(self.removal)
        account = apigw_v1.CfnAccount(self, "ApiGatewayAccount", cloud_watch_role_arn=role.role_arn)
        account.apply_removal_policy(self.removal)
        self.websocket.stage.node.add_dependency(account)

    def _outputs(self) -> None:
        def out(id: str, value: str, description: str) -> None:
            CfnOutput(self, id, value=value, description=description)

        out("WebSocketUrl", self.websocket.url, "clients connect here with ?token=<JWT>")
        endpoint_env = env_name("connections_endpoint")
        out("CallbackUrl", self.websocket.callback_url, f"@connections base ({endpoint_env})")
        out("OperatorApiUrl", self.operator.url, "fanout broadcast --api <this>")
        out("ConnectionsTable", self.tables.connections.table_name, "connections table")
        out("PartitionsTable", self.tables.partitions.table_name, "partitions table")
        out("BroadcastsTable", self.tables.broadcasts.table_name, "broadcasts table")
        out("IdempotencyTable", self.tables.idempotency.table_name, "idempotency and ledger table")
        out("SubscriptionsTable", self.tables.subscriptions.table_name, "subscriptions table")
        out("ChannelsTable", self.tables.channels.table_name, "channel occupancy table")
        out("HistoryTable", self.tables.history.table_name, "channel history table")
        out("SwarmFailuresQueueUrl", self.queues.swarm_failures.queue_url, "swarm events Lambda gave up on")
        out(
            "RecoveryFailuresQueueUrl",
            self.queues.recovery_failures.queue_url,
            "reconnect recoveries Lambda gave up on",
        )
        out("DashboardName", self.monitoring.dashboard.dashboard_name, "CloudWatch dashboard")
        out("AlarmTopicArn", self.monitoring.topic.topic_arn, "subscribe on-call here")
        out("TokenSecretArn", self.token_secret.secret_arn, "HS256 key for connect tokens")
