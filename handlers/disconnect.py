"""fanout-disconnect: route `$disconnect` → delete the connection row (the stream updates counters),
then the subscription rows it listed.

`$disconnect` is best effort in API Gateway; rows it misses expire through the tables' TTL.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import boto3
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parser import parse
from aws_lambda_powertools.utilities.parser.models import APIGatewayWebSocketDisconnectEventModel
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import ValidationError

from fanout.adapters.connections import ConnectionsTable
from fanout.adapters.subscriptions import SubscriptionsTable
from fanout.errors import FanoutError
from fanout.settings import DisconnectSettings, load
from handlers._observability import logger, metrics, tracer
from partitions.lifecycle import close_connection


@dataclass(frozen=True)
class Deps:
    connections: ConnectionsTable
    subscriptions: SubscriptionsTable


@lru_cache(maxsize=1)
def deps() -> Deps:
    """Built once per container, at the first invocation."""
    settings = load(DisconnectSettings)
    client = boto3.client("dynamodb", region_name=settings.region)
    return Deps(
        ConnectionsTable(
            client,
            settings.connections_table,
            index=settings.connections_index,
            ttl_seconds=settings.connection_ttl_seconds,
        ),
        SubscriptionsTable(
            client, settings.subscriptions_table, connections_table=settings.connections_table
        ),
    )


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        request = parse(event=event, model=APIGatewayWebSocketDisconnectEventModel)
    except ValidationError as exc:
        logger.warning(
            "unreadable $disconnect event", errors=exc.errors(include_url=False, include_input=False)
        )
        return {"statusCode": 400}
    ctx = request.request_context
    try:
        d = deps()
        closed = close_connection(d.connections, d.subscriptions, ctx.connection_id)
    except FanoutError as exc:
        # The rows expire through TTL if this delete never happens.
        logger.exception("disconnect failed", connectionId=ctx.connection_id, error=str(exc))
        metrics.add_metric(name="DisconnectFailed", unit=MetricUnit.Count, value=1)
        return {"statusCode": 500}
    logger.info(
        "disconnected",
        connectionId=ctx.connection_id,
        partitionId=closed.partition_id if closed else None,
        channels=list(closed.channels) if closed else [],
        found=closed is not None,
        disconnectStatusCode=ctx.disconnect_status_code,
        disconnectReason=ctx.disconnect_reason,
    )
    metrics.add_metric(name="Disconnects", unit=MetricUnit.Count, value=1)
    return {"statusCode": 200}
