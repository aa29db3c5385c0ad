"""Local Lambda runtime: runs the project's handlers with the semantics of AWS Lambda.

- Containers: each function gets warm worker processes, started lazily up to its concurrency. A worker
  imports the handler once (cold start; module state persists across invocations) and serves one
  invocation at a time over its stdin/stdout pipes (JSON lines); the handler's own stdout/stderr go
  to the runtime's stderr (or `logDir`), prefixed `[function:container]`. An invocation past its
  timeout kills the container; a dead container is replaced at the next invocation.
- Invoke API (aiohttp): `POST /2015-03-31/functions/{name}/invocations`, RequestResponse / Event /
  DryRun, as boto3's `lambda` client expects it (`AWS_ENDPOINT_URL_LAMBDA`).
- Event sources: SQS pollers (batch size up to 10,000 gathered within the batching window, maximum
  concurrency, ReportBatchItemFailures), DynamoDB Streams pollers (per shard in order, children after
  parents, retries, bisect, partial batch responses) and rate schedules.
- Active tracing, as the functions deploy with it: every invocation runs with a fresh `_X_AMZN_TRACE_ID`
  (sampled; a caller's `X-Amzn-Trace-Id` on the Invoke request is continued), and the workers'
  `AWS_XRAY_DAEMON_ADDRESS` points at a UDP sink of the runtime standing in for the X-Ray daemon.
- `GET /_local/stats`: per-function and per-mapping counters, and the sink's (`xray`); per function,
  `busy` (pid -> request id of each container mid-invocation) and `crashed` (pid, request id and event
  of invocations whose container died under them);
  `GET /_local/traces[?traceId=...]`: the segment documents the sink kept.

CLI: `python -m infra.local.runtime --config runtime.json [--host 127.0.0.1 --port 9001]`.
Python: `Runtime(config).run()` (blocking, stops on SIGTERM/SIGINT) or `async with Runtime(config) as rt:`.

The module imports only the standard library at the top, because every worker process imports it
too (heavier imports are local to the code that runs in the runtime process).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import ctypes
import datetime as dt
import decimal
import importlib
import json
import logging
import os
import signal
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from infra.local.xray import XRaySink, invocation_trace_header

if TYPE_CHECKING:
    from aiohttp import web

    from infra.local.runtime_config import (
        DynamoDBStreamMapping,
        FunctionConfig,
        RuntimeConfig,
        ScheduleConfig,
        SqsMapping,
    )

ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger("fanout.local.runtime")

_WORKER_CMD = "from infra.local.runtime import worker_main; worker_main()"
_INIT_TIMEOUT = 60.0  # seconds for a container to import its handler (AWS: 10 s; this machine is shared)
_STREAM_LIMIT = 16 * 1024 * 1024  # longest JSON line between runtime and worker
_SYNC_PAYLOAD_LIMIT = 6 * 1024 * 1024
_ASYNC_PAYLOAD_LIMIT = 1024 * 1024
_SQS_BATCH_BYTES = 5 * 1024 * 1024  # stop gathering an SQS batch here: the event must stay under 6 MB


# --------------------------------------------------------------------------------------------------
# Worker process (a "container"): imports the handler once, then serves invocations from stdin.
# --------------------------------------------------------------------------------------------------


class LambdaContext:
    """The context object handed to handlers, with the attributes of AWS's Python runtime."""

    def __init__(self, request_id: str, deadline_ms: int) -> None:
        env = os.environ
        self.function_name = env.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_version = env.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.invoked_function_arn = env.get("_FANOUT_FUNCTION_ARN", "")
        self.memory_limit_in_mb = int(env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"))
        self.aws_request_id = request_id
        self.log_group_name = env.get("AWS_LAMBDA_LOG_GROUP_NAME", "")
        self.log_stream_name = env.get("AWS_LAMBDA_LOG_STREAM_NAME", "")
        self.identity: Any = None
        self.client_context: Any = None
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))


