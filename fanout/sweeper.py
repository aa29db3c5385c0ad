"""The sweeper's operation: find pending broadcasts, re-drive the stuck ones, fail the hopeless ones.

Synchronous boto3 clients passed in (the sweeper runs once a minute; nothing here is on a hot path).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from fanout.broadcasts import get_broadcast, requests_for
from fanout.errors import BroadcastNotFound
from fanout.models import BroadcastStatus, SwarmRequest
from fanout.settings import BroadcastsPart, SweeperSettings
from fanout.store import now_ms as clock_ms
from fanout.sweeping import Action, decide


@dataclass
class SweepReport:
    pending: int = 0
    redriven: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    progressing: list[str] = field(default_factory=list)


def _conditional(call: Any, request: dict[str, Any]) -> bool:
    try:
        call(**request)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
            return False  # another sweeper, or the broadcast ended meanwhile
        raise
    return True


def pending_ids(dynamodb: Any, settings: BroadcastsPart) -> list[str]:
    requests = requests_for(settings)
    ids: list[str] = []
    start: dict[str, Any] | None = None
    while True:
        out = dynamodb.query(**requests.pending(start))
        ids.extend(i["broadcastId"]["S"] for i in out.get("Items", []))
        start = out.get("LastEvaluatedKey")
        if not start:
            return ids


def sweep(
    dynamodb: Any, lambda_client: Any, settings: SweeperSettings, *, now_ms: int | None = None
) -> SweepReport:
    requests = requests_for(settings)
    report = SweepReport()
    ids = pending_ids(dynamodb, settings)
    report.pending = len(ids)
    for broadcast_id in ids:
        at = clock_ms() if now_ms is None else now_ms
        try:
            record = get_broadcast(dynamodb, settings, broadcast_id)
        except BroadcastNotFound:
            continue
        decision = decide(
            record,
            now_ms=at,
            after_ms=int(settings.sweep_after_seconds * 1000),
            attempts=settings.sweep_attempts,
        )
        if decision.action == Action.WAIT:
            continue
        if decision.action == Action.FAIL:
            finish = requests.finish(broadcast_id, BroadcastStatus.FAILED, at, error=decision.reason)
            if _conditional(dynamodb.update_item, finish):
                report.failed.append(broadcast_id)
            continue
        redrive = decision.action == Action.REDRIVE
        swept = requests.swept(
            broadcast_id,
            sweeps=record.sweeps,
            next_sweeps=record.sweeps + (1 if redrive else 0),
            progress=decision.progress,
            at_ms=at,
        )
        if not _conditional(dynamodb.update_item, swept):
            continue
        if redrive:
            lambda_client.invoke(
                FunctionName=settings.swarm_function_name,
                InvocationType="Event",
                Payload=SwarmRequest(broadcast_id=broadcast_id).model_dump_json(by_alias=True),
            )
            report.redriven.append(broadcast_id)
        else:
            report.progressing.append(broadcast_id)
    return report
