"""Optional load-test stack: Locust master and workers on ECS Fargate (``-c loadtest=true``).

The image is built from ``loadtest/Dockerfile`` (repository root as context). ``DockerImageAsset`` only
stages the build context into ``cdk.out`` at synth; ``docker build`` and the ECR push happen at
``cdk deploy`` (cdk-assets), so synthesizing needs no Docker.

The master runs headless (no web UI exposed) and waits for the workers; workers find it through Cloud
Map at ``master.<prefix>-loadtest.local``. The worker count is a CloudFormation parameter
(``cdk deploy FanoutLoadTest --parameters WorkerCount=40``); its default comes from context.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnParameter, Duration, RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_logs as logs
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_servicediscovery as discovery
from constructs import Construct

from infra.cdk.bundling import REPO_ROOT
from infra.cdk.config import FanoutConfig
from infra.cdk.nag import acknowledge

MASTER_PORT = 5557
IMAGE_CONTEXT_EXCLUDES = [
    "*", ".*", "!loadtest", "!loadtest/**", "!fanout", "!fanout/**", "!pyproject.toml", "!README.md",
    "loadtest/results", "**/__pycache__", "**/*.pyc",
]  # fmt: skip


class LoadTestStack(Stack):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: FanoutConfig,
        websocket_url: str,
        token_secret: secretsmanager.ISecret,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, id, description="fanout load test: Locust on ECS Fargate", **kwargs)
        workers = CfnParameter(
            self,
            "WorkerCount",
            type="Number",
            default=config.loadtest_workers,
            min_value=0,
            max_value=500,
            description="Locust worker tasks (each holds ~5-10k WebSocket users)",
        )
        users = CfnParameter(self, "Users", type="Number", default=10_000, description="Locust users")
        spawn_rate = CfnParameter(
            self,
            "SpawnRate",
            type="Number",
            default=400,
            description="users/s (account limit: 500 connects/s)",
        )
        run_time = CfnParameter(
            self, "RunTime", type="String", default="30m", description="locust --run-time"
        )

        flow_logs = logs.LogGroup(
            self, "FlowLogs", retention=logs.RetentionDays.ONE_WEEK, removal_policy=RemovalPolicy.DESTROY
        )
        vpc = ec2.Vpc(
            self,
            "Vpc",
            max_azs=2,
            nat_gateways=0,  # tasks sit in public subnets with public IPs: no NAT cost for a test rig
            subnet_configuration=[ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC)],
            flow_logs={
                "all": ec2.FlowLogOptions(destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_logs))
            },
        )
        cluster = ecs.Cluster(
            self,
            "Cluster",
            vpc=vpc,
            container_insights_v2=ecs.ContainerInsights.ENABLED,
            default_cloud_map_namespace=ecs.CloudMapNamespaceOptions(
                name=f"{config.name_prefix}-loadtest.local", vpc=vpc, type=discovery.NamespaceType.DNS_PRIVATE
            ),
        )
        image = ecs.ContainerImage.from_asset(
            str(REPO_ROOT),
            file="loadtest/Dockerfile",
            exclude=IMAGE_CONTEXT_EXCLUDES,
            platform=ecr_assets.Platform.LINUX_AMD64,
        )
        logs_group = logs.LogGroup(
            self, "Logs", retention=logs.RetentionDays.ONE_MONTH, removal_policy=RemovalPolicy.DESTROY
        )
        common_env = {
            "FANOUT_WEBSOCKET_URL": websocket_url,
            "FANOUT_TOKEN_SECRET_ARN": token_secret.secret_arn,
        }
        sg = ec2.SecurityGroup(
            self, "Locust", vpc=vpc, description="Locust workers to master", allow_all_outbound=True
        )
        sg.add_ingress_rule(sg, ec2.Port.tcp_range(MASTER_PORT, MASTER_PORT + 1), "workers to master")

        master_def = ecs.FargateTaskDefinition(self, "MasterTask", cpu=1024, memory_limit_mib=2048)
        master_def.add_container(
            "master",
            image=image,
            command=["--master", "--headless", "-f", "loadtest/locustfile.py"],
            environment={
                **common_env,
                "LOCUST_USERS": users.value_as_string,
                "LOCUST_SPAWN_RATE": spawn_rate.value_as_string,
                "LOCUST_RUN_TIME": run_time.value_as_string,
                "LOCUST_EXPECT_WORKERS": workers.value_as_string,
                "LOCUST_HOST": websocket_url,
            },
            logging=ecs.LogDrivers.aws_logs(stream_prefix="master", log_group=logs_group),
            port_mappings=[
                ecs.PortMapping(container_port=MASTER_PORT),
                ecs.PortMapping(container_port=MASTER_PORT + 1),
            ],
        )
        worker_def = ecs.FargateTaskDefinition(self, "WorkerTask", cpu=2048, memory_limit_mib=4096)
        worker_def.add_container(
            "worker",
            image=image,
            command=[
                "--worker",
                "--master-host",
                f"master.{config.name_prefix}-loadtest.local",
                "-f",
                "loadtest/locustfile.py",
            ],
            environment=common_env,
            logging=ecs.LogDrivers.aws_logs(stream_prefix="worker", log_group=logs_group),
            ulimits=[ecs.Ulimit(name=ecs.UlimitName.NOFILE, soft_limit=65_536, hard_limit=65_536)],
        )
        for task in (master_def, worker_def):
            token_secret.grant_read(task.task_role)
            acknowledge(
                task.obtain_execution_role(),
                "AwsSolutions-IAM5[Resource::*]",
                "ecr:GetAuthorizationToken accepts only '*' (it issues a registry token, not access to a "
                "repository); image pulls are scoped to the asset repository.",
            )
            acknowledge(
                task,
                "AwsSolutions-ECS2",
                "Only non-secret settings (URLs, Locust knobs) are environment variables; the token "
                "key is read from Secrets Manager by ARN at run time.",
            )
        public = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC)
        self.master = ecs.FargateService(
            self,
            "Master",
            cluster=cluster,
            task_definition=master_def,
            desired_count=1,
            assign_public_ip=True,
            vpc_subnets=public,
            security_groups=[sg],
            cloud_map_options=ecs.CloudMapOptions(name="master", dns_ttl=Duration.seconds(10)),
            min_healthy_percent=0,
        )
        self.workers = ecs.FargateService(
            self,
            "Workers",
            cluster=cluster,
            task_definition=worker_def,
            desired_count=workers.value_as_number,
            assign_public_ip=True,
            vpc_subnets=public,
            security_groups=[sg],
            min_healthy_percent=0,
        )
        self.workers.node.add_dependency(self.master)
