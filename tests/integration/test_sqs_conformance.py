"""One SQS conformance suite, run through boto3 against both the local server and moto.

Every test asserts what the SQS documentation states. Where moto 5.2.5 departs from it, only that
case is marked with the reason (``moto_differs``). Waits are kept to one or two seconds.
"""

from __future__ import annotations

import hashlib
import json
import signal
import struct
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from infra.local.procs import free_port, wait_for_port

BACKENDS = ["local", "moto"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def sqs(backend: str, request: pytest.FixtureRequest) -> Any:
    endpoint = request.getfixturevalue("local_sqs" if backend == "local" else "moto_server")
    return boto3.client(
        "sqs",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="any",
        aws_secret_access_key="any",
        config=Config(retries={"max_attempts": 1}, read_timeout=30),
    )


def moto_differs(request: pytest.FixtureRequest, reason: str) -> None:
    """Expect this test to fail on moto only (strict: it must fail there, so the note stays true)."""
    if request.getfixturevalue("backend") == "moto":
        request.applymarker(pytest.mark.xfail(reason=f"moto 5.2.5 differs from SQS: {reason}", strict=True))


def name(prefix: str = "q") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def counts(sqs: Any, url: str) -> tuple[int, int, int]:
    attrs = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=[
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ],
    )["Attributes"]
    return (
        int(attrs["ApproximateNumberOfMessages"]),
        int(attrs["ApproximateNumberOfMessagesNotVisible"]),
        int(attrs["ApproximateNumberOfMessagesDelayed"]),
    )


def receive(sqs: Any, url: str, **kwargs: Any) -> list[dict[str, Any]]:
    return list(sqs.receive_message(QueueUrl=url, **kwargs).get("Messages", []))


def expected_attributes_md5(attributes: dict[str, dict[str, Any]]) -> str:
    """The documented MD5OfMessageAttributes algorithm, written out independently of the server."""
    buf = b""
    for key in sorted(attributes):
        value = attributes[key]
        for text in (key, value["DataType"]):
            raw = text.encode()
            buf += struct.pack(">I", len(raw)) + raw
        if "BinaryValue" in value:
            data = value["BinaryValue"]
            buf += b"\x02" + struct.pack(">I", len(data)) + data
        else:
            data = value["StringValue"].encode()
            buf += b"\x01" + struct.pack(">I", len(data)) + data
    return hashlib.md5(buf).hexdigest()


# --------------------------------------------------------------------------------------------------
# Queues
# --------------------------------------------------------------------------------------------------


def test_queue_lifecycle(sqs: Any) -> None:
    """CreateQueue is idempotent for equal attributes, QueueAlreadyExists otherwise; a deleted queue is gone
    for every action.

    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_CreateQueue.html
    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_GetQueueUrl.html
    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_DeleteQueue.html
    """
    # Given a new queue
    qname = name()
    url = sqs.create_queue(QueueName=qname, Attributes={"VisibilityTimeout": "7"})["QueueUrl"]
    assert url.endswith(f"/{qname}")

    # Then creating it again with the same attributes is idempotent, with different ones an error
    assert sqs.create_queue(QueueName=qname, Attributes={"VisibilityTimeout": "7"})["QueueUrl"] == url
    with pytest.raises(sqs.exceptions.QueueNameExists) as exc:
        sqs.create_queue(QueueName=qname, Attributes={"VisibilityTimeout": "8"})
    assert error_code(exc) == "QueueAlreadyExists"

    # And it can be found by name and by prefix
    assert sqs.get_queue_url(QueueName=qname)["QueueUrl"] == url
    other = sqs.create_queue(QueueName=qname + "-b")["QueueUrl"]
    listed = sqs.list_queues(QueueNamePrefix=qname)["QueueUrls"]
    assert sorted(listed) == sorted([url, other])

    # When it is deleted, it is gone for every action
    sqs.delete_queue(QueueUrl=url)
    with pytest.raises(sqs.exceptions.QueueDoesNotExist) as exc:
        sqs.get_queue_url(QueueName=qname)
    assert error_code(exc) == "AWS.SimpleQueueService.NonExistentQueue"
    with pytest.raises(sqs.exceptions.QueueDoesNotExist):
        sqs.send_message(QueueUrl=url, MessageBody="x")
    with pytest.raises(sqs.exceptions.QueueDoesNotExist):
        sqs.receive_message(QueueUrl=url)
    assert sqs.list_queues(QueueNamePrefix=qname)["QueueUrls"] == [other]
    sqs.delete_queue(QueueUrl=other)
    assert sqs.list_queues(QueueNamePrefix=qname).get("QueueUrls", []) == []


