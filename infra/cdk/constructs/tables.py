"""The tables of the topology (fanout/topology.py): connections, subscriptions, channels, partitions,
broadcasts, idempotency, rate limits."""

from __future__ import annotations

from typing import Any

from aws_cdk import RemovalPolicy
from aws_cdk import aws_dynamodb as ddb
from constructs import Construct

from fanout.topology import BROADCASTS_PENDING_INDEX, CONNECTIONS_INDEX, USERS_INDEX, Key, Table, Topology
from infra.cdk.config import Billing, FanoutConfig, RemovalMode

__all__ = ["BROADCASTS_PENDING_INDEX", "CONNECTIONS_INDEX", "USERS_INDEX", "Tables"]

_TYPES = {"S": ddb.AttributeType.STRING, "N": ddb.AttributeType.NUMBER}
_PROJECTIONS = {"KEYS_ONLY": ddb.ProjectionType.KEYS_ONLY, "ALL": ddb.ProjectionType.ALL}
_STREAMS = {"NEW_AND_OLD_IMAGES": ddb.StreamViewType.NEW_AND_OLD_IMAGES}


def _attribute(key: Key) -> ddb.Attribute:
    return ddb.Attribute(name=key.name, type=_TYPES[key.type])


class Tables(Construct):
    def __init__(self, scope: Construct, id: str, *, config: FanoutConfig, topology: Topology) -> None:
        super().__init__(scope, id)
        self.config = config
        self.by_key: dict[str, ddb.Table] = {t.key: self._table(t) for t in topology.tables}
        self.connections = self.by_key["connections"]
        self.partitions = self.by_key["partitions"]
        self.broadcasts = self.by_key["broadcasts"]
        self.idempotency = self.by_key["idempotency"]
        self.subscriptions = self.by_key["subscriptions"]
        self.channels = self.by_key["channels"]
        self.rate_limits = self.by_key["rate_limits"]
        self.history = self.by_key["history"]

    @property
    def all(self) -> list[ddb.Table]:
        return list(self.by_key.values())

    @property
    def connections_index_arn(self) -> str:
        return f"{self.connections.table_arn}/index/{CONNECTIONS_INDEX}"

    @property
    def users_index_arn(self) -> str:
        return f"{self.connections.table_arn}/index/{USERS_INDEX}"

    @property
    def broadcasts_pending_index_arn(self) -> str:
        return f"{self.broadcasts.table_arn}/index/{BROADCASTS_PENDING_INDEX}"

    def _capacity(self) -> dict[str, Any]:
        if self.config.billing_mode is Billing.PROVISIONED:
            return {"read_capacity": self.config.read_capacity, "write_capacity": self.config.write_capacity}
        return {}

    def _table(self, spec: Table) -> ddb.Table:
        # No table_name: a retained table outlives `cdk destroy`, and a fixed name would make the next
        # deploy fail with "already exists". CloudFormation generates one; functions get it by env.
        table = ddb.Table(
            self,
            spec.key.capitalize(),
            partition_key=_attribute(spec.partition_key),
            sort_key=_attribute(spec.sort_key) if spec.sort_key else None,
            billing_mode=ddb.BillingMode(self.config.billing_mode.value),
            encryption=ddb.TableEncryption.AWS_MANAGED,
            point_in_time_recovery_specification=ddb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            time_to_live_attribute=spec.ttl_attribute,
            stream=_STREAMS[spec.stream] if spec.stream else None,
            removal_policy=(
                RemovalPolicy.DESTROY
                if self.config.removal_policy is RemovalMode.DESTROY
                else RemovalPolicy.RETAIN
            ),
            deletion_protection=self.config.removal_policy is RemovalMode.RETAIN,
            **self._capacity(),
        )
        for index in spec.indexes:
            table.add_global_secondary_index(
                index_name=index.name,
                partition_key=_attribute(index.partition_key),
                sort_key=_attribute(index.sort_key) if index.sort_key else None,
                projection_type=_PROJECTIONS[index.projection],
                **self._capacity(),
            )
        return table
