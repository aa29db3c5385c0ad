"""The whole system on one machine: DynamoDB Local, the SQS server, the Lambda runtime, the gateway
and the chat page.

`LocalStack(options).start()` provisions a fresh stack (new in-memory tables, new queues) and writes
`.fanout/local.json`; `stop()` stops every child process group (no orphan Java or Python processes).
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import boto3
from pydantic import BaseModel, Field

from fanout.settings import Settings
from fanout.sizing import post_rate_per_worker
from fanout.topology import (
    POWERTOOLS_ENVIRONMENT,
    Ref,
    RefKind,
    Topology,
    TopologyConfig,
    env_name,
    environment,
    per_shard,
    topology,
)
from infra.local import procs
from infra.local.dynamodb import ROOT, DynamoDBLocal
from infra.local.resources import (
    QueueSet,
    create_queues,
    create_tables,
    create_token_secret,
    stream_arns,
)

HOST = "127.0.0.1"
REGION = "us-east-1"
STAGE = "local"
# The local stand-in for the account's PostToConnection quota: AWS's default (10,000/s), far above
# what the post workers of one machine reach, so the stack runs paced without being slowed.
LOCAL_POST_RATE_BUDGET = 10_000.0
# Functions and queues are named <prefix>-<key>, as the CDK app names them in the default stack.
PREFIX = "fanout"
# The queues' visibility timeout: 30 s instead of the deployed 6 x the consumer's timeout (see
# infra.local.resources.create_queues), so that a killed local invocation's messages come back soon.
LOCAL_VISIBILITY_TIMEOUT = 30
# The knobs as deployed by default (fanout/topology.py): the local defaults below start from them.
DEPLOYED = TopologyConfig()


class StackOptions(BaseModel):
    partitions: int = Field(default=50, ge=1, le=100_000)
    shards: int = Field(default=4, ge=1, le=100)
    post_batch_size: int = Field(default=100, ge=1, le=5000)
    post_concurrency: int = Field(default=64, ge=1, le=2000)
    post_workers: int = Field(default=2, ge=1, le=64, description="post function maximum concurrency")
    post_rate_budget: float = Field(
        default=LOCAL_POST_RATE_BUDGET,
        gt=0,
        description="PostToConnection calls/s of the whole post stage, divided over the post workers",
    )
    query_workers: int = Field(default=2, ge=1, le=64, description="query function maximum concurrency")
    post_sqs_batch_size: int = Field(
        default=DEPLOYED.post_sqs_batch_size, ge=1, le=10_000, description="post mapping's BatchSize"
    )
    post_batching_window_seconds: int = Field(
        default=DEPLOYED.post_window, ge=0, le=300, description="post mapping's MaximumBatchingWindow"
    )
    connect_workers: int = Field(default=2, ge=1, le=64)
    post_latency_ms: float = Field(default=0.0, ge=0)
    fault_410: float = Field(default=0.0, ge=0, le=1)
    fault_429: float = Field(default=0.0, ge=0, le=1)
    fault_500: float = Field(default=0.0, ge=0, le=1)
    idle_timeout_seconds: float = Field(default=600, gt=0)
    max_connection_seconds: float = Field(default=7200, gt=0)
    # Schedules: None runs them as deployed (the topology's rate); tests set their own cadence.
    reconcile_every_seconds: float | None = Field(default=None, gt=0)
    reconcile_quiet_seconds: float = Field(default=15, ge=0)
    sweep_every_seconds: float | None = Field(default=None, gt=0)
    sweep_after_seconds: float = Field(default=DEPLOYED.sweep_after_seconds, gt=0)
    async_retry_delay_seconds: float = Field(
        default=1.0, ge=0, description="first retry of a failed async invocation (AWS: ~1 min; then 2x)"
    )
    ddb_faults: bool = Field(default=True, description="AWS's conflict rules (infra/local/ddb_strict.py)")
    ddb_throttle_rate: float = Field(default=0.0, ge=0, le=1, description="share of DynamoDB calls throttled")
    state_dir: Path = Path(".fanout")

    def topology_config(self) -> TopologyConfig:
        """The topology knobs of this stack: the deployed ones, with this machine's concurrency.

        The post and query workers are this machine's (2 cores: a few containers each, where AWS runs
        dozens): each stage's event source mappings split them over the shards as the CDK app's sizing
        splits its workers, so MaximumConcurrency means the same here and there.
        """
        return TopologyConfig(
            partitions=self.partitions,
            shards=self.shards,
            post_batch_size=self.post_batch_size,
            post_concurrency=self.post_concurrency,
            post_sqs_batch_size=self.post_sqs_batch_size,
            post_batching_window_seconds=self.post_batching_window_seconds,
            post_rate_budget=self.post_rate_budget,
            post_max_concurrency=per_shard(self.post_workers, self.shards),
            query_max_concurrency=per_shard(self.query_workers, self.shards),
            sweep_after_seconds=self.sweep_after_seconds,
        )

    def topology(self) -> Topology:
        return topology(self.topology_config())


class LocalStack:
    def __init__(self, options: StackOptions | None = None, *, log: Callable[[str], None] = print) -> None:
        self.options = options or StackOptions()
        self.log = log
        self.state_dir = self.options.state_dir.resolve()
        self.logs = self.state_dir / "logs"
        self.ddb: DynamoDBLocal | None = None
        self.children: list[tuple[str, Any]] = []
        self.state: dict[str, Any] = {}

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> dict[str, Any]:
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> dict[str, Any]:
        o = self.options
        self.logs.mkdir(parents=True, exist_ok=True)
        for old in self.logs.glob("*.log"):
            old.unlink()
        t0 = time.monotonic()

        self.log("starting DynamoDB Local (in memory)")
        self.ddb = DynamoDBLocal(log=self.logs / "dynamodb.log").start()
        # every client of the stack talks to DynamoDB Local through the strict layer
        ddb_port = procs.free_port()
        self.log("starting the strict DynamoDB layer")
        self._spawn(
            "ddb-strict",
            [
                sys.executable,
                "-m",
                "infra.local.ddb_strict",
                "--upstream",
                self.ddb.endpoint,
                "--host",
                HOST,
                "--port",
                str(ddb_port),
                "--faults",
                "on" if o.ddb_faults else "off",
                "--throttle-rate",
                str(o.ddb_throttle_rate),
            ],
            ddb_port,
        )
        ddb_url = f"http://{HOST}:{ddb_port}"

        sqs_port = procs.free_port()
        self.log("starting the SQS server")
        self._spawn(
            "sqs",
            [sys.executable, "-m", "infra.local.sqs", "--host", HOST, "--port", str(sqs_port)],
            sqs_port,
        )
        sqs_url = f"http://{HOST}:{sqs_port}"

        secrets_port = procs.free_port()
        self.log("starting Secrets Manager (moto's server)")
        self._spawn(
            "secretsmanager",
            [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(secrets_port)],
            secrets_port,
        )
        secrets_url = f"http://{HOST}:{secrets_port}"
        token_secret = secrets.token_urlsafe(32)
        token_secret_arn = create_token_secret(local_client("secretsmanager", secrets_url), token_secret)
        operator_token = secrets.token_urlsafe(24)
        lambda_port, ws_port, http_port = procs.free_port(), procs.free_port(), procs.free_port()
        lambda_url = f"http://{HOST}:{lambda_port}"
        connections_url = f"http://{HOST}:{ws_port}/{STAGE}"

        settings = Settings(
            partition_count=o.partitions,
            shard_count=o.shards,
            post_batch_size=o.post_batch_size,
            post_concurrency=o.post_concurrency,
        )
        self.log(
            f"creating tables ({o.partitions} partitions) and {2 * o.shards} queues with dead-letter queues"
        )
        dynamodb = local_client("dynamodb", ddb_url)
        create_tables(dynamodb, settings)
        streams = stream_arns(dynamodb, settings)
        sqs = local_client("sqs", sqs_url)
        queues = create_queues(
            sqs, shards=o.shards, prefix=PREFIX, visibility_timeout=LOCAL_VISIBILITY_TIMEOUT
        )
        swarm_failures = queues.swarm_failure_queue_url

        env = {
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL_DYNAMODB": ddb_url,
            "AWS_ENDPOINT_URL_DYNAMODB_STREAMS": ddb_url,
            "AWS_ENDPOINT_URL_SQS": sqs_url,
            "AWS_ENDPOINT_URL_LAMBDA": lambda_url,
            # botocore names it after the service id "Secrets Manager", space as underscore
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": secrets_url,
            "LAMBDA_TASK_ROOT": str(ROOT),
            **function_environment(
                o,
                settings,
                queues,
                connections_endpoint=connections_url,
                token_secret_arn=token_secret_arn,
            ),
        }
        runtime_cfg = self.state_dir / "runtime.json"
        runtime_cfg.write_text(
            json.dumps(runtime_config(env, queues, streams, o, sqs, swarm_failures), indent=2)
        )
        self.log(f"starting the Lambda runtime ({len(o.topology().functions)} functions)")
        self._spawn(
            "runtime",
            [
                sys.executable,
                "-m",
                "infra.local.runtime",
                "--config",
                str(runtime_cfg),
                "--host",
                HOST,
                "--port",
                str(lambda_port),
            ],
            lambda_port,
            env={**os.environ, **env},
        )

        self._wait_warm(lambda_url)

        gateway_cfg = self.state_dir / "gateway.json"
        gateway_cfg.write_text(
            json.dumps(gateway_config(ws_port, http_port, lambda_url, operator_token, o), indent=2)
        )
        self.log("starting the WebSocket gateway emulator")
        self._spawn(
            "gateway", [sys.executable, "-m", "infra.local.gateway", "--config", str(gateway_cfg)], ws_port
        )
        procs.wait_for_port(HOST, http_port, timeout=30)

        websocket_url = f"ws://{HOST}:{ws_port}/{STAGE}"
        chat_port = procs.free_port()
        self.log("starting the chat page")
        self._spawn(
            "chat",
            [
                sys.executable,
                "-m",
                "infra.local.chat_server",
                "--host",
                HOST,
                "--port",
                str(chat_port),
                "--websocket-url",
                websocket_url,
            ],
            chat_port,
            # the signing key by environment, as the page server reads it (never on a command line)
            env={**os.environ, "FANOUT_CHAT_TOKEN_SECRET": token_secret},
        )

        from fanout.tokens import issue_token

        self.state = {
            "websocketUrl": websocket_url,
            "chatUrl": f"http://{HOST}:{chat_port}/",
            "httpApiUrl": f"http://{HOST}:{http_port}",
            "connectionsUrl": connections_url,
            "operatorToken": operator_token,
            "connectToken": issue_token(token_secret, "local-user", ttl_seconds=24 * 3600),
            "tokenSecret": token_secret,
            "dynamodbUrl": ddb_url,
            "dynamodbLocalUrl": self.ddb.endpoint,
            "dynamodbStatsUrl": f"{ddb_url}/_strict/stats",
            "sqsUrl": sqs_url,
            "lambdaUrl": lambda_url,
            "secretsManagerUrl": secrets_url,
            "adminUrl": f"http://{HOST}:{ws_port}/_local",
            "region": REGION,
            "partitionQueueUrls": queues.partition_queue_urls,
            "postQueueUrls": queues.post_queue_urls,
            "deadLetterQueueUrls": queues.dead_letter_queue_urls,
            "swarmFailureQueueUrl": swarm_failures,
            "recoveryFailureQueueUrl": queues.recovery_failure_queue_url,
            "settings": {k: v for k, v in env.items() if k.startswith(SETTINGS_PREFIX)},
            "pids": {name: proc.pid for name, proc in self.children}
            | {"dynamodb": self.ddb.proc.pid if self.ddb.proc else None},
        }
        (self.state_dir / "local.json").write_text(json.dumps(self.state, indent=2))
        self.log(f"stack up in {time.monotonic() - t0:.1f} s; state in {self.state_dir / 'local.json'}")
        return self.state

    def _wait_warm(self, lambda_url: str, timeout: float = 180) -> None:
        """Wait until the runtime has started every function's provisioned containers (imports done)."""
        import urllib.request

        self.log("warming the function containers")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"{lambda_url}/_local/health", timeout=5) as resp:
                if json.loads(resp.read()).get("warm"):
                    return
            time.sleep(0.2)
        raise TimeoutError(f"the function containers were not warm after {timeout:.0f} s")

    def _spawn(self, name: str, args: list[str], port: int, env: dict[str, str] | None = None) -> None:
        proc = procs.start(args, log=self.logs / f"{name}.log", env=env or {**os.environ}, cwd=ROOT)
        self.children.append((name, proc))
        try:
            procs.wait_for_port(HOST, port, timeout=60, proc=proc)
        except (RuntimeError, TimeoutError) as exc:
            tail = (self.logs / f"{name}.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{name} did not start: {exc}\n--- {name}.log (end) ---\n{tail}") from exc

    def stop(self) -> None:
        for _name, proc in reversed(self.children):
            procs.stop(proc)
        self.children.clear()
        if self.ddb is not None:
            self.ddb.stop()
            self.ddb = None
        state = self.state_dir / "local.json"
        if state.exists():
            state.unlink()

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def local_client(service: str, endpoint: str) -> Any:
    """A boto3 client for a local emulator: DynamoDB Local keeps one database per access key and
    Region, so every client of the stack must use these."""
    return boto3.client(  # type: ignore[call-overload]
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )


