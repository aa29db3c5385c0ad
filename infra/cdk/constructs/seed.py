"""A custom resource that creates the N partition rows once the table exists."""

from __future__ import annotations

from pathlib import Path

from aws_cdk import CustomResource, Duration, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from infra.cdk import bundling
from infra.cdk.config import FanoutConfig

SEED_CODE = Path(__file__).resolve().parents[1] / "seed"


class PartitionSeed(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: FanoutConfig,
        table_name: str,
        table_arn: str,
        removal_policy: RemovalPolicy,
    ) -> None:
        super().__init__(scope, id)
        log_group = logs.LogGroup(
            self,
            "Logs",
            retention=config.log_retention,
            removal_policy=removal_policy,  # like every log group of the stack
        )
        role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description="partition seed: UpdateItem on the partitions table only",
        )
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["logs:CreateLogStream", "logs:PutLogEvents"], resources=[log_group.log_group_arn]
            )
        )
        role.add_to_policy(iam.PolicyStatement(actions=["dynamodb:UpdateItem"], resources=[table_arn]))
        fn = lambda_.Function(
            self,
            "Function",
            description="create partition rows 0..N-1 (custom resource)",
            code=lambda_.Code.from_asset(str(SEED_CODE), exclude=["__pycache__", "*.pyc"]),
            handler="index.handler",
            runtime=lambda_.Runtime.PYTHON_3_14,  # standard library + the runtime's boto3 only: latest
            architecture=bundling.ARCHITECTURE,
            memory_size=256,
            timeout=Duration.minutes(5),
            role=role,
            log_group=log_group,
        )
        self.resource = CustomResource(
            self,
            "Resource",
            service_token=fn.function_arn,
            resource_type="Custom::FanoutPartitionSeed",
            properties={"TableName": table_name, "PartitionCount": str(config.partitions)},
        )