def test_list_queues_pages(sqs: Any) -> None:
    """ListQueues returns at most MaxResults URLs a page, with a NextToken while more remain.

    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_ListQueues.html
    """
    prefix = name("page")
    urls = [sqs.create_queue(QueueName=f"{prefix}-{i}")["QueueUrl"] for i in range(5)]
    seen: list[str] = []
    kwargs: dict[str, Any] = {"QueueNamePrefix": prefix, "MaxResults": 2}
    while True:
        page = sqs.list_queues(**kwargs)
        assert len(page.get("QueueUrls", [])) <= 2
        seen += page.get("QueueUrls", [])
        if "NextToken" not in page:
            break
        kwargs["NextToken"] = page["NextToken"]
    assert sorted(seen) == sorted(urls)


def test_queue_attributes(sqs: Any) -> None:
    """GetQueueAttributes returns what CreateQueue/SetQueueAttributes set, and refuses unknown names.

    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_GetQueueAttributes.html
    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_SetQueueAttributes.html
    """
    qname = name()
    url = sqs.create_queue(
        QueueName=qname,
        Attributes={
            "VisibilityTimeout": "5",
            "DelaySeconds": "2",
            "MessageRetentionPeriod": "600",
            "ReceiveMessageWaitTimeSeconds": "1",
        },
    )["QueueUrl"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attrs["QueueArn"].startswith("arn:aws:sqs:us-east-1:")
    assert attrs["QueueArn"].endswith(f":{qname}")
    assert attrs["VisibilityTimeout"] == "5"
    assert attrs["DelaySeconds"] == "2"
    assert attrs["MessageRetentionPeriod"] == "600"
    assert attrs["ReceiveMessageWaitTimeSeconds"] == "1"
    assert abs(float(attrs["CreatedTimestamp"]) - time.time()) < 600
    assert attrs["ApproximateNumberOfMessages"] == "0"
    assert "RedrivePolicy" not in attrs

    sqs.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": "9"})
    one = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["VisibilityTimeout"])["Attributes"]
    assert one == {"VisibilityTimeout": "9"}

    with pytest.raises(sqs.exceptions.InvalidAttributeName):
        sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["NoSuchAttribute"])


def test_created_timestamp_is_whole_epoch_seconds(sqs: Any, request: pytest.FixtureRequest) -> None:
    """CreatedTimestamp is the queue's creation time in seconds (epoch time).

    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_GetQueueAttributes.html
    """
    moto_differs(request, "returns CreatedTimestamp with a fraction of a second")
    url = sqs.create_queue(QueueName=name())["QueueUrl"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["CreatedTimestamp"])["Attributes"]
    assert attrs["CreatedTimestamp"].isdigit()


def test_invalid_queue_attribute_value(sqs: Any, request: pytest.FixtureRequest) -> None:
    """VisibilityTimeout is 0 to 43,200 seconds; anything else is InvalidAttributeValue.

    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_CreateQueue.html
    """
    moto_differs(request, "accepts a VisibilityTimeout above 43200 at CreateQueue")
    with pytest.raises(ClientError) as exc:
        sqs.create_queue(QueueName=name(), Attributes={"VisibilityTimeout": "43201"})
    assert error_code(exc) == "InvalidAttributeValue"


def test_purge_queue(sqs: Any) -> None:
    """PurgeQueue deletes every message; a second purge within 60 seconds is PurgeQueueInProgress.

    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_PurgeQueue.html
    """
    url = sqs.create_queue(QueueName=name())["QueueUrl"]
    sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": "m"} for i in range(3)])
    receive(sqs, url)
    sqs.purge_queue(QueueUrl=url)
    assert counts(sqs, url) == (0, 0, 0)
    assert receive(sqs, url) == []
    # Only one purge per queue every 60 seconds.
    with pytest.raises(sqs.exceptions.PurgeQueueInProgress) as exc:
        sqs.purge_queue(QueueUrl=url)
    assert error_code(exc) == "AWS.SimpleQueueService.PurgeQueueInProgress"


