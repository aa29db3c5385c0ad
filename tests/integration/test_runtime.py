"""The local Lambda runtime (infra/local/runtime.py), driven as the stack drives it: the CLI in a child
process, boto3's `lambda` client against its Invoke API, the project's SQS server, DynamoDB Local for
streams. Handlers live in tests/integration/runtime_handlers/ and report through files."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import boto3
import pytest
from botocore.exceptions import ClientError

from infra.local import procs
from infra.local.runtime_config import RuntimeConfig

ROOT = Path(__file__).resolve().parents[2]
H = "tests.integration.runtime_handlers"
T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 30.0) -> T:
    """Poll `check` until it returns something truthy; the deadline only guards against a hang."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class RunningRuntime:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/_local/stats") as resp:
            return dict(json.load(resp))

    def client(self) -> Any:
        return boto3.client("lambda", endpoint_url=self.url, region_name="us-east-1")


@contextmanager
def runtime_process(config: dict[str, Any], workdir: Path) -> Iterator[RunningRuntime]:
    """`python -m infra.local.runtime --config F` in its own process group, stopped with SIGTERM."""
    port = procs.free_port()
    cfg = RuntimeConfig.model_validate({**config, "port": port, "asyncRetryDelay": 0.1})
    path = workdir / f"runtime-{port}.json"
    path.write_text(cfg.dump_json())
    log = workdir / f"runtime-{port}.log"
    proc = procs.start(
        [sys.executable, "-m", "infra.local.runtime", "--config", str(path)], log=log, cwd=ROOT
    )
    try:
        procs.wait_for_port("127.0.0.1", port, timeout=30, proc=proc)
        yield RunningRuntime(proc, f"http://127.0.0.1:{port}", log)
    finally:
        procs.stop(proc)


def fn(name: str, handler: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "handler": f"{H}.{handler}", **extra}


# ---------------------------------------------------------------------------------------------------


@dataclass
class Stack:
    rt: RunningRuntime
    dir: Path
    sqs: Any
    queues: dict[str, str]