SETTINGS_PREFIX = str(Settings.model_config.get("env_prefix", ""))
# name -> handler of every function (what the gateway and the tests look functions up by)
FUNCTIONS = {f.name(PREFIX): f.handler for f in topology().functions}


def function_environment(
    o: StackOptions,
    settings: Settings,
    queues: QueueSet,
    *,
    connections_endpoint: str,
    token_secret_arn: str,
) -> dict[str, str]:
    """The functions' settings as environment variables, from the topology, resolved locally.

    One environment for every function of the runtime: the union of what each function gets in AWS
    (a setting has one value for every function that reads it), then the local-only values.
    """

    system = o.topology()

    def resolve(ref: Ref) -> str:
        if ref.kind is RefKind.TABLE_NAME:
            return str(getattr(settings, system.table(ref.key).setting))
        if ref.kind is RefKind.QUEUE_URLS:
            return json.dumps(queues.stage(ref.key))
        if ref.kind is RefKind.DEAD_LETTER_QUEUE_URLS:
            return json.dumps(queues.dead_letters(ref.key))
        if ref.kind is RefKind.FUNCTION_NAME:
            # no alias locally: the runtime's one version is warm (provisioned) already
            return system.function(ref.key).name(PREFIX)
        if ref.kind is RefKind.TOKEN_SECRET_ARN:
            return token_secret_arn
        return connections_endpoint

    env: dict[str, str] = dict(POWERTOOLS_ENVIRONMENT)
    owner: dict[str, str] = {}
    for fn in system.functions:
        for name, value in environment(fn.settings, resolve).items():
            if env.get(name, value) != value:
                raise ValueError(f"{name} differs between {owner[name]} and {fn.key}: one environment cannot")
            env[name], owner[name] = value, fn.key
    # The pacing divides the budget over the post workers that really run: this machine's, fewer
    # than the event source mappings' MaximumConcurrency x shards (the floor of 2 per mapping).
    env[env_name("post_rate_per_worker")] = str(post_rate_per_worker(o.post_rate_budget, o.post_workers))
    env[env_name("region")] = REGION
    env[env_name("reconcile_quiet_seconds")] = str(o.reconcile_quiet_seconds)
    return env