# --------------------------------------------------------------------------------------------------
# Sending and receiving
# --------------------------------------------------------------------------------------------------


def test_send_receive_delete_with_attributes_and_md5s(sqs: Any) -> None:
    """The MD5 digests of body and message attributes, the system attributes of a received message, and the
    in-flight count until DeleteMessage.

    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_SendMessage.html
    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_ReceiveMessage.html
    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-message-metadata.html
    """
    url = sqs.create_queue(QueueName=name())["QueueUrl"]
    body = "héllo 🌍"
    attributes: dict[str, dict[str, Any]] = {
        "trace": {"DataType": "String", "StringValue": "abc"},
        "count": {"DataType": "Number", "StringValue": "42"},
        "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01\xff"},
        "kind": {"DataType": "String.custom", "StringValue": "x"},
    }
    sent = sqs.send_message(QueueUrl=url, MessageBody=body, MessageAttributes=attributes)
    assert sent["MD5OfMessageBody"] == hashlib.md5(body.encode()).hexdigest()
    assert sent["MD5OfMessageAttributes"] == expected_attributes_md5(attributes)

    before = int(time.time() * 1000)
    [msg] = receive(
        sqs,
        url,
        MessageAttributeNames=["All"],
        MessageSystemAttributeNames=["All"],
        VisibilityTimeout=30,
    )
    assert msg["MessageId"] == sent["MessageId"]
    assert msg["Body"] == body
    assert msg["MD5OfBody"] == sent["MD5OfMessageBody"]
    assert msg["MessageAttributes"] == attributes
    assert msg["MD5OfMessageAttributes"] == sent["MD5OfMessageAttributes"]
    system = msg["Attributes"]
    assert system["ApproximateReceiveCount"] == "1"
    assert int(system["SentTimestamp"]) <= int(system["ApproximateFirstReceiveTimestamp"])
    assert abs(int(system["ApproximateFirstReceiveTimestamp"]) - before) < 60_000
    assert counts(sqs, url) == (0, 1, 0)

    sqs.delete_message(QueueUrl=url, ReceiptHandle=msg["ReceiptHandle"])
    assert counts(sqs, url) == (0, 0, 0)


def test_receive_filters_attributes_by_name(sqs: Any) -> None:
    """MessageAttributeNames accepts prefixes ending in `.*`; AttributeNames selects system attributes.

    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_ReceiveMessage.html
    """
    url = sqs.create_queue(QueueName=name())["QueueUrl"]
    sqs.send_message(
        QueueUrl=url,
        MessageBody="b",
        MessageAttributes={
            "keep.a": {"DataType": "String", "StringValue": "1"},
            "keep.b": {"DataType": "String", "StringValue": "2"},
            "drop": {"DataType": "String", "StringValue": "3"},
        },
    )
    [msg] = receive(sqs, url, MessageAttributeNames=["keep.*"], AttributeNames=["SentTimestamp"])
    assert set(msg["MessageAttributes"]) == {"keep.a", "keep.b"}
    assert set(msg["Attributes"]) == {"SentTimestamp"}


def test_receive_without_attribute_names_returns_none(sqs: Any) -> None:
    """Without MessageAttributeNames/AttributeNames a received message carries neither.

    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_ReceiveMessage.html
    """
    url = sqs.create_queue(QueueName=name())["QueueUrl"]
    sqs.send_message(
        QueueUrl=url, MessageBody="b", MessageAttributes={"a": {"DataType": "String", "StringValue": "1"}}
    )
    [msg] = receive(sqs, url)
    assert "MessageAttributes" not in msg
    assert "Attributes" not in msg


