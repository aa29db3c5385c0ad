"""Dead letters: list and redrive the dead-letter queues of the partition-task and post queues.

Where dead-lettered work comes from:

- SQS itself moves a message to ``<queue>-dlq`` after ``maxReceiveCount`` (5) failed receives: a
  partition task whose query kept failing, or a post batch whose handler kept crashing;
- the post stage sends a batch to a post dead-letter queue when its ids still fail after
  ``FANOUT_MAX_POST_ATTEMPTS``; such a batch carries ``"deadLettered": true`` and its ids already count
  as ``failed``, so when it is redriven the post stage moves what it delivers from ``failed`` to
  ``delivered``/``gone`` (``fanout.stages.run_post_batch``).

Redrive moves each message back to its source queue, unchanged: ReceiveMessage from the dead-letter
queue, SendMessageBatch to the source, and only then DeleteMessageBatch of the entries that were sent.
An interruption between the send and the delete leaves the message in both queues (it reappears in the
dead-letter queue when its visibility timeout ends), never in neither: work is duplicated, not lost, and
the stages' ledgers (``fanout.store``) make a duplicate a no-op.

Queues are found in one of three ways:

- locally, from ``.fanout/local.json`` (``deadLetterQueueUrls``, ``partitionQueueUrls``,
  ``postQueueUrls``, ``sqsUrl``), written by ``fanout local up``;
- in AWS, from a CloudFormation stack (``--stack NAME``): every ``AWS::SQS::Queue`` among its resources,
  plus any queue URL among its outputs;
- in AWS or anywhere, from explicit ``--queue URL`` dead-letter queue URLs.

A dead-letter queue ``<name>-dlq`` redrives to ``<name>`` in the same account and Region; when no such
queue is known, SQS's ``ListDeadLetterSourceQueues`` is asked.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from fanout.errors import FanoutError

LOCAL_STATE = Path(".fanout") / "local.json"
DLQ_SUFFIX = "-dlq"
SQS_BATCH = 10


class DeadLetterError(FanoutError):
    """A dead-letter queue could not be found, read or redriven."""


@dataclass(frozen=True)
class DeadLetterQueue:
    """A dead-letter queue and the queue its messages go back to (None: unknown, not redrivable)."""

    url: str
    source_url: str | None

    @property
    def name(self) -> str:
        return queue_name(self.url)

    @property
    def kind(self) -> str:
        """``post``, ``partition`` or ``other``, from the queue's name (``...-post-3-dlq``)."""
        base = self.name.removesuffix(DLQ_SUFFIX)
        for kind in ("post", "partition"):
            if f"-{kind}-" in f"-{base}" and base.rsplit("-", 1)[-1].isdigit():
                return kind
        return "other"


@dataclass
class QueueReport:
    """What one dead-letter queue holds."""

    queue: str
    url: str
    kind: str
    source: str | None
    visible: int
    in_flight: int
    sample: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RedriveResult:
    queue: str
    source: str
    moved: int = 0
    send_failures: int = 0
    delete_failures: int = 0
    broadcasts: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["broadcasts"] = dict(self.broadcasts)
        return out


def queue_name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def pair_queues(dead_letter_urls: Iterable[str], source_urls: Iterable[str]) -> list[DeadLetterQueue]:
    """Pair each ``<name>-dlq`` with the ``<name>`` among `source_urls` (None when there is none)."""
    by_name = {queue_name(u): u for u in source_urls}
    return [
        DeadLetterQueue(url, by_name.get(queue_name(url).removesuffix(DLQ_SUFFIX)))
        for url in dict.fromkeys(dead_letter_urls)
    ]


# -- discovery ----------------------------------------------------------------------------------------
def local_queues(path: Path = LOCAL_STATE) -> tuple[list[DeadLetterQueue], str | None]:
    """The local stack's dead-letter queues (paired with their sources) and its SQS endpoint."""
    if not path.exists():
        raise DeadLetterError(
            f"{path} not found: start the local stack with `fanout local up`, or pass --stack / --queue"
        )
    state = json.loads(path.read_text())
    sources = [*state.get("partitionQueueUrls", []), *state.get("postQueueUrls", [])]
    return pair_queues(state.get("deadLetterQueueUrls", []), sources), state.get("sqsUrl")


