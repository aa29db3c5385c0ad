"""Containers and function pools of the local Lambda runtime.

A `Container` is one worker process (`infra/local/runtime_worker.py`) serving one invocation at a time
over its pipes; a `FunctionPool` holds a function's containers, started lazily up to its concurrency
(and its provisioned ones ahead of time), and runs invocations on them. An invocation past its timeout
kills its container; a container that dies under an invocation is replaced at the next one, the
invocation recorded in `FunctionPool.crashed`. The workers' stdout/stderr go to a `LogSink`, each line
prefixed `[function:container]`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import json
import logging
import os
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from infra.local.runtime_worker import WORKER_CMD
from infra.local.xray import XRaySink, invocation_trace_header

if TYPE_CHECKING:
    from infra.local.runtime_config import FunctionConfig, RuntimeConfig

ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger("fanout.local.runtime")

# Seconds for a container to import its handler. AWS allows 10 s; a loaded development machine
# running the whole stack can take longer, and a cold start refused there would be a false failure.
_INIT_TIMEOUT = 60.0
STREAM_LIMIT = 16 * 1024 * 1024  # longest JSON line between runtime and worker


class PoolHost(Protocol):
    """What a pool needs of the runtime that owns it."""

    @property
    def config(self) -> RuntimeConfig: ...

    @property
    def url(self) -> str: ...

    @property
    def xray(self) -> XRaySink: ...

    @property
    def logs(self) -> LogSink: ...


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
        out = {camel(k): v for k, v in asdict(self).items()}
        out["durationMsAvg"] = (
            round(self.duration_ms_total / self.invocations, 3) if self.invocations else 0.0
        )
        out["durationMsTotal"] = round(self.duration_ms_total, 3)
        out["durationMsMax"] = round(self.duration_ms_max, 3)
        return out


def camel(name: str) -> str:
    """snake_case to camelCase (the stats' JSON keys)."""
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


class LogSink:
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
            WORKER_CMD,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.pool.container_env(self.index),
            cwd=self.pool.cwd,
            limit=STREAM_LIMIT,
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
                line = await stream.read(STREAM_LIMIT)
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

    def __init__(self, runtime: PoolHost, fn: FunctionConfig) -> None:
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