def test_receive_max_number_of_messages(sqs: Any) -> None:
    """MaxNumberOfMessages is 1 to 10; a receive never returns more.

    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_ReceiveMessage.html
    """
    url = sqs.create_queue(QueueName=name())["QueueUrl"]
    bodies = {f"m{i}" for i in range(15)}
    for chunk in (sorted(bodies)[:10], sorted(bodies)[10:]):
        sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": b, "MessageBody": b} for b in chunk])
    got: list[str] = []
    for _ in range(10):
        batch = receive(sqs, url, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=60)
        assert len(batch) <= 10
        got += [m["Body"] for m in batch]
        if len(got) >= 15:
            break
    assert sorted(got) == sorted(bodies)
    for bad in (0, 11):
        with pytest.raises(ClientError) as exc:
            sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=bad)
        assert error_code(exc) == "InvalidParameterValue"


def test_message_size_limit_is_1_mib(sqs: Any) -> None:
    """A message is at most 1 MiB (1,048,576 bytes).

    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_SendMessage.html
    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/quotas-messages.html
    """
    url = sqs.create_queue(QueueName=name())["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="x" * 1_048_576)
    with pytest.raises(ClientError) as exc:
        sqs.send_message(QueueUrl=url, MessageBody="x" * 1_048_577)
    assert error_code(exc) == "InvalidParameterValue"
    [msg] = receive(sqs, url)
    assert len(msg["Body"]) == 1_048_576


def test_invalid_body_characters(sqs: Any, request: pytest.FixtureRequest) -> None:
    """A body may hold only #x9 | #xA | #xD | #x20 to #xD7FF | #xE000 to #xFFFD | #x10000 to #x10FFFF:
    anything else (NUL, U+FFFF) is InvalidMessageContents.

    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_SendMessage.html
    """
    moto_differs(request, "accepts characters outside the XML character ranges SQS allows")
    url = sqs.create_queue(QueueName=name())["QueueUrl"]
    with pytest.raises(sqs.exceptions.InvalidMessageContents):
        sqs.send_message(QueueUrl=url, MessageBody="bad \x00 byte")
    with pytest.raises(sqs.exceptions.InvalidMessageContents):
        sqs.send_message(QueueUrl=url, MessageBody="noncharacter \uffff")
    assert counts(sqs, url) == (0, 0, 0)


# --------------------------------------------------------------------------------------------------
# Delays, visibility, long polling
# --------------------------------------------------------------------------------------------------


def test_message_delay(sqs: Any) -> None:
    """A message timer (DelaySeconds on SendMessage) keeps the message invisible, counted as delayed, for that
    long.

    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-message-timers.html
    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_SendMessage.html
    """
    url = sqs.create_queue(QueueName=name())["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="later", DelaySeconds=1)
    sqs.send_message(QueueUrl=url, MessageBody="now")
    # Only the undelayed message is visible at first.
    [first] = receive(sqs, url, MaxNumberOfMessages=10, VisibilityTimeout=60)
    assert first["Body"] == "now"
    assert counts(sqs, url) == (0, 1, 1)
    # A long poll returns the delayed message once its delay has passed.
    [second] = receive(sqs, url, WaitTimeSeconds=5, VisibilityTimeout=60)
    assert second["Body"] == "later"
    assert counts(sqs, url) == (0, 2, 0)


def test_queue_delay_and_batch_delay_override(sqs: Any) -> None:
    """A delay queue delays every new message; an entry's own DelaySeconds (here 0) overrides the queue's.

    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-delay-queues.html
    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_SendMessageBatchRequestEntry.html
    """
    url = sqs.create_queue(QueueName=name(), Attributes={"DelaySeconds": "1"})["QueueUrl"]
    out = sqs.send_message_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "queue-delay", "MessageBody": "a"},
            {"Id": "no-delay", "MessageBody": "b", "DelaySeconds": 0},
        ],
    )
    assert {e["Id"] for e in out["Successful"]} == {"queue-delay", "no-delay"}
    assert counts(sqs, url) == (1, 0, 1)
    [msg] = receive(sqs, url, MaxNumberOfMessages=10, VisibilityTimeout=60)
    assert msg["Body"] == "b"
    [msg] = receive(sqs, url, WaitTimeSeconds=5)
    assert msg["Body"] == "a"


