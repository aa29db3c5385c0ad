"""botocore errors, read in one place and translated into fanout.errors.

Every adapter of fanout.adapters catches botocore's exceptions and either answers (a failed condition
means "already done", a cancelled transaction's reasons) or raises `translate(...)`: nothing above the
adapters sees a botocore error code.
"""

from __future__ import annotations

from botocore.exceptions import BotoCoreError, ClientError

from fanout.errors import FanoutError, PermanentError, RetryableError, Throttled

# What DynamoDB, SQS and Lambda answer when a caller goes too fast (after botocore's own retries).
THROTTLING = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "LimitExceededException",
        "Throttling",
        "TooManyRequestsException",
    }
)
SERVER_ERRORS = frozenset({"InternalServerError", "ServiceUnavailable", "InternalFailure"})
CONDITION_FAILED = "ConditionalCheckFailedException"
TRANSACTION_CANCELED = "TransactionCanceledException"
TRANSACTION_CONFLICT = "TransactionConflictException"

# What the adapters catch: a service's answer (ClientError) or a transport failure (BotoCoreError).
AWS_ERRORS = (ClientError, BotoCoreError)


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def http_status(exc: BaseException) -> int | None:
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(status) if status is not None else None
    return None


def cancellation_codes(exc: BaseException) -> list[str]:
    """The per-item reasons of a cancelled transaction ("None" for the items that were fine)."""
    if not isinstance(exc, ClientError):
        return []
    return [str(r.get("Code", "None")) for r in exc.response.get("CancellationReasons") or []]


def is_condition_failure(exc: BaseException) -> bool:
    """A conditional write refused (alone, or as one item of a cancelled transaction)."""
    code = error_code(exc)
    if code == CONDITION_FAILED:
        return True
    return code == TRANSACTION_CANCELED and "ConditionalCheckFailed" in cancellation_codes(exc)


def is_conflict(exc: BaseException) -> bool:
    """A write that lost a race with a transaction on the same item: botocore retries neither form."""
    code = error_code(exc)
    if code == TRANSACTION_CONFLICT:
        return True
    return code == TRANSACTION_CANCELED and "TransactionConflict" in cancellation_codes(exc)


def translate(exc: BaseException, what: str) -> FanoutError:
    """A botocore error as the engine's own: Throttled, RetryableError (5xx, network) or PermanentError.

    The message keeps the service's code and text, so that an operator reading a broadcast's error or
    a log line sees what AWS answered.
    """
    if isinstance(exc, ClientError):
        code = error_code(exc)
        status = http_status(exc)
        message = exc.response.get("Error", {}).get("Message", "")
        text = f"{what}: {code}: {message}" if message else f"{what}: {code}"
        if code in THROTTLING:
            return Throttled(text, status=status)
        if (status is not None and status >= 500) or code in SERVER_ERRORS:
            return RetryableError(text, status=status)
        return PermanentError(text, status=status)
    return RetryableError(f"{what}: {type(exc).__name__}: {exc}")
