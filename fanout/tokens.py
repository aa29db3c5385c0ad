"""Client tokens: JWTs signed with HS256 (PyJWT), claims ``sub`` (the user), ``exp`` and ``iat``, and
the optional rights ``channels`` (the channels the user may subscribe to) and ``publish`` (where the
user may publish): each a list of patterns, an exact channel name or a prefix ending in ``*``
(``room:*``); ``publish`` may also hold the specials ``$user`` and ``$all``. No claim, no right; a
claim that is not a list of valid patterns refuses the whole token.

Only HS256 is accepted. The algorithm is checked on the header before any signature work, so a
token that names ``none``, ``RS256`` or anything else is refused with a reason that says so (and a
public key can never be confused with the shared secret). Every refusal is
:class:`fanout.errors.Unauthorized` with a short, loggable reason; the token itself is never put in
the reason.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable
from typing import Any

import jwt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fanout.channels import pattern_problem
from fanout.errors import Unauthorized

ALGORITHM = "HS256"
# Clock skew tolerated between the issuer and the verifier for `iat` (seconds). `exp` has none.
IAT_LEEWAY_SECONDS = 60
# Targets of `publish` that are not channels: $user, a direct message to any user's connections
# (sendmessage with "to"); $all, every connection (sendmessage without "to").
PUBLISH_SPECIALS = frozenset({"$user", "$all"})


def patterns_problem(value: object, *, specials: frozenset[str] = frozenset()) -> str | None:
    """Why `value` is not a list of channel patterns (or of `specials`); None if it is one."""
    if not isinstance(value, list):
        return "must be a list of channel patterns"
    for i, pattern in enumerate(value):
        if isinstance(pattern, str) and pattern in specials:
            continue
        problem = pattern_problem(pattern)
        if problem is not None:
            return f"item {i}: {problem}"
    return None


class TokenClaims(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    sub: str = Field(min_length=1, description="the user")
    exp: int = Field(description="expiry, epoch seconds")
    iat: int = Field(description="issued at, epoch seconds")
    channels: tuple[str, ...] = Field(default=(), description="patterns the user may subscribe to")
    publish: tuple[str, ...] = Field(default=(), description="patterns the user may publish to")

    @field_validator("channels", mode="before")
    @classmethod
    def _channel_patterns(cls, value: Any) -> Any:
        problem = patterns_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("publish", mode="before")
    @classmethod
    def _publish_patterns(cls, value: Any) -> Any:
        problem = patterns_problem(value, specials=PUBLISH_SPECIALS)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("exp", "iat", mode="before")
    @classmethod
    def _numeric_date(cls, value: Any) -> int:
        # RFC 7519 NumericDate: a JSON number (not a string, not a boolean); fractions are truncated.
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
            raise ValueError("must be a number of seconds since the epoch")
        try:
            return int(value)
        except OverflowError as exc:  # inf: pydantic only turns ValueError into a validation error
            raise ValueError("must be a finite number of seconds since the epoch") from exc


def issue_token(
    secret: str,
    subject: str,
    ttl_seconds: int = 3600,
    now: float | None = None,
    *,
    channels: Iterable[str] | None = None,
    publish: Iterable[str] | None = None,
) -> str:
    """A token for `subject`, valid for `ttl_seconds` from `now` (default: the current time), with the
    rights to subscribe to `channels` and publish to `publish` (patterns; None leaves the claim out)."""
    if not secret:
        raise ValueError("a token secret is required")
    if not subject:
        raise ValueError("a subject is required")
    if ttl_seconds <= 0:
        raise ValueError("ttl_seconds must be positive")
    issued = int(time.time() if now is None else now)
    payload: dict[str, Any] = {"sub": subject, "iat": issued, "exp": issued + int(ttl_seconds)}
    for claim, value, specials in (
        ("channels", channels, frozenset[str]()),
        ("publish", publish, PUBLISH_SPECIALS),
    ):
        if value is None:
            continue
        patterns = list(value)
        problem = patterns_problem(patterns, specials=specials)
        if problem is not None:
            raise ValueError(f"{claim}: {problem}")
        payload[claim] = patterns
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyJWT warns on short HMAC keys; the caller chose the secret
        return jwt.encode(payload, secret, algorithm=ALGORITHM)


def verify_token(secret: str, token: str | None, now: float | None = None) -> TokenClaims:
    """The claims of a valid token; raises Unauthorized(reason) for anything else."""
    if not secret:
        raise Unauthorized("no token secret is configured")
    if not token:
        raise Unauthorized("missing token")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.DecodeError as exc:
        raise Unauthorized("malformed token") from exc
    alg = header.get("alg")
    if alg != ALGORITHM:
        raise Unauthorized(f"wrong algorithm: {alg!r} (only {ALGORITHM} is accepted)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw: dict[str, Any] = jwt.decode(
                token,
                secret,
                algorithms=[ALGORITHM],
                # Time claims are checked below against `now`, so tests can pin the clock.
                options={
                    "require": ["exp", "iat", "sub"],
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
    except jwt.MissingRequiredClaimError as exc:
        raise Unauthorized(f"token lacks the {exc.claim!r} claim") from exc
    except jwt.InvalidSignatureError as exc:
        raise Unauthorized("bad signature") from exc
    except jwt.InvalidAlgorithmError as exc:
        raise Unauthorized("wrong algorithm") from exc
    except jwt.PyJWTError as exc:
        raise Unauthorized("malformed token") from exc
    try:
        claims = TokenClaims.model_validate(raw)
    except ValidationError as exc:
        raise Unauthorized(f"invalid claims: {_claim_problems(exc)}") from exc
    current = time.time() if now is None else now
    if claims.exp <= current:
        raise Unauthorized("expired token")
    if claims.iat > current + IAT_LEEWAY_SECONDS:
        raise Unauthorized("token issued in the future")
    return claims


def _claim_problems(exc: ValidationError) -> str:
    """The failed claims; for the rights, also why (the patterns' problems name no token content
    beyond one character)."""
    parts: list[str] = []
    for error in exc.errors(include_url=False, include_input=False):
        if not error["loc"]:
            continue
        name = str(error["loc"][0])
        if name in ("channels", "publish") and len(error["loc"]) == 1:
            parts.append(f"{name} ({str(error['msg']).removeprefix('Value error, ')})")
        else:
            parts.append(name)
    return ", ".join(dict.fromkeys(parts))