def test_batch_entry_delay_seconds_on_a_queue_without_delay(sqs: Any) -> None:
    """A message timer set on one SendMessageBatch entry delays that message only, on a queue with no
    delay of its own (how the post stage re-enqueues a batch with its backoff).

    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-message-timers.html
    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_SendMessageBatchRequestEntry.html
    """
    url = sqs.create_queue(QueueName=name())["QueueUrl"]
    out = sqs.send_message_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "delayed", "MessageBody": "retry", "DelaySeconds": 2},
            {"Id": "at-once", "MessageBody": "first"},
        ],
    )
    assert {e["Id"] for e in out["Successful"]} == {"delayed", "at-once"}
    assert counts(sqs, url) == (1, 0, 1)
    [now] = receive(sqs, url, MaxNumberOfMessages=10, VisibilityTimeout=60)
    assert now["Body"] == "first"
    # Still delayed right after (2 s is longer than these calls take)...
    assert receive(sqs, url, MaxNumberOfMessages=10) == []
    assert counts(sqs, url) == (0, 1, 1)
    # ...and received by a long poll once its timer is over.
    [later] = receive(sqs, url, WaitTimeSeconds=10, AttributeNames=["SentTimestamp"])
    assert later["Body"] == "retry"
    assert counts(sqs, url) == (0, 2, 0)


def test_receive_with_zero_visibility_returns_each_message_once(sqs: Any) -> None:
    """VisibilityTimeout 0 on ReceiveMessage leaves the messages visible for the next receive, but one
    response holds each message at most once.

    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_ReceiveMessage.html
    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-visibility-timeout.html
    """
    url = sqs.create_queue(QueueName=name())["QueueUrl"]
    sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": f"m{i}"} for i in range(3)])
    peeked = receive(sqs, url, MaxNumberOfMessages=10, VisibilityTimeout=0)
    ids = [m["MessageId"] for m in peeked]
    assert len(ids) == len(set(ids))
    assert counts(sqs, url) == (3, 0, 0)
    again: list[dict[str, Any]] = []
    while len(again) < 3:
        batch = receive(sqs, url, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=60)
        assert batch
        again += batch
    assert sorted(m["Body"] for m in again) == ["m0", "m1", "m2"]


def test_visibility_timeout_expiry(sqs: Any) -> None:
    """A received message is hidden for the queue's visibility timeout, then received again with a new receipt
    handle and a higher receive count.

    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-visibility-timeout.html
    """
    url = sqs.create_queue(QueueName=name(), Attributes={"VisibilityTimeout": "1"})["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="m")
    [first] = receive(sqs, url, AttributeNames=["ApproximateReceiveCount"])
    assert receive(sqs, url) == []
    assert counts(sqs, url) == (0, 1, 0)
    # After the queue's visibility timeout the message comes back, counted as a second receive.
    [again] = receive(sqs, url, WaitTimeSeconds=5, AttributeNames=["ApproximateReceiveCount"])
    assert again["MessageId"] == first["MessageId"]
    assert again["Attributes"]["ApproximateReceiveCount"] == "2"
    assert again["ReceiptHandle"] != first["ReceiptHandle"]


def test_receive_visibility_timeout_override(sqs: Any) -> None:
    """ReceiveMessage's VisibilityTimeout overrides the queue's for the messages it returns.

    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_ReceiveMessage.html
    """
    url = sqs.create_queue(QueueName=name(), Attributes={"VisibilityTimeout": "60"})["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="m")
    [first] = receive(sqs, url, VisibilityTimeout=1)
    [again] = receive(sqs, url, WaitTimeSeconds=5)
    assert again["MessageId"] == first["MessageId"]


def test_change_message_visibility(sqs: Any) -> None:
    """ChangeMessageVisibility to 0 makes a message visible at once; a longer one extends the hiding; a bad
    handle is ReceiptHandleIsInvalid.

    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_ChangeMessageVisibility.html
    """
    url = sqs.create_queue(QueueName=name(), Attributes={"VisibilityTimeout": "60"})["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="m")
    [msg] = receive(sqs, url)
    assert receive(sqs, url) == []
    # Visibility 0 makes it visible again at once.
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=msg["ReceiptHandle"], VisibilityTimeout=0)
    [again] = receive(sqs, url)
    assert again["MessageId"] == msg["MessageId"]
    # Extending works too: the message stays hidden beyond the original one-second receive.
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=again["ReceiptHandle"], VisibilityTimeout=1)
    assert counts(sqs, url) == (0, 1, 0)
    [third] = receive(sqs, url, WaitTimeSeconds=5)
    assert third["MessageId"] == msg["MessageId"]
    with pytest.raises(sqs.exceptions.ReceiptHandleIsInvalid):
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle="not-a-handle", VisibilityTimeout=0)


