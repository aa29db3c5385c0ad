"""The local Lambda runtime's SQS event source mapping: long-polling pollers, scaled up while messages
keep coming and down when the queue is drained, up to the mapping's maximum concurrency; batches of up
to `batchSize` gathered within the batching window; messages deleted after a successful invocation,
those a partial batch response names (ReportBatchItemFailures) left to return after their visibility
timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from infra.local.events import failed_item_ids, sqs_event
from infra.local.runtime_clients import aws_client, sqs_endpoint
from infra.local.runtime_pool import FunctionPool, camel

if TYPE_CHECKING:
    from infra.local.runtime_config import SqsMapping

log = logging.getLogger("fanout.local.runtime")

_SQS_BATCH_BYTES = 5 * 1024 * 1024  # stop gathering a batch here: the event must stay under 6 MB


@dataclass
class SqsMappingStats:
    receives: int = 0
    messages: int = 0
    batches: int = 0
    deleted: int = 0
    failed_items: int = 0
    function_errors: int = 0
    pollers: int = 0
    max_pollers: int = 0
    largest_batch: int = 0

    def as_json(self) -> dict[str, Any]:
        return {camel(k): v for k, v in asdict(self).items()}


class SqsPoller:
    """An SQS event source mapping: pollers scaled between 1 and the maximum concurrency."""

    def __init__(self, pool: FunctionPool, mapping: SqsMapping, index: int, region: str) -> None:
        self.mapping = mapping
        self.pool = pool
        self.region = region
        self.id = f"sqs-{index}-{mapping.function}"
        self.max_pollers = min(mapping.maximum_concurrency or self.pool.limit, 1000)
        self.min_pollers = min(2, self.max_pollers)
        self.stats = SqsMappingStats()
        self.queue_arn = mapping.queue_arn or ""
        self._client: Any = None
        self._stack = contextlib.AsyncExitStack()
        self._tasks: set[asyncio.Task[None]] = set()

    def _endpoint(self) -> str | None:
        return self.mapping.endpoint_url or sqs_endpoint(self.mapping.queue_url)

    async def start(self) -> None:
        self._client = await self._stack.enter_async_context(
            aws_client("sqs", self.region, self._endpoint(), self.max_pollers + 4)
        )
        if not self.queue_arn:
            try:
                attrs = await self._client.get_queue_attributes(
                    QueueUrl=self.mapping.queue_url, AttributeNames=["QueueArn"]
                )
                self.queue_arn = attrs["Attributes"]["QueueArn"]
            except Exception:
                *_, account, name = self.mapping.queue_url.rstrip("/").split("/")
                self.queue_arn = f"arn:aws:sqs:{self.region}:{account}:{name}"
        for _ in range(self.min_pollers):
            self._spawn()
        log.info(
            "sqs mapping started",
            extra={"mapping": self.id, "queueUrl": self.mapping.queue_url, "maxPollers": self.max_pollers},
        )

    def _spawn(self) -> None:
        self.stats.pollers += 1
        self.stats.max_pollers = max(self.stats.max_pollers, self.stats.pollers)
        task = asyncio.create_task(self._poll())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _poll(self) -> None:
        try:
            while True:
                try:
                    batch = await self._gather()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("sqs receive failed", extra={"mapping": self.id, "error": repr(exc)})
                    await asyncio.sleep(1.0)
                    continue
                if not batch:
                    if self.stats.pollers > self.min_pollers:
                        return  # scale down: the queue is drained
                    if self.mapping.wait_time_seconds == 0:
                        await asyncio.sleep(0.2)  # short polling: don't spin on an empty queue
                    continue
                if self.stats.pollers < self.max_pollers:
                    self._spawn()  # scale up while messages keep coming
                try:
                    await self._process(batch)
                except asyncio.CancelledError:
                    raise
                except Exception:  # the messages return after their visibility timeout
                    log.exception("sqs batch processing failed", extra={"mapping": self.id})
        finally:
            self.stats.pollers -= 1

    async def _gather(self) -> list[dict[str, Any]]:
        m = self.mapping
        messages: list[dict[str, Any]] = []
        seen: set[str] = set()
        size = 0
        deadline: float | None = None
        while len(messages) < m.batch_size and size < _SQS_BATCH_BYTES:
            if deadline is None:
                wait = m.wait_time_seconds
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                wait = int(min(20.0, remaining))
            resp = await self._client.receive_message(
                QueueUrl=m.queue_url,
                MaxNumberOfMessages=min(10, m.batch_size - len(messages)),
                WaitTimeSeconds=wait,
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
            )
            self.stats.receives += 1
            got = [msg for msg in resp.get("Messages") or [] if msg["MessageId"] not in seen]
            if not got:
                if deadline is None:
                    return messages
                if wait == 0:
                    await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
                continue
            messages.extend(got)
            seen.update(msg["MessageId"] for msg in got)
            size += sum(len(msg.get("Body", "")) for msg in got)
            if deadline is None:
                if m.maximum_batching_window <= 0:
                    break
                deadline = time.monotonic() + m.maximum_batching_window
        return messages

    async def _process(self, batch: list[dict[str, Any]]) -> None:
        st = self.stats
        st.messages += len(batch)
        st.batches += 1
        st.largest_batch = max(st.largest_batch, len(batch))
        event = sqs_event(batch, self.queue_arn, self.region)
        result = await self.pool.invoke(event)
        if not result.ok:
            st.function_errors += 1
            log.info(
                "sqs batch failed; messages return after the visibility timeout",
                extra={"mapping": self.id, "messages": len(batch), "errorType": result.error_type},
            )
            return
        keep: set[str] = set()
        if self.mapping.report_batch_item_failures:
            failed = failed_item_ids(result.value)
            ids = {msg["MessageId"] for msg in batch}
            if failed is None or not failed <= ids:
                st.function_errors += 1
                log.warning("invalid batchItemFailures: whole batch failed", extra={"mapping": self.id})
                return
            keep = failed
            st.failed_items += len(failed)
        to_delete = [msg for msg in batch if msg["MessageId"] not in keep]
        for start in range(0, len(to_delete), 10):
            chunk = to_delete[start : start + 10]
            entries = [{"Id": str(i), "ReceiptHandle": msg["ReceiptHandle"]} for i, msg in enumerate(chunk)]
            try:
                out = await self._client.delete_message_batch(
                    QueueUrl=self.mapping.queue_url, Entries=entries
                )
            except Exception as exc:
                log.warning("sqs delete failed", extra={"mapping": self.id, "error": repr(exc)})
                continue
            st.deleted += len(out.get("Successful") or [])

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._stack.aclose()
