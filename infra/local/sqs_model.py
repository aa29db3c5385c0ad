"""The local SQS server's queues, in memory: messages, their states and the queue attributes, with no
I/O (the broker, `sqs_broker.py`, runs the actions over them; `sqs.py` serves them).

Cost per operation is O(1) or O(log n) in the queue length: each queue keeps a deque of visible
messages and two heaps keyed by time (delayed, in flight). Entries are invalidated lazily: a message
carries a generation number, bumped at every state change, and a deque or heap entry whose
generation is stale is skipped when it reaches the front. Long polls wait on futures that are woken
by sends, by visibility changes and by a per-queue timer set to the earliest delayed or in-flight
message's due time while anyone waits (the queue's only use of the event loop).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import heapq
import itertools
import json
import re
import struct
import time
import uuid
from collections import deque
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

ACCOUNT_ID = "000000000000"
DEFAULT_REGION = "us-east-1"
MAX_MESSAGE_BYTES = 1_048_576  # 1 MiB per message and per batch (was 256 KiB before August 2025)
MAX_BATCH_ENTRIES = 10
MAX_VISIBILITY_TIMEOUT = 43_200
MAX_WAIT_SECONDS = 20
MAX_DELAY_SECONDS = 900
PURGE_INTERVAL_SECONDS = 60.0
SENDER_ID = "AIDAAAAAAAAAAAAAAAAAA"

QUEUE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
# Characters SQS accepts in a message body (XML 1.0 characters).
INVALID_BODY_CHAR = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")

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
INT_ATTRIBUTES: dict[str, tuple[int, int, int]] = {
    "VisibilityTimeout": (30, 0, MAX_VISIBILITY_TIMEOUT),
    "DelaySeconds": (0, 0, MAX_DELAY_SECONDS),
    "MessageRetentionPeriod": (345_600, 60, 1_209_600),
    "ReceiveMessageWaitTimeSeconds": (0, 0, MAX_WAIT_SECONDS),
    "MaximumMessageSize": (MAX_MESSAGE_BYTES, 1024, MAX_MESSAGE_BYTES),
    "KmsDataKeyReusePeriodSeconds": (300, 60, 86_400),
}
# Settable attributes stored as given (not interpreted here).
OPAQUE_ATTRIBUTES = {"Policy", "KmsMasterKeyId", "SqsManagedSseEnabled", "RedriveAllowPolicy"}

# A message's states (indexes of Queue.counts).
DELAYED, VISIBLE, INFLIGHT, GONE = 0, 1, 2, 3
_seq = itertools.count()
# Ids shaped like UUIDs, unique per server process: a random prefix and a counter (uuid4() per
# message and per request costs more than the rest of a send).
_ID_PREFIX = str(uuid.uuid4())[:24]
_ids = itertools.count(1)


def new_id() -> str:
    """A message or request id."""
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


def invalid(message: str) -> SqsError:
    """InvalidParameterValue, the error of most malformed parameters."""
    return SqsError("InvalidParameterValue", message)


def no_queue() -> SqsError:
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
        self.state = GONE

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
        return int(value) if value is not None else INT_ATTRIBUTES[name][0]

    def attribute_values(self, now: float) -> dict[str, str]:
        self.promote(now)
        out = {name: str(default) for name, (default, _, _) in INT_ATTRIBUTES.items()}
        out.pop("KmsDataKeyReusePeriodSeconds")
        out["SqsManagedSseEnabled"] = "false"
        out.update(self.attributes)
        out.update(
            QueueArn=self.arn,
            ApproximateNumberOfMessages=str(self.counts[VISIBLE]),
            ApproximateNumberOfMessagesNotVisible=str(self.counts[INFLIGHT]),
            ApproximateNumberOfMessagesDelayed=str(self.counts[DELAYED]),
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
        m.state = GONE
        m.gen += 1
        self.messages[m.id] = m
        if delay > 0:
            self._set_state(m, DELAYED)
            heapq.heappush(self.delayed, (now + delay, next(_seq), m.gen, m))
            self.arm_timer(now + delay, now)
        else:
            self._set_state(m, VISIBLE)
            self.visible.append((m.gen, m))

    def remove(self, m: Message) -> None:
        self._set_state(m, GONE)
        del self.messages[m.id]
        inflight = self.inflight
        if len(inflight) > 1024 + 2 * self.counts[INFLIGHT]:
            # Deleted messages leave stale heap entries until their visibility timeout; with long
            # timeouts they would pile up, so rebuild from the live ones (amortized O(1) per delete).
            self.inflight = [e for e in inflight if e[3].gen == e[2] and e[3].state == INFLIGHT]
            heapq.heapify(self.inflight)

    def set_invisible(self, m: Message, timeout: float, now: float) -> None:
        if timeout <= 0:
            self._set_state(m, VISIBLE)
            self.visible.append((m.gen, m))
            self.wake(1)
            return
        self._set_state(m, INFLIGHT)
        heapq.heappush(self.inflight, (now + timeout, next(_seq), m.gen, m))
        self.arm_timer(now + timeout, now)

    def promote(self, now: float) -> None:
        """Move delayed and in-flight messages whose time has come to the visible deque."""
        woken = 0
        for heap, state in ((self.delayed, DELAYED), (self.inflight, INFLIGHT)):
            while heap and heap[0][0] <= now:
                _, _, gen, m = heapq.heappop(heap)
                if m.gen == gen and m.state == state:
                    self._set_state(m, VISIBLE)
                    self.visible.append((m.gen, m))
                    woken += 1
        if woken:
            self.wake(woken)

    def pop_visible(self) -> Message | None:
        visible = self.visible
        while visible:
            gen, m = visible.popleft()
            if m.gen == gen and m.state == VISIBLE:
                return m
        return None

    def purge(self) -> None:
        for m in self.messages.values():
            m.state = GONE
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
        raise invalid(
            f"Value {value} for parameter RedrivePolicy is invalid. Reason: Redrive policy is not a valid "
            "JSON map with deadLetterTargetArn and maxReceiveCount (1-1000)."
        ) from exc


def validate_queue_attributes(attributes: Any) -> dict[str, str]:
    if attributes is None:
        return {}
    if not isinstance(attributes, dict):
        raise invalid("Attributes must be a map.")
    out: dict[str, str] = {}
    for name, value in attributes.items():
        value = str(value)
        if name in INT_ATTRIBUTES:
            _, lo, hi = INT_ATTRIBUTES[name]
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
        elif name not in OPAQUE_ATTRIBUTES:
            raise SqsError("InvalidAttributeName", f"Unknown Attribute {name}.")
        out[name] = value
    return out