def test_change_message_visibility_batch_partial_failure(sqs: Any) -> None:
    """ChangeMessageVisibilityBatch reports each entry as Successful or Failed (sender's fault).

    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_ChangeMessageVisibilityBatch.html
    """
    url = sqs.create_queue(QueueName=name(), Attributes={"VisibilityTimeout": "60"})["QueueUrl"]
    sqs.send_message_batch(
        QueueUrl=url, Entries=[{"Id": "a", "MessageBody": "a"}, {"Id": "b", "MessageBody": "b"}]
    )
    msgs = receive(sqs, url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
    while len(msgs) < 2:
        msgs += receive(sqs, url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
    out = sqs.change_message_visibility_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "ok", "ReceiptHandle": msgs[0]["ReceiptHandle"], "VisibilityTimeout": 0},
            {"Id": "bad", "ReceiptHandle": "not-a-handle", "VisibilityTimeout": 0},
        ],
    )
    assert [e["Id"] for e in out["Successful"]] == ["ok"]
    [failed] = out["Failed"]
    assert failed["Id"] == "bad"
    assert failed["Code"] == "ReceiptHandleIsInvalid"
    assert failed["SenderFault"] is True
    [back] = receive(sqs, url)
    assert back["MessageId"] == msgs[0]["MessageId"]


def test_long_poll_returns_as_soon_as_a_message_arrives(sqs: Any) -> None:
    """A long poll returns as soon as a message is available, before WaitTimeSeconds.

    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-short-and-long-polling.html
    """
    url = sqs.create_queue(QueueName=name())["QueueUrl"]
    result: list[list[dict[str, Any]]] = []
    poller = threading.Thread(target=lambda: result.append(receive(sqs, url, WaitTimeSeconds=20)))
    poller.start()
    time.sleep(0.3)
    sqs.send_message(QueueUrl=url, MessageBody="wake up")
    # The poll must end because of the message, long before its 20 s wait would.
    poller.join(timeout=10)
    assert not poller.is_alive()
    assert [m["Body"] for m in result[0]] == ["wake up"]


def test_waiting_poller_gets_a_message_whose_visibility_expires(sqs: Any) -> None:
    """A long poll still waiting receives a message whose visibility timeout expires meanwhile.

    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-short-and-long-polling.html
    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-visibility-timeout.html
    """
    # Given two pollers waiting on an empty queue
    url = sqs.create_queue(QueueName=name())["QueueUrl"]
    results: list[list[dict[str, Any]]] = []
    pollers = [
        threading.Thread(
            target=lambda: results.append(
                receive(sqs, url, WaitTimeSeconds=20, VisibilityTimeout=1, AttributeNames=["All"])
            )
        )
        for _ in range(2)
    ]
    for poller in pollers:
        poller.start()
    time.sleep(0.3)
    # When one message arrives, one poller takes it and lets its visibility expire
    sqs.send_message(QueueUrl=url, MessageBody="shared")
    # Then the other poller, still waiting, receives it as its second delivery once the visibility
    # timeout expires, long before its own 20 s wait ends
    for poller in pollers:
        poller.join(timeout=10)
    assert not any(poller.is_alive() for poller in pollers)
    assert sorted(m["Attributes"]["ApproximateReceiveCount"] for batch in results for m in batch) == [
        "1",
        "2",
    ]


