"""The price table: AWS list prices, dated and with their source, and how to override them.

One table in one module: the cost model (`fanout.pricing`) reads it, `fanout plan --prices FILE` and
`--price NAME=USD` override it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class Prices(BaseModel):
    """List prices, in US dollars. Override any of them with `override_prices`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    as_of: str = "2026-12-02"
    source: str = (
        "AWS public pricing pages (API Gateway, Lambda, SQS, DynamoDB, Secrets Manager, X-Ray), "
        "us-east-1 list prices; free tiers and volume tiers ignored"
    )
    region: str = "us-east-1"
    apigw_message_per_million: float = Field(1.00, ge=0, description="WebSocket, per 32 KB unit")
    apigw_connection_minute_per_million: float = Field(0.25, ge=0)
    http_api_request_per_million: float = Field(1.00, ge=0, description="the operator API")
    lambda_gb_second: float = Field(0.0000133334, ge=0, description="arm64")
    lambda_request_per_million: float = Field(0.20, ge=0)
    lambda_provisioned_gb_second: float = Field(
        0.0000033334, ge=0, description="arm64 provisioned concurrency, per GB-second configured"
    )
    sqs_request_per_million: float = Field(0.40, ge=0, description="standard queues, per 64 KB chunk")
    dynamodb_write_unit_per_million: float = Field(0.625, ge=0, description="on-demand WRU")
    dynamodb_read_unit_per_million: float = Field(0.125, ge=0, description="on-demand RRU")
    dynamodb_wcu_hour: float = Field(0.00065, ge=0, description="provisioned")
    dynamodb_rcu_hour: float = Field(0.00013, ge=0, description="provisioned")
    secrets_api_calls_per_10k: float = Field(0.05, ge=0)
    secret_month: float = Field(0.40, ge=0)
    xray_traces_recorded_per_million: float = Field(5.00, ge=0)
    xray_traces_retrieved_per_million: float = Field(0.50, ge=0, description="retrieved or scanned")


DEFAULT_PRICES = Prices()
PRICE_FIELDS = tuple(n for n, f in Prices.model_fields.items() if f.annotation is float)


class PricesError(ValueError):
    """An override of the price table that does not validate (the message says which field and why)."""


def override_prices(overrides: Mapping[str, Any], base: Prices = DEFAULT_PRICES) -> Prices:
    """`base` with the prices in `overrides` (a partial dict, e.g. a JSON file's content), validated."""
    if not isinstance(overrides, Mapping):
        raise PricesError(f"a price override is an object of name: price, not {type(overrides).__name__}")
    try:
        return Prices.model_validate({**base.model_dump(), **overrides})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'prices'}: {e['msg']}" for e in exc.errors()
        )
        raise PricesError(f"invalid prices: {problems} (known: {', '.join(PRICE_FIELDS)})") from None