def _json_default(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _error_payload(
    exc: BaseException, request_id: str | None = None, *, skip_frames: int = 0
) -> dict[str, Any]:
    tb = exc.__traceback__
    for _ in range(skip_frames):  # hide the runtime's own frames, as AWS does
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    out: dict[str, Any] = {
        "errorMessage": str(exc),
        "errorType": type(exc).__name__,
        "stackTrace": [line.rstrip("\n") for line in traceback.format_tb(tb)],
    }
    if request_id:
        out["requestId"] = request_id
    return out


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL this worker when the runtime process dies, whatever way it dies (Linux prctl)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def worker_main() -> None:
    """Entry point of a container process. Protocol: one JSON line per request and per response."""
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # the handler's print() goes to the log pipe, never into the protocol
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the runtime, which stops us
    _die_with_parent(int(os.environ.get("_FANOUT_RUNTIME_PID", os.getppid())))

    spec = os.environ["_HANDLER"]
    module_name, _, attr = spec.rpartition(".")
    try:
        handler: Callable[[Any, Any], Any] = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:
        err = _error_payload(exc)
        err["errorType"] = (
            "Runtime.ImportModuleError" if isinstance(exc, ImportError) else "Runtime.HandlerNotFound"
        )
        err["errorMessage"] = f"Unable to import module '{module_name}' ({spec}): {exc}"
        traceback.print_exc()
        proto.write(json.dumps({"type": "initError", "error": err}) + "\n")
        return
    proto.write('{"type":"ready"}\n')

    for raw in sys.stdin.buffer:
        req = json.loads(raw)
        request_id = req["requestId"]
        if req.get("traceId"):  # as Lambda's runtime does before each invocation
            os.environ["_X_AMZN_TRACE_ID"] = req["traceId"]
        else:
            os.environ.pop("_X_AMZN_TRACE_ID", None)
        ctx = LambdaContext(request_id, int(req["deadlineMs"]))
        try:
            result = handler(req["event"], ctx)
        except Exception as exc:
            print(f"[ERROR] {type(exc).__name__}: {exc}", file=sys.stderr)
            traceback.print_exc()
            out = json.dumps({"ok": False, "error": _error_payload(exc, request_id, skip_frames=1)})
        else:
            try:
                out = json.dumps({"ok": True, "result": result}, default=_json_default)
            except (TypeError, ValueError) as exc:
                err = {
                    "errorMessage": f"Unable to marshal response: {exc}",
                    "errorType": "Runtime.MarshalError",
                }
                out = json.dumps({"ok": False, "error": {**err, "requestId": request_id, "stackTrace": []}})
        sys.stdout.flush()
        sys.stderr.flush()
        proto.write(out + "\n")


# --------------------------------------------------------------------------------------------------
# Runtime side: containers and function pools.
# --------------------------------------------------------------------------------------------------


@dataclass
class InvocationResult:
    request_id: str
    ok: bool
    value: Any  # the handler's result, or the error payload
    duration_ms: float
    cold_start: bool = False

    @property
    def payload(self) -> bytes:
        return json.dumps(self.value).encode()

    @property
    def error_type(self) -> str | None:
        return None if self.ok else str(self.value.get("errorType", "Unhandled"))


@dataclass
class FunctionStats:
    invocations: int = 0
    errors: int = 0
    timeouts: int = 0
    cold_starts: int = 0
    init_errors: int = 0
    crashes: int = 0
    async_queued: int = 0
    async_retries: int = 0
    async_failed: int = 0
    async_destination: int = 0
    concurrent: int = 0
    max_concurrent: int = 0
    duration_ms_total: float = 0.0
    duration_ms_max: float = 0.0

    def as_json(self) -> dict[str, Any]:
        out = {_camel(k): v for k, v in asdict(self).items()}
        out["durationMsAvg"] = (
            round(self.duration_ms_total / self.invocations, 3) if self.invocations else 0.0
        )
        out["durationMsTotal"] = round(self.duration_ms_total, 3)
        out["durationMsMax"] = round(self.duration_ms_max, 3)
        return out


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


class _LogSink:
    """Where function logs go: one file per function under `log_dir`, or the runtime's stderr."""

    def __init__(self, log_dir: str | None) -> None:
        self.log_dir = Path(log_dir) if log_dir else None
        self._files: dict[str, IO[bytes]] = {}
        if self.log_dir:
            self.log_dir.mkdir(parents=True, exist_ok=True)

    def write(self, function: str, prefix: bytes, line: bytes) -> None:
        if not line.endswith(b"\n"):
            line += b"\n"
        if self.log_dir is None:
            sys.stderr.buffer.write(prefix + line)
            sys.stderr.buffer.flush()
            return
        f = self._files.get(function)
        if f is None:
            f = self._files[function] = open(self.log_dir / f"{function}.log", "ab")  # noqa: SIM115
        f.write(prefix + line)
        f.flush()

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


class Container:
    """One worker process serving one invocation at a time."""

    def __init__(self, pool: FunctionPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.alive = False
        self._pump: asyncio.Task[None] | None = None
        self.init_error: dict[str, Any] | None = None
        self.init_ms = 0.0
        self.request_id: str | None = None  # the invocation in progress, if any

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def start(self) -> None:
        started = time.monotonic()
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _WORKER_CMD,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.pool.container_env(self.index),
            cwd=self.pool.cwd,
            limit=_STREAM_LIMIT,
        )
        self.alive = True
        self._pump = asyncio.create_task(self._pump_logs())
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), _INIT_TIMEOUT)
        except TimeoutError:
            line = b""
        msg: dict[str, Any] = json.loads(line) if line else {"type": "initError", "error": None}
        self.init_ms = (time.monotonic() - started) * 1000
        if msg.get("type") != "ready":
            self.init_error = msg.get("error") or {
                "errorMessage": f"container exited during init ({self.pool.fn.handler})",
                "errorType": "Runtime.ExitError",
            }
            await self.kill()

    async def _pump_logs(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        prefix = f"[{self.pool.fn.name}:{self.index}] ".encode()
        stream = self.proc.stderr
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line longer than the limit: pass it on in pieces
                line = await stream.read(_STREAM_LIMIT)
            if not line:
                return
            self.pool.runtime.logs.write(self.pool.fn.name, prefix, line)

    async def invoke(self, line: bytes, timeout: float) -> dict[str, Any]:
        """Send one request line; returns the worker's answer. Raises TimeoutError (container killed)
        or ConnectionError (the container died)."""
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(line)
            await self.proc.stdin.drain()
            answer = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except TimeoutError:
            await self.kill()
            raise
        except asyncio.CancelledError:
            await asyncio.shield(self.kill())
            raise
        except (BrokenPipeError, ConnectionResetError) as exc:
            await self.kill()
            raise ConnectionError(str(exc)) from exc
        if not answer:
            code = await self.kill()
            raise ConnectionError(f"Runtime exited with error: exit status {code}")
        return dict(json.loads(answer))

    async def kill(self) -> int | None:
        self.alive = False
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        code = await self.proc.wait()
        if self._pump is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pump, 1.0)
        return code

    async def stop(self, grace: float) -> None:
        """Close stdin (the worker exits at EOF), then SIGTERM, then SIGKILL."""
        self.alive = False
        if self.proc is None or self.proc.returncode is not None:
            await self.kill()
            return
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), grace)
        await self.kill()