def stack_queue_urls(cloudformation: Any, stack_name: str) -> list[str]:
    """Every SQS queue URL of a CloudFormation stack: its AWS::SQS::Queue resources and URL outputs."""
    urls: list[str] = []
    try:
        for page in cloudformation.get_paginator("list_stack_resources").paginate(StackName=stack_name):
            urls.extend(
                r["PhysicalResourceId"]
                for r in page["StackResourceSummaries"]
                if r["ResourceType"] == "AWS::SQS::Queue" and r.get("PhysicalResourceId")
            )
        stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except (ClientError, BotoCoreError) as exc:
        raise DeadLetterError(f"could not read stack {stack_name}: {exc}") from exc
    for stack in stacks:
        for output in stack.get("Outputs", []):
            value = str(output.get("OutputValue", ""))
            if value.startswith("https://sqs.") or ".queue.amazonaws.com/" in value:
                urls.append(value)
    return list(dict.fromkeys(urls))


def resolve_sources(sqs: Any, queues: Sequence[DeadLetterQueue]) -> list[DeadLetterQueue]:
    """Fill in unknown sources: ``<name>`` next to ``<name>-dlq``, else ListDeadLetterSourceQueues."""
    out: list[DeadLetterQueue] = []
    for q in queues:
        if q.source_url is None:
            q = DeadLetterQueue(q.url, _find_source(sqs, q.url))
        out.append(q)
    return out


def _find_source(sqs: Any, dlq_url: str) -> str | None:
    try:
        sources = sqs.list_dead_letter_source_queues(QueueUrl=dlq_url).get("queueUrls", [])
    except (ClientError, BotoCoreError):
        sources = []
    if len(sources) == 1:
        return str(sources[0])
    name = queue_name(dlq_url)
    if not name.endswith(DLQ_SUFFIX):
        return None
    candidate = dlq_url.rstrip("/")[: -len(DLQ_SUFFIX)]
    try:
        sqs.get_queue_attributes(QueueUrl=candidate, AttributeNames=["QueueArn"])
    except (ClientError, BotoCoreError):
        return None
    return candidate


def select(queues: Sequence[DeadLetterQueue], wanted: Sequence[str] | None) -> list[DeadLetterQueue]:
    """The queues named by `wanted` (URLs, names, or kinds ``post``/``partition``); all when empty."""
    if not wanted:
        return list(queues)
    chosen: list[DeadLetterQueue] = []
    for w in wanted:
        hits = [q for q in queues if w in (q.url, q.name, q.name.removesuffix(DLQ_SUFFIX), q.kind)]
        if not hits:
            if "://" in w:  # an explicit URL not among the known queues
                hits = [DeadLetterQueue(w, None)]
            else:
                known = ", ".join(q.name for q in queues) or "none"
                raise DeadLetterError(f"no dead-letter queue matches {w!r} (known: {known})")
        chosen.extend(h for h in hits if h not in chosen)
    return chosen


# -- list -------------------------------------------------------------------------------------------
def summarize(body: str) -> dict[str, Any]:
    """What a dead-lettered message is about, without its frame."""
    try:
        data = json.loads(body)
    except ValueError:
        return {"unreadable": body[:80]}
    if not isinstance(data, dict):
        return {"unreadable": body[:80]}
    out: dict[str, Any] = {
        k: data[k] for k in ("broadcastId", "partitionId", "batchId", "attempt", "deadLettered") if k in data
    }
    if isinstance(data.get("connectionIds"), list):
        out["connections"] = len(data["connectionIds"])
    return out


