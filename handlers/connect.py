"""fanout-connect: route `$connect` → choose a partition, write the connection row.

The authorizer already checked the token; its context carries the userId. Partition choice reads a
per-container cached view of the partition counters (refreshed every
FANOUT_PARTITION_VIEW_TTL_SECONDS) and takes the least loaded of FANOUT_PARTITION_CHOICES random
candidates: O(1) DynamoDB reads per connect, amortized.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import boto3
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parser import parse
from aws_lambda_powertools.utilities.parser.models import (
    APIGatewayWebSocketConnectEventModel,
    APIGatewayWebSocketConnectEventRequestContext,
)
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fanout.adapters.connections import ConnectionsTable
from fanout.adapters.partitions import PartitionsTable
from fanout.errors import FanoutError
from fanout.settings import ConnectSettings, load
from handlers._observability import logger, metrics, tracer
from partitions.choice import PartitionChooser
from partitions.lifecycle import open_connection


class AuthorizerContext(BaseModel):
    model_config = ConfigDict(extra="ignore")
    user_id: str = Field(alias="userId", min_length=1)


class ConnectRequestContext(APIGatewayWebSocketConnectEventRequestContext):
    authorizer: AuthorizerContext | None = None


class ConnectEvent(APIGatewayWebSocketConnectEventModel):
    request_context: ConnectRequestContext = Field(alias="requestContext")


@dataclass(frozen=True)
class Deps:
    connections: ConnectionsTable
    chooser: PartitionChooser


@lru_cache(maxsize=1)
def deps() -> Deps:
    """Built once per container, at the first invocation."""
    settings = load(ConnectSettings)
    client = boto3.client("dynamodb", region_name=settings.region)
    partitions = PartitionsTable(client, settings.partitions_table)
    connections = ConnectionsTable(
        client,
        settings.connections_table,
        index=settings.connections_index,
        ttl_seconds=settings.connection_ttl_seconds,
    )
    chooser = PartitionChooser(
        loader=partitions.load_view,
        partition_count=settings.partition_count,
        choices=settings.partition_choices,
        ttl_seconds=settings.partition_view_ttl_seconds,
        clock=time.monotonic,
        rng=random.Random(),
    )
    return Deps(connections, chooser)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        request = parse(event=event, model=ConnectEvent)
    except ValidationError as exc:
        logger.warning("unreadable $connect event", errors=exc.errors(include_url=False, include_input=False))
        return {"statusCode": 400}
    ctx = request.request_context
    if ctx.authorizer is None:
        # The route is only reachable through the authorizer; without its context, refuse (no row).
        logger.warning("connect without authorizer context", connectionId=ctx.connection_id)
        return {"statusCode": 401}
    d = deps()
    loads_before = d.chooser.stats.pages
    try:
        connected = open_connection(
            d.chooser,
            d.connections,
            connection_id=ctx.connection_id,
            user_id=ctx.authorizer.user_id,
            source_ip=str(ctx.identity.source_ip.network_address),
            now=time.time(),
        )
    except FanoutError as exc:
        logger.exception("connect failed", connectionId=ctx.connection_id, error=str(exc))
        metrics.add_metric(name="ConnectFailed", unit=MetricUnit.Count, value=1)
        return {"statusCode": 500}
    view_reads = d.chooser.stats.pages - loads_before
    logger.info(
        "connected",
        connectionId=connected.connection_id,
        userId=ctx.authorizer.user_id,
        partitionId=connected.partition_id,
        viewReads=view_reads,
    )
    metrics.add_metric(name="Connects", unit=MetricUnit.Count, value=1)
    if view_reads:
        metrics.add_metric(name="PartitionViewReads", unit=MetricUnit.Count, value=view_reads)
    return {"statusCode": 200}