def test_cli_serves_until_sigterm() -> None:
    """The server's CLI: queue URLs and ARNs in the requested Region (the ARN format of SQS), stopped cleanly
    by SIGTERM.

    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-queue-message-identifiers.html
    """
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "infra.local.sqs",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--region",
            "eu-west-1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port("127.0.0.1", port, timeout=30, proc=proc)
        client = boto3.client(
            "sqs",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="eu-west-1",
            aws_access_key_id="any",
            aws_secret_access_key="any",
        )
        url = client.create_queue(QueueName="cli")["QueueUrl"]
        assert url == f"http://127.0.0.1:{port}/000000000000/cli"
        arn = client.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        assert arn == "arn:aws:sqs:eu-west-1:000000000000:cli"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert b'"message": "stopped"' in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_long_poll_on_empty_queue_returns_nothing(sqs: Any) -> None:
    """The queue's ReceiveMessageWaitTimeSeconds applies when a receive gives no WaitTimeSeconds; an empty
    queue answers no messages.

    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_SetQueueAttributes.html
    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-short-and-long-polling.html
    """
    url = sqs.create_queue(QueueName=name(), Attributes={"ReceiveMessageWaitTimeSeconds": "1"})["QueueUrl"]
    # The queue's ReceiveMessageWaitTimeSeconds applies when the request gives no WaitTimeSeconds.
    assert receive(sqs, url) == []


# --------------------------------------------------------------------------------------------------
# Batches and validation
# --------------------------------------------------------------------------------------------------


def test_send_message_batch_partial_failure(sqs: Any) -> None:
    """SendMessageBatch reports each entry on its own: a DelaySeconds above 900 fails that entry only.

    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_SendMessageBatch.html
    """
    url = sqs.create_queue(QueueName=name())["QueueUrl"]
    out = sqs.send_message_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "good", "MessageBody": "fine"},
            {"Id": "bad-delay", "MessageBody": "late", "DelaySeconds": 901},
        ],
    )
    [ok] = out["Successful"]
    assert ok["Id"] == "good"
    assert ok["MD5OfMessageBody"] == hashlib.md5(b"fine").hexdigest()
    [failed] = out["Failed"]
    assert (failed["Id"], failed["Code"], failed["SenderFault"]) == (
        "bad-delay",
        "InvalidParameterValue",
        True,
    )
    assert counts(sqs, url) == (1, 0, 0)


def test_batch_validation_errors(sqs: Any) -> None:
    """A batch holds 1 to 10 entries with distinct valid ids and at most 1 MiB in all; otherwise the whole
    request fails.

    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_SendMessageBatch.html
    """
    url = sqs.create_queue(QueueName=name())["QueueUrl"]
    with pytest.raises(sqs.exceptions.TooManyEntriesInBatchRequest) as exc:
        sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": "m"} for i in range(11)])
    assert error_code(exc) == "AWS.SimpleQueueService.TooManyEntriesInBatchRequest"
    with pytest.raises(sqs.exceptions.BatchEntryIdsNotDistinct) as exc:
        sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": "a", "MessageBody": "m"}] * 2)
    assert error_code(exc) == "AWS.SimpleQueueService.BatchEntryIdsNotDistinct"
    with pytest.raises(sqs.exceptions.EmptyBatchRequest):
        sqs.send_message_batch(QueueUrl=url, Entries=[])
    with pytest.raises(sqs.exceptions.InvalidBatchEntryId):
        sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": "not valid!", "MessageBody": "m"}])
    with pytest.raises(sqs.exceptions.BatchRequestTooLong):
        sqs.send_message_batch(
            QueueUrl=url,
            Entries=[{"Id": "a", "MessageBody": "x" * 600_000}, {"Id": "b", "MessageBody": "y" * 600_000}],
        )
    assert counts(sqs, url) == (0, 0, 0)


def test_delete_and_change_visibility_batches_refuse_more_than_10_entries(
    sqs: Any, request: pytest.FixtureRequest
) -> None:
    """DeleteMessageBatch and ChangeMessageVisibilityBatch take at most 10 entries
    (TooManyEntriesInBatchRequest).

    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_DeleteMessageBatch.html
    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_ChangeMessageVisibilityBatch.html
    """
    moto_differs(request, "reports 11 distinct entry ids as BatchEntryIdsNotDistinct")
    url = sqs.create_queue(QueueName=name())["QueueUrl"]
    with pytest.raises(sqs.exceptions.TooManyEntriesInBatchRequest):
        sqs.delete_message_batch(
            QueueUrl=url, Entries=[{"Id": f"e{i}", "ReceiptHandle": "h"} for i in range(11)]
        )
    with pytest.raises(sqs.exceptions.TooManyEntriesInBatchRequest):
        sqs.change_message_visibility_batch(
            QueueUrl=url,
            Entries=[{"Id": f"e{i}", "ReceiptHandle": "h", "VisibilityTimeout": 0} for i in range(11)],
        )


