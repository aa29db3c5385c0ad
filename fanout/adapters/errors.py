"""botocore errors, read in one place."""

from __future__ import annotations

from botocore.exceptions import ClientError

THROTTLING = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "Throttling",
        "TooManyRequestsException",
    }
)


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def cancellation_codes(exc: BaseException) -> list[str]:
    """The per-item reasons of a cancelled transaction ("None" for the items that were fine)."""
    if not isinstance(exc, ClientError):
        return []
    return [str(r.get("Code", "None")) for r in exc.response.get("CancellationReasons") or []]
