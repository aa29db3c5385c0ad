"""Settings: one pydantic-settings model, built once at cold start (never at import time).

Every field is read from an environment variable named ``FANOUT_<FIELD>`` (upper case); lists are
JSON (``FANOUT_POST_QUEUE_URLS='["https://...","https://..."]'``). AWS endpoints are not settings
of the engine: boto3/aioboto3 read ``AWS_ENDPOINT_URL_DYNAMODB``, ``AWS_ENDPOINT_URL_SQS`` and
``AWS_ENDPOINT_URL_LAMBDA`` themselves, which is how the local stack points the same code at its
emulators.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import AliasChoices, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fanout.errors import ConfigurationError

# API Gateway's WebSocket message limit (128 KB); frames above it are refused up front.
MAX_FRAME_BYTES = 128 * 1024
# API Gateway closes a WebSocket after 2 hours at most; rows outlive that a little (TTL).
CONNECTION_TTL_SECONDS = 2 * 3600 + 15 * 60


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FANOUT_", extra="ignore", frozen=True)

    # Tables
    connections_table: str = "fanout-connections"
    connections_index: str = "byPartition"
    partitions_table: str = "fanout-partitions"
    broadcasts_table: str = "fanout-broadcasts"
    idempotency_table: str = "fanout-idempotency"

    # Shape of the pipeline
    partition_count: int = Field(default=100, ge=1, le=100_000, description="N partitions")
    reconcile_quiet_seconds: float = Field(
        default=15.0,
        ge=0,
        description="the reconciler leaves a partition alone if the stream changed it this recently "
        "(above the stream's processing lag, or recounts race the records in flight)",
    )
    shard_count: int = Field(default=4, ge=1, le=1_000, description="Q queue shards per stage")
    post_batch_size: int = Field(default=100, ge=1, le=5_000, description="B ids per post batch")
    partition_queue_urls: list[str] = Field(default_factory=list)
    post_queue_urls: list[str] = Field(default_factory=list)
    post_dead_letter_queue_urls: list[str] = Field(
        default_factory=list, description="where ids still failing after max_post_attempts go"
    )
    swarm_function_name: str = "fanout-swarm"
    swarm_send_concurrency: int = Field(default=32, ge=1, le=1_000, description="SendMessageBatch in flight")

    # Connect path
    partition_choices: int = Field(default=2, ge=1, le=64, description="d candidates (docs/partitions.md)")
    partition_view_ttl_seconds: float = Field(default=3.0, gt=0, le=300)
    connection_ttl_seconds: int = Field(default=CONNECTION_TTL_SECONDS, ge=60)
    token_secret_arn: str | None = Field(default=None, description="Secrets Manager secret of the HS256 key")

    # Post stage
    connections_endpoint: str = Field(
        default="",
        description="https://{api-id}.execute-api.{region}.amazonaws.com/{stage} (the @connections base)",
    )
    post_concurrency: int = Field(default=64, ge=1, le=2_000, description="posts in flight per worker")
    post_rate_per_worker: float = Field(default=0.0, ge=0, description="posts/s per worker; 0 = unpaced")
    post_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    post_in_call_retries: int = Field(default=2, ge=0, le=10, description="retries inside one invocation")
    max_post_attempts: int = Field(default=5, ge=1, le=50, description="re-enqueues before dead-letter")
    retry_base_seconds: float = Field(default=0.05, gt=0)
    retry_cap_seconds: float = Field(default=2.0, gt=0)
    requeue_base_delay_seconds: int = Field(default=1, ge=0, le=900)
    prune_grace_seconds: float = Field(
        default=10.0,
        ge=0,
        le=900,
        description="a 410 on a connection row younger than this is retried, not pruned: its $connect may "
        "still be running (the connect function's timeout is the bound)",
    )
    counter_shards: int = Field(
        default=4, ge=1, le=100, description="fewest counter shards per broadcast (fanout.accounting)"
    )
    uvloop: bool = Field(default=True, description="run the container's event loop on uvloop if importable")

    # Broadcast API
    inline_payload_limit: int = Field(
        default=4096, ge=0, le=MAX_FRAME_BYTES, description="larger messages travel by reference"
    )
    max_frame_bytes: int = Field(default=MAX_FRAME_BYTES, ge=1, le=MAX_FRAME_BYTES)
    idempotency_ttl_seconds: int = Field(default=3600, ge=60)

    # Sweeper
    sweep_after_seconds: float = Field(
        default=300, gt=0, description="a broadcast still queued or running this long is re-driven"
    )
    sweep_attempts: int = Field(default=3, ge=0, le=20, description="re-drives before it is marked failed")
    region: str = Field(
        default="us-east-1",
        validation_alias=AliasChoices("FANOUT_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"),
    )

    @model_validator(mode="after")
    def _shards_match(self) -> Settings:
        for name in ("partition_queue_urls", "post_queue_urls", "post_dead_letter_queue_urls"):
            urls = getattr(self, name)
            if urls and len(urls) != self.shard_count:
                raise ValueError(f"{name} has {len(urls)} urls but shard_count is {self.shard_count}")
        return self

    def require(self, *names: str) -> None:
        """Raise ConfigurationError unless every named setting is non-empty."""
        missing = [n for n in names if not getattr(self, n)]
        if missing:
            env = ", ".join(f"FANOUT_{n.upper()}" for n in missing)
            raise ConfigurationError(f"missing settings: {env}")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process, validated once (at cold start, on first use)."""
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigurationError(f"invalid settings: {exc}") from exc