def _concurrency(key: str, o: StackOptions) -> int:
    """Containers of a function on this machine: its reserved and, all warm, provisioned concurrency."""
    return {
        "authorizer": o.connect_workers,
        "connect": o.connect_workers,
        "disconnect": o.connect_workers,
        "query": o.query_workers,
        "post": o.post_workers,
    }.get(key, 1)


def runtime_config(
    env: dict[str, str],
    queues: Any,
    stream_arns: Mapping[str, str],
    o: StackOptions,
    sqs: Any = None,
    swarm_failures: str | None = None,
) -> dict[str, Any]:
    """The Lambda runtime's configuration: the topology's functions and triggers.

    Without ``sqs`` the queues' ARNs are left to the runtime (GetQueueAttributes at start), so the
    configuration can be built, and compared with the CDK app's, without a running stack.
    ``stream_arns`` holds the stream of every table a stream trigger reads, by table key.
    """
    from infra.local.runtime_config import (
        DynamoDBStreamMapping,
        FunctionConfig,
        RuntimeConfig,
        ScheduleConfig,
        SqsMapping,
    )

    system = o.topology()
    swarm_failures = swarm_failures or getattr(queues, "swarm_failure_queue_url", None)
    failure_queues = {
        system.swarm_failures.key: swarm_failures,
        system.recovery_failures.key: getattr(queues, "recovery_failure_queue_url", None),
    }
    functions = []
    for f in system.functions:
        retries = {}
        if f.async_invoke is not None:
            retries = {
                "maximum_retry_attempts": f.async_invoke.retry_attempts,
                "maximum_event_age": f.async_invoke.maximum_event_age_seconds,
                "on_failure_queue_url": failure_queues.get(f.async_invoke.on_failure_queue),
            }
        functions.append(
            FunctionConfig(
                name=f.name(PREFIX),
                handler=f.handler,
                timeout=f.timeout_seconds,
                memory_size=f.memory_mb,
                # this machine's containers, all started at once (no cold start in a test's timing)
                reserved_concurrency=_concurrency(f.key, o),
                provisioned_concurrency=_concurrency(f.key, o),
                **retries,
            )
        )

    def arn(url: str) -> str | None:
        if sqs is None:
            return None
        return str(
            sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        )

    mappings = [
        SqsMapping(
            function=f.name(PREFIX),
            queue_url=url,
            queue_arn=arn(url),
            batch_size=f.sqs.batch_size,
            maximum_batching_window=f.sqs.maximum_batching_window_seconds,
            maximum_concurrency=f.sqs.maximum_concurrency,
            report_batch_item_failures=f.sqs.report_batch_item_failures,
            # short polls: a stopping runtime does not wait out a 20 s ReceiveMessage
            wait_time_seconds=1,
        )
        for f in system.functions
        if f.sqs is not None and queues is not None
        for url in queues.stage(f.sqs.stage)
    ]
    streams = [
        DynamoDBStreamMapping(
            function=f.name(PREFIX),
            stream_arn=stream_arns[f.stream.table],
            batch_size=f.stream.batch_size,
            starting_position=f.stream.starting_position,
            maximum_batching_window=f.stream.maximum_batching_window_seconds,
            maximum_retry_attempts=f.stream.retry_attempts,
            bisect_batch_on_function_error=f.stream.bisect_batch_on_error,
            report_batch_item_failures=f.stream.report_batch_item_failures,
            poll_interval=0.1,
        )
        for f in system.functions
        if f.stream is not None
    ]
    # both reconcilers (partitions, channels) run at the cadence a test sets for reconciling
    rates = {
        "reconcile": o.reconcile_every_seconds,
        "reconcile-channels": o.reconcile_every_seconds,
        "sweep": o.sweep_every_seconds,
    }
    schedules = [
        ScheduleConfig(
            function=f.name(PREFIX),
            rate_seconds=rates.get(f.schedule.name) or f.schedule.rate_seconds,
            name=f.schedule.name,
        )
        for f in system.functions
        if f.schedule is not None
    ]
    config = RuntimeConfig(
        functions=functions,
        sqs_mappings=mappings,
        dynamodb_stream_mappings=streams,
        schedules=schedules,
        async_retry_delay=o.async_retry_delay_seconds,
        environment=env,
        region=REGION,
        python_path=[str(ROOT)],
        working_dir=str(ROOT),
    )
    return dict(json.loads(config.model_dump_json(by_alias=True)))


def gateway_config(
    ws_port: int, http_port: int, lambda_url: str, operator_token: str, o: StackOptions
) -> dict[str, Any]:
    from infra.local.gateway_config import FaultConfig, GatewayConfig

    config = GatewayConfig(
        websocket_port=ws_port,
        http_port=http_port,
        stage=STAGE,
        lambda_url=lambda_url,
        operator_token=operator_token,
        idle_timeout_seconds=o.idle_timeout_seconds,
        max_connection_seconds=o.max_connection_seconds,
        region=REGION,
        log_level="WARNING",
        faults=FaultConfig(
            latency_ms=o.post_latency_ms, rate410=o.fault_410, rate429=o.fault_429, rate500=o.fault_500
        ),
    )
    data = json.loads(config.model_dump_json(by_alias=True))
    data["operatorToken"] = operator_token  # SecretStr dumps masked
    return dict(data)
