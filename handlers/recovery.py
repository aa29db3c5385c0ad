"""fanout-recovery: async-invoked by $connect with {"connectionId","items":[{"channel","since","epoch"}]}.

For each channel of ``?recover=``: the messages after `since`, posted in offset order once the
connection is open (it is not until its $connect returns: a post before answers 410, retried for
FANOUT_RECOVERY_CONNECT_GRACE_SECONDS), then the hand-over to live delivery (fanout.recovery). A
channel that cannot be recovered gets the error frame with code `recovery_impossible` and goes live
from the channel's head. A retried invocation skips the channels already handed over.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import boto3
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from fanout.adapters.callbacks import CallbackPoster
from fanout.adapters.history import HistoryTable
from fanout.history import RECOVERING
from fanout.models import RecoveryRequest
from fanout.protocol import recovery_error_frame
from fanout.recovery import RecoveryImpossible, recover
from fanout.retry import backoff_delay
from fanout.settings import RecoverySettings, load
from handlers._observability import logger, metrics, tracer


@dataclass(frozen=True)
class Deps:
    history: HistoryTable
    poster: CallbackPoster
    keep: int
    page_size: int
    grace_seconds: float


@lru_cache(maxsize=1)
def deps() -> Deps:
    """Built once per container, at the first invocation."""
    s = load(RecoverySettings)
    client = boto3.client("dynamodb", region_name=s.region)
    history = HistoryTable.of(client, s, subscriptions_table=s.subscriptions_table)
    callbacks = boto3.client(
        "apigatewaymanagementapi", endpoint_url=s.connections_endpoint, region_name=s.region
    )
    return Deps(
        history,
        CallbackPoster(callbacks),
        s.history_keep,
        s.history_page_size,
        s.recovery_connect_grace_seconds,
    )


def sender(d: Deps, connection_id: str) -> Any:
    """Posts one frame; until the first post gets through, a 410 means "not open yet" (retried within
    the grace), after it "gone"."""
    deadline = time.monotonic() + d.grace_seconds
    opened = False

    def send(frame: str) -> bool:
        nonlocal opened
        attempt = 0
        while True:
            if d.poster.post(connection_id, frame):
                opened = True
                return True
            attempt += 1
            if opened or time.monotonic() >= deadline:
                return False
            time.sleep(backoff_delay(attempt, base=0.05, cap=0.5))

    return send


def _impossible(exc: RecoveryImpossible) -> str:
    return recovery_error_frame("recover", exc.channel, str(exc), exc.epoch)


@logger.inject_lambda_context(correlation_id_path="connectionId")
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = RecoveryRequest.model_validate(event)
    d = deps()
    cid = request.connection_id
    send = sender(d, cid)
    results = []
    for item in request.items:
        if d.history.live_from(item.channel, cid) != RECOVERING:
            continue  # handed over already (a retried invocation), or no longer subscribed
        done = recover(
            d.history,
            send,
            cid,
            item.channel,
            item.since,
            item.epoch,
            keep=d.keep,
            limit=d.page_size,
            impossible_frame=_impossible,
        )
        results.append(done)
        metrics.add_metric(name="RecoveredMessages", unit=MetricUnit.Count, value=done.sent)
        if done.impossible:
            metrics.add_metric(name="RecoveriesImpossible", unit=MetricUnit.Count, value=1)
        logger.info(
            "recovered",
            channel=item.channel,
            since=item.since,
            sent=done.sent,
            impossible=done.impossible,
            gone=done.gone,
        )
        if done.gone:
            break  # the connection went away: nothing more to send it
    metrics.add_metric(name="Recoveries", unit=MetricUnit.Count, value=1)
    return {"connectionId": cid, "channels": [{"channel": r.channel, "sent": r.sent} for r in results]}
