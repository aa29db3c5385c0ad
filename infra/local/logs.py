"""The log format of the local stack's own processes (runtime, SQS server, gateway, strict DynamoDB
layer): one JSON object per line on stderr. The functions they run log through Powertools' Logger.

Standard library only: the runtime's worker processes may import it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any

# The attributes every LogRecord has: what is left over came from `extra=`.
_STD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, milliseconds), level, logger, message, the record's
    `extra` fields and the exception, if any."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _STD_ATTRS})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def json_stderr_handler() -> logging.Handler:
    """A handler writing JsonFormatter lines to stderr (the CLIs' `logging.basicConfig(handlers=...)`)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    return handler


def log_fields(logger: logging.Logger, level: int, message: str, **fields: Any) -> None:
    """Log `message` with `fields` as the record's extra fields, building nothing when `level` is off."""
    if logger.isEnabledFor(level):
        logger.log(level, message, extra=fields)
