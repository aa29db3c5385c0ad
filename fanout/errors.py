"""The one exception hierarchy of the engine.

Adapters translate transport errors (botocore codes, HTTP statuses) into these at their edge;
callers never inspect botocore error codes.
"""

from __future__ import annotations


class FanoutError(Exception):
    """Base of every error the engine raises on purpose."""


class ConfigurationError(FanoutError):
    """Settings are missing or invalid."""


class InvalidInput(FanoutError):
    """A caller sent something the engine refuses; the message names the problem."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class PayloadTooLarge(InvalidInput):
    """A broadcast frame would exceed the WebSocket message limit."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"the broadcast frame would be {size} bytes; the limit is {limit} bytes (128 KB)",
            field="message",
        )
        self.size = size
        self.limit = limit


class Refused(InvalidInput):
    """A client's request the protocol refuses: a machine-readable `code` (the error frame's) and the
    HTTP `status` a refused $connect answers with (400 for a bad request, 403 for a missing right)."""

    def __init__(self, message: str, *, code: str, status: int = 400) -> None:
        super().__init__(message, field="channels")
        self.code = code
        self.status = status


class Unauthorized(FanoutError):
    """A token or caller identity was refused."""


class BroadcastNotFound(FanoutError):
    """No broadcast has that id."""


class ConnectionGone(FanoutError):
    """PostToConnection answered 410: the connection no longer exists; prune it."""

    def __init__(self, connection_id: str) -> None:
        super().__init__(f"connection {connection_id} is gone")
        self.connection_id = connection_id


class RetryableError(FanoutError):
    """A transient failure (throttling, 5xx, timeouts); the work may be tried again."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Throttled(RetryableError):
    """429 LimitExceededException, or a DynamoDB/SQS throttle."""


class PermanentError(FanoutError):
    """A failure that retrying will not fix (403, 400, 413 from a downstream API)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class MessageRefused(PermanentError):
    """SQS refused a message for its content or size (SenderFault): sending it again cannot succeed."""

    def __init__(self, message: str, *, code: str = "") -> None:
        super().__init__(message, status=400)
        self.code = code