class FunctionPool:
    """The containers of one function and its concurrency limit."""

    def __init__(self, runtime: Runtime, fn: FunctionConfig) -> None:
        self.runtime = runtime
        self.fn = fn
        self.limit = fn.reserved_concurrency or runtime.config.default_concurrency
        self.stats = FunctionStats()
        self.arn = f"arn:aws:lambda:{runtime.config.region}:{runtime.config.account_id}:function:{fn.name}"
        self.cwd = runtime.config.working_dir or os.getcwd()
        self._slots = asyncio.Semaphore(self.limit)
        self._idle: list[Container] = []
        self._containers: set[Container] = set()
        self._next_index = 0
        self._closed = False
        # Invocations whose container died under them (a crash, a SIGKILL): what they were given, so a
        # test can tell which records a killed container was processing. The last few only.
        self.crashed: collections.deque[dict[str, Any]] = collections.deque(maxlen=32)

    def container_env(self, index: int) -> dict[str, str]:
        cfg = self.runtime.config
        env = dict(os.environ)
        env.pop("_X_AMZN_TRACE_ID", None)  # set per invocation
        env.setdefault("AWS_ENDPOINT_URL_LAMBDA", self.runtime.url)
        env.update(cfg.environment)
        env.update(self.fn.environment)
        paths = [str(ROOT), *cfg.python_path]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        day = dt.datetime.now(dt.UTC).strftime("%Y/%m/%d")
        xray = self.runtime.xray
        env.update(
            {
                "PYTHONPATH": os.pathsep.join(paths),
                "PYTHONUNBUFFERED": "1",
                "AWS_REGION": cfg.region,
                "AWS_DEFAULT_REGION": env.get("AWS_DEFAULT_REGION", cfg.region),
                "AWS_LAMBDA_FUNCTION_NAME": self.fn.name,
                "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.fn.memory_size),
                "AWS_LAMBDA_FUNCTION_TIMEOUT": str(int(self.fn.timeout)),
                "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{self.fn.name}",
                "AWS_LAMBDA_LOG_STREAM_NAME": f"{day}/[$LATEST]{uuid.uuid4().hex}",
                "AWS_EXECUTION_ENV": f"AWS_Lambda_python{sys.version_info.major}.{sys.version_info.minor}",
                "LAMBDA_TASK_ROOT": self.cwd,
                # Reserved, as in Lambda with active tracing: the daemon's address is the service's.
                "AWS_XRAY_DAEMON_ADDRESS": xray.address,
                "_AWS_XRAY_DAEMON_ADDRESS": xray.host,
                "_AWS_XRAY_DAEMON_PORT": str(xray.port),
                "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR",
                "_HANDLER": self.fn.handler,
                "_FANOUT_FUNCTION_ARN": self.arn,
                "_FANOUT_RUNTIME_PID": str(os.getpid()),
                "_FANOUT_CONTAINER": str(index),
            }
        )
        return env

    @property
    def pids(self) -> list[int]:
        return sorted(c.pid for c in self._containers if c.pid is not None and c.alive)

    @property
    def busy(self) -> dict[str, str]:
        """pid -> request id of every container in the middle of an invocation."""
        return {
            str(c.pid): c.request_id
            for c in self._containers
            if c.pid is not None and c.alive and c.request_id is not None
        }

    async def invoke(
        self, event: Any, *, request_id: str | None = None, trace_header: str | None = None
    ) -> InvocationResult:
        request_id = request_id or str(uuid.uuid4())
        async with self._slots:
            if self._closed:
                raise RuntimeError("runtime is stopping")
            st = self.stats
            st.concurrent += 1
            st.max_concurrent = max(st.max_concurrent, st.concurrent)
            try:
                result = await self._invoke(event, request_id, invocation_trace_header(trace_header))
            finally:
                st.concurrent -= 1
        st.invocations += 1
        st.duration_ms_total += result.duration_ms
        st.duration_ms_max = max(st.duration_ms_max, result.duration_ms)
        if not result.ok:
            st.errors += 1
        return result

    async def prewarm(self) -> None:
        """Start the provisioned containers (import the handler) before any invocation needs them."""
        wanted = min(self.fn.provisioned_concurrency, self.limit)

        async def one() -> None:
            container = Container(self, self._next_index)
            self._next_index += 1
            self._containers.add(container)
            await container.start()
            if container.init_error is None:
                self._idle.append(container)
            else:
                self._containers.discard(container)

        await asyncio.gather(*(one() for _ in range(wanted)))

    async def _invoke(self, event: Any, request_id: str, trace_id: str) -> InvocationResult:
        cold = False
        container = self._idle.pop() if self._idle else None
        if container is None:
            cold = True
            container = Container(self, self._next_index)
            self._next_index += 1
            self._containers.add(container)
            self.stats.cold_starts += 1
            await container.start()
            if container.init_error is not None:
                self.stats.init_errors += 1
                self._containers.discard(container)
                return InvocationResult(
                    request_id, False, {**container.init_error, "requestId": request_id}, 0.0
                )
        timeout = self.fn.timeout
        started = time.monotonic()
        deadline_ms = int(time.time() * 1000 + timeout * 1000)
        line = (
            json.dumps(
                {"requestId": request_id, "deadlineMs": deadline_ms, "traceId": trace_id, "event": event}
            ).encode()
            + b"\n"
        )
        container.request_id = request_id
        try:
            answer = await container.invoke(line, timeout)
        except TimeoutError:
            self.stats.timeouts += 1
            self._containers.discard(container)
            took = (time.monotonic() - started) * 1000
            log.warning(
                "function timed out",
                extra={"function": self.fn.name, "requestId": request_id, "timeout": timeout},
            )
            err = {
                "errorType": "Sandbox.Timedout",
                "errorMessage": f"RequestId: {request_id} Error: Task timed out after {timeout:.2f} seconds",
            }
            return InvocationResult(request_id, False, err, took, cold)
        except ConnectionError as exc:
            self.stats.crashes += 1
            self._containers.discard(container)
            self.crashed.append({"pid": container.pid, "requestId": request_id, "event": event})
            took = (time.monotonic() - started) * 1000
            err = {"errorType": "Runtime.ExitError", "errorMessage": f"RequestId: {request_id} Error: {exc}"}
            return InvocationResult(request_id, False, err, took, cold)
        except BaseException:
            self._containers.discard(container)
            raise
        finally:
            container.request_id = None
        took = (time.monotonic() - started) * 1000
        if self._closed:
            await container.stop(0.5)
            self._containers.discard(container)
        else:
            self._idle.append(container)
        if answer.get("ok"):
            return InvocationResult(request_id, True, answer.get("result"), took, cold)
        return InvocationResult(request_id, False, answer.get("error") or {}, took, cold)

    async def close(self, grace: float) -> None:
        self._closed = True
        containers = list(self._containers)
        self._idle.clear()
        self._containers.clear()
        await asyncio.gather(*(c.stop(grace) for c in containers), return_exceptions=True)


