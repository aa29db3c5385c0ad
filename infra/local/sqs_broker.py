"""The local SQS server's broker: the queues and every SQS action over them, on plain dicts (the
actions' JSON parameters and results), with no HTTP."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from infra.local.sqs_model import (
    ACCOUNT_ID,
    DEFAULT_REGION,
    INFLIGHT,
    INT_ATTRIBUTES,
    INVALID_BODY_CHAR,
    MAX_DELAY_SECONDS,
    MAX_MESSAGE_BYTES,
    MAX_VISIBILITY_TIMEOUT,
    MAX_WAIT_SECONDS,
    OPAQUE_ATTRIBUTES,
    PURGE_INTERVAL_SECONDS,
    QUEUE_NAME,
    SENDER_ID,
    Message,
    Queue,
    SqsError,
    attributes_md5,
    invalid,
    no_queue,
    parse_receipt_handle,
    parse_redrive_policy,
    validate_queue_attributes,
)
from infra.local.sqs_params import (
    attribute_filter,
    batch_entries,
    failed_entry,
    int_param,
    message_size,
    str_param,
    validate_message_attributes,
)

log = logging.getLogger("fanout.local.sqs")


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
        url = str_param(params, "QueueUrl")
        q = self.queues.get(url.rstrip("/").rsplit("/", 1)[-1])
        if q is None:
            raise no_queue()
        return q

    def create_queue(self, params: dict[str, Any]) -> dict[str, Any]:
        name = str_param(params, "QueueName")
        if not QUEUE_NAME.match(name):
            raise invalid(
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
                elif current is None and key in INT_ATTRIBUTES:
                    current = str(INT_ATTRIBUTES[key][0])
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
            raise invalid(
                f"Value {value} for parameter RedrivePolicy is invalid. "
                "Reason: Dead letter target does not exist."
            )

    def get_queue_url(self, params: dict[str, Any]) -> dict[str, Any]:
        q = self.queues.get(str_param(params, "QueueName"))
        if q is None:
            raise no_queue()
        return {"QueueUrl": q.url}

    def list_queues(self, params: dict[str, Any]) -> dict[str, Any]:
        prefix = params.get("QueueNamePrefix") or ""
        names = sorted(n for n in self.queues if n.startswith(prefix))
        return self._page(names, params, "QueueUrls")

    def _page(self, names: list[str], params: dict[str, Any], key: str) -> dict[str, Any]:
        limit = int_param(params, "MaxResults", 1000, 1, 1000, "Must be between 1 and 1000.")
        token = params.get("NextToken")
        if token:
            try:
                after = base64.urlsafe_b64decode(str(token).encode()).decode()
            except (ValueError, UnicodeError) as exc:
                raise invalid("Invalid NextToken value.") from exc
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
            elif name not in INT_ATTRIBUTES and name not in OPAQUE_ATTRIBUTES and name != "RedrivePolicy":
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
        attributes = validate_message_attributes(entry.get("MessageAttributes"))
        size = message_size(body, attributes)
        if size > q.max_message_size:
            raise invalid(
                "One or more parameters are invalid. "
                f"Reason: Message must be shorter than {q.max_message_size} bytes."
            )
        if INVALID_BODY_CHAR.search(body):
            raise SqsError(
                "InvalidMessageContents",
                "Invalid characters found. Valid unicode characters are #x9 | #xA | #xD | #x20 to #xD7FF | "
                "#xE000 to #xFFFD | #x10000 to #x10FFFF",
            )
        delay = int_param(
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
        entries = batch_entries(params, "SendMessageBatchRequestEntry")
        total = 0
        for entry in entries:
            body = entry.get("MessageBody")
            with contextlib.suppress(Exception):
                total += message_size(
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
                failed.append(failed_entry(entry["Id"], err))
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
        max_n = int_param(params, "MaxNumberOfMessages", 1, 1, 10, "Must be between 1 and 10, if provided.")
        wait = int_param(
            params,
            "WaitTimeSeconds",
            q.wait_seconds,
            0,
            MAX_WAIT_SECONDS,
            "Must be >= 0 and <= 20, if provided.",
        )
        vt = params.get("VisibilityTimeout")
        if vt is not None:
            vt = int_param(
                params, "VisibilityTimeout", 0, 0, MAX_VISIBILITY_TIMEOUT, "Must be >= 0 and <= 43200."
            )
        system_names = set(params.get("AttributeNames") or ()) | set(
            params.get("MessageSystemAttributeNames") or ()
        )
        wants = attribute_filter(params.get("MessageAttributeNames"))
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
        entries = batch_entries(params, "DeleteMessageBatchRequestEntry")
        successful: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for entry in entries:
            try:
                self._delete(q, entry.get("ReceiptHandle"))
                successful.append({"Id": entry["Id"]})
            except SqsError as err:
                failed.append(failed_entry(entry["Id"], err))
        return {"Successful": successful, "Failed": failed}

    def _change_visibility(self, q: Queue, handle: Any, timeout: Any) -> None:
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int)
            or not 0 <= timeout <= MAX_VISIBILITY_TIMEOUT
        ):
            raise invalid(
                f"Value {timeout} for parameter VisibilityTimeout is invalid. "
                "Reason: Must be >= 0 and <= 43200."
            )
        now = time.monotonic()
        q.promote(now)
        m = self._lookup(q, handle)
        if m is None:
            raise invalid(
                f"Value {handle} for parameter ReceiptHandle is invalid. "
                "Reason: Message does not exist or is not "
                "available for visibility timeout change."
            )
        if m.state != INFLIGHT:
            raise SqsError("MessageNotInflight", "The message referred to isn't in flight.")
        q.set_invisible(m, timeout, now)

    def change_message_visibility(self, params: dict[str, Any]) -> dict[str, Any]:
        q = self.queue(params)
        self._change_visibility(q, params.get("ReceiptHandle"), params.get("VisibilityTimeout"))
        return {}

    def change_message_visibility_batch(self, params: dict[str, Any]) -> dict[str, Any]:
        q = self.queue(params)
        entries = batch_entries(params, "ChangeMessageVisibilityBatchRequestEntry")
        successful: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for entry in entries:
            try:
                self._change_visibility(q, entry.get("ReceiptHandle"), entry.get("VisibilityTimeout", 0))
                successful.append({"Id": entry["Id"]})
            except SqsError as err:
                failed.append(failed_entry(entry["Id"], err))
        return {"Successful": successful, "Failed": failed}

    def close(self) -> None:
        for q in list(self.queues.values()):
            q.close()
        self.queues.clear()
        self.by_arn.clear()


def _resolve(fut: asyncio.Future[bool], value: bool) -> None:
    if not fut.done():
        fut.set_result(value)
