"""The whole system on one machine: DynamoDB Local, the SQS server, the Lambda runtime and the gateway.

`LocalStack(options).start()` provisions a fresh stack (new in-memory tables, new queues) and writes
`.fanout/local.json`; `stop()` stops every child process group (no orphan Java or Python processes).
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
from pydantic import BaseModel, Field

from fanout.settings import Settings
from infra.cdk.sizing import post_rate_per_worker
from infra.local import procs
from infra.local.dynamodb import ROOT, DynamoDBLocal
from infra.local.resources import (
    connections_stream_arn,
    create_queues,
    create_tables,
    create_token_secret,
)

HOST = "127.0.0.1"
REGION = "us-east-1"
STAGE = "local"
# The local stand-in for the account's PostToConnection quota: AWS's default (10,000/s), far above
# what the post workers of one machine reach, so the stack runs paced without being slowed.
LOCAL_POST_RATE_BUDGET = 10_000.0


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
    query_workers: int = Field(default=2, ge=1, le=64)
    post_sqs_batch_size: int = Field(default=10, ge=1, le=10_000, description="post mapping's BatchSize")
    connect_workers: int = Field(default=2, ge=1, le=64)
    post_latency_ms: float = Field(default=0.0, ge=0)
    fault_410: float = Field(default=0.0, ge=0, le=1)
    fault_429: float = Field(default=0.0, ge=0, le=1)
    fault_500: float = Field(default=0.0, ge=0, le=1)
    idle_timeout_seconds: float = Field(default=600, gt=0)
    max_connection_seconds: float = Field(default=7200, gt=0)
    reconcile_every_seconds: float = Field(default=60, gt=0)
    reconcile_quiet_seconds: float = Field(default=15, ge=0)
    sweep_every_seconds: float = Field(default=60, gt=0)
    sweep_after_seconds: float = Field(default=300, gt=0)
    async_retry_delay_seconds: float = Field(
        default=1.0, ge=0, description="first retry of a failed async invocation (AWS: ~1 min; then 2x)"
    )
    ddb_faults: bool = Field(default=True, description="AWS's conflict rules (infra/local/ddb_strict.py)")
    ddb_throttle_rate: float = Field(default=0.0, ge=0, le=1, description="share of DynamoDB calls throttled")
    state_dir: Path = Path(".fanout")


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
        stream_arn = connections_stream_arn(dynamodb, settings)
        sqs = local_client("sqs", sqs_url)
        queues = create_queues(sqs, shards=o.shards, visibility_timeout=30)
        swarm_failures = sqs.create_queue(
            QueueName="fanout-swarm-failures", Attributes={"MessageRetentionPeriod": "1209600"}
        )["QueueUrl"]

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
            "POWERTOOLS_SERVICE_NAME": "fanout",
            "POWERTOOLS_METRICS_NAMESPACE": "Fanout",
            "POWERTOOLS_LOG_LEVEL": "INFO",
            **settings.resource_environment(),
            "FANOUT_PARTITION_COUNT": str(o.partitions),
            "FANOUT_SHARD_COUNT": str(o.shards),
            "FANOUT_POST_BATCH_SIZE": str(o.post_batch_size),
            "FANOUT_POST_CONCURRENCY": str(o.post_concurrency),
            "FANOUT_POST_RATE_PER_WORKER": str(post_rate_per_worker(o.post_rate_budget, o.post_workers)),
            "FANOUT_PARTITION_QUEUE_URLS": json.dumps(queues.partition_queue_urls),
            "FANOUT_POST_QUEUE_URLS": json.dumps(queues.post_queue_urls),
            "FANOUT_POST_DEAD_LETTER_QUEUE_URLS": json.dumps(queues.dead_letter_queue_urls[o.shards :]),
            "FANOUT_CONNECTIONS_ENDPOINT": connections_url,
            "FANOUT_TOKEN_SECRET_ARN": token_secret_arn,
            "FANOUT_REGION": REGION,
            "FANOUT_RECONCILE_QUIET_SECONDS": str(o.reconcile_quiet_seconds),
            "FANOUT_SWEEP_AFTER_SECONDS": str(o.sweep_after_seconds),
        }
        runtime_cfg = self.state_dir / "runtime.json"
        runtime_cfg.write_text(
            json.dumps(runtime_config(env, queues, stream_arn, o, sqs, swarm_failures), indent=2)
        )
        self.log(f"starting the Lambda runtime ({len(FUNCTIONS)} functions)")
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

        from fanout.tokens import issue_token

        self.state = {
            "websocketUrl": f"ws://{HOST}:{ws_port}/{STAGE}",
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
            "settings": {k: v for k, v in env.items() if k.startswith("FANOUT_")},
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


FUNCTIONS = {
    "fanout-authorizer": "handlers.authorizer.handler",
    "fanout-connect": "handlers.connect.handler",
    "fanout-disconnect": "handlers.disconnect.handler",
    "fanout-default": "handlers.default.handler",
    "fanout-partition-counter": "handlers.partition_counter.handler",
    "fanout-reconciler": "handlers.reconciler.handler",
    "fanout-operator-api": "handlers.operator_api.handler",
    "fanout-swarm": "handlers.swarm.handler",
    "fanout-query": "handlers.query.handler",
    "fanout-post": "handlers.post.handler",
    "fanout-sweeper": "handlers.sweeper.handler",
}


# (function, timeout seconds, concurrency option or fixed count)
def _concurrency(name: str, o: StackOptions) -> int:
    return {
        "fanout-authorizer": o.connect_workers,
        "fanout-connect": o.connect_workers,
        "fanout-disconnect": o.connect_workers,
        "fanout-query": o.query_workers,
        "fanout-post": o.post_workers,
    }.get(name, 1)


def runtime_config(
    env: dict[str, str],
    queues: Any,
    stream_arn: str,
    o: StackOptions,
    sqs: Any,
    swarm_failures: str | None = None,
) -> dict[str, Any]:
    """The Lambda runtime's configuration: the same functions and triggers as the CDK app."""
    from infra.local.runtime_config import (
        DynamoDBStreamMapping,
        FunctionConfig,
        RuntimeConfig,
        ScheduleConfig,
        SqsMapping,
    )

    timeouts = {
        "fanout-query": 60.0,
        "fanout-post": 60.0,
        "fanout-swarm": 120.0,
        "fanout-reconciler": 120.0,
        "fanout-sweeper": 55.0,
    }
    functions = [
        FunctionConfig(
            name=name,
            handler=handler,
            timeout=timeouts.get(name, 10.0),
            memory_size=1024,
            reserved_concurrency=_concurrency(name, o),
            provisioned_concurrency=_concurrency(name, o),
            on_failure_queue_url=swarm_failures if name == "fanout-swarm" else None,
        )
        for name, handler in FUNCTIONS.items()
    ]

    def arn(url: str) -> str:
        return str(
            sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        )

    mappings = [
        SqsMapping(
            function=function,
            queue_url=url,
            queue_arn=arn(url),
            batch_size=batch_size,
            maximum_concurrency=max(2, workers),
            report_batch_item_failures=True,
            wait_time_seconds=1,
        )
        for function, urls, workers, batch_size in (
            ("fanout-query", queues.partition_queue_urls, o.query_workers, 10),
            ("fanout-post", queues.post_queue_urls, o.post_workers, o.post_sqs_batch_size),
        )
        for url in urls
    ]
    stream = DynamoDBStreamMapping(
        function="fanout-partition-counter",
        stream_arn=stream_arn,
        batch_size=1000,
        starting_position="TRIM_HORIZON",
        maximum_batching_window=0.1,
        maximum_retry_attempts=10,
        bisect_batch_on_function_error=True,
        report_batch_item_failures=True,
        poll_interval=0.1,
    )
    schedules = [
        ScheduleConfig(
            function="fanout-reconciler", rate_seconds=o.reconcile_every_seconds, name="reconcile"
        ),
        ScheduleConfig(function="fanout-sweeper", rate_seconds=o.sweep_every_seconds, name="sweep"),
    ]
    config = RuntimeConfig(
        functions=functions,
        sqs_mappings=mappings,
        dynamodb_stream_mappings=[stream],
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
