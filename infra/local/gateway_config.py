"""Configuration of the WebSocket gateway emulator (`infra/local/gateway.py`).

The JSON file uses camelCase keys (`websocketPort`, `idleTimeoutSeconds`, `faults.rate410`, ...); the
Python API accepts the snake_case field names too. Example::

    {
      "websocketPort": 9010, "httpPort": 9011, "stage": "local",
      "lambdaUrl": "http://127.0.0.1:9001",
      "functions": {"authorizer": "fanout-authorizer", "connect": "fanout-connect",
                    "disconnect": "fanout-disconnect", "default": "fanout-default",
                    "operatorApi": "fanout-operator-api"},
      "routes": {"ping": "fanout-default"},
      "operatorToken": "s3cret",
      "faults": {"latencyMs": 5, "rate410": 0.01, "rate429": 0.02, "rate500": 0.0, "seed": 7}
    }

A function name set to null disables that integration: no authorizer (every handshake is allowed), no
`$connect`/`$disconnect` function, no `$default` route (messages answered "Forbidden" as in AWS).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic.alias_generators import to_camel

from fanout.topology import OPERATOR_ROUTES

# API Gateway's WebSocket message limit.
MAX_FRAME_BYTES = 128 * 1024

_ROUTE_SELECTION = re.compile(r"^\$request\.body\.[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")
_HTTP_ROUTE = re.compile(r"^(ANY|GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS) (/[^\s]*)$")


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class FunctionNames(_Model):
    """Lambda function invoked per integration (names as in docs/architecture.md); null disables one."""

    authorizer: str | None = "fanout-authorizer"
    connect: str | None = "fanout-connect"
    disconnect: str | None = "fanout-disconnect"
    default: str | None = "fanout-default"
    operator_api: str | None = "fanout-operator-api"


class FaultConfig(_Model):
    """Fault injection on PostToConnection (`POST /{stage}/@connections/{id}`) only.

    Each post draws one number r in [0, 1) from a generator seeded with `seed`: r < rate410 answers 410,
    then the next rate429 answers 429, then rate500 answers 500. `latencyMs` delays every post (after the
    size check). With `goneCloses`, an injected 410 also closes the connection (a socket gets close code
    1001 and `$disconnect`; a simulated id is unregistered), so that "gone" really means gone.
    """

    latency_ms: float = Field(default=0.0, ge=0, le=60_000)
    rate410: float = Field(default=0.0, ge=0, le=1)
    rate429: float = Field(default=0.0, ge=0, le=1)
    rate500: float = Field(default=0.0, ge=0, le=1)
    seed: int | None = None
    gone_closes: bool = True

    @model_validator(mode="after")
    def _check(self) -> FaultConfig:
        if self.rate410 + self.rate429 + self.rate500 > 1.0 + 1e-9:
            raise ValueError("rate410 + rate429 + rate500 must not exceed 1")
        return self

    @property
    def any_rate(self) -> bool:
        return (self.rate410 + self.rate429 + self.rate500) > 0

    def merged(self, patch: dict[str, Any]) -> FaultConfig:
        """A copy with the fields of `patch` (camelCase or snake_case) replaced, validated."""
        data = self.model_dump(by_alias=True)
        for key, value in patch.items():
            field = type(self).model_fields.get(key)
            alias = field.alias if field is not None and field.alias else key
            data[alias] = value
        return FaultConfig.model_validate(data)


class GatewayConfig(_Model):
    host: str = "127.0.0.1"
    websocket_port: int = Field(default=9010, ge=0, le=65535)
    """WebSocket endpoint, `@connections` API and `/_local/` admin endpoints; 0 picks a free port."""
    http_port: int = Field(default=9011, ge=0, le=65535)
    """The operator HTTP API; 0 picks a free port."""
    stage: str = Field(default="local", pattern=r"^[A-Za-z0-9_-]{1,128}$")
    lambda_url: str = "http://127.0.0.1:9001"
    functions: FunctionNames = Field(default_factory=FunctionNames)
    route_selection_expression: str = "$request.body.action"
    routes: dict[str, str] = Field(default_factory=lambda: {"ping": "fanout-default"})
    """Custom WebSocket routes: route key (value of the selection expression) → function name."""
    http_routes: list[str] = Field(default_factory=lambda: list(OPERATOR_ROUTES))
    """Routes of the operator HTTP API; a request matching none goes to the `$default` route."""

    idle_timeout_seconds: float = Field(default=600, gt=0)
    """Closed (1001 Going away) after this long without a data frame in either direction."""
    max_connection_seconds: float = Field(default=7200, gt=0)
    heartbeat_seconds: float | None = Field(default=30, gt=0)
    """Ping interval used to detect clients that vanished without a TCP close (pong due within half)."""
    close_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    """How long a gateway-initiated close waits for the client's close frame."""
    max_frame_bytes: int = Field(default=MAX_FRAME_BYTES, ge=1, le=16 * 1024 * 1024)
    max_send_buffer_bytes: int = Field(default=1024 * 1024, ge=1024)
    """A post to a socket whose unsent bytes exceed this answers 429 (the client's buffer is full)."""

    operator_token: SecretStr | None = None
    """Bearer token of the operator HTTP API; unset: a random one is generated and logged at start."""
    api_id: str = "localwsapi"
    http_api_id: str = "localhttp1"
    account_id: str = Field(default="000000000000", pattern=r"^\d{12}$")
    region: str = "us-east-1"
    domain_name: str | None = None
    """`requestContext.domainName`; unset: the request's Host header (`http://{domainName}/{stage}` works)."""

    faults: FaultConfig = Field(default_factory=FaultConfig)
    invoke_timeout_seconds: float = Field(default=30, gt=0, le=900)
    invoke_concurrency: int = Field(default=64, ge=1, le=10_000)
    """Invoke requests in flight to the Lambda runtime at once."""
    shutdown_grace_seconds: float = Field(default=5.0, ge=0, le=120)
    """On SIGTERM/SIGINT: time given to closing sockets and their `$disconnect` invocations."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("route_selection_expression")
    @classmethod
    def _selection(cls, value: str) -> str:
        if not _ROUTE_SELECTION.match(value):
            raise ValueError("only $request.body.<field>[.<field>...] selection expressions are supported")
        return value

    @field_validator("routes")
    @classmethod
    def _routes(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not key or key.startswith("$"):
                raise ValueError(f"custom route keys cannot be empty or start with '$': {key!r}")
        return value

    @field_validator("http_routes")
    @classmethod
    def _http_routes(cls, value: list[str]) -> list[str]:
        for route in value:
            if not _HTTP_ROUTE.match(route):
                raise ValueError(f"HTTP route must be 'METHOD /path', got {route!r}")
        return value

    @property
    def selection_path(self) -> tuple[str, ...]:
        """`$request.body.action` → ("action",)."""
        return tuple(self.route_selection_expression.split(".")[2:])

    @classmethod
    def load(cls, path: str | Path) -> GatewayConfig:
        return cls.model_validate(json.loads(Path(path).read_text()))

    def dump_json(self) -> str:
        data = self.model_dump(by_alias=True, mode="json")
        if self.operator_token is not None:
            data["operatorToken"] = self.operator_token.get_secret_value()
        return json.dumps(data, indent=2)
