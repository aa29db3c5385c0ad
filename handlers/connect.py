"""fanout-connect: route `$connect` → subscribe to `?channels=`, choose a partition, write the rows.

The authorizer already checked the token; its context carries the userId and the token's rights
(fanout.protocol.Grants). The channels of ``?channels=a,b`` are checked here, where the rights and
the parameter meet (not in the authorizer: every identity source of a WebSocket authorizer must be on
every request): an invalid name or too many is a 400, a channel the token does not allow a 403, and
then no row is written. ``?recover=room:1:N:epoch,...`` subscribes too, with rows that take no live
message yet, and hands the connection to the recovery function (asynchronously: a connection
receives nothing before $connect returns), which posts what was missed and then hands over to live
delivery (fanout.recovery). Partition choice reads a
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
from pydantic import Field, ValidationError

from fanout.adapters.connections import ConnectionsTable
from fanout.adapters.lambdas import RecoveryLauncher
from fanout.adapters.partitions import PartitionsTable
from fanout.adapters.subscriptions import SubscriptionsTable
from fanout.errors import FanoutError, Refused
from fanout.history import recover_param
from fanout.protocol import expires_at, grants_of, requested_channels
from fanout.settings import ConnectSettings, load
from handlers._observability import logger, metrics, tracer
from partitions.choice import PartitionChooser
from partitions.lifecycle import close_connection, open_connection


class ConnectRequestContext(APIGatewayWebSocketConnectEventRequestContext):
    authorizer: dict[str, Any] | None = None


class ConnectEvent(APIGatewayWebSocketConnectEventModel):
    request_context: ConnectRequestContext = Field(alias="requestContext")
    query_string_parameters: dict[str, str] | None = Field(default=None, alias="queryStringParameters")
    multi_value_query_string_parameters: dict[str, list[str]] | None = Field(
        default=None, alias="multiValueQueryStringParameters"
    )


@dataclass(frozen=True)
class Deps:
    connections: ConnectionsTable
    subscriptions: SubscriptionsTable
    chooser: PartitionChooser
    ttl_seconds: int
    max_subscriptions: int
    recovery: RecoveryLauncher


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
    subscriptions = SubscriptionsTable(
        client, settings.subscriptions_table, connections_table=settings.connections_table
    )
    recovery = RecoveryLauncher(
        boto3.client("lambda", region_name=settings.region), settings.recovery_function_name
    )
    return Deps(
        connections,
        subscriptions,
        chooser,
        settings.connection_ttl_seconds,
        settings.max_subscriptions,
        recovery,
    )


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
    grants = grants_of(ctx.authorizer)
    if grants is None:
        # The route is only reachable through the authorizer; without its context, refuse (no row).
        logger.warning("connect without authorizer context", connectionId=ctx.connection_id)
        return {"statusCode": 401}
    d = deps()
    loads_before = d.chooser.stats.pages
    try:
        connected = open_connection(
            d.chooser,
            d.connections,
            d.subscriptions,
            connection_id=ctx.connection_id,
            grants=grants,
            source_ip=str(ctx.identity.source_ip.network_address),
            now=time.time(),
            expires_at=expires_at(ctx.connected_at, d.ttl_seconds),
            requested=requested_channels(
                request.query_string_parameters, request.multi_value_query_string_parameters
            ),
            recover=recover_param(
                request.query_string_parameters, request.multi_value_query_string_parameters
            ),
            max_subscriptions=d.max_subscriptions,
        )
        if connected.recover:
            try:
                d.recovery.launch(connected.connection_id, list(connected.recover))
            except FanoutError:
                # Without its recovery the connection would never take live messages on those
                # channels: refuse it (the client reconnects) and remove what was written.
                close_connection(d.connections, d.subscriptions, connected.connection_id)
                raise
            metrics.add_metric(name="RecoveriesStarted", unit=MetricUnit.Count, value=1)
    except Refused as exc:
        logger.info(
            "connect refused",
            connectionId=ctx.connection_id,
            userId=grants.user_id,
            code=exc.code,
            problem=str(exc),
        )
        metrics.add_metric(name="ConnectChannelsRefused", unit=MetricUnit.Count, value=1)
        return {"statusCode": exc.status}
    except FanoutError as exc:
        logger.exception("connect failed", connectionId=ctx.connection_id, error=str(exc))
        metrics.add_metric(name="ConnectFailed", unit=MetricUnit.Count, value=1)
        return {"statusCode": 500}
    view_reads = d.chooser.stats.pages - loads_before
    logger.info(
        "connected",
        connectionId=connected.connection_id,
        userId=grants.user_id,
        partitionId=connected.partition_id,
        channels=list(connected.channels),
        recover=[r.channel for r in connected.recover],
        viewReads=view_reads,
    )
    metrics.add_metric(name="Connects", unit=MetricUnit.Count, value=1)
    if view_reads:
        metrics.add_metric(name="PartitionViewReads", unit=MetricUnit.Count, value=view_reads)
    return {"statusCode": 200}
