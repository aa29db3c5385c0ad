"""Local Lambda runtime: runs the project's handlers with the semantics of AWS Lambda.

- Containers (`runtime_pool.py`, `runtime_worker.py`): each function gets warm worker processes,
  started lazily up to its concurrency. A worker imports the handler once (cold start; module state
  persists across invocations) and serves one invocation at a time over its stdin/stdout pipes (JSON
  lines); the handler's own stdout/stderr go to the runtime's stderr (or `logDir`), prefixed
  `[function:container]`. An invocation past its timeout kills the container; a dead container is
  replaced at the next invocation.
- Invoke API (`runtime_api.py`, aiohttp): `POST /2015-03-31/functions/{name}/invocations`,
  RequestResponse / Event / DryRun, as boto3's `lambda` client expects it (`AWS_ENDPOINT_URL_LAMBDA`).
  `Event` invocations are retried and sent to their on-failure destination here.
- Event sources: SQS pollers (`runtime_sqs.py`: batch size up to 10,000 gathered within the batching
  window, maximum concurrency, ReportBatchItemFailures), DynamoDB Streams pollers (`runtime_streams.py`:
  per shard in order, children after parents, retries, bisect, partial batch responses) and rate
  schedules (`runtime_schedule.py`). The events they build come from `infra/local/events.py`.
- Active tracing, as the functions deploy with it: every invocation runs with a fresh `_X_AMZN_TRACE_ID`
  (sampled; a caller's `X-Amzn-Trace-Id` on the Invoke request is continued), and the workers'
  `AWS_XRAY_DAEMON_ADDRESS` points at a UDP sink of the runtime standing in for the X-Ray daemon.
- `GET /_local/stats`: per-function and per-mapping counters, and the sink's (`xray`); per function,
  `busy` (pid -> request id of each container mid-invocation) and `crashed` (pid, request id and event
  of invocations whose container died under them);
  `GET /_local/traces[?traceId=...]`: the segment documents the sink kept.

CLI: `python -m infra.local.runtime --config runtime.json [--host 127.0.0.1 --port 9001]`.
Python: `Runtime(config).run()` (blocking, stops on SIGTERM/SIGINT) or `async with Runtime(config) as rt:`.

The worker processes import only `infra/local/runtime_worker.py` (standard library only), never this
module.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import signal
import sys
import time
import uuid
from typing import Any

from aiohttp import web

from infra.local.logs import json_stderr_handler
from infra.local.runtime_api import build_app
from infra.local.runtime_clients import aws_client, sqs_endpoint
from infra.local.runtime_config import RuntimeConfig
from infra.local.runtime_pool import FunctionPool, InvocationResult, LogSink
from infra.local.runtime_schedule import Schedule
from infra.local.runtime_sqs import SqsPoller
from infra.local.runtime_streams import StreamPoller
from infra.local.runtime_worker import json_default
from infra.local.xray import XRaySink

log = logging.getLogger("fanout.local.runtime")


class Runtime:
    """The local Lambda service. `await start()` / `await stop()`, `async with`, or blocking `run()`."""

    def __init__(self, config: RuntimeConfig) -> None:
        self._prewarm: asyncio.Task[None] | None = None
        self.config = config
        self.port = config.port
        self.logs = LogSink(config.log_dir)
        self.pools: dict[str, FunctionPool] = {}
        self.sqs_pollers: list[SqsPoller] = []
        self.stream_pollers: list[StreamPoller] = []
        self.schedules: list[Schedule] = []
        self._runner: web.AppRunner | None = None
        self._async_tasks: set[asyncio.Task[None]] = set()
        self._started = False
        self.xray = XRaySink(config.host)

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def warm(self) -> bool:
        """Every function's provisioned containers answered (or failed to start)."""
        return self._prewarm is not None and self._prewarm.done()

    # ---- lifecycle

    async def start(self) -> None:
        self.xray.start()
        self.pools = {fn.name: FunctionPool(self, fn) for fn in self.config.functions}
        self._runner = web.AppRunner(build_app(self), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        if self.port == 0:
            self.port = int(self._runner.addresses[0][1])
        self._started = True
        self._prewarm = asyncio.create_task(self._prewarm_all())
        cfg = self.config
        try:
            for i, m in enumerate(cfg.sqs_mappings):
                if m.enabled:
                    poller = SqsPoller(self.pools[m.function], m, i, cfg.region)
                    self.sqs_pollers.append(poller)
                    await poller.start()
            for i, d in enumerate(cfg.dynamodb_stream_mappings):
                if d.enabled:
                    sp = StreamPoller(self.pools[d.function], d, i, cfg.region)
                    self.stream_pollers.append(sp)
                    await sp.start()
            for i, s in enumerate(cfg.schedules):
                if s.enabled:
                    sched = Schedule(
                        s, i, region=cfg.region, account_id=cfg.account_id, invoke_async=self.invoke_async
                    )
                    self.schedules.append(sched)
                    await sched.start()
        except BaseException:
            await self.stop()
            raise
        log.info(
            "runtime ready",
            extra={
                "url": self.url,
                "functions": len(self.pools),
                "sqsMappings": len(self.sqs_pollers),
                "streamMappings": len(self.stream_pollers),
                "schedules": len(self.schedules),
            },
        )

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        if self._prewarm is not None:
            self._prewarm.cancel()
            await asyncio.gather(self._prewarm, return_exceptions=True)
        sources: list[Any] = [*self.schedules, *self.sqs_pollers, *self.stream_pollers]
        await asyncio.gather(*(s.stop() for s in sources), return_exceptions=True)
        for task in list(self._async_tasks):
            task.cancel()
        await asyncio.gather(*self._async_tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        grace = self.config.shutdown_grace
        await asyncio.gather(*(p.close(grace) for p in self.pools.values()), return_exceptions=True)
        self.logs.close()
        self.xray.stop()
        log.info("runtime stopped", extra={"url": self.url})

    async def __aenter__(self) -> Runtime:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def serve(self, stop: asyncio.Event | None = None, *, watch_parent: bool = False) -> None:
        """Start, run until `stop` is set (or SIGTERM/SIGINT, or the parent process dies), then stop."""
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
        watcher = asyncio.create_task(self._watch_parent(stop)) if watch_parent else None
        try:
            await self.start()
            await stop.wait()
        finally:
            if watcher is not None:
                watcher.cancel()
            await self.stop()

    @staticmethod
    async def _watch_parent(stop: asyncio.Event) -> None:
        parent = os.getppid()
        while os.getppid() == parent:
            await asyncio.sleep(0.5)
        log.warning("parent process died: stopping", extra={"parent": parent})
        stop.set()

    def run(self, *, watch_parent: bool = False) -> None:
        asyncio.run(self.serve(watch_parent=watch_parent))

    # ---- invocation

    def function(self, name_or_arn: str) -> FunctionPool | None:
        name = name_or_arn
        if name.startswith("arn:"):
            parts = name.split(":")
            name = parts[6] if len(parts) > 6 else name
        else:
            name = name.split(":")[0]
        return self.pools.get(name)

    async def invoke(self, name: str, event: Any) -> InvocationResult:
        pool = self.function(name)
        if pool is None:
            raise KeyError(name)
        return await pool.invoke(event)

    def invoke_async(
        self, name: str, event: Any, *, request_id: str | None = None, trace_header: str | None = None
    ) -> str:
        """Queue an `Event` invocation: run it when a container is free, retried up to twice on error."""
        pool = self.function(name)
        if pool is None:
            raise KeyError(name)
        request_id = request_id or str(uuid.uuid4())
        pool.stats.async_queued += 1
        task = asyncio.create_task(self._run_async(pool, event, request_id, trace_header))
        self._async_tasks.add(task)
        task.add_done_callback(self._async_tasks.discard)
        return request_id

    async def _run_async(
        self, pool: FunctionPool, event: Any, request_id: str, trace_header: str | None
    ) -> None:
        """Lambda's asynchronous invocation: up to `maximumRetryAttempts` retries after a function error,
        the first after `asyncRetryDelay` and the second after twice that, while the event is younger than
        `maximumEventAge`; then the event goes to the on-failure destination, or is dropped."""
        retries = pool.fn.maximum_retry_attempts
        queued = time.monotonic()
        result: InvocationResult | None = None
        condition = "RetriesExhausted"
        attempts = 0
        for attempt in range(retries + 1):
            if attempt:
                delay = self.config.async_retry_delay * 2 ** (attempt - 1)
                if time.monotonic() + delay - queued > pool.fn.maximum_event_age:
                    condition = "EventAgeExceeded"
                    break
                pool.stats.async_retries += 1
                await asyncio.sleep(delay)
            try:
                result = await pool.invoke(event, request_id=request_id, trace_header=trace_header)
            except RuntimeError:
                return  # stopping
            attempts += 1
            if result.ok:
                return
        pool.stats.async_failed += 1
        log.warning(
            "async invocation failed after retries",
            extra={"function": pool.fn.name, "requestId": request_id, "attempts": attempts},
        )
        if pool.fn.on_failure_queue_url and result is not None:
            await self._send_failure(pool, event, request_id, result, condition, attempts)

    async def _send_failure(
        self,
        pool: FunctionPool,
        event: Any,
        request_id: str,
        result: InvocationResult,
        condition: str,
        attempts: int,
    ) -> None:
        """Send the invocation record AWS sends to an SQS on-failure destination."""
        url = pool.fn.on_failure_queue_url
        assert url is not None
        record = {
            "version": "1.0",
            "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "requestContext": {
                "requestId": request_id,
                "functionArn": f"{pool.arn}:$LATEST",
                "condition": condition,
                "approximateInvokeCount": attempts,
            },
            "requestPayload": event,
            "responseContext": {
                "statusCode": 200,
                "executedVersion": "$LATEST",
                "functionError": "Unhandled",
            },
            "responsePayload": result.value,
        }
        try:
            async with aws_client("sqs", self.config.region, sqs_endpoint(url)) as sqs:
                await sqs.send_message(QueueUrl=url, MessageBody=json.dumps(record, default=json_default))
        except Exception as exc:  # the destination is best effort in AWS too: log and drop
            log.error(
                "on-failure destination refused the event",
                extra={"function": pool.fn.name, "requestId": request_id, "error": str(exc)},
            )
        else:
            pool.stats.async_destination += 1

    def stats(self) -> dict[str, Any]:
        return {
            "functions": {
                name: {
                    **p.stats.as_json(),
                    "containers": len(p.pids),
                    "pids": p.pids,
                    "busy": p.busy,
                    "crashed": list(p.crashed),
                    "limit": p.limit,
                }
                for name, p in self.pools.items()
            },
            "sqsMappings": {
                p.id: {**p.stats.as_json(), "queueUrl": p.mapping.queue_url} for p in self.sqs_pollers
            },
            "streamMappings": {
                p.id: {**p.stats.as_json(), "streamArn": p.mapping.stream_arn} for p in self.stream_pollers
            },
            "schedules": {
                s.name: {"fired": s.fired, "function": s.schedule.function} for s in self.schedules
            },
            "xray": {**self.xray.stats(), "daemonAddress": self.xray.address},
        }

    async def _prewarm_all(self) -> None:
        # one function at a time: the machine may have few cores, and imports are CPU-bound
        for pool in self.pools.values():
            if pool.fn.provisioned_concurrency:
                await pool.prewarm()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.local.runtime", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--config", required=True, help="runtime config JSON (infra/local/runtime_config.py)")
    parser.add_argument("--host", help="listen address (default: the config's, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default: the config's; 0 picks a free one)")
    parser.add_argument("--log-dir", help="write function logs to LOG_DIR/<function>.log")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument(
        "--no-parent-watch", action="store_true", help="keep running when the parent process dies"
    )
    args = parser.parse_args(argv)

    logging.basicConfig(level=args.log_level.upper(), handlers=[json_stderr_handler()])
    logging.getLogger("aiobotocore").setLevel(logging.WARNING)
    logging.getLogger("botocore").setLevel(logging.WARNING)

    config = RuntimeConfig.load(args.config)
    overrides = {
        k: v
        for k, v in {"host": args.host, "port": args.port, "log_dir": args.log_dir}.items()
        if v is not None
    }
    if overrides:
        config = config.model_copy(update=overrides)
    Runtime(config).run(watch_parent=not args.no_parent_watch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