@pytest.fixture(scope="module")
def stack(local_sqs: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    side = tmp_path_factory.mktemp("runtime")
    sqs = boto3.client("sqs", endpoint_url=local_sqs, region_name="us-east-1")
    dlq = sqs.create_queue(QueueName="rt-partial-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "2"})
    queues = {
        "partial": sqs.create_queue(
            QueueName="rt-partial", Attributes={"VisibilityTimeout": "2", "RedrivePolicy": redrive}
        )["QueueUrl"],
        "dlq": dlq,
        "batch": sqs.create_queue(QueueName="rt-batch")["QueueUrl"],
        "slow": sqs.create_queue(QueueName="rt-slow", Attributes={"VisibilityTimeout": "60"})["QueueUrl"],
        "async-failures": sqs.create_queue(QueueName="rt-async-failures")["QueueUrl"],
    }
    config = {
        "functions": [
            fn(
                "echo",
                "echo.handler",
                reservedConcurrency=1,
                environment={"RUNTIME_TEST_VALUE": "from-function"},
            ),
            fn("echo-timeout", "echo.handler", reservedConcurrency=1, timeout=1),
            fn("echo-crash", "echo.handler", reservedConcurrency=1),
            fn("async-ok", "recorder.handler"),
            fn(
                "async-fail",
                "recorder.handler",
                environment={"FAIL_ALWAYS": "1"},
                onFailureQueueUrl=queues["async-failures"],
            ),
            fn("missing-module", "runtime_handlers_that_do_not_exist.handler"),
            fn("sqs-partial", "sqs_partial.handler"),
            fn("sqs-batch", "recorder.handler"),
            fn("slow", "slow.handler", reservedConcurrency=5),
            fn("scheduled", "recorder.handler"),
            {"name": "ping", "handler": "handlers.default.handler"},
        ],
        "sqsMappings": [
            {"function": "sqs-partial", "queueUrl": queues["partial"], "reportBatchItemFailures": True},
            {
                "function": "sqs-batch",
                "queueUrl": queues["batch"],
                "batchSize": 100,
                "maximumBatchingWindow": 2,
            },
            {"function": "slow", "queueUrl": queues["slow"], "batchSize": 1, "maximumConcurrency": 2},
        ],
        "schedules": [{"function": "scheduled", "rateSeconds": 1, "name": "every-second"}],
        "environment": {"RUNTIME_TEST_DIR": str(side), "RUNTIME_TEST_VALUE": "from-runtime"},
    }
    with runtime_process(config, side) as rt:
        yield Stack(rt, side, sqs, queues)


# ---- Invoke API ------------------------------------------------------------------------------------


def test_request_response_returns_the_result_with_a_lambda_context_and_warm_state(stack: Stack) -> None:
    client = stack.rt.client()

    first = client.invoke(FunctionName="echo", Payload=json.dumps({"hello": "world"}))
    second = client.invoke(FunctionName="arn:aws:lambda:us-east-1:000000000000:function:echo", Payload=b"{}")

    assert first["StatusCode"] == 200 and "FunctionError" not in first
    a = json.loads(first["Payload"].read())
    b = json.loads(second["Payload"].read())
    assert a["event"] == {"hello": "world"}
    assert a["functionName"] == "echo"
    assert a["functionVersion"] == "$LATEST"
    assert a["invokedFunctionArn"] == "arn:aws:lambda:us-east-1:000000000000:function:echo"
    assert a["memoryLimitInMb"] == 128
    assert a["logGroupName"] == "/aws/lambda/echo"
    assert 0 < a["remainingMs"] <= 3000
    assert a["env"] == "from-function"  # function environment wins over the runtime's
    assert a["awsRequestId"] != b["awsRequestId"]
    # one warm container: same process, module state kept
    assert b["pid"] == a["pid"]
    assert b["invocations"] == a["invocations"] + 1


TRACE_HEADER = re.compile(r"Root=1-[0-9a-f]{8}-[0-9a-f]{24};Parent=[0-9a-f]{16};Sampled=1")


def test_every_invocation_runs_traced_and_sampled_with_a_fresh_trace_header(stack: Stack) -> None:
    """Lambda with active tracing sets `_X_AMZN_TRACE_ID` per invocation and points the SDK at the
    daemon through `AWS_XRAY_DAEMON_ADDRESS`
    (https://docs.aws.amazon.com/lambda/latest/dg/configuration-envvars.html#configuration-envvars-runtime,
    https://docs.aws.amazon.com/xray/latest/devguide/xray-concepts.html#xray-concepts-tracingheader)."""

    def invoke() -> dict[str, Any]:
        # a bare request: boto3 here is traced too and would send its own X-Amzn-Trace-Id to continue
        request = urllib.request.Request(f"{stack.rt.url}/2015-03-31/functions/echo/invocations", data=b"{}")
        with urllib.request.urlopen(request) as resp:
            return dict(json.load(resp))

    first, second = invoke(), invoke()

    assert first["pid"] == second["pid"]  # one warm container, yet a header per invocation
    assert TRACE_HEADER.fullmatch(first["traceId"]) and TRACE_HEADER.fullmatch(second["traceId"])
    assert first["traceId"].split(";")[0] != second["traceId"].split(";")[0]
    assert first["daemonAddress"] == stack.rt.stats()["xray"]["daemonAddress"]


def test_a_callers_trace_header_is_continued(stack: Stack) -> None:
    caller = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
    request = urllib.request.Request(
        f"{stack.rt.url}/2015-03-31/functions/echo/invocations",
        data=b"{}",
        headers={"X-Amzn-Trace-Id": caller},
    )
    with urllib.request.urlopen(request) as resp:
        trace = json.load(resp)["traceId"]

    root, parent, sampled = trace.split(";")
    assert root == "Root=1-5759e988-bd862e3fe1be46a994272793" and sampled == "Sampled=1"
    assert parent != "Parent=53995c3f42cd8ad8"  # the function's segment is a child of the caller's


def test_the_runtimes_daemon_sink_receives_a_traced_handlers_subsegments(stack: Stack) -> None:
    before = stack.rt.stats()["xray"]["documents"]

    out = stack.rt.client().invoke(FunctionName="ping", Payload=b"{}")  # handlers.default answers anything

    assert json.loads(json.loads(out["Payload"].read())["body"]) == {
        "type": "error",
        "action": None,
        "code": "invalid",
        "message": "unreadable request",
        "error": "unreadable request",
    }
    stats = wait_for(
        "the handler's subsegment", lambda: (s := stack.rt.stats()["xray"])["documents"] > before and s
    )
    assert stats["malformed"] == 0 and stats["faults"] == 0
    with urllib.request.urlopen(f"{stack.rt.url}/_local/traces") as resp:
        docs = json.load(resp)["documents"]
    handler = [d for d in docs if d["name"] == "## handler"][-1]
    assert handler["type"] == "subsegment" and handler["annotations"]["Service"] == "fanout"
    with urllib.request.urlopen(f"{stack.rt.url}/_local/traces?traceId={handler['trace_id']}") as resp:
        assert handler in json.load(resp)["documents"]


def test_function_error_is_200_with_function_error_header(stack: Stack) -> None:
    out = stack.rt.client().invoke(FunctionName="echo", Payload=json.dumps({"fail": "boom"}))

    assert out["StatusCode"] == 200
    assert out["FunctionError"] == "Unhandled"
    err = json.loads(out["Payload"].read())
    assert err["errorType"] == "ValueError"
    assert err["errorMessage"] == "asked to fail: boom"
    assert any("echo.py" in frame for frame in err["stackTrace"])
    assert "[echo:0] [ERROR] ValueError: asked to fail: boom" in stack.rt.log.read_text()


def test_import_error_is_a_function_error(stack: Stack) -> None:
    out = stack.rt.client().invoke(FunctionName="missing-module", Payload=b"{}")

    assert out["FunctionError"] == "Unhandled"
    assert json.loads(out["Payload"].read())["errorType"] == "Runtime.ImportModuleError"


def test_unknown_function_is_resource_not_found(stack: Stack) -> None:
    with pytest.raises(ClientError) as info:
        stack.rt.client().invoke(FunctionName="no-such-function", Payload=b"{}")

    assert info.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_event_invocation_is_queued_and_run(stack: Stack) -> None:
    out = stack.rt.client().invoke(FunctionName="async-ok", InvocationType="Event", Payload=b'{"n": 1}')

    assert out["StatusCode"] == 202
    seen = wait_for("the async invocation", lambda: read_jsonl(stack.dir / "async-ok.jsonl"))
    assert seen[0]["event"] == {"n": 1}


def test_failed_event_invocation_is_retried_twice(stack: Stack) -> None:
    stack.rt.client().invoke(FunctionName="async-fail", InvocationType="Event", Payload=b'{"n": 2}')

    def finished() -> dict[str, Any] | None:
        st = stack.rt.stats()["functions"]["async-fail"]
        return st if st["asyncFailed"] == 1 else None

    st = wait_for("retries to run out", finished)
    attempts = read_jsonl(stack.dir / "async-fail.jsonl")
    assert len(attempts) == 3 and st["invocations"] == 3 and st["asyncRetries"] == 2
    assert len({a["requestId"] for a in attempts}) == 1  # retries keep the request id, as in AWS


def test_an_event_whose_retries_are_exhausted_goes_to_the_on_failure_destination(stack: Stack) -> None:
    """https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-retain-records.html: after the
    retries, the invocation record (request and response payloads, condition RetriesExhausted) goes to
    the on-failure destination."""
    stack.rt.client().invoke(FunctionName="async-fail", InvocationType="Event", Payload=b'{"n": 3}')

    def record() -> dict[str, Any] | None:
        got = stack.sqs.receive_message(QueueUrl=stack.queues["async-failures"], WaitTimeSeconds=1)
        for m in got.get("Messages", []):
            body = json.loads(m["Body"])
            if body["requestPayload"] == {"n": 3}:
                return dict(body)
        return None

    body = wait_for("the on-failure destination record", record)
    context = body["requestContext"]
    assert context["condition"] == "RetriesExhausted" and context["approximateInvokeCount"] == 3
    assert context["functionArn"].endswith(":function:async-fail:$LATEST")
    assert body["responseContext"]["functionError"] == "Unhandled"
    assert body["responsePayload"]["errorMessage"] == "failing on purpose"
    assert body["version"] == "1.0" and body["timestamp"].endswith("Z")


def test_timeout_kills_the_container_and_a_new_one_replaces_it(stack: Stack) -> None:
    client = stack.rt.client()
    before = json.loads(client.invoke(FunctionName="echo-timeout", Payload=b"{}")["Payload"].read())

    out = client.invoke(FunctionName="echo-timeout", Payload=json.dumps({"sleep": 30}))

    assert out["FunctionError"] == "Unhandled"
    err = json.loads(out["Payload"].read())
    assert err["errorType"] == "Sandbox.Timedout"
    assert "Task timed out after 1.00 seconds" in err["errorMessage"]
    assert not alive(before["pid"])
    after = json.loads(client.invoke(FunctionName="echo-timeout", Payload=b"{}")["Payload"].read())
    assert after["pid"] != before["pid"]
    assert after["invocations"] == 1  # a fresh container: cold start, module state reset
    st = stack.rt.stats()["functions"]["echo-timeout"]
    assert st["timeouts"] == 1 and st["coldStarts"] == 2 and st["errors"] == 1


def test_a_crashed_container_is_a_function_error_and_is_replaced(stack: Stack) -> None:
    client = stack.rt.client()
    before = json.loads(client.invoke(FunctionName="echo-crash", Payload=b"{}")["Payload"].read())

    out = client.invoke(FunctionName="echo-crash", Payload=json.dumps({"exit": True}))

    assert out["FunctionError"] == "Unhandled"
    assert json.loads(out["Payload"].read())["errorType"] == "Runtime.ExitError"
    after = json.loads(client.invoke(FunctionName="echo-crash", Payload=b"{}")["Payload"].read())
    assert after["pid"] != before["pid"] and after["invocations"] == 1
    assert stack.rt.stats()["functions"]["echo-crash"]["crashes"] == 1


# ---- SQS event source mappings -----------------------------------------------------------------------


def test_sqs_partial_batch_failure_returns_only_failed_items_then_dead_letters_them(stack: Stack) -> None:
    bodies = ["ok-0", "fail-0", "ok-1", "fail-1", "ok-2"]
    stack.sqs.send_message_batch(
        QueueUrl=stack.queues["partial"],
        Entries=[
            {
                "Id": str(i),
                "MessageBody": b,
                "MessageAttributes": {"kind": {"DataType": "String", "StringValue": "t"}},
            }
            for i, b in enumerate(bodies)
        ],
    )

    dead: list[str] = []

    def dead_lettered() -> list[str] | None:
        out = stack.sqs.receive_message(
            QueueUrl=stack.queues["dlq"], MaxNumberOfMessages=10, WaitTimeSeconds=1
        )
        dead.extend(m["Body"] for m in out.get("Messages", []))
        return dead if len(dead) >= 2 else None

    wait_for("the failing messages in the DLQ", dead_lettered, timeout=60)

    assert sorted(dead) == ["fail-0", "fail-1"]
    seen = read_jsonl(stack.dir / "sqs-partial.jsonl")
    for body in ("ok-0", "ok-1", "ok-2"):  # deleted after the first invocation
        assert [s["receiveCount"] for s in seen if s["body"] == body] == ["1"]
    for body in ("fail-0", "fail-1"):  # received maxReceiveCount times, then redriven by the queue
        assert [s["receiveCount"] for s in seen if s["body"] == body] == ["1", "2"]
    record = seen[0]["record"]
    assert record["eventSource"] == "aws:sqs"
    arn = stack.sqs.get_queue_attributes(QueueUrl=stack.queues["partial"], AttributeNames=["QueueArn"])
    assert record["eventSourceARN"] == arn["Attributes"]["QueueArn"]
    assert record["eventSourceARN"].startswith("arn:aws:sqs:us-east-1:")
    assert record["awsRegion"] == "us-east-1"
    assert set(record["attributes"]) >= {
        "ApproximateReceiveCount",
        "SentTimestamp",
        "SenderId",
        "ApproximateFirstReceiveTimestamp",
    }
    assert record["messageAttributes"]["kind"]["stringValue"] == "t"
    assert record["messageAttributes"]["kind"]["dataType"] == "String"
    assert record["md5OfBody"] and record["receiptHandle"] and record["messageId"]


def test_sqs_batching_window_gathers_more_than_ten_messages_into_one_invocation(stack: Stack) -> None:
    bodies = [f"m{i}" for i in range(30)]
    for start in range(0, 30, 10):
        stack.sqs.send_message_batch(
            QueueUrl=stack.queues["batch"],
            Entries=[{"Id": str(i), "MessageBody": b} for i, b in enumerate(bodies[start : start + 10])],
        )

    def delivered() -> list[dict[str, Any]] | None:
        calls = read_jsonl(stack.dir / "sqs-batch.jsonl")
        return calls if sum(len(c["event"]["Records"]) for c in calls) >= 30 else None

    calls = wait_for("30 messages", delivered)

    got = [r["body"] for c in calls for r in c["event"]["Records"]]
    assert sorted(got) == sorted(bodies)  # each exactly once
    assert max(len(c["event"]["Records"]) for c in calls) > 10

    def all_deleted() -> bool:
        mappings = stack.rt.stats()["sqsMappings"].values()
        return next(v for v in mappings if v["queueUrl"] == stack.queues["batch"])["deleted"] == 30

    wait_for("the batch to be deleted", all_deleted)


def test_sqs_maximum_concurrency_is_respected(stack: Stack) -> None:
    stack.sqs.send_message_batch(
        QueueUrl=stack.queues["slow"], Entries=[{"Id": str(i), "MessageBody": str(i)} for i in range(10)]
    )
    stack.sqs.send_message_batch(
        QueueUrl=stack.queues["slow"], Entries=[{"Id": str(i), "MessageBody": str(i)} for i in range(10, 14)]
    )

    def fourteen() -> list[dict[str, Any]] | None:
        calls = read_jsonl(stack.dir / "slow.jsonl")
        return calls if len(calls) >= 14 else None

    calls = wait_for("14 invocations", fourteen)

    assert len(calls) == 14 and all(c["records"] == 1 for c in calls)
    assert max(c["seen"] for c in calls) <= 2  # never more than maximumConcurrency at once...
    st = stack.rt.stats()
    assert st["functions"]["slow"]["maxConcurrent"] == 2  # ...though the function allows 5
    assert st["functions"]["slow"]["limit"] == 5


# ---- schedules -----------------------------------------------------------------------------------------


def test_schedule_invokes_the_function_with_a_scheduled_event(stack: Stack) -> None:
    calls = wait_for("a scheduled invocation", lambda: read_jsonl(stack.dir / "scheduled.jsonl"))

    event = calls[0]["event"]
    assert event["detail-type"] == "Scheduled Event"
    assert event["source"] == "aws.events"
    assert event["resources"] == ["arn:aws:events:us-east-1:000000000000:rule/every-second"]
    assert event["detail"] == {} and event["account"] == "000000000000" and event["time"].endswith("Z")


# ---- DynamoDB Streams ------------------------------------------------------------------------------------


def test_dynamodb_stream_delivers_in_order_and_retries_from_the_failed_record(
    dynamodb_local: str, tmp_path: Path
) -> None:
    ddb = boto3.client("dynamodb", endpoint_url=dynamodb_local, region_name="us-east-1")
    table = f"rt-stream-{tmp_path.name[-8:]}"
    stream_arn = ddb.create_table(
        TableName=table,
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )["TableDescription"]["LatestStreamArn"]
    config = {
        "functions": [fn("stream", "stream_partial.handler")],
        "dynamodbStreamMappings": [
            {
                "function": "stream",
                "streamArn": stream_arn,
                "endpointUrl": dynamodb_local,
                "startingPosition": "TRIM_HORIZON",
                "batchSize": 10,
                "maximumBatchingWindow": 0.5,
                "reportBatchItemFailures": True,
                "maximumRetryAttempts": 3,
            }
        ],
        "environment": {"RUNTIME_TEST_DIR": str(tmp_path)},
    }
    with runtime_process(config, tmp_path) as rt:
        for i in range(1, 6):
            ddb.put_item(TableName=table, Item={"pk": {"S": f"k{i}"}, "v": {"N": str(i)}})
        ddb.delete_item(TableName=table, Key={"pk": {"S": "k1"}})

        def all_processed() -> dict[str, Any] | None:
            st = next(iter(rt.stats()["streamMappings"].values()))
            return st if st["records"] >= 6 else None

        st = wait_for("six stream records", all_processed)

    processed = read_jsonl(tmp_path / "stream.jsonl")
    assert [(p["eventName"], p["key"]) for p in processed] == [
        ("INSERT", "k1"),
        ("INSERT", "k2"),
        ("INSERT", "k3"),
        ("INSERT", "k4"),
        ("INSERT", "k5"),
        ("REMOVE", "k1"),
    ]
    batches = [b["keys"] for b in read_jsonl(tmp_path / "stream-batches.jsonl")]
    failed_at = next(i for i, keys in enumerate(batches) if "k3" in keys)
    assert batches[failed_at + 1][0] == "k3"  # retried from the checkpoint, not from the batch start
    assert st["partialFailures"] == 1 and st["records"] == 6 and st["droppedRecords"] == 0

    insert, remove = processed[0]["record"], processed[5]["record"]
    assert insert["eventSource"] == "aws:dynamodb" and insert["eventSourceARN"] == stream_arn
    assert insert["dynamodb"]["Keys"] == {"pk": {"S": "k1"}}
    assert insert["dynamodb"]["NewImage"] == {"pk": {"S": "k1"}, "v": {"N": "1"}}
    assert insert["dynamodb"]["StreamViewType"] == "NEW_AND_OLD_IMAGES"
    assert isinstance(insert["dynamodb"]["ApproximateCreationDateTime"], int | float)
    assert remove["dynamodb"]["OldImage"] == {"pk": {"S": "k1"}, "v": {"N": "1"}}
    assert "NewImage" not in remove["dynamodb"]
    seqs = [int(p["record"]["dynamodb"]["SequenceNumber"]) for p in processed]
    assert seqs == sorted(seqs)


# ---- process hygiene -------------------------------------------------------------------------------------


def _worker_pids(rt: RunningRuntime, count: int) -> list[int]:
    client = rt.client()
    for _ in range(count):
        client.invoke(FunctionName="echo", InvocationType="Event", Payload=json.dumps({"sleep": 2}))

    def started() -> list[int] | None:
        pids: list[int] = rt.stats()["functions"]["echo"]["pids"]
        return pids if len(pids) >= count else None

    return wait_for("the workers", started)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stopping_the_runtime_stops_its_workers(tmp_path: Path, sig: signal.Signals) -> None:
    config = {"functions": [fn("echo", "echo.handler", reservedConcurrency=2)]}
    with runtime_process(config, tmp_path) as rt:
        pids = _worker_pids(rt, 2)
        os.kill(rt.proc.pid, sig)

        assert rt.proc.wait(timeout=30) == 0
        assert not [p for p in pids if alive(p)]
        assert '"runtime stopped"' in rt.log.read_text()


def test_workers_die_with_a_killed_runtime(tmp_path: Path) -> None:
    config = {"functions": [fn("echo", "echo.handler", reservedConcurrency=2)]}
    with runtime_process(config, tmp_path) as rt:
        pids = _worker_pids(rt, 2)
        os.kill(rt.proc.pid, signal.SIGKILL)  # no chance to clean up: the workers must notice alone
        rt.proc.wait(timeout=30)

        wait_for("the orphaned workers to exit", lambda: not [p for p in pids if alive(p)])
