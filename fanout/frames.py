"""The broadcast envelope: serialized once per broadcast, checked against the frame limit."""

from __future__ import annotations

import json
from typing import Any

from fanout.errors import InvalidInput, PayloadTooLarge


def build_frame(
    broadcast_id: str, sent_at_ms: int, message: Any, *, limit: int, sender: str | None = None
) -> str:
    """The JSON envelope every connection receives; PayloadTooLarge above `limit` bytes (UTF-8).

    A client's message names its sender (``"from"``: the user of the sending connection's token),
    just before ``"data"``; an operator's broadcast names none."""
    envelope: dict[str, Any] = {"type": "broadcast", "broadcastId": broadcast_id, "sentAt": sent_at_ms}
    if sender is not None:
        envelope["from"] = sender
    envelope["data"] = message
    try:
        frame = json.dumps(
            envelope,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )
        size = len(frame.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidInput(
            "message holds text that is not valid Unicode (a lone surrogate)", field="message"
        ) from exc
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"message is not serializable as JSON: {exc}", field="message") from exc
    except RecursionError as exc:
        raise InvalidInput("message is nested too deeply to serialize", field="message") from exc
    if "\ufffe" in frame or "\uffff" in frame:
        # SQS refuses U+FFFE and U+FFFF in a message body, and the frame travels in partition tasks and
        # post batches: escaped, they are the same JSON text for every client, in characters SQS accepts
        # (json.dumps already escapes the other characters SQS refuses: controls and lone surrogates).
        frame = frame.replace("\ufffe", "\\ufffe").replace("\uffff", "\\uffff")
        size = len(frame.encode("utf-8"))
    if size > limit:
        raise PayloadTooLarge(size, limit)
    return frame
