"""The stages' SQS adapter: SendMessageBatch in groups of 10, resending only what failed transiently."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from fanout.adapters.errors import AWS_ERRORS, error_code, translate
from fanout.errors import MessageRefused, RetryableError

if TYPE_CHECKING:
    from types_aiobotocore_sqs.client import SQSClient

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
    sqs: SQSClient,
    queue_url: str,
    bodies: Sequence[str],
    *,
    delay: int = 0,
    attempts: int = 5,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Send every body; raise MessageRefused at once when SQS refuses one for good (SenderFault: its
    content or size, which no retry changes), RetryableError when transient failures outlast `attempts`,
    and the translation of any other error (fanout.adapters.errors.translate: a queue that does not
    exist is a PermanentError naming SQS's code)."""
    for start in range(0, len(bodies), SQS_BATCH):
        entries: list[Any] = [
            {"Id": str(i), "MessageBody": body, **({"DelaySeconds": delay} if delay else {})}
            for i, body in enumerate(bodies[start : start + SQS_BATCH])
        ]
        for attempt in range(attempts):
            try:
                out = await sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
            except AWS_ERRORS as exc:
                code = error_code(exc)
                if code in REFUSED_CONTENT:
                    raise MessageRefused(f"SQS refused a message: {code}: {exc}", code=code) from exc
                raise translate(exc, f"SendMessageBatch to {queue_url}") from exc
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
            await sleep(0.05 * 2**attempt)
        else:
            raise RetryableError(f"SendMessageBatch to {queue_url} kept failing for {len(entries)} entries")


class Queues:
    """The queues a stage sends to, over one aioboto3 SQS client."""

    def __init__(self, client: SQSClient) -> None:
        self.client = client

    async def send(self, queue_url: str, bodies: Sequence[str], *, delay: int = 0) -> None:
        await send_batches(self.client, queue_url, bodies, delay=delay)
