"""Starting and reading broadcasts: the operator API's domain (synchronous boto3 clients passed in)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from fanout.errors import BroadcastNotFound, InvalidInput, RetryableError
from fanout.frames import build_frame
from fanout.models import BroadcastRecord, BroadcastStatus, SwarmRequest
from fanout.retry import backoff_delay
from fanout.settings import BroadcastsPart, OperatorApiSettings
from fanout.store import BroadcastRequests, now_ms, parse_broadcast, shards_of, totals_of, with_totals


def requests_for(settings: BroadcastsPart) -> BroadcastRequests:
    return BroadcastRequests(settings.broadcasts_table, settings.idempotency_table)


def validate_broadcast_id(broadcast_id: str) -> str:
    try:
        return str(uuid.UUID(broadcast_id))
    except (ValueError, AttributeError, TypeError) as exc:
        raise InvalidInput("broadcastId must be a UUID", field="broadcastId") from exc


def start_broadcast(
    dynamodb: Any,
    lambda_client: Any,
    settings: OperatorApiSettings,
    message: Any,
    *,
    idempotency_key: str | None = None,
) -> str:
    """Store the broadcast (its frame serialized once) and hand it to the swarm; returns its id.

    Raises PayloadTooLarge before anything is written when the frame would exceed 128 KB.
    """
    broadcast_id = str(uuid.uuid4())
    created_at = now_ms()
    frame = build_frame(broadcast_id, created_at, message, limit=settings.max_frame_bytes)
    requests = requests_for(settings)
    dynamodb.put_item(**requests.create(broadcast_id, created_at, frame, idempotency_key))
    payload = SwarmRequest(broadcast_id=broadcast_id).model_dump_json(by_alias=True)
    try:
        lambda_client.invoke(
            FunctionName=settings.swarm_function_name, InvocationType="Event", Payload=payload
        )
    except (ClientError, BotoCoreError) as exc:
        error = f"the swarm function could not be invoked: {exc}"
        dynamodb.update_item(**requests.finish(broadcast_id, BroadcastStatus.FAILED, now_ms(), error=error))
        raise RetryableError(f"could not start the swarm for broadcast {broadcast_id}: {exc}") from exc
    return broadcast_id


def get_broadcast(dynamodb: Any, settings: BroadcastsPart, broadcast_id: str) -> BroadcastRecord:
    """The broadcast with its counts (the sum of its counter shards)."""
    broadcast_id = validate_broadcast_id(broadcast_id)
    requests = requests_for(settings)
    out = dynamodb.get_item(**requests.get(broadcast_id))
    if "Item" not in out:
        raise BroadcastNotFound(f"no broadcast {broadcast_id}")
    record, values = parse_broadcast(out["Item"])
    shards = shards_of(values)
    if not shards:
        return record
    request = requests.get_shards(broadcast_id, shards)
    responses = []
    for attempt in range(1, 9):
        got = dynamodb.batch_get_item(**request)
        responses.append(got)
        if not got.get("UnprocessedKeys"):
            return with_totals(record, totals_of(responses, requests.ledger))
        request = {"RequestItems": got["UnprocessedKeys"]}
        time.sleep(backoff_delay(attempt, base=0.05, cap=1.0))
    raise RetryableError(f"the counts of broadcast {broadcast_id} could not be read (throttled)")


def message_digest(message: Any) -> str:
    """A stable digest of a message, to refuse an Idempotency-Key reused with another message."""
    import hashlib

    return hashlib.sha256(json.dumps(message, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