def test_delete_message_batch_partial_failure(sqs: Any) -> None:
    """DeleteMessageBatch reports each entry as Successful or Failed; DeleteMessage with a bad handle is
    ReceiptHandleIsInvalid.

    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_DeleteMessageBatch.html
    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_DeleteMessage.html
    """
    url = sqs.create_queue(QueueName=name(), Attributes={"VisibilityTimeout": "60"})["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="m")
    [msg] = receive(sqs, url)
    out = sqs.delete_message_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "ok", "ReceiptHandle": msg["ReceiptHandle"]},
            {"Id": "bad", "ReceiptHandle": "not-a-handle"},
        ],
    )
    assert [e["Id"] for e in out["Successful"]] == ["ok"]
    [failed] = out["Failed"]
    assert (failed["Id"], failed["Code"], failed["SenderFault"]) == ("bad", "ReceiptHandleIsInvalid", True)
    assert counts(sqs, url) == (0, 0, 0)
    with pytest.raises(sqs.exceptions.ReceiptHandleIsInvalid):
        sqs.delete_message(QueueUrl=url, ReceiptHandle="not-a-handle")


# --------------------------------------------------------------------------------------------------
# Dead-letter queues
# --------------------------------------------------------------------------------------------------


def test_redrive_to_dead_letter_queue_after_max_receive_count(sqs: Any) -> None:
    """After maxReceiveCount receives, a message moves to the dead-letter queue of the RedrivePolicy.

    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-dead-letter-queues.html
    """
    dlq_url = sqs.create_queue(QueueName=name("dlq"))["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    policy = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "2"}
    url = sqs.create_queue(QueueName=name("src"), Attributes={"RedrivePolicy": json.dumps(policy)})[
        "QueueUrl"
    ]
    stored = json.loads(
        sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])["Attributes"][
            "RedrivePolicy"
        ]
    )
    assert stored["deadLetterTargetArn"] == dlq_arn
    assert int(stored["maxReceiveCount"]) == 2
    assert sqs.list_dead_letter_source_queues(QueueUrl=dlq_url)["queueUrls"] == [url]

    sent = sqs.send_message(QueueUrl=url, MessageBody="poison")
    # Received maxReceiveCount times (made visible again at once each time)...
    for n in (1, 2):
        [msg] = receive(sqs, url, VisibilityTimeout=0, AttributeNames=["ApproximateReceiveCount"])
        assert msg["Attributes"]["ApproximateReceiveCount"] == str(n)
    # ...the next receive moves it to the dead-letter queue instead of delivering it.
    assert receive(sqs, url) == []
    assert counts(sqs, url) == (0, 0, 0)
    [dead] = receive(sqs, dlq_url)
    assert dead["MessageId"] == sent["MessageId"]
    assert dead["Body"] == "poison"


def test_send_message_batch_entry_failure(sqs: Any, request: pytest.FixtureRequest) -> None:
    """An entry with invalid characters fails alone (InvalidMessageContents); the others are sent.

    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_SendMessageBatch.html
    """
    moto_differs(request, "accepts characters outside the XML character ranges SQS allows")
    url = sqs.create_queue(QueueName=name())["QueueUrl"]
    out = sqs.send_message_batch(
        QueueUrl=url,
        Entries=[{"Id": "good", "MessageBody": "fine"}, {"Id": "bad", "MessageBody": "nul \x00"}],
    )
    assert [e["Id"] for e in out["Successful"]] == ["good"]
    [failed] = out["Failed"]
    assert (failed["Id"], failed["Code"], failed["SenderFault"]) == ("bad", "InvalidMessageContents", True)
    assert counts(sqs, url) == (1, 0, 0)
