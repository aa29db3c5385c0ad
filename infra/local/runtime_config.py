"""Configuration of the local Lambda runtime (`infra/local/runtime.py`): functions, event source mappings,
schedules.

The JSON file uses camelCase keys (`batchSize`, `maximumBatchingWindow`, ...); the Python API accepts the
snake_case field names too. Units follow the AWS parameter they mirror: seconds for timeouts and windows,
MB for memory.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class FunctionConfig(_Model):
    """One Lambda function: `handler` is `module.attr` (e.g. `handlers.post.handler`)."""

    name: str
    handler: str
    environment: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(default=3.0, gt=0, le=900)
    memory_size: int = Field(default=128, ge=128, le=10240)
    reserved_concurrency: int | None = Field(default=None, ge=1, le=1000)
    """Most containers running at once; unset: the runtime's `defaultConcurrency`."""
    maximum_retry_attempts: int = Field(default=2, ge=0, le=2)
    """Retries of an asynchronous (`Event`) invocation after a function error, as in AWS."""
    maximum_event_age: float = Field(default=21600, ge=60, le=21600)
    """Seconds an asynchronous event is kept (AWS: 60 s to 6 h); older, it is not retried any more."""
    on_failure_queue_url: str | None = None
    """The on-failure destination of asynchronous invocations (an SQS queue), as AWS's DestinationConfig:
    an event whose retries are exhausted (or too old) is sent there as an invocation record."""
    provisioned_concurrency: int = Field(default=0, ge=0, le=1000)
    """Containers started (handler imported) when the runtime starts, as Lambda's provisioned concurrency."""

    @model_validator(mode="after")
    def _check(self) -> FunctionConfig:
        if not _NAME.match(self.name):
            raise ValueError(f"invalid function name {self.name!r}")
        module, _, attr = self.handler.rpartition(".")
        if not module or not attr:
            raise ValueError(f"handler must be 'module.attr', got {self.handler!r}")
        return self


class SqsMapping(_Model):
    """An SQS event source mapping.

    `endpointUrl` defaults to the queue URL's host (or AWS_ENDPOINT_URL_SQS)."""

    function: str
    queue_url: str
    queue_arn: str | None = None
    """Unset: read from GetQueueAttributes (QueueArn) at start."""
    endpoint_url: str | None = None
    batch_size: int = Field(default=10, ge=1, le=10000)
    maximum_batching_window: float = Field(default=0.0, ge=0, le=300)
    maximum_concurrency: int | None = Field(default=None, ge=2, le=1000)
    report_batch_item_failures: bool = False
    enabled: bool = True
    wait_time_seconds: int = Field(default=20, ge=0, le=20)
    """Long-polling wait of each ReceiveMessage while no message is in flight."""

    @model_validator(mode="after")
    def _check(self) -> SqsMapping:
        if self.batch_size > 10 and self.maximum_batching_window < 1:
            raise ValueError(
                "a batch size above 10 needs a maximumBatchingWindow of at least 1 second (as in AWS)"
            )
        return self


class DynamoDBStreamMapping(_Model):
    """A DynamoDB Streams event source mapping. `endpointUrl` defaults to AWS_ENDPOINT_URL_DYNAMODB_STREAMS,
    then AWS_ENDPOINT_URL_DYNAMODB (DynamoDB Local serves both APIs on one port)."""

    function: str
    stream_arn: str
    endpoint_url: str | None = None
    batch_size: int = Field(default=100, ge=1, le=10000)
    starting_position: Literal["TRIM_HORIZON", "LATEST"] = "LATEST"
    maximum_batching_window: float = Field(default=0.0, ge=0, le=300)
    maximum_retry_attempts: int = Field(default=-1, ge=-1, le=10000)
    """-1: retry until the records expire (forever, locally)."""
    bisect_batch_on_function_error: bool = False
    report_batch_item_failures: bool = False
    poll_interval: float = Field(default=0.2, gt=0, le=5)
    """Pause between GetRecords calls on a shard that returned nothing."""
    enabled: bool = True


class ScheduleConfig(_Model):
    """An EventBridge rule `rate(N seconds)` invoking `function` asynchronously with a scheduled event."""

    function: str
    rate_seconds: float = Field(gt=0)
    name: str | None = None
    run_at_start: bool = False
    enabled: bool = True


class RuntimeConfig(_Model):
    functions: list[FunctionConfig]
    sqs_mappings: list[SqsMapping] = Field(default_factory=list)
    dynamodb_stream_mappings: list[DynamoDBStreamMapping] = Field(default_factory=list)
    schedules: list[ScheduleConfig] = Field(default_factory=list)
    environment: dict[str, str] = Field(default_factory=dict)
    """Merged over the runtime's own environment for every function (function `environment` wins)."""
    host: str = "127.0.0.1"
    port: int = Field(default=9001, ge=0, le=65535)
    region: str = "us-east-1"
    account_id: str = "000000000000"
    default_concurrency: int = Field(default=4, ge=1, le=1000)
    """Containers per function when it has no reserved concurrency (2 cores here: keep it small)."""
    python_path: list[str] = Field(default_factory=list)
    """Extra import roots for handlers; the repository root is always on the path."""
    working_dir: str | None = None
    log_dir: str | None = None
    """Function logs go to `<logDir>/<function>.log`; unset: the runtime's stderr, prefixed `[function]`."""
    async_retry_delay: float = Field(default=1.0, ge=0, le=600)
    """Delay before the first retry of a failed `Event` invocation (AWS: ~1 min); doubled for the second."""
    shutdown_grace: float = Field(default=2.0, ge=0, le=60)

    @model_validator(mode="after")
    def _check(self) -> RuntimeConfig:
        names = [f.name for f in self.functions]
        if len(set(names)) != len(names):
            raise ValueError("function names must be unique")
        known = set(names)
        sources: list[SqsMapping | DynamoDBStreamMapping | ScheduleConfig] = [
            *self.sqs_mappings,
            *self.dynamodb_stream_mappings,
            *self.schedules,
        ]
        for source in sources:
            if source.function not in known:
                raise ValueError(f"{type(source).__name__} refers to unknown function {source.function!r}")
        return self

    def function(self, name: str) -> FunctionConfig:
        for f in self.functions:
            if f.name == name:
                return f
        raise KeyError(name)

    @classmethod
    def load(cls, path: str | Path) -> RuntimeConfig:
        return cls.model_validate(json.loads(Path(path).read_text()))

    def dump_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2)