def inspect(sqs: Any, queue: DeadLetterQueue, *, peek: int = 0) -> QueueReport:
    """Depth of a dead-letter queue and, with `peek`, summaries of up to that many messages.

    Peeking receives with a zero visibility timeout: the messages stay where they are.
    """
    attrs = sqs.get_queue_attributes(
        QueueUrl=queue.url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    report = QueueReport(
        queue=queue.name,
        url=queue.url,
        kind=queue.kind,
        source=queue.source_url,
        visible=int(attrs.get("ApproximateNumberOfMessages", 0)),
        in_flight=int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)),
    )
    seen: set[str] = set()
    for _ in range(peek):
        msgs = sqs.receive_message(
            QueueUrl=queue.url, MaxNumberOfMessages=min(SQS_BATCH, peek), VisibilityTimeout=0
        ).get("Messages", [])
        fresh = [m for m in msgs if m["MessageId"] not in seen]
        if not fresh:
            break
        for m in fresh:
            seen.add(m["MessageId"])
            if len(report.sample) < peek:
                report.sample.append({"messageId": m["MessageId"], **summarize(m["Body"])})
        if len(report.sample) >= peek:
            break
    return report


# -- redrive ----------------------------------------------------------------------------------------
def redrive(
    sqs: Any,
    queue: DeadLetterQueue,
    *,
    max_messages: int | None = None,
    visibility_timeout: int = 60,
    wait_seconds: int = 0,
    empty_receives: int = 2,
    on_progress: Callable[[RedriveResult], None] | None = None,
) -> RedriveResult:
    """Move up to `max_messages` (all when None) from a dead-letter queue back to its source queue.

    Each received group is sent first and deleted only for the entries SendMessageBatch accepted; an
    entry that fails to send stays in the dead-letter queue (visible again after `visibility_timeout`).
    Stops when the queue answers empty `empty_receives` times in a row.
    """
    if queue.source_url is None:
        raise DeadLetterError(
            f"the source queue of {queue.name} is unknown; pass its URL (--to) or use the stack's queues"
        )
    result = RedriveResult(queue=queue.name, source=queue_name(queue.source_url))
    empty = 0
    while max_messages is None or result.moved < max_messages:
        want = SQS_BATCH if max_messages is None else min(SQS_BATCH, max_messages - result.moved)
        msgs = sqs.receive_message(
            QueueUrl=queue.url,
            MaxNumberOfMessages=want,
            VisibilityTimeout=visibility_timeout,
            WaitTimeSeconds=wait_seconds,
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not msgs:
            empty += 1
            if empty >= empty_receives:
                break
            continue
        empty = 0
        entries = []
        for i, m in enumerate(msgs):
            entry: dict[str, Any] = {"Id": str(i), "MessageBody": m["Body"]}
            if m.get("MessageAttributes"):
                entry["MessageAttributes"] = m["MessageAttributes"]
            entries.append(entry)
        sent = sqs.send_message_batch(QueueUrl=queue.source_url, Entries=entries)
        ok = {s["Id"] for s in sent.get("Successful", [])}
        result.send_failures += len(msgs) - len(ok)
        done = [(i, m) for i, m in enumerate(msgs) if str(i) in ok]
        if done:
            deleted = sqs.delete_message_batch(
                QueueUrl=queue.url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in done],
            )
            result.delete_failures += len(deleted.get("Failed", []))
        for _, m in done:
            result.moved += 1
            broadcast = summarize(m["Body"]).get("broadcastId")
            if broadcast:
                result.broadcasts[str(broadcast)] += 1
        if on_progress is not None:
            on_progress(result)
    return result


