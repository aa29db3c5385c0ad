"""fanout-authorizer: the WebSocket `$connect` REQUEST authorizer (identity: querystring `token`).

A valid HS256 token → an Allow policy on the methodArn with context {"userId": sub, "channels": ...,
"publish": ...}, the token's rights as JSON strings (fanout.protocol.authorizer_context: API Gateway
takes only strings, numbers and booleans as context values). `token` is the only identity source:
API Gateway refuses a request that lacks one of them, so ``?channels=`` is checked by `$connect`
against these rights, not here. Anything else →
`Exception("Unauthorized")`, which API Gateway answers with 401 before `$connect` runs, so no
connection row is written. The reason is logged (never the token) and counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parameters import SecretsProvider
from aws_lambda_powertools.utilities.parser import parse
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fanout.errors import ConfigurationError, Unauthorized
from fanout.protocol import authorizer_context
from fanout.settings import AuthorizerSettings, load
from fanout.tokens import TokenClaims, verify_token
from handlers._observability import logger, metrics, tracer

SECRET_MAX_AGE_SECONDS = 300


class AuthorizerRequestContext(BaseModel):
    model_config = ConfigDict(extra="ignore")
    connection_id: str | None = Field(default=None, alias="connectionId")
    route_key: str | None = Field(default=None, alias="routeKey")


class WebSocketAuthorizerEvent(BaseModel):
    """The REQUEST authorizer event of a WebSocket API (only the fields used here)."""

    model_config = ConfigDict(extra="ignore")
    type: str = "REQUEST"
    method_arn: str = Field(alias="methodArn", min_length=1)
    query_string_parameters: dict[str, str] | None = Field(default=None, alias="queryStringParameters")
    request_context: AuthorizerRequestContext = Field(
        default_factory=AuthorizerRequestContext, alias="requestContext"
    )

    @property
    def token(self) -> str | None:
        return (self.query_string_parameters or {}).get("token")


@dataclass(frozen=True)
class Deps:
    secrets: SecretsProvider
    secret_arn: str | None


@lru_cache(maxsize=1)
def deps() -> Deps:
    """Built once per container, at the first invocation: Powertools' Secrets Manager provider (its
    client and value cache) and the secret's ARN.

    The provider's boto3 client reads ``AWS_ENDPOINT_URL_SECRETS_MANAGER``, which is how the local
    stack points it at its Secrets Manager emulator.
    """
    return Deps(SecretsProvider(), load(AuthorizerSettings).token_secret_arn)


def token_secret(d: Deps) -> str:
    """The HS256 key: the Secrets Manager secret named by FANOUT_TOKEN_SECRET_ARN (cached for a while,
    so a rotated key is picked up without a cold start)."""
    if not d.secret_arn:
        raise ConfigurationError("missing settings: FANOUT_TOKEN_SECRET_ARN")
    value = d.secrets.get(d.secret_arn, max_age=SECRET_MAX_AGE_SECONDS)
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def allow(claims: TokenClaims, method_arn: str) -> dict[str, Any]:
    return {
        "principalId": claims.sub,
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": method_arn}],
        },
        "context": authorizer_context(claims.sub, claims.channels, claims.publish),
    }


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        request = parse(event=event, model=WebSocketAuthorizerEvent)
        claims = verify_token(token_secret(deps()), request.token)
    except (Unauthorized, ValidationError) as exc:
        reason = str(exc) if isinstance(exc, Unauthorized) else "unreadable authorizer event"
        connection_id = (event.get("requestContext") or {}).get("connectionId")
        logger.info("connect refused", reason=reason, connectionId=connection_id)
        metrics.add_metric(name="ConnectRefused", unit=MetricUnit.Count, value=1)
        raise Exception("Unauthorized") from None  # the exact message API Gateway maps to 401
    logger.debug("connect allowed", userId=claims.sub, connectionId=request.request_context.connection_id)
    metrics.add_metric(name="ConnectAllowed", unit=MetricUnit.Count, value=1)
    return allow(claims, request.method_arn)
