"""A small SQS-compatible server for the local stack (standard queues, AWS JSON 1.0 protocol).

Run it with ``python -m infra.local.sqs --host 127.0.0.1 --port P [--region us-east-1]``; it serves
until SIGTERM or SIGINT. In tests, ``with serve_in_thread() as endpoint:`` runs it on a free port in
a background thread and yields ``http://127.0.0.1:<port>``.

Protocol: ``POST /`` with ``X-Amz-Target: AmazonSQS.<Action>`` and a JSON body, as boto3 >= 1.34
speaks it. Errors carry ``__type`` (``com.amazonaws.sqs#<Shape>``) and the ``x-amzn-query-error``
header (``<legacy code>;Sender``), so that botocore reports the legacy code (for example
``AWS.SimpleQueueService.NonExistentQueue``) and raises the modeled exception class
(``client.exceptions.QueueDoesNotExist``), as it does against AWS. Any credentials are accepted.

Cost per operation is O(1) or O(log n) in the queue length: each queue keeps a deque of visible
messages and two heaps keyed by time (delayed, in flight). Entries are invalidated lazily: a message
carries a generation number, bumped at every state change, and a deque or heap entry whose
generation is stale is skipped when it reaches the front. Long polls wait on futures that are woken
by sends, by visibility changes and by a per-queue timer set to the earliest delayed or in-flight
message's due time while anyone waits.

Out of scope: FIFO queues, permissions, KMS, message move tasks.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import heapq
import itertools
import json
import logging
import re
import signal
import socket
import struct
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

log = logging.getLogger("fanout.local.sqs")

ACCOUNT_ID = "000000000000"
DEFAULT_REGION = "us-east-1"
MAX_MESSAGE_BYTES = 1_048_576  # 1 MiB per message and per batch (was 256 KiB before August 2025)
MAX_BATCH_ENTRIES = 10
MAX_VISIBILITY_TIMEOUT = 43_200
MAX_WAIT_SECONDS = 20
MAX_DELAY_SECONDS = 900
PURGE_INTERVAL_SECONDS = 60.0
JSON_CONTENT_TYPE = "application/x-amz-json-1.0"
SENDER_ID = "AIDAAAAAAAAAAAAAAAAAA"

_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
_BATCH_ID = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
# Characters SQS accepts in a message body (XML 1.0 characters).
_INVALID_BODY_CHAR = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")

# Modeled error shape -> the legacy (AWS Query) code that botocore reports as Error.Code.
_QUERY_CODES = {
    "QueueDoesNotExist": "AWS.SimpleQueueService.NonExistentQueue",
    "QueueNameExists": "QueueAlreadyExists",
    "TooManyEntriesInBatchRequest": "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
    "EmptyBatchRequest": "AWS.SimpleQueueService.EmptyBatchRequest",
    "BatchEntryIdsNotDistinct": "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
    "InvalidBatchEntryId": "AWS.SimpleQueueService.InvalidBatchEntryId",
    "BatchRequestTooLong": "AWS.SimpleQueueService.BatchRequestTooLong",
    "MessageNotInflight": "AWS.SimpleQueueService.MessageNotInflight",
    "PurgeQueueInProgress": "AWS.SimpleQueueService.PurgeQueueInProgress",
    "UnsupportedOperation": "AWS.SimpleQueueService.UnsupportedOperation",
}

# Queue attributes with integer values: name -> (default, minimum, maximum).
_INT_ATTRIBUTES: dict[str, tuple[int, int, int]] = {
    "VisibilityTimeout": (30, 0, MAX_VISIBILITY_TIMEOUT),
    "DelaySeconds": (0, 0, MAX_DELAY_SECONDS),
    "MessageRetentionPeriod": (345_600, 60, 1_209_600),
    "ReceiveMessageWaitTimeSeconds": (0, 0, MAX_WAIT_SECONDS),
    "MaximumMessageSize": (MAX_MESSAGE_BYTES, 1024, MAX_MESSAGE_BYTES),
    "KmsDataKeyReusePeriodSeconds": (300, 60, 86_400),
}
# Settable attributes stored as given (not interpreted here).
_OPAQUE_ATTRIBUTES = {"Policy", "KmsMasterKeyId", "SqsManagedSseEnabled", "RedriveAllowPolicy"}
_COMPUTED_ATTRIBUTES = (
    "QueueArn",
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
    "CreatedTimestamp",
    "LastModifiedTimestamp",
)
_SYSTEM_ATTRIBUTES = (
    "SenderId",
    "SentTimestamp",
    "ApproximateReceiveCount",
    "ApproximateFirstReceiveTimestamp",
)

_DELAYED, _VISIBLE, _INFLIGHT, _GONE = 0, 1, 2, 3
_seq = itertools.count()
# Ids shaped like UUIDs, unique per server process: a random prefix and a counter (uuid4() per
# message and per request costs more than the rest of a send).
_ID_PREFIX = str(uuid.uuid4())[:24]
_ids = itertools.count(1)


def new_id() -> str:
    return f"{_ID_PREFIX}{next(_ids):012x}"


class SqsError(Exception):
    """An error answered to the client: ``shape`` is the modeled error name (``__type``)."""

    def __init__(self, shape: str, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.shape = shape
        self.message = message
        self.status = status

    @property
    def code(self) -> str:
        """The code botocore reports as ``Error.Code`` (and batch entries carry as ``Code``)."""
        return _QUERY_CODES.get(self.shape, self.shape)


def _invalid(message: str) -> SqsError:
    return SqsError("InvalidParameterValue", message)


def _no_queue() -> SqsError:
    return SqsError("QueueDoesNotExist", "The specified queue does not exist.")


class RedrivePolicy(BaseModel):
    """The ``RedrivePolicy`` queue attribute (a JSON string on the wire)."""

    model_config = ConfigDict(extra="ignore")

    deadLetterTargetArn: str = Field(min_length=1)
    maxReceiveCount: int = Field(ge=1, le=1000)

    def to_wire(self) -> str:
        return json.dumps(
            {"deadLetterTargetArn": self.deadLetterTargetArn, "maxReceiveCount": self.maxReceiveCount},
            separators=(",", ":"),
        )


class ServerConfig(BaseModel):
    """Where the server listens and how it names its queues."""

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    region: str = DEFAULT_REGION
    account_id: str = ACCOUNT_ID


# --------------------------------------------------------------------------------------------------
# Messages and queues (plain classes with __slots__: they are on the hot path, millions per run)
# --------------------------------------------------------------------------------------------------


def attributes_md5(attributes: dict[str, dict[str, Any]]) -> str:
    """MD5OfMessageAttributes as SQS computes it: over the attributes sorted by name, each as
    length-prefixed name, length-prefixed data type, a transport byte (1 string, 2 binary) and the
    length-prefixed value."""
    md5 = hashlib.md5()
    for name in sorted(attributes):
        value = attributes[name]
        data_type = str(value.get("DataType", ""))
        for part in (name.encode(), data_type.encode()):
            md5.update(struct.pack(">I", len(part)))
            md5.update(part)
        if "BinaryValue" in value and not data_type.startswith(("String", "Number")):
            raw = base64.b64decode(value["BinaryValue"])
            md5.update(b"\x02")
        else:
            raw = str(value.get("StringValue", "")).encode()
            md5.update(b"\x01")
        md5.update(struct.pack(">I", len(raw)))
        md5.update(raw)
    return md5.hexdigest()


class Message:
    __slots__ = (
        "attributes",
        "attributes_md5",
        "body",
        "body_md5",
        "first_receive_ms",
        "gen",
        "id",
        "nonce",
        "receive_count",
        "sent_at",
        "sent_ms",
        "state",
    )

    def __init__(self, body: str, attributes: dict[str, dict[str, Any]], now: float) -> None:
        self.id = new_id()
        self.body = body
        self.body_md5 = hashlib.md5(body.encode()).hexdigest()
        self.attributes = attributes
        self.attributes_md5 = attributes_md5(attributes) if attributes else ""
        self.sent_at = now  # monotonic, for retention
        self.sent_ms = int(time.time() * 1000)
        self.first_receive_ms = 0
        self.receive_count = 0
        self.nonce = 0
        self.gen = 0
        self.state = _GONE

    def receipt_handle(self) -> str:
        return base64.urlsafe_b64encode(f"{self.id}:{self.nonce}".encode()).decode()


def parse_receipt_handle(handle: Any) -> tuple[str, int]:
    """(message id, receive nonce) of a handle made by Message.receipt_handle."""
    if not isinstance(handle, str) or not handle:
        raise SqsError(
            "ReceiptHandleIsInvalid", f'The input receipt handle "{handle}" is not a valid receipt handle.'
        )
    try:
        msg_id, _, nonce = base64.urlsafe_b64decode(handle.encode()).decode().rpartition(":")
        if len(msg_id) != 36:
            raise ValueError(msg_id)
        return msg_id, int(nonce)
    except (ValueError, UnicodeError) as exc:
        raise SqsError(
            "ReceiptHandleIsInvalid", f'The input receipt handle "{handle}" is not a valid receipt handle.'
        ) from exc


class Queue:
    def __init__(self, name: str, url: str, arn: str, attributes: dict[str, str]) -> None:
        self.name = name
        self.url = url
        self.arn = arn
        self.created = int(time.time())
        self.modified = self.created
        self.attributes: dict[str, str] = {}
        self.redrive: RedrivePolicy | None = None
        self.tags: dict[str, str] = {}
        self.messages: dict[str, Message] = {}
        self.visible: deque[tuple[int, Message]] = deque()
        self.delayed: list[tuple[float, int, int, Message]] = []
        self.inflight: list[tuple[float, int, int, Message]] = []
        self.counts = [0, 0, 0, 0]  # per state: delayed, visible, in flight, (gone, unused)
        self.waiters: deque[asyncio.Future[bool]] = deque()
        self.timer: asyncio.TimerHandle | None = None
        self.timer_due = 0.0
        self.last_purge = -PURGE_INTERVAL_SECONDS
        self.deleted = False
        self.visibility_timeout = 30
        self.delay_seconds = 0
        self.retention = 345_600
        self.wait_seconds = 0
        self.max_message_size = MAX_MESSAGE_BYTES
        self.set_attributes(attributes)

    # ---- attributes

    def set_attributes(self, attributes: dict[str, str]) -> None:
        for name, value in attributes.items():
            if name == "RedrivePolicy":
                self.redrive = parse_redrive_policy(value)
                if self.redrive is None:
                    self.attributes.pop(name, None)
                    continue
                value = self.redrive.to_wire()
            self.attributes[name] = value
        self.visibility_timeout = self._int("VisibilityTimeout")
        self.delay_seconds = self._int("DelaySeconds")
        self.retention = self._int("MessageRetentionPeriod")
        self.wait_seconds = self._int("ReceiveMessageWaitTimeSeconds")
        self.max_message_size = self._int("MaximumMessageSize")
        self.modified = int(time.time())

    def _int(self, name: str) -> int:
        value = self.attributes.get(name)
        return int(value) if value is not None else _INT_ATTRIBUTES[name][0]

    def attribute_values(self, now: float) -> dict[str, str]:
        self.promote(now)
        out = {name: str(default) for name, (default, _, _) in _INT_ATTRIBUTES.items()}
        out.pop("KmsDataKeyReusePeriodSeconds")
        out["SqsManagedSseEnabled"] = "false"
        out.update(self.attributes)
        out.update(
            QueueArn=self.arn,
            ApproximateNumberOfMessages=str(self.counts[_VISIBLE]),
            ApproximateNumberOfMessagesNotVisible=str(self.counts[_INFLIGHT]),
            ApproximateNumberOfMessagesDelayed=str(self.counts[_DELAYED]),
            CreatedTimestamp=str(self.created),
            LastModifiedTimestamp=str(self.modified),
        )
        return out

    # ---- state transitions

    def _set_state(self, m: Message, state: int) -> None:
        self.counts[m.state] -= 1
        self.counts[state] += 1
        m.state = state
        m.gen += 1

    def add(self, m: Message, delay: float, now: float) -> None:
        """Enqueue a new message (or one moved in from a source queue)."""
        m.state = _GONE
        m.gen += 1
        self.messages[m.id] = m
        if delay > 0:
            self._set_state(m, _DELAYED)
            heapq.heappush(self.delayed, (now + delay, next(_seq), m.gen, m))
            self.arm_timer(now + delay, now)
        else:
            self._set_state(m, _VISIBLE)
            self.visible.append((m.gen, m))

    def remove(self, m: Message) -> None:
        self._set_state(m, _GONE)
        del self.messages[m.id]
        inflight = self.inflight
        if len(inflight) > 1024 + 2 * self.counts[_INFLIGHT]:
            # Deleted messages leave stale heap entries until their visibility timeout; with long
            # timeouts they would pile up, so rebuild from the live ones (amortized O(1) per delete).
            self.inflight = [e for e in inflight if e[3].gen == e[2] and e[3].state == _INFLIGHT]
            heapq.heapify(self.inflight)

    def set_invisible(self, m: Message, timeout: float, now: float) -> None:
        if timeout <= 0:
            self._set_state(m, _VISIBLE)
            self.visible.append((m.gen, m))
            self.wake(1)
            return
        self._set_state(m, _INFLIGHT)
        heapq.heappush(self.inflight, (now + timeout, next(_seq), m.gen, m))
        self.arm_timer(now + timeout, now)

    def promote(self, now: float) -> None:
        """Move delayed and in-flight messages whose time has come to the visible deque."""
        woken = 0
        for heap, state in ((self.delayed, _DELAYED), (self.inflight, _INFLIGHT)):
            while heap and heap[0][0] <= now:
                _, _, gen, m = heapq.heappop(heap)
                if m.gen == gen and m.state == state:
                    self._set_state(m, _VISIBLE)
                    self.visible.append((m.gen, m))
                    woken += 1
        if woken:
            self.wake(woken)

    def pop_visible(self) -> Message | None:
        visible = self.visible
        while visible:
            gen, m = visible.popleft()
            if m.gen == gen and m.state == _VISIBLE:
                return m
        return None

    def purge(self) -> None:
        for m in self.messages.values():
            m.state = _GONE
            m.gen += 1
        self.messages.clear()
        self.visible.clear()
        self.delayed.clear()
        self.inflight.clear()
        self.counts = [0, 0, 0, 0]

    # ---- long-poll waiters

    def wake(self, n: int) -> None:
        waiters = self.waiters
        while n > 0 and waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(True)
                n -= 1

    def wake_all(self) -> None:
        self.wake(len(self.waiters))

    def next_due(self) -> float | None:
        heads = [heap[0][0] for heap in (self.delayed, self.inflight) if heap]
        return min(heads) if heads else None

    def arm_timer(self, due: float, now: float) -> None:
        """While someone waits, keep a timer at the earliest time a message becomes visible."""
        if not self.waiters or (self.timer is not None and self.timer_due <= due):
            return
        if self.timer is not None:
            self.timer.cancel()
        self.timer_due = due
        self.timer = asyncio.get_running_loop().call_later(max(0.0, due - now), self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        now = time.monotonic()
        self.promote(now)
        due = self.next_due()
        if due is not None:
            self.arm_timer(due, now)

    def close(self) -> None:
        self.deleted = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.purge()
        self.wake_all()


def parse_redrive_policy(value: str) -> RedrivePolicy | None:
    if value == "":
        return None
    try:
        return RedrivePolicy.model_validate_json(value)
    except ValidationError as exc:
        raise _invalid(
            f"Value {value} for parameter RedrivePolicy is invalid. Reason: Redrive policy is not a valid "
            "JSON map with deadLetterTargetArn and maxReceiveCount (1-1000)."
        ) from exc


def validate_queue_attributes(attributes: Any) -> dict[str, str]:
    if attributes is None:
        return {}
    if not isinstance(attributes, dict):
        raise _invalid("Attributes must be a map.")
    out: dict[str, str] = {}
    for name, value in attributes.items():
        value = str(value)
        if name in _INT_ATTRIBUTES:
            _, lo, hi = _INT_ATTRIBUTES[name]
            try:
                number = int(value)
            except ValueError:
                number = lo - 1
            if not lo <= number <= hi:
                raise SqsError("InvalidAttributeValue", f"Invalid value for the parameter {name}.")
            value = str(number)
        elif name == "RedrivePolicy":
            parse_redrive_policy(value)
        elif name in ("FifoQueue", "ContentBasedDeduplication", "DeduplicationScope", "FifoThroughputLimit"):
            if value.lower() == "false" and name == "FifoQueue":
                continue
            raise SqsError("UnsupportedOperation", "FIFO queues are not supported by the local SQS server.")
        elif name not in _OPAQUE_ATTRIBUTES:
            raise SqsError("InvalidAttributeName", f"Unknown Attribute {name}.")
        out[name] = value
    return out


# --------------------------------------------------------------------------------------------------
# Request parameter helpers
# --------------------------------------------------------------------------------------------------


def _int_param(params: dict[str, Any], name: str, default: int, lo: int, hi: int, reason: str) -> int:
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _invalid(f"Value {value} for parameter {name} is invalid. Reason: {reason}")
    return value


def _str_param(params: dict[str, Any], name: str) -> str:
    value = params.get(name)
    if not isinstance(value, str) or not value:
        raise SqsError("MissingParameter", f"The request must contain the parameter {name}.")
    return value


def _message_size(body: str, attributes: dict[str, dict[str, Any]]) -> int:
    size = len(body.encode())
    for name, value in attributes.items():
        size += len(name.encode()) + len(str(value.get("DataType", "")).encode())
        if "BinaryValue" in value:
            size += len(base64.b64decode(value["BinaryValue"]))
        else:
            size += len(str(value.get("StringValue", "")).encode())
    return size


def _validate_message_attributes(attributes: Any) -> dict[str, dict[str, Any]]:
    if not attributes:
        return {}
    if not isinstance(attributes, dict) or len(attributes) > 10:
        raise _invalid(f"Number of message attributes [{len(attributes)}] exceeds the allowed maximum [10].")
    for name, value in attributes.items():
        if not isinstance(value, dict):
            raise _invalid(f"The message attribute '{name}' must contain a non-empty value.")
        data_type = value.get("DataType")
        if not isinstance(data_type, str) or not data_type:
            raise _invalid(f"The message attribute '{name}' must contain non-empty message attribute type.")
        base = data_type.split(".", 1)[0]
        if base not in ("String", "Number", "Binary"):
            raise _invalid(
                f"The type of message (user) attribute '{name}' is invalid. You must use only the following "
                "supported type prefixes: Binary, Number, String."
            )
        key = "BinaryValue" if base == "Binary" else "StringValue"
        if value.get(key) in (None, ""):
            raise _invalid(
                f"The message attribute '{name}' must contain a non-empty message attribute value."
            )
        if base == "Number":
            try:
                float(value["StringValue"])
            except ValueError as exc:
                raise _invalid(
                    f"Can't cast the value of message (user) attribute '{name}' to a number."
                ) from exc
    return attributes


def _wants(names: Any) -> Callable[[str], bool] | None:
    """A predicate over message attribute names from MessageAttributeNames, or None for none."""
    if not names:
        return None
    names = list(names)
    if "All" in names or ".*" in names:
        return lambda _name: True
    exact = {n for n in names if not n.endswith(".*")}
    prefixes = tuple(n[:-1] for n in names if n.endswith(".*"))
    return lambda name: name in exact or (bool(prefixes) and name.startswith(prefixes))


def _batch_entries(params: dict[str, Any], noun: str) -> list[dict[str, Any]]:
    entries = params.get("Entries")
    if not entries:
        raise SqsError("EmptyBatchRequest", f"There should be at least one {noun} in the request.")
    if not isinstance(entries, list):
        raise _invalid("Entries must be a list.")
    if len(entries) > MAX_BATCH_ENTRIES:
        raise SqsError(
            "TooManyEntriesInBatchRequest",
            f"Maximum number of entries per request are {MAX_BATCH_ENTRIES}. You have sent {len(entries)}.",
        )
    seen: set[str] = set()
    for entry in entries:
        entry_id = entry.get("Id") if isinstance(entry, dict) else None
        if not isinstance(entry_id, str) or not _BATCH_ID.match(entry_id):
            raise SqsError(
                "InvalidBatchEntryId",
                "A batch entry id can only contain alphanumeric characters, hyphens and underscores. "
                "It can be at most 80 letters long.",
            )
        if entry_id in seen:
            raise SqsError("BatchEntryIdsNotDistinct", f"Id {entry_id} repeated.")
        seen.add(entry_id)
    return entries


def _failed(entry_id: str, err: SqsError) -> dict[str, Any]:
    return {"Id": entry_id, "SenderFault": True, "Code": err.code, "Message": err.message}


# --------------------------------------------------------------------------------------------------
# The broker: every action over the in-memory state, no HTTP
# --------------------------------------------------------------------------------------------------


class SqsBroker:
    """The queues and the SQS actions over them. Runs on one event loop; not thread-safe."""

    def __init__(self, *, base_url: str, region: str = DEFAULT_REGION, account_id: str = ACCOUNT_ID) -> None:
        self.base_url = base_url.rstrip("/")
        self.region = region
        self.account_id = account_id
        self.queues: dict[str, Queue] = {}
        self.by_arn: dict[str, Queue] = {}
        self.actions: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "CreateQueue": self.create_queue,
            "GetQueueUrl": self.get_queue_url,
            "ListQueues": self.list_queues,
            "DeleteQueue": self.delete_queue,
            "PurgeQueue": self.purge_queue,
            "GetQueueAttributes": self.get_queue_attributes,
            "SetQueueAttributes": self.set_queue_attributes,
            "SendMessage": self.send_message,
            "SendMessageBatch": self.send_message_batch,
            "DeleteMessage": self.delete_message,
            "DeleteMessageBatch": self.delete_message_batch,
            "ChangeMessageVisibility": self.change_message_visibility,
            "ChangeMessageVisibilityBatch": self.change_message_visibility_batch,
            "ListDeadLetterSourceQueues": self.list_dead_letter_source_queues,
            "TagQueue": self.tag_queue,
            "UntagQueue": self.untag_queue,
            "ListQueueTags": self.list_queue_tags,
        }

    # ---- queues

    def queue(self, params: dict[str, Any]) -> Queue:
        url = _str_param(params, "QueueUrl")
        q = self.queues.get(url.rstrip("/").rsplit("/", 1)[-1])
        if q is None:
            raise _no_queue()
        return q

    def create_queue(self, params: dict[str, Any]) -> dict[str, Any]:
        name = _str_param(params, "QueueName")
        if not _QUEUE_NAME.match(name):
            raise _invalid(
                "Can only include alphanumeric characters, hyphens, or underscores. 1 to 80 in length"
            )
        attributes = validate_queue_attributes(params.get("Attributes"))
        if "RedrivePolicy" in attributes:
            self._check_dead_letter_target(attributes["RedrivePolicy"])
        existing = self.queues.get(name)
        if existing is not None:
            for key, value in attributes.items():
                current = existing.attributes.get(key)
                if key == "RedrivePolicy":
                    policy = parse_redrive_policy(value)
                    value = policy.to_wire() if policy else ""
                elif current is None and key in _INT_ATTRIBUTES:
                    current = str(_INT_ATTRIBUTES[key][0])
                if (current or "") != value:
                    raise SqsError(
                        "QueueNameExists",
                        "A queue already exists with the same name and a different value for attribute "
                        f"{key}",
                    )
            return {"QueueUrl": existing.url}
        url = f"{self.base_url}/{self.account_id}/{name}"
        arn = f"arn:aws:sqs:{self.region}:{self.account_id}:{name}"
        q = Queue(name, url, arn, attributes)
        tags = params.get("tags")
        if isinstance(tags, dict):
            q.tags.update({str(k): str(v) for k, v in tags.items()})
        self.queues[name] = q
        self.by_arn[arn] = q
        log.info("queue created", extra={"queue": name, "attributes": attributes})
        return {"QueueUrl": url}

    def _check_dead_letter_target(self, value: str) -> None:
        policy = parse_redrive_policy(value)
        if policy is not None and policy.deadLetterTargetArn not in self.by_arn:
            raise _invalid(
                f"Value {value} for parameter RedrivePolicy is invalid. "
                "Reason: Dead letter target does not exist."
            )

    def get_queue_url(self, params: dict[str, Any]) -> dict[str, Any]:
        q = self.queues.get(_str_param(params, "QueueName"))
        if q is None:
            raise _no_queue()
        return {"QueueUrl": q.url}

    def list_queues(self, params: dict[str, Any]) -> dict[str, Any]:
        prefix = params.get("QueueNamePrefix") or ""
        names = sorted(n for n in self.queues if n.startswith(prefix))
        return self._page(names, params, "QueueUrls")

    def _page(self, names: list[str], params: dict[str, Any], key: str) -> dict[str, Any]:
        limit = _int_param(params, "MaxResults", 1000, 1, 1000, "Must be between 1 and 1000.")
        token = params.get("NextToken")
        if token:
            try:
                after = base64.urlsafe_b64decode(str(token).encode()).decode()
            except (ValueError, UnicodeError) as exc:
                raise _invalid("Invalid NextToken value.") from exc
            names = [n for n in names if n > after]
        page = names[:limit]
        out: dict[str, Any] = {key: [self.queues[n].url for n in page]} if page or key != "QueueUrls" else {}
        if "MaxResults" in params and len(names) > limit:
            out["NextToken"] = base64.urlsafe_b64encode(page[-1].encode()).decode()
        return out

    def delete_queue(self, params: dict[str, Any]) -> dict[str, Any]:
        q = self.queue(params)
        del self.queues[q.name]
        del self.by_arn[q.arn]
        q.close()
        log.info("queue deleted", extra={"queue": q.name})
        return {}

    def purge_queue(self, params: dict[str, Any]) -> dict[str, Any]:
        q = self.queue(params)
        now = time.monotonic()
        if now - q.last_purge < PURGE_INTERVAL_SECONDS:
            raise SqsError(
                "PurgeQueueInProgress",
                f"Only one PurgeQueue operation on {q.name} is allowed every 60 seconds.",
            )
        q.last_purge = now
        q.purge()
        log.info("queue purged", extra={"queue": q.name})
        return {}

    def get_queue_attributes(self, params: dict[str, Any]) -> dict[str, Any]:
        q = self.queue(params)
        names = params.get("AttributeNames") or []
        values = q.attribute_values(time.monotonic())
        if "All" in names:
            return {"Attributes": values}
        out: dict[str, str] = {}
        for name in names:
            if name in values:
                out[name] = values[name]
            elif name not in _INT_ATTRIBUTES and name not in _OPAQUE_ATTRIBUTES and name != "RedrivePolicy":
                raise SqsError("InvalidAttributeName", f"Unknown Attribute {name}.")
        return {"Attributes": out} if out else {}

    def set_queue_attributes(self, params: dict[str, Any]) -> dict[str, Any]:
        q = self.queue(params)
        attributes = validate_queue_attributes(params.get("Attributes") or {})
        if attributes.get("RedrivePolicy"):
            self._check_dead_letter_target(attributes["RedrivePolicy"])
        q.set_attributes(attributes)
        now = time.monotonic()
        q.promote(now)
        return {}

    def list_dead_letter_source_queues(self, params: dict[str, Any]) -> dict[str, Any]:
        dlq = self.queue(params)
        names = sorted(
            q.name for q in self.queues.values() if q.redrive and q.redrive.deadLetterTargetArn == dlq.arn
        )
        return self._page(names, params, "queueUrls")

    def tag_queue(self, params: dict[str, Any]) -> dict[str, Any]:
        q = self.queue(params)
        q.tags.update({str(k): str(v) for k, v in (params.get("Tags") or {}).items()})
        return {}

    def untag_queue(self, params: dict[str, Any]) -> dict[str, Any]:
        q = self.queue(params)
        for key in params.get("TagKeys") or []:
            q.tags.pop(key, None)
        return {}

    def list_queue_tags(self, params: dict[str, Any]) -> dict[str, Any]:
        q = self.queue(params)
        return {"Tags": dict(q.tags)} if q.tags else {}

    # ---- sending

    def _new_message(self, q: Queue, entry: dict[str, Any], now: float) -> tuple[Message, int]:
        body = entry.get("MessageBody")
        if not isinstance(body, str) or body == "":
            raise SqsError("MissingParameter", "The request must contain the parameter MessageBody.")
        attributes = _validate_message_attributes(entry.get("MessageAttributes"))
        size = _message_size(body, attributes)
        if size > q.max_message_size:
            raise _invalid(
                "One or more parameters are invalid. "
                f"Reason: Message must be shorter than {q.max_message_size} bytes."
            )
        if _INVALID_BODY_CHAR.search(body):
            raise SqsError(
                "InvalidMessageContents",
                "Invalid characters found. Valid unicode characters are #x9 | #xA | #xD | #x20 to #xD7FF | "
                "#xE000 to #xFFFD | #x10000 to #x10FFFF",
            )
        delay = _int_param(
            entry,
            "DelaySeconds",
            q.delay_seconds,
            0,
            MAX_DELAY_SECONDS,
            "DelaySeconds must be >= 0 and <= 900.",
        )
        return Message(body, attributes, now), delay

    @staticmethod
    def _sent(m: Message) -> dict[str, Any]:
        out = {"MessageId": m.id, "MD5OfMessageBody": m.body_md5}
        if m.attributes_md5:
            out["MD5OfMessageAttributes"] = m.attributes_md5
        return out

    def send_message(self, params: dict[str, Any]) -> dict[str, Any]:
        q = self.queue(params)
        now = time.monotonic()
        m, delay = self._new_message(q, params, now)
        q.add(m, delay, now)
        if delay == 0:
            q.wake(1)
        return self._sent(m)

    def send_message_batch(self, params: dict[str, Any]) -> dict[str, Any]:
        q = self.queue(params)
        entries = _batch_entries(params, "SendMessageBatchRequestEntry")
        total = 0
        for entry in entries:
            body = entry.get("MessageBody")
            with contextlib.suppress(Exception):
                total += _message_size(
                    body if isinstance(body, str) else "", entry.get("MessageAttributes") or {}
                )
        if total > MAX_MESSAGE_BYTES:
            raise SqsError(
                "BatchRequestTooLong",
                f"Batch requests cannot be longer than {MAX_MESSAGE_BYTES} bytes. "
                f"You have sent {total} bytes.",
            )
        now = time.monotonic()
        successful: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        visible = 0
        for entry in entries:
            try:
                m, delay = self._new_message(q, entry, now)
            except SqsError as err:
                failed.append(_failed(entry["Id"], err))
                continue
            q.add(m, delay, now)
            visible += delay == 0
            sent = self._sent(m)
            sent["Id"] = entry["Id"]
            successful.append(sent)
        if visible:
            q.wake(visible)
        return {"Successful": successful, "Failed": failed}

    # ---- receiving

    async def receive_message(self, params: dict[str, Any]) -> dict[str, Any]:
        q = self.queue(params)
        max_n = _int_param(params, "MaxNumberOfMessages", 1, 1, 10, "Must be between 1 and 10, if provided.")
        wait = _int_param(
            params,
            "WaitTimeSeconds",
            q.wait_seconds,
            0,
            MAX_WAIT_SECONDS,
            "Must be >= 0 and <= 20, if provided.",
        )
        vt = params.get("VisibilityTimeout")
        if vt is not None:
            vt = _int_param(
                params, "VisibilityTimeout", 0, 0, MAX_VISIBILITY_TIMEOUT, "Must be >= 0 and <= 43200."
            )
        system_names = set(params.get("AttributeNames") or ()) | set(
            params.get("MessageSystemAttributeNames") or ()
        )
        wants = _wants(params.get("MessageAttributeNames"))
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + wait
        while True:
            now = time.monotonic()
            taken = self._take(q, max_n, q.visibility_timeout if vt is None else vt, now)
            if taken or now >= deadline or q.deleted:
                break
            fut: asyncio.Future[bool] = loop.create_future()
            q.waiters.append(fut)
            due = q.next_due()
            if due is not None:
                q.arm_timer(due, now)
            handle = loop.call_later(deadline - now, _resolve, fut, False)
            woken = False
            try:
                woken = await fut
            finally:
                handle.cancel()
                if not woken:  # timed out or cancelled: still queued as a waiter
                    fut.cancel()
                    with contextlib.suppress(ValueError):
                        q.waiters.remove(fut)
        if not taken:
            return {}
        return {"Messages": [self._render(m, system_names, wants) for m in taken]}

    def _take(self, q: Queue, max_n: int, vt: int, now: float) -> list[Message]:
        q.promote(now)
        out: list[Message] = []
        wall_ms = 0
        while len(out) < max_n:
            m = q.pop_visible()
            if m is None:
                break
            if now - m.sent_at > q.retention:
                q.remove(m)
                continue
            policy = q.redrive
            if policy is not None and m.receive_count >= policy.maxReceiveCount:
                dlq = self.by_arn.get(policy.deadLetterTargetArn)
                if dlq is not None and dlq is not q:
                    q.remove(m)
                    dlq.add(m, 0, now)
                    dlq.wake(1)
                    log.info(
                        "message moved to the dead-letter queue",
                        extra={
                            "queue": q.name,
                            "dlq": dlq.name,
                            "messageId": m.id,
                            "receiveCount": m.receive_count,
                        },
                    )
                    continue
            m.receive_count += 1
            if not m.first_receive_ms:
                wall_ms = wall_ms or int(time.time() * 1000)
                m.first_receive_ms = wall_ms
            m.nonce += 1
            if vt > 0:
                q.set_invisible(m, vt, now)
            out.append(m)
        if vt <= 0:
            # Visible again at once, but only after this receive: one response never holds a message
            # twice (set inside the loop, the message would be popped again until max_n).
            for m in out:
                q.set_invisible(m, 0, now)
        return out

    @staticmethod
    def _render(m: Message, system_names: set[str], wants: Callable[[str], bool] | None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "MessageId": m.id,
            "ReceiptHandle": m.receipt_handle(),
            "MD5OfBody": m.body_md5,
            "Body": m.body,
        }
        if system_names:
            every = "All" in system_names
            values = {
                "SenderId": SENDER_ID,
                "SentTimestamp": str(m.sent_ms),
                "ApproximateReceiveCount": str(m.receive_count),
                "ApproximateFirstReceiveTimestamp": str(m.first_receive_ms),
            }
            out["Attributes"] = {k: v for k, v in values.items() if every or k in system_names}
        if wants is not None and m.attributes:
            chosen = {k: v for k, v in m.attributes.items() if wants(k)}
            if chosen:
                out["MessageAttributes"] = chosen
                out["MD5OfMessageAttributes"] = (
                    m.attributes_md5 if len(chosen) == len(m.attributes) else attributes_md5(chosen)
                )
        return out

    # ---- deleting and visibility

    def _lookup(self, q: Queue, handle: Any) -> Message | None:
        """The message a current receipt handle refers to; None for a deleted or superseded one."""
        msg_id, nonce = parse_receipt_handle(handle)
        m = q.messages.get(msg_id)
        if m is None or m.nonce != nonce:
            return None
        return m

    def _delete(self, q: Queue, handle: Any) -> None:
        m = self._lookup(q, handle)
        if m is not None:
            q.remove(m)

    def delete_message(self, params: dict[str, Any]) -> dict[str, Any]:
        q = self.queue(params)
        self._delete(q, params.get("ReceiptHandle"))
        return {}

    def delete_message_batch(self, params: dict[str, Any]) -> dict[str, Any]:
        q = self.queue(params)
        entries = _batch_entries(params, "DeleteMessageBatchRequestEntry")
        successful: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for entry in entries:
            try:
                self._delete(q, entry.get("ReceiptHandle"))
                successful.append({"Id": entry["Id"]})
            except SqsError as err:
                failed.append(_failed(entry["Id"], err))
        return {"Successful": successful, "Failed": failed}

    def _change_visibility(self, q: Queue, handle: Any, timeout: Any) -> None:
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int)
            or not 0 <= timeout <= MAX_VISIBILITY_TIMEOUT
        ):
            raise _invalid(
                f"Value {timeout} for parameter VisibilityTimeout is invalid. "
                "Reason: Must be >= 0 and <= 43200."
            )
        now = time.monotonic()
        q.promote(now)
        m = self._lookup(q, handle)
        if m is None:
            raise _invalid(
                f"Value {handle} for parameter ReceiptHandle is invalid. "
                "Reason: Message does not exist or is not "
                "available for visibility timeout change."
            )
        if m.state != _INFLIGHT:
            raise SqsError("MessageNotInflight", "The message referred to isn't in flight.")
        q.set_invisible(m, timeout, now)

    def change_message_visibility(self, params: dict[str, Any]) -> dict[str, Any]:
        q = self.queue(params)
        self._change_visibility(q, params.get("ReceiptHandle"), params.get("VisibilityTimeout"))
        return {}

    def change_message_visibility_batch(self, params: dict[str, Any]) -> dict[str, Any]:
        q = self.queue(params)
        entries = _batch_entries(params, "ChangeMessageVisibilityBatchRequestEntry")
        successful: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for entry in entries:
            try:
                self._change_visibility(q, entry.get("ReceiptHandle"), entry.get("VisibilityTimeout", 0))
                successful.append({"Id": entry["Id"]})
            except SqsError as err:
                failed.append(_failed(entry["Id"], err))
        return {"Successful": successful, "Failed": failed}

    def close(self) -> None:
        for q in list(self.queues.values()):
            q.close()
        self.queues.clear()
        self.by_arn.clear()


def _resolve(fut: asyncio.Future[bool], value: bool) -> None:
    if not fut.done():
        fut.set_result(value)


# --------------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------------


def _error_response(err: SqsError, request_id: str) -> web.Response:
    headers = {"x-amzn-RequestId": request_id, "x-amzn-query-error": f"{err.code};Sender"}
    body = {"__type": f"com.amazonaws.sqs#{err.shape}", "message": err.message}
    return web.Response(
        status=err.status, body=json.dumps(body).encode(), content_type=JSON_CONTENT_TYPE, headers=headers
    )


class SqsServer:
    """The broker behind an aiohttp server. ``await start()`` binds and returns the endpoint URL."""

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self.broker: SqsBroker | None = None
        self._runner: web.AppRunner | None = None
        self.endpoint = ""

    async def start(self) -> str:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.config.host, self.config.port))
        port = sock.getsockname()[1]
        self.endpoint = f"http://{self.config.host}:{port}"
        self.broker = SqsBroker(
            base_url=self.endpoint, region=self.config.region, account_id=self.config.account_id
        )
        app = web.Application(client_max_size=4 * MAX_MESSAGE_BYTES)
        app.router.add_post("/", self._handle)
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        log.info("listening", extra={"endpoint": self.endpoint, "region": self.config.region})
        return self.endpoint

    async def stop(self) -> None:
        if self.broker is not None:
            self.broker.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        log.info("stopped", extra={"endpoint": self.endpoint})

    async def _handle(self, request: web.Request) -> web.Response:
        broker = self.broker
        assert broker is not None
        request_id = new_id()
        target = request.headers.get("X-Amz-Target", "")
        action = target[10:] if target.startswith("AmazonSQS.") else ""
        try:
            raw = await request.read()
            try:
                params = json.loads(raw) if raw else {}
            except ValueError as exc:
                raise SqsError("SerializationException", "The request body is not valid JSON.") from exc
            if not isinstance(params, dict):
                raise SqsError("SerializationException", "The request body must be a JSON object.")
            if action == "ReceiveMessage":
                result = await broker.receive_message(params)
            else:
                handler = broker.actions.get(action)
                if handler is None:
                    raise SqsError(
                        "UnsupportedOperation", f"The action {target or '(none)'} is not supported."
                    )
                result = handler(params)
        except SqsError as err:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("request failed", extra={"action": action, "code": err.code, "reason": err.message})
            return _error_response(err, request_id)
        except Exception:
            log.exception("internal error", extra={"action": action})
            return _error_response(SqsError("InternalError", "Internal error.", status=500), request_id)
        return web.Response(
            body=json.dumps(result).encode(),
            content_type=JSON_CONTENT_TYPE,
            headers={"x-amzn-RequestId": request_id},
        )


@contextlib.contextmanager
def serve_in_thread(host: str = "127.0.0.1", port: int = 0, region: str = DEFAULT_REGION) -> Iterator[str]:
    """Run a server on its own event loop in a daemon thread; yield its endpoint URL, stop it on exit."""
    server = SqsServer(ServerConfig(host=host, port=port, region=region))
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.start())
        except BaseException as exc:
            failure.append(exc)
            ready.set()
            return
        ready.set()
        loop.run_forever()
        loop.run_until_complete(server.stop())
        loop.close()

    thread = threading.Thread(target=run, name="local-sqs", daemon=True)
    thread.start()
    ready.wait()
    if failure:
        thread.join()
        raise failure[0]
    try:
        yield server.endpoint
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------

_STD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's extra fields."""

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


async def _serve(config: ServerConfig) -> None:
    server = SqsServer(config)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.local.sqs", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="listen port (default 0: a free one, logged)")
    parser.add_argument("--region", default=DEFAULT_REGION, help="region in queue ARNs (default us-east-1)")
    parser.add_argument("--account-id", default=ACCOUNT_ID, help="account id in queue URLs and ARNs")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
    config = ServerConfig(host=args.host, port=args.port, region=args.region, account_id=args.account_id)
    asyncio.run(_serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
