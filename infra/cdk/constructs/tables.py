"""The four tables of docs/architecture.md: connections, partitions, broadcasts, idempotency."""

from __future__ import annotations

from typing import Any

from aws_cdk import RemovalPolicy
from aws_cdk import aws_dynamodb as ddb
from constructs import Construct

from infra.cdk.config import Billing, FanoutConfig, RemovalMode

CONNECTIONS_INDEX = "byPartition"
BROADCASTS_PENDING_INDEX = "byPending"


class Tables(Construct):
    def __init__(self, scope: Construct, id: str, *, config: FanoutConfig) -> None:
        super().__init__(scope, id)
        self.config = config
        self.connections = self._table(
            "Connections",
            ddb.Attribute(name="connectionId", type=ddb.AttributeType.STRING),
            ttl="expiresAt",
            stream=ddb.StreamViewType.NEW_AND_OLD_IMAGES,
        )
        # Keys only: the query stage needs the ids of a partition and nothing else, and a thin GSI
        # keeps connect writes cheap (an under-provisioned GSI throttles the base table).
        self.connections.add_global_secondary_index(
            index_name=CONNECTIONS_INDEX,
            partition_key=ddb.Attribute(name="partitionId", type=ddb.AttributeType.NUMBER),
            sort_key=ddb.Attribute(name="connectionId", type=ddb.AttributeType.STRING),
            projection_type=ddb.ProjectionType.KEYS_ONLY,
            **self._capacity(),
        )
        self.partitions = self._table(
            "Partitions", ddb.Attribute(name="partitionId", type=ddb.AttributeType.NUMBER)
        )
        self.broadcasts = self._table(
            "Broadcasts", ddb.Attribute(name="broadcastId", type=ddb.AttributeType.STRING)
        )
        # Sparse: only broadcasts still queued or running carry `pending`, so the sweeper reads the
        # unfinished ones, oldest first, without scanning the history. Keys only: it reads each row.
        self.broadcasts.add_global_secondary_index(
            index_name=BROADCASTS_PENDING_INDEX,
            partition_key=ddb.Attribute(name="pending", type=ddb.AttributeType.STRING),
            sort_key=ddb.Attribute(name="createdAt", type=ddb.AttributeType.NUMBER),
            projection_type=ddb.ProjectionType.KEYS_ONLY,
            **self._capacity(),
        )
        # Powertools idempotency records and the stages' delivery ledger; both expire via `expiration`.
        self.idempotency = self._table(
            "Idempotency",
            ddb.Attribute(name="id", type=ddb.AttributeType.STRING),
            ttl="expiration",
        )

    @property
    def all(self) -> list[ddb.Table]:
        return [self.connections, self.partitions, self.broadcasts, self.idempotency]

    @property
    def connections_index_arn(self) -> str:
        return f"{self.connections.table_arn}/index/{CONNECTIONS_INDEX}"

    @property
    def broadcasts_pending_index_arn(self) -> str:
        return f"{self.broadcasts.table_arn}/index/{BROADCASTS_PENDING_INDEX}"

    def _capacity(self) -> dict[str, Any]:
        if self.config.billing_mode is Billing.PROVISIONED:
            return {"read_capacity": self.config.read_capacity, "write_capacity": self.config.write_capacity}
        return {}

    def _table(
        self,
        id: str,
        key: ddb.Attribute,
        *,
        ttl: str | None = None,
        stream: ddb.StreamViewType | None = None,
    ) -> ddb.Table:
        # No table_name: a retained table outlives `cdk destroy`, and a fixed name would make the next
        # deploy fail with "already exists". CloudFormation generates one; functions get it by env.
        return ddb.Table(
            self,
            id,
            partition_key=key,
            billing_mode=ddb.BillingMode(self.config.billing_mode.value),
            encryption=ddb.TableEncryption.AWS_MANAGED,
            point_in_time_recovery_specification=ddb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            time_to_live_attribute=ttl,
            stream=stream,
            removal_policy=(
                RemovalPolicy.DESTROY
                if self.config.removal_policy is RemovalMode.DESTROY
                else RemovalPolicy.RETAIN
            ),
            deletion_protection=self.config.removal_policy is RemovalMode.RETAIN,
            **self._capacity(),
        )
