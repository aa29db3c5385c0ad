"""The local Lambda runtime's DynamoDB Streams event source mapping: one ordered reader per shard,
children started after their parents finish; batches retried from the checkpoint, bisected on a
function error, partial batch responses honoured, records discarded once the retries are exhausted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from infra.local.events import failed_item_ids, records_event, stream_record
from infra.local.runtime_clients import aws_client
from infra.local.runtime_pool import FunctionPool, camel

if TYPE_CHECKING:
    from infra.local.runtime_config import DynamoDBStreamMapping

log = logging.getLogger("fanout.local.runtime")


@dataclass
class StreamMappingStats:
    shards: int = 0
    shards_done: int = 0
    records: int = 0
    batches: int = 0
    retries: int = 0
    bisects: int = 0
    partial_failures: int = 0
    function_errors: int = 0
    dropped_records: int = 0

    def as_json(self) -> dict[str, Any]:
        return {camel(k): v for k, v in asdict(self).items()}


@dataclass
class _Shard:
    shard_id: str
    parent_id: str | None
    iterator_type: str
    task: asyncio.Task[None] | None = None
    done: bool = False


class StreamPoller:
    """A DynamoDB Streams event source mapping: one ordered reader per shard, children after parents."""

    _DISCOVERY_INTERVAL = 1.0

    def __init__(self, pool: FunctionPool, mapping: DynamoDBStreamMapping, index: int, region: str) -> None:
        self.mapping = mapping
        self.pool = pool
        self.region = region
        self.id = f"ddbstream-{index}-{mapping.function}"
        self.stats = StreamMappingStats()
        self._client: Any = None
        self._stack = contextlib.AsyncExitStack()
        self._shards: dict[str, _Shard] = {}
        self._task: asyncio.Task[None] | None = None

    def _endpoint(self) -> str | None:
        return (
            self.mapping.endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_DYNAMODB_STREAMS")  # the name botocore honours
            or os.environ.get("AWS_ENDPOINT_URL_DYNAMODBSTREAMS")
            or os.environ.get("AWS_ENDPOINT_URL_DYNAMODB")
        )

    async def start(self) -> None:
        self._client = await self._stack.enter_async_context(
            aws_client("dynamodbstreams", self.region, self._endpoint())
        )
        await self._discover(first=True)
        self._task = asyncio.create_task(self._discovery_loop())
        log.info(
            "dynamodb stream mapping started",
            extra={"mapping": self.id, "streamArn": self.mapping.stream_arn},
        )

    async def _describe(self) -> list[dict[str, Any]]:
        shards: list[dict[str, Any]] = []
        start: str | None = None
        while True:
            kwargs: dict[str, Any] = {"StreamArn": self.mapping.stream_arn}
            if start:
                kwargs["ExclusiveStartShardId"] = start
            desc = (await self._client.describe_stream(**kwargs))["StreamDescription"]
            shards.extend(desc.get("Shards") or [])
            start = desc.get("LastEvaluatedShardId")
            if not start:
                return shards

    async def _discover(self, *, first: bool = False) -> None:
        for s in await self._describe():
            sid = s["ShardId"]
            if sid in self._shards:
                continue
            closed = bool(s.get("SequenceNumberRange", {}).get("EndingSequenceNumber"))
            kind = self.mapping.starting_position if first else "TRIM_HORIZON"
            shard = _Shard(sid, s.get("ParentShardId"), kind)
            if first and kind == "LATEST" and closed:
                shard.done = True  # nothing after LATEST in a closed shard
            self._shards[sid] = shard
            self.stats.shards += 1
        for shard in self._shards.values():
            if shard.task is not None or shard.done:
                continue
            parent = self._shards.get(shard.parent_id) if shard.parent_id else None
            if parent is None or parent.done:
                shard.task = asyncio.create_task(self._read_shard(shard))

    async def _discovery_loop(self) -> None:
        while True:
            await asyncio.sleep(self._DISCOVERY_INTERVAL)
            try:
                await self._discover()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("describe stream failed", extra={"mapping": self.id, "error": repr(exc)})

    async def _iterator(self, shard: _Shard, after: str | None) -> str | None:
        kwargs: dict[str, Any] = {"StreamArn": self.mapping.stream_arn, "ShardId": shard.shard_id}
        if after is not None:
            kwargs.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", SequenceNumber=after)
        else:
            kwargs["ShardIteratorType"] = shard.iterator_type
        out = await self._client.get_shard_iterator(**kwargs)
        return out.get("ShardIterator")

    async def _read_shard(self, shard: _Shard) -> None:
        m = self.mapping
        region = self.region
        pending: list[dict[str, Any]] = []
        last_seq: str | None = None
        iterator: str | None = None
        need_iterator = True
        while True:
            try:
                if need_iterator:
                    iterator = await self._iterator(shard, last_seq)
                    need_iterator = False
                deadline: float | None = None
                while iterator is not None and len(pending) < m.batch_size:
                    resp = await self._client.get_records(
                        ShardIterator=iterator, Limit=min(1000, m.batch_size - len(pending))
                    )
                    iterator = resp.get("NextShardIterator")
                    records = resp.get("Records") or []
                    for r in records:
                        pending.append(stream_record(r, m.stream_arn, region))
                        last_seq = r["dynamodb"]["SequenceNumber"]
                    if pending and deadline is None:
                        deadline = time.monotonic() + m.maximum_batching_window
                    if pending and (deadline is None or time.monotonic() >= deadline):
                        break
                    if not records:
                        pause = m.poll_interval
                        if deadline is not None:
                            pause = min(pause, max(0.0, deadline - time.monotonic()))
                        await asyncio.sleep(pause)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "get records failed",
                    extra={"mapping": self.id, "shard": shard.shard_id, "error": repr(exc)},
                )
                need_iterator = True
                await asyncio.sleep(1.0)
                continue
            if not pending:
                if iterator is None:
                    break
                continue
            batch = pending[: m.batch_size]
            try:
                await self._deliver(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # keep the batch and try again: a stream shard never skips records
                log.exception(
                    "stream batch delivery failed", extra={"mapping": self.id, "shard": shard.shard_id}
                )
                await asyncio.sleep(1.0)
                continue
            del pending[: len(batch)]
        shard.done = True
        self.stats.shards_done += 1
        log.info("shard finished", extra={"mapping": self.id, "shard": shard.shard_id})
        with contextlib.suppress(Exception):
            await self._discover()  # start the children now

    def _may_retry(self, attempt: int) -> bool:
        limit = self.mapping.maximum_retry_attempts
        return limit < 0 or attempt < limit

    async def _deliver(self, batch: list[dict[str, Any]]) -> None:
        """Invoke until the batch succeeds or its retries are exhausted; in order, from the checkpoint."""
        m = self.mapping
        st = self.stats
        work: list[tuple[list[dict[str, Any]], int]] = [(batch, 0)]
        while work:
            records, attempt = work.pop(0)
            if attempt:
                st.retries += 1
                await asyncio.sleep(min(0.05 * 2**attempt, 2.0))
            st.batches += 1
            result = await self.pool.invoke(records_event(records))
            if result.ok:
                failed = failed_item_ids(result.value) if m.report_batch_item_failures else set()
                if failed == set():
                    st.records += len(records)
                    continue
                seqs = [r["dynamodb"]["SequenceNumber"] for r in records]
                if failed is not None and failed <= set(seqs):
                    first = min(seqs.index(s) for s in failed)
                    st.partial_failures += 1
                    st.records += first
                    rest = records[first:]
                    if self._may_retry(attempt):
                        work.insert(0, (rest, attempt + 1))
                    else:
                        self._drop(rest, "retries exhausted after a partial batch failure")
                    continue
                log.warning("invalid batchItemFailures: whole batch failed", extra={"mapping": self.id})
            st.function_errors += 1
            if m.bisect_batch_on_function_error and len(records) > 1:
                st.bisects += 1
                half = len(records) // 2
                work[:0] = [(records[:half], attempt), (records[half:], attempt)]
            elif self._may_retry(attempt):
                work.insert(0, (records, attempt + 1))
            else:
                self._drop(records, "retries exhausted")

    def _drop(self, records: list[dict[str, Any]], why: str) -> None:
        self.stats.dropped_records += len(records)
        log.warning(
            "stream records discarded",
            extra={
                "mapping": self.id,
                "reason": why,
                "records": len(records),
                "firstSequenceNumber": records[0]["dynamodb"]["SequenceNumber"],
            },
        )

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *(s.task for s in self._shards.values())) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._stack.aclose()
