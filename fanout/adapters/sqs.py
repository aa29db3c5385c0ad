"""The stages' SQS adapter: SendMessageBatch in groups of 10, resending only what failed transiently."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from botocore.exceptions import ClientError

from fanout.adapters.errors import THROTTLING, error_code
from fanout.errors import MessageRefused, RetryableError

SQS_BATCH = 10
# What SQS answers about a message's own content or size: no retry can change it.
REFUSED_CONTENT = frozenset(
    {
        "InvalidMessageContents",
        "InvalidParameterValue",
        "BatchRequestTooLong",
        "AWS.SimpleQueueService.BatchRequestTooLong",
    }
)


async def send_batches(
    sqs: Any, queue_url: str, bodies: Sequence[str], *, delay: int = 0, attempts: int = 5
) -> None:
    """Send every body; raise MessageRefused at once when SQS refuses one for good (SenderFault: its
    content or size, which no retry changes), RetryableError when transient failures outlast `attempts`."""
    for start in range(0, len(bodies), SQS_BATCH):
        entries = [
            {"Id": str(i), "MessageBody": body, **({"DelaySeconds": delay} if delay else {})}
            for i, body in enumerate(bodies[start : start + SQS_BATCH])
        ]
        for attempt in range(attempts):
            try:
                out = await sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
            except ClientError as exc:
                code = error_code(exc)
                if code in REFUSED_CONTENT:
                    raise MessageRefused(f"SQS refused a message: {code}: {exc}", code=code) from exc
                if code in THROTTLING:
                    raise RetryableError(f"SendMessageBatch to {queue_url} was throttled: {exc}") from exc
                raise
            failures = out.get("Failed", [])
            refused = [f for f in failures if f.get("SenderFault")]
            if refused:
                first = refused[0]
                raise MessageRefused(
                    f"SQS refused {len(refused)} message(s): {first.get('Code')}: {first.get('Message')}",
                    code=str(first.get("Code", "")),
                )
            failed = {f["Id"] for f in failures}
            if not failed:
                break
            entries = [e for e in entries if e["Id"] in failed]
            await asyncio.sleep(0.05 * 2**attempt)
        else:
            raise RetryableError(f"SendMessageBatch to {queue_url} kept failing for {len(entries)} entries")
