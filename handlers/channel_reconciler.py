"""fanout-channel-reconciler: scheduled → recount every channel's occupancy from its subscription rows,
correct drifted counter and presence rows, delete the subscription rows whose expiry has passed.

DynamoDB's TTL deletes expired rows only eventually (within days on AWS; never on DynamoDB Local), so
the reconciler deletes them itself; the deletions reach the channel counter through the stream.

Metrics: `ChannelsCorrected`, `ChannelsSkipped` (moved under us: next run), `ChannelsBusy` (changed
by the stream within the quiet window), `ChannelDriftTotal` (sum of |stored - counted| connections),
`SubscriptionsExpiredDeleted`, `Subscriptions` (rows counted), `Channels`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import boto3
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from fanout.adapters.channels import ChannelsTable
from fanout.adapters.subscription_reads import SubscriptionReads
from fanout.presence import reconcile
from fanout.settings import ChannelReconcilerSettings, load
from handlers._observability import logger, metrics, tracer

MAX_LOGGED_CORRECTIONS = 100


@dataclass(frozen=True)
class Deps:
    channels: ChannelsTable
    subscriptions: SubscriptionReads
    quiet_ms: int


@lru_cache(maxsize=1)
def deps() -> Deps:
    """Built once per container, at the first invocation."""
    settings = load(ChannelReconcilerSettings)
    client = boto3.client("dynamodb", region_name=settings.region)
    return Deps(
        ChannelsTable(client, settings.channels_table),
        SubscriptionReads(client, settings.subscriptions_table),
        int(settings.reconcile_quiet_seconds * 1000),
    )


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    d = deps()
    result = reconcile(d.channels, d.subscriptions, now_ms=int(time.time() * 1000), quiet_ms=d.quiet_ms)
    drift = sum(f.drift for f in result.corrected)
    logger.info(
        "channels reconciled",
        channels=result.channels,
        subscriptions=result.connections,
        queries=result.queries,
        corrected=[
            {
                "channel": f.channel,
                "counter": None
                if f.counter is None
                else {"stored": f.counter.expected, "counted": f.counter.value},
                "presence": len(f.presence),
            }
            for f in result.corrected[:MAX_LOGGED_CORRECTIONS]
        ],
        correctedCount=len(result.corrected),
        skipped=[f.channel for f in result.skipped[:MAX_LOGGED_CORRECTIONS]],
        busy=result.busy,
        expiredDeleted=result.expired_deleted,
        drift=drift,
    )
    metrics.add_metric(name="Channels", unit=MetricUnit.Count, value=result.channels)
    metrics.add_metric(name="Subscriptions", unit=MetricUnit.Count, value=result.connections)
    metrics.add_metric(name="ChannelsCorrected", unit=MetricUnit.Count, value=len(result.corrected))
    metrics.add_metric(name="ChannelsSkipped", unit=MetricUnit.Count, value=len(result.skipped))
    metrics.add_metric(name="ChannelsBusy", unit=MetricUnit.Count, value=result.busy)
    metrics.add_metric(name="ChannelDriftTotal", unit=MetricUnit.Count, value=drift)
    metrics.add_metric(
        name="SubscriptionsExpiredDeleted", unit=MetricUnit.Count, value=result.expired_deleted
    )
    return {
        "channels": result.channels,
        "subscriptions": result.connections,
        "corrected": len(result.corrected),
        "skipped": len(result.skipped),
        "busy": result.busy,
        "expiredDeleted": result.expired_deleted,
    }