# --------------------------------------------------------------------------------------------------
# Event sources.
# --------------------------------------------------------------------------------------------------


def _sqs_endpoint(queue_url: str) -> str | None:
    """The SQS endpoint of a queue URL: its own host unless it is AWS's, else AWS_ENDPOINT_URL_SQS."""
    from urllib.parse import urlsplit

    url = urlsplit(queue_url)
    if url.hostname and not url.hostname.endswith("amazonaws.com"):
        return f"{url.scheme}://{url.netloc}"
    return os.environ.get("AWS_ENDPOINT_URL_SQS")


def _aws_client(runtime: Runtime, service: str, endpoint: str | None, pool_size: int = 10) -> Any:
    """An aiobotocore client context manager (enter it with `async with`)."""
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    kwargs: dict[str, Any] = {}
    if not (os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE")):
        kwargs = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}
    config = AioConfig(max_pool_connections=pool_size, retries={"max_attempts": 3, "mode": "standard"})
    return get_session().create_client(  # type: ignore[call-overload]  # the service is a run-time name
        service, region_name=runtime.config.region, endpoint_url=endpoint, config=config, **kwargs
    )


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
        return {_camel(k): v for k, v in asdict(self).items()}


def sqs_record(msg: dict[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    """One SQS message as a record of Lambda's SQS event."""
    now = str(int(time.time() * 1000))
    attrs = dict(msg.get("Attributes") or {})
    attrs.setdefault("ApproximateReceiveCount", "1")
    attrs.setdefault("SentTimestamp", now)
    attrs.setdefault("SenderId", "AIDAIENQZJOLO23YVJ4VO")
    attrs.setdefault("ApproximateFirstReceiveTimestamp", now)
    message_attributes: dict[str, Any] = {}
    for name, value in (msg.get("MessageAttributes") or {}).items():
        entry: dict[str, Any] = {
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": value.get("DataType"),
        }
        if "StringValue" in value:
            entry["stringValue"] = value["StringValue"]
        if "BinaryValue" in value:
            entry["binaryValue"] = base64.b64encode(value["BinaryValue"]).decode()
        message_attributes[name] = entry
    record = {
        "messageId": msg["MessageId"],
        "receiptHandle": msg["ReceiptHandle"],
        "body": msg.get("Body", ""),
        "attributes": attrs,
        "messageAttributes": message_attributes,
        "md5OfBody": msg.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }
    if msg.get("MD5OfMessageAttributes"):
        record["md5OfMessageAttributes"] = msg["MD5OfMessageAttributes"]
    return record


def _failed_item_ids(value: Any) -> set[str] | None:
    """Identifiers in a partial batch response; None when the response marks the whole batch failed."""
    if value is None or value == "" or value == []:
        return set()
    if not isinstance(value, dict):
        return set()
    failures = value.get("batchItemFailures")
    if failures is None or failures == []:
        return set()
    if not isinstance(failures, list):
        return None
    ids: set[str] = set()
    for item in failures:
        ident = item.get("itemIdentifier") if isinstance(item, dict) else None
        if not isinstance(ident, str) or not ident:
            return None
        ids.add(ident)
    return ids


class SqsPoller:
    """An SQS event source mapping: pollers scaled between 1 and the maximum concurrency."""

    def __init__(self, runtime: Runtime, mapping: SqsMapping, index: int) -> None:
        self.runtime = runtime
        self.mapping = mapping
        self.pool = runtime.pools[mapping.function]
        self.id = f"sqs-{index}-{mapping.function}"
        self.max_pollers = min(mapping.maximum_concurrency or self.pool.limit, 1000)
        self.min_pollers = min(2, self.max_pollers)
        self.stats = SqsMappingStats()
        self.queue_arn = mapping.queue_arn or ""
        self._client: Any = None
        self._stack = contextlib.AsyncExitStack()
        self._tasks: set[asyncio.Task[None]] = set()

    def _endpoint(self) -> str | None:
        return self.mapping.endpoint_url or _sqs_endpoint(self.mapping.queue_url)

    async def start(self) -> None:
        self._client = await self._stack.enter_async_context(
            _aws_client(self.runtime, "sqs", self._endpoint(), self.max_pollers + 4)
        )
        if not self.queue_arn:
            try:
                attrs = await self._client.get_queue_attributes(
                    QueueUrl=self.mapping.queue_url, AttributeNames=["QueueArn"]
                )
                self.queue_arn = attrs["Attributes"]["QueueArn"]
            except Exception:
                *_, account, name = self.mapping.queue_url.rstrip("/").split("/")
                self.queue_arn = f"arn:aws:sqs:{self.runtime.config.region}:{account}:{name}"
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
        region = self.runtime.config.region
        event = {"Records": [sqs_record(msg, self.queue_arn, region) for msg in batch]}
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
            failed = _failed_item_ids(result.value)
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
        return {_camel(k): v for k, v in asdict(self).items()}


def _jsonable(value: Any) -> Any:
    """botocore's parsed shapes back to the JSON of Lambda's event (blobs base64, datetimes epoch s)."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, dt.datetime):
        ts = value.timestamp()
        return int(ts) if ts == int(ts) else ts
    return value


def stream_record(record: dict[str, Any], stream_arn: str, region: str) -> dict[str, Any]:
    out: dict[str, Any] = _jsonable(record)
    out.setdefault("eventSource", "aws:dynamodb")
    out.setdefault("eventVersion", "1.1")
    out["awsRegion"] = region  # DynamoDB Local says "ddblocal"
    out["eventSourceARN"] = stream_arn
    return out


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

    def __init__(self, runtime: Runtime, mapping: DynamoDBStreamMapping, index: int) -> None:
        self.runtime = runtime
        self.mapping = mapping
        self.pool = runtime.pools[mapping.function]
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
            _aws_client(self.runtime, "dynamodbstreams", self._endpoint())
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
        region = self.runtime.config.region
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
            result = await self.pool.invoke({"Records": records})
            if result.ok:
                failed = _failed_item_ids(result.value) if m.report_batch_item_failures else set()
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


def scheduled_event(rule_arn: str, region: str, account: str) -> dict[str, Any]:
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": account,
        "time": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [rule_arn],
        "detail": {},
    }


class Schedule:
    def __init__(self, runtime: Runtime, schedule: ScheduleConfig, index: int) -> None:
        self.runtime = runtime
        self.schedule = schedule
        cfg = runtime.config
        self.name = schedule.name or f"{schedule.function}-schedule-{index}"
        self.rule_arn = f"arn:aws:events:{cfg.region}:{cfg.account_id}:rule/{self.name}"
        self.fired = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        cfg = self.runtime.config
        next_at = time.monotonic() + (0 if self.schedule.run_at_start else self.schedule.rate_seconds)
        while True:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += self.schedule.rate_seconds
            self.fired += 1
            self.runtime.invoke_async(
                self.schedule.function, scheduled_event(self.rule_arn, cfg.region, cfg.account_id)
            )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


# --------------------------------------------------------------------------------------------------
# The runtime: pools, the HTTP API, event sources.
# --------------------------------------------------------------------------------------------------


def _error_response(status: int, code: str, message: str) -> web.Response:
    from aiohttp import web

    body = json.dumps({"Type": "User", "message": message, "__type": code})
    return web.Response(
        status=status, body=body, content_type="application/json", headers={"x-amzn-ErrorType": code}
    )


class Runtime:
    """The local Lambda service. `await start()` / `await stop()`, `async with`, or blocking `run()`."""

    def __init__(self, config: RuntimeConfig) -> None:
        self._prewarm: asyncio.Task[None] | None = None
        self.config = config
        self.port = config.port
        self.logs = _LogSink(config.log_dir)
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

    # ---- lifecycle

    async def start(self) -> None:
        from aiohttp import web

        self.xray.start()
        self.pools = {fn.name: FunctionPool(self, fn) for fn in self.config.functions}
        app = web.Application(client_max_size=_SYNC_PAYLOAD_LIMIT + 1024)
        app.router.add_post("/2015-03-31/functions/{name}/invocations", self._handle_invoke)
        app.router.add_get("/_local/stats", self._handle_stats)
        app.router.add_get("/_local/health", self._handle_health)
        app.router.add_get("/_local/traces", self._handle_traces)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        if self.port == 0:
            self.port = int(self._runner.addresses[0][1])
        self._started = True
        self._prewarm = asyncio.create_task(self._prewarm_all())
        try:
            for i, m in enumerate(self.config.sqs_mappings):
                if m.enabled:
                    poller = SqsPoller(self, m, i)
                    self.sqs_pollers.append(poller)
                    await poller.start()
            for i, d in enumerate(self.config.dynamodb_stream_mappings):
                if d.enabled:
                    sp = StreamPoller(self, d, i)
                    self.stream_pollers.append(sp)
                    await sp.start()
            for i, s in enumerate(self.config.schedules):
                if s.enabled:
                    sched = Schedule(self, s, i)
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
            async with _aws_client(self, "sqs", _sqs_endpoint(url)) as sqs:
                await sqs.send_message(QueueUrl=url, MessageBody=json.dumps(record, default=_json_default))
        except Exception as exc:  # the destination is best effort in AWS too: log and drop
            log.error(
                "on-failure destination refused the event",
                extra={"function": pool.fn.name, "requestId": request_id, "error": str(exc)},
            )
        else:
            pool.stats.async_destination += 1

    # ---- HTTP handlers

    async def _handle_invoke(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        name = request.match_info["name"]
        pool = self.function(name)
        if pool is None:
            arn = f"arn:aws:lambda:{self.config.region}:{self.config.account_id}:function:{name}"
            return _error_response(404, "ResourceNotFoundException", f"Function not found: {arn}")
        body = await request.read()
        kind = request.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        limit = _ASYNC_PAYLOAD_LIMIT if kind == "Event" else _SYNC_PAYLOAD_LIMIT
        if len(body) > limit:
            return _error_response(
                413,
                "RequestTooLargeException",
                f"Request must be smaller than {limit} bytes for the {kind} type",
            )
        try:
            event = json.loads(body) if body.strip() else {}
        except ValueError as exc:
            return _error_response(
                400, "InvalidRequestContentException", f"Could not parse request body: {exc}"
            )
        request_id = str(uuid.uuid4())
        headers = {"x-amzn-RequestId": request_id, "X-Amz-Executed-Version": "$LATEST"}
        if kind == "DryRun":
            return web.Response(status=204, headers=headers)
        upstream = request.headers.get("X-Amzn-Trace-Id")
        if kind == "Event":
            self.invoke_async(pool.fn.name, event, request_id=request_id, trace_header=upstream)
            return web.Response(status=202, headers=headers)
        if kind != "RequestResponse":
            return _error_response(400, "InvalidParameterValueException", f"Unknown invocation type {kind}")
        try:
            result = await pool.invoke(event, request_id=request_id, trace_header=upstream)
        except RuntimeError:
            return _error_response(503, "ServiceException", "the runtime is stopping")
        if not result.ok:
            headers["X-Amz-Function-Error"] = "Unhandled"
        return web.Response(status=200, body=result.payload, content_type="application/json", headers=headers)

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

    async def _handle_stats(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        return web.json_response(self.stats())

    async def _handle_traces(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        return web.json_response({"documents": self.xray.docs(request.query.get("traceId") or None)})

    async def _prewarm_all(self) -> None:
        # one function at a time: the machine may have few cores, and imports are CPU-bound
        for pool in self.pools.values():
            if pool.fn.provisioned_concurrency:
                await pool.prewarm()

    async def _handle_health(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        warm = self._prewarm is not None and self._prewarm.done()
        return web.json_response({"ok": True, "url": self.url, "warm": warm})


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------

_STD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _STD_ATTRS})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def main(argv: list[str] | None = None) -> int:
    from infra.local.runtime_config import RuntimeConfig

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

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
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
