"""The typed configuration of the stack, built once from CDK context.

Every field can be set with ``cdk deploy -c <camelCaseName>=<value>`` (or in ``cdk.json``'s
``context``); values given on the command line arrive as strings and are validated and coerced here,
so a typo fails the synth with a clear message instead of deploying something odd.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, Protocol

from aws_cdk import aws_logs as logs
from pydantic import Field, ValidationError, field_validator

from fanout.topology import TopologyConfig


class RemovalMode(StrEnum):
    # production: tables, secret, log groups and the API Gateway logging role survive `cdk destroy`
    RETAIN = "retain"
    DESTROY = "destroy"  # test deployments: `cdk destroy` removes everything


class Billing(StrEnum):
    PAY_PER_REQUEST = "PAY_PER_REQUEST"
    PROVISIONED = "PROVISIONED"


NAME_PREFIX_PATTERN = r"^[a-z][a-z0-9-]{1,31}$"


class ContextReader(Protocol):
    def try_get_context(self, key: str) -> Any: ...


class FanoutConfig(TopologyConfig):
    """What an operator may change per deployment. Names in context are the camelCase aliases."""

    stack_name: str = Field(default="Fanout", pattern=r"^[A-Za-z][A-Za-z0-9-]{0,127}$")
    # Prefix of the readable physical names (functions, queues, topic, dashboard, rules); by default
    # the stack's name in lower case, so that two stacks never claim the same name. Retained resources
    # (tables, secret, log groups) have no fixed name at all: CloudFormation generates theirs.
    name_prefix: str | None = Field(default=None, pattern=NAME_PREFIX_PATTERN)
    stage_name: str = Field(default="prod", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    removal_policy: RemovalMode = RemovalMode.RETAIN
    billing_mode: Billing = Billing.PAY_PER_REQUEST
    # Capacity per table when billing is PROVISIONED (GSIs get the same).
    read_capacity: int = Field(default=50, ge=1)
    write_capacity: int = Field(default=50, ge=1)

    # The knobs that shape the functions, triggers, tables and queues are TopologyConfig's fields
    # (fanout/topology.py), inherited here; the sweeper's wait is bounded tighter for AWS.
    sweep_after_seconds: int = Field(default=300, ge=60, le=6 * 3600)  # type: ignore[assignment]

    # API throttling (requests/s and burst) of the WebSocket stage and the operator API
    websocket_rate_limit: float = Field(default=1_000, gt=0)
    websocket_burst_limit: int = Field(default=500, ge=0)
    operator_rate_limit: float = Field(default=10, gt=0)
    operator_burst_limit: int = Field(default=20, ge=0)
    api_gateway_cloudwatch_role: bool = Field(
        default=True,
        description="set the Region's API Gateway CloudWatch role (WebSocket access logs need one)",
    )

    # Monitoring
    log_retention_days: int = 30
    alarm_email: str | None = None
    queue_age_alarm_seconds: int = Field(default=300, ge=60)
    # A stream consumer this far behind serves counts that old (placement, occupancy).
    stream_age_alarm_seconds: int = Field(default=120, ge=1)
    throttled_alarm_per_minute: int = Field(default=1_000, ge=1)
    transaction_conflict_alarm_per_minute: int = Field(default=300, ge=1)
    # Client messages refused by the rate limits (RateLimitRejections): a few are a client pacing
    # itself; many, minute after minute, are a flood (or limits set too low for the app).
    rate_limit_alarm_per_minute: int = Field(default=600, ge=1)

    # Optional load-test stack (Locust on ECS Fargate)
    loadtest: bool = False
    loadtest_workers: int = Field(default=4, ge=0, le=500)

    @field_validator("log_retention_days")
    @classmethod
    def _retention(cls, v: int) -> int:
        if v not in _RETENTION:
            raise ValueError(f"CloudWatch Logs retention must be one of {sorted(_RETENTION)}")
        return v

    @property
    def log_retention(self) -> logs.RetentionDays:
        return logs.RetentionDays[_RETENTION[self.log_retention_days]]

    def for_stack(self, stack_name: str) -> FanoutConfig:
        """This config with the name prefix resolved for a stack (its name in lower case by default)."""
        if self.name_prefix is not None:
            return self
        prefix = stack_name.lower()
        if not re.fullmatch(NAME_PREFIX_PATTERN, prefix):
            raise ValueError(
                f"stack name {stack_name!r} does not make a name prefix ({NAME_PREFIX_PATTERN}): "
                "set -c namePrefix=<prefix>"
            )
        return self.model_copy(update={"name_prefix": prefix})

    def name(self, suffix: str) -> str:
        """Readable physical name: ``<prefix>-<suffix>`` (fanout-post-0); never for retained resources."""
        if self.name_prefix is None:
            raise ValueError("name prefix not resolved: build resources with config.for_stack(stack_name)")
        return f"{self.name_prefix}-{suffix}"

    @classmethod
    def from_context(cls, node: ContextReader) -> FanoutConfig:
        """Read every field from CDK context by its camelCase name; absent keys keep the default."""
        values: dict[str, Any] = {}
        for field_name, info in cls.model_fields.items():
            alias = info.alias or field_name
            value = node.try_get_context(alias)
            if value is not None:
                values[alias] = _coerce_bool(value) if info.annotation is bool else value
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ValueError(f"invalid fanout context: {exc}") from exc


def _coerce_bool(value: Any) -> Any:
    if isinstance(value, str) and value.lower() in {"true", "false", "1", "0", "yes", "no"}:
        return value.lower() in {"true", "1", "yes"}
    return value


_RETENTION = {
    1: "ONE_DAY", 3: "THREE_DAYS", 5: "FIVE_DAYS", 7: "ONE_WEEK", 14: "TWO_WEEKS", 30: "ONE_MONTH",
    60: "TWO_MONTHS", 90: "THREE_MONTHS", 120: "FOUR_MONTHS", 150: "FIVE_MONTHS", 180: "SIX_MONTHS",
    365: "ONE_YEAR", 400: "THIRTEEN_MONTHS", 545: "EIGHTEEN_MONTHS", 731: "TWO_YEARS",
    1827: "FIVE_YEARS", 3653: "TEN_YEARS",
}  # fmt: skip