# -- command line -------------------------------------------------------------------------------------
def _clients(args: argparse.Namespace) -> tuple[Any, list[DeadLetterQueue]]:
    import boto3

    explicit = list(getattr(args, "queue", None) or [])
    if args.stack:
        session = boto3.Session(region_name=args.region)
        sqs = session.client("sqs")
        urls = stack_queue_urls(session.client("cloudformation"), args.stack)
        dlqs = [u for u in urls if queue_name(u).endswith(DLQ_SUFFIX)]
        queues = resolve_sources(sqs, pair_queues(dlqs, urls))
    elif explicit and all("://" in q for q in explicit) and not args.local:
        sqs = boto3.client("sqs", region_name=args.region or _region_of(explicit[0]))
        queues = resolve_sources(sqs, [DeadLetterQueue(u, None) for u in explicit])
    else:
        queues, endpoint = local_queues(Path(args.local) if args.local else LOCAL_STATE)
        sqs = boto3.client("sqs", endpoint_url=endpoint, region_name=args.region or "us-east-1")
    queues = select(queues, explicit)
    target = getattr(args, "to", None)
    if target:
        if len(queues) != 1:
            raise DeadLetterError("--to needs exactly one dead-letter queue (--queue)")
        queues = [DeadLetterQueue(queues[0].url, target)]
    return sqs, queues


def _region_of(url: str) -> str | None:
    host = url.split("://", 1)[-1].split("/", 1)[0]
    parts = host.split(".")
    if parts[0] == "sqs" and len(parts) > 2:
        return parts[1]
    return None


def cmd_list(args: argparse.Namespace) -> int:
    sqs, queues = _clients(args)
    reports = [inspect(sqs, q, peek=args.peek) for q in queues]
    if args.json:
        print(json.dumps([asdict(r) for r in reports], indent=2))
        return 0
    for r in reports:
        source = r.source and queue_name(r.source)
        print(f"{r.queue:40} {r.kind:9} {r.visible:7} waiting {r.in_flight:5} in flight  -> {source or '?'}")
        for s in r.sample:
            print(f"    {json.dumps(s)}")
    total = sum(r.visible + r.in_flight for r in reports)
    print(f"{total} dead-lettered message(s) in {len(reports)} queue(s)", file=sys.stderr)
    return 0


def cmd_redrive(args: argparse.Namespace) -> int:
    sqs, queues = _clients(args)
    remaining = args.max
    results: list[RedriveResult] = []
    for q in queues:
        if remaining is not None and remaining <= 0:
            break
        if q.source_url is None:
            print(f"fanout: skipping {q.name}: its source queue is unknown", file=sys.stderr)
            continue
        r = redrive(sqs, q, max_messages=remaining, visibility_timeout=args.visibility_timeout)
        results.append(r)
        if remaining is not None:
            remaining -= r.moved
    print(json.dumps([r.as_dict() for r in results], indent=None if not args.json else 2))
    moved = sum(r.moved for r in results)
    failures = sum(r.send_failures + r.delete_failures for r in results)
    print(f"moved {moved} message(s) back to their source queues; {failures} failure(s)", file=sys.stderr)
    return 0 if failures == 0 else 1


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--queue",
        action="append",
        metavar="QUEUE",
        help="a dead-letter queue: URL, name, or a kind (post, partition); repeatable (default: all)",
    )
    p.add_argument("--stack", help="a deployed CloudFormation stack whose queues to use")
    p.add_argument("--local", metavar="FILE", help="local stack state (default .fanout/local.json)")
    p.add_argument("--region", help="AWS Region (default: from the queue URL or the environment)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `dlq list` and `dlq redrive` to the `fanout` command's subparsers."""
    dlq = subparsers.add_parser("dlq", help="list and redrive dead-lettered work")
    sub = dlq.add_subparsers(dest="dlq_command", required=True)
    lst = sub.add_parser("list", help="show what each dead-letter queue holds")
    _common(lst)
    lst.add_argument("--peek", type=int, default=0, help="also summarize up to N messages per queue")
    lst.set_defaults(func=cmd_list)
    red = sub.add_parser("redrive", help="move dead-lettered messages back to their source queues")
    _common(red)
    red.add_argument("--max", type=int, default=None, help="move at most N messages in all (default: all)")
    red.add_argument("--to", help="the source queue URL, when it cannot be found (one --queue only)")
    red.add_argument(
        "--visibility-timeout",
        type=int,
        default=60,
        help="seconds a message being moved stays hidden in the dead-letter queue (default %(default)s)",
    )
    red.set_defaults(func=cmd_redrive)
    return dlq
