"""No loss under faults.

Against a whole local stack with fault injection (the gateway answers 5% 429 and 2% 500 on
PostToConnection): every live connection receives every broadcast, duplicates stay under 0.1% of
frames, every broadcast ends `completed` with exact counts; stale (410) connections are pruned within
the broadcast that found them and partition counts match a full recount after the reconciler runs; a
post worker SIGKILLed mid-batch loses nothing.

DynamoDB Local cannot throttle, so throttling in the query stage is injected in the pipeline harness
with a client wrapper that raises ProvisionedThroughputExceededException.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from fanout.tools.operator_client import OperatorClient
from infra.cdk.config import FanoutConfig
from infra.local.clients import ClientSwarm, client_index
from infra.local.demo import run_broadcasts, wait_registered
from infra.local.stack import LocalStack, StackOptions, local_client
from tests.integration.conftest import local_sqs  # noqa: F401 - the harness's SQS fixture
from tests.integration.pipeline_harness import Pipeline, pipeline

CLIENTS = 300
BATCH = 25
# The post event source mapping's BatchSize as deployed (the CDK app's default), so that a killed
# invocation holds as many post batches as one does in AWS.
POST_SQS_BATCH = FanoutConfig().post_sqs_batch_size


# -- the local stack with faults ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def fault_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    options = StackOptions(
        partitions=10,
        shards=2,
        post_batch_size=BATCH,
        post_workers=2,
        post_sqs_batch_size=POST_SQS_BATCH,
        fault_429=0.05,
        fault_500=0.02,
        # and DynamoDB as AWS behaves (the strict layer's conflict rules are on by default), throttling
        # 2 % of every function's calls
        ddb_throttle_rate=0.02,
        reconcile_every_seconds=3600,  # the tests run the reconciler themselves
        reconcile_quiet_seconds=1,
        state_dir=Path(tmp_path_factory.mktemp("fanout-faults")),
    )
    stack = LocalStack(options, log=lambda _: None)
    state = stack.start()
    try:
        yield state
    finally:
        stack.stop()


def ddb(state: dict[str, Any]) -> Any:
    return local_client("dynamodb", state["dynamodbUrl"])


def http_json(url: str, body: Any = None, method: str | None = None, timeout: float = 60) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url,
        data=data,
        method=method or ("POST" if data else "GET"),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def set_faults(state: dict[str, Any], **faults: float) -> None:
    http_json(state["adminUrl"] + "/faults", faults)


def post_answers(state: dict[str, Any]) -> Counter[str]:
    stats = http_json(state["adminUrl"] + "/stats")
    return Counter({str(k): int(v) for k, v in stats["posts"].items()})


def recount(state: dict[str, Any]) -> tuple[dict[int, int], dict[int, int]]:
    """(stored partition counts, counts recounted from the connections table)."""
    client = ddb(state)
    stored: dict[int, int] = {}
    for page in client.get_paginator("scan").paginate(TableName="fanout-partitions"):
        for item in page["Items"]:
            stored[int(item["partitionId"]["N"])] = int(item.get("connectionCount", {"N": "0"})["N"])
    counted: Counter[int] = Counter()
    for page in client.get_paginator("scan").paginate(TableName="fanout-connections"):
        for item in page["Items"]:
            counted[int(item["partitionId"]["N"])] += 1
    return stored, {p: counted.get(p, 0) for p in stored}


def connection_ids_by_client(state: dict[str, Any]) -> dict[int, str]:
    """Which connection id each swarm client holds, as GetConnection reports it (its User-Agent)."""
    gateway = local_client("apigatewaymanagementapi", state["connectionsUrl"])
    ids = http_json(state["adminUrl"] + "/connections")["connectionIds"]
    by_client: dict[int, str] = {}
    for cid in ids:
        index = client_index(gateway.get_connection(ConnectionId=cid)["Identity"]["UserAgent"])
        if index is not None:
            by_client[index] = cid
    return by_client


def invoke(state: dict[str, Any], function: str, payload: Any) -> Any:
    return http_json(f"{state['lambdaUrl']}/2015-03-31/functions/{function}/invocations", payload)


async def settled_connections(state: dict[str, Any], timeout: float = 60) -> int:
    """Wait until the partition counters agree with the rows (earlier tests' $disconnects are counted)."""
    deadline = time.monotonic() + timeout
    while True:
        stored, counted = await asyncio.to_thread(recount, state)
        sockets = http_json(state["adminUrl"] + "/stats")["connectionsOpen"]
        rows = sum(counted.values())
        if (sum(stored.values()) == rows and rows <= sockets) or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.25)


def assert_exact(view: dict[str, Any], *, live: int, gone: int = 0) -> None:
    assert view["status"] == "completed", view
    assert view["failed"] == 0, view
    assert view["delivered"] == live, view
    assert view["gone"] == gone, view
    assert view["targeted"] == live + gone, view


async def test_every_live_connection_gets_every_broadcast_under_429s_and_500s(
    fault_stack: dict[str, Any],
) -> None:
    state = fault_stack
    set_faults(state, rate429=0.05, rate500=0.02, rate410=0.0, latencyMs=0)
    base = await settled_connections(state)
    before = post_answers(state)
    async with ClientSwarm(state["websocketUrl"], state["connectToken"]) as swarm:
        await swarm.open(CLIENTS)
        assert len(swarm.live()) == CLIENTS
        await wait_registered(state, base + CLIENTS)

        reports = await run_broadcasts(state, swarm, count=3, settle_seconds=10)

        frames = 0
        for r in reports:
            assert_exact(r.view, live=base + CLIENTS)
            assert r.missing == 0, f"{r.missing} live connections missed broadcast {r.broadcast_id}"
            frames += r.received_once + r.duplicates
        duplicates = sum(r.duplicates for r in reports)
        assert duplicates < 0.001 * frames, (duplicates, frames)
    answers = post_answers(state) - before
    # the faults really were injected (7% of ~900 posts), and retried to success
    assert answers.get("429", 0) > 0 and answers.get("500", 0) > 0, answers
    # and DynamoDB really throttled the functions' calls
    with urllib.request.urlopen(state["dynamodbStatsUrl"], timeout=10) as resp:
        strict = json.load(resp)
    throttled = strict.get("ProvisionedThroughputExceededException", 0) + strict.get("ThrottlingException", 0)
    assert throttled > 0, strict


async def test_stale_connections_are_pruned_within_the_broadcast_and_counts_reconcile(
    fault_stack: dict[str, Any],
) -> None:
    state = fault_stack
    set_faults(state, rate429=0.05, rate500=0.02, rate410=0.0, latencyMs=0)
    client = ddb(state)
    base = await settled_connections(state)
    # Given 40 rows for connections the gateway does not know (missed $disconnect an hour ago): it
    # answers 410, and the rows are old enough for the 410 to be believed
    now = int(time.time()) - 3600
    stale = [f"Stale{i:03d}=" for i in range(40)]
    for i, cid in enumerate(stale):
        client.put_item(
            TableName="fanout-connections",
            Item={
                "connectionId": {"S": cid},
                "partitionId": {"N": str(i % 10)},
                "connectedAt": {"N": str(now * 1000)},
                "expiresAt": {"N": str(now + 7200)},
                "userId": {"S": "stale"},
            },
        )
    await wait_registered(state, base + len(stale))
    async with ClientSwarm(state["websocketUrl"], state["connectToken"]) as swarm:
        await swarm.open(60)
        await wait_registered(state, base + len(stale) + 60)

        [report] = await run_broadcasts(state, swarm, count=1, settle_seconds=10)

        # Then they count as gone, and their rows are already deleted when the broadcast completes
        assert_exact(report.view, live=base + 60, gone=len(stale))
        assert report.missing == 0 and report.duplicates == 0
        left = [
            c
            for c in stale
            if "Item" in client.get_item(TableName="fanout-connections", Key={"connectionId": {"S": c}})
        ]
        assert left == []

    # And once the stream settles and the reconciler runs, the counters equal a full recount
    await wait_registered(state, base)
    await asyncio.sleep(1.5)  # the reconciler leaves partitions the stream changed in the last second
    invoke(state, "fanout-reconciler", {"source": "aws.events", "detail-type": "Scheduled Event"})
    stored, counted = recount(state)
    assert stored == counted


async def test_a_post_worker_killed_mid_batch_loses_nothing(fault_stack: dict[str, Any]) -> None:
    state = fault_stack
    # slow posts, so that the kill lands while a batch is half posted
    set_faults(state, rate429=0.05, rate500=0.02, rate410=0.0, latencyMs=40)
    api = OperatorClient(state["httpApiUrl"], bearer_token=state["operatorToken"])
    base = await settled_connections(state)
    try:
        async with ClientSwarm(state["websocketUrl"], state["connectToken"]) as swarm:
            await swarm.open(CLIENTS)
            await wait_registered(state, base + CLIENTS)

            bid = await asyncio.to_thread(api.start, {"kill": "mid-batch"})
            killed = 0
            deadline = time.monotonic() + 60
            while not killed and time.monotonic() < deadline:
                view = await asyncio.to_thread(api.status, bid)
                busy = http_json(state["lambdaUrl"] + "/_local/stats")["functions"]["fanout-post"]["busy"]
                if view["delivered"] > 0 and view["delivered"] < view["targeted"] and busy:
                    # a container the runtime reports mid-invocation: the kill lands inside a batch
                    pid = next(iter(busy))
                    os.kill(int(pid), signal.SIGKILL)
                    killed = int(pid)
                await asyncio.sleep(0.02)
            assert killed, "no post worker was caught mid-batch"

            # the killed batch comes back after its visibility timeout (30 s locally)
            view = await asyncio.to_thread(api.wait, bid, timeout=150, interval=0.2)
            assert_exact(view, live=base + CLIENTS)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(n == 0 for n in swarm.receipts_for(bid).values()):
                await asyncio.sleep(0.05)
            counts = swarm.receipts_for(bid)
            missing = sum(1 for c in swarm.live() if counts[c.index] == 0)
            duplicates = sum(max(0, n - 1) for n in counts.values())
            assert missing == 0
            # the killed invocation's records come back whole; those whose ledger entry was written
            # are skipped, the ones it was posting are posted again from their start. It held at
            # most POST_SQS_BATCH records (the deployed post mapping's batch size), so at most that
            # many batches' worth of duplicates, and never a duplicate outside them
            assert duplicates <= POST_SQS_BATCH * BATCH, duplicates
            # the runtime saw that invocation die, holding those records: duplicates stay within their ids
            stats = http_json(state["lambdaUrl"] + "/_local/stats")["functions"]["fanout-post"]
            # one invocation died under the kill: the container was busy when it landed. It may be
            # the invocation after the one `busy` showed (the container can finish one and take the
            # next between the read and the signal), so the crash record, not that read, says which
            [crash] = [c for c in stats["crashed"] if c["pid"] == killed]
            assert crash["requestId"]
            records = crash["event"]["Records"]
            assert 1 <= len(records) <= POST_SQS_BATCH
            held = {c for r in records for c in json.loads(r["body"])["connectionIds"]}
            assert duplicates <= len(held), (duplicates, len(held))
            # every client that got a second frame holds a connection of the killed invocation's
            # records: a duplicate anywhere else would be a replay the ledger failed to stop
            ids = await asyncio.to_thread(connection_ids_by_client, state)
            assert len(ids) == len(swarm.live())
            doubled = {ids[index] for index, n in counts.items() if n > 1}
            assert doubled <= held, sorted(doubled - held)[:5]
            # and a re-post is one extra frame: no connection got three or more
            assert max(counts.values()) <= 2, Counter(counts.values())
            assert killed not in stats["pids"]
    finally:
        set_faults(state, rate429=0.05, rate500=0.02, rate410=0.0, latencyMs=0)


# -- DynamoDB throttling in the query stage (pipeline harness) ----------------------------------------
class ThrottlingDynamoDB:
    """Wraps the query stage's aioboto3 DynamoDB client: Query/GetItem/TransactWriteItems raise
    ProvisionedThroughputExceededException (as botocore does once its own retries are spent) with
    probability `rate`, at most once per distinct request, so that every task succeeds within SQS's
    maxReceiveCount (5) and what is measured is recovery, not the dead-letter path."""

    THROTTLED = ("query", "get_item", "transact_write_items")

    def __init__(self, client: Any, rate: float = 0.5, seed: int = 7) -> None:
        self._client = client
        self.rate = rate
        self._rng = random.Random(seed)
        self._seen: set[str] = set()
        self.calls = 0
        self.throttled = 0

    @staticmethod
    def _key(name: str, kwargs: dict[str, Any]) -> str:
        if name == "transact_write_items":
            return name + str(kwargs["TransactItems"][0]["Put"]["Item"]["id"])
        return name + json.dumps(
            [kwargs.get("Key"), kwargs.get("ExpressionAttributeValues"), kwargs.get("ExclusiveStartKey")],
            sort_keys=True,
        )

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name not in self.THROTTLED:
            return attr

        async def call(**kwargs: Any) -> Any:
            self.calls += 1
            key = self._key(name, kwargs)
            if key not in self._seen and self._rng.random() < self.rate:
                self._seen.add(key)
                self.throttled += 1
                raise ClientError(
                    {
                        "Error": {
                            "Code": "ProvisionedThroughputExceededException",
                            "Message": "The level of configured provisioned throughput was exceeded.",
                        },
                        "ResponseMetadata": {"HTTPStatusCode": 400},
                    },
                    name,
                )
            self._seen.add(key)
            return await attr(**kwargs)

        return call


@pytest.fixture
def pipe(dynamodb_local: str, local_sqs: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pipeline]:  # noqa: F811
    with pipeline(
        dynamodb_local, local_sqs, monkeypatch, partition_count=12, shard_count=2, post_batch_size=20
    ) as p:
        yield p


def test_dynamodb_throttling_in_the_query_stage_loses_nothing(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

    import handlers.query

    real = handlers.query.handler

    def as_lambda(event: dict[str, Any], context: Any) -> Any:
        # a function error (every record failed) returns the whole batch to the queue, as in Lambda
        try:
            return real(event, context)
        except BatchProcessingError:
            return {"batchItemFailures": [{"itemIdentifier": r["messageId"]} for r in event["Records"]]}

    monkeypatch.setattr(handlers.query, "handler", as_lambda)

    per_partition = {p: [f"q{p:02d}x{i:02d}=" for i in range(25)] for p in range(12)}
    everyone = [c for ids in per_partition.values() for c in ids]
    pipe.seed_connections(per_partition)
    pipe.connections.live.update(everyone)
    deps = handlers.query.deps().deps
    tables = (deps.broadcasts, deps.connections)
    throttler = ThrottlingDynamoDB(deps.broadcasts.client)
    for table in tables:
        table.client = throttler
    try:
        status, body, _ = pipe.api("POST", "/broadcasts", body={"message": {"throttled": True}})
        assert status == 202
        pipe.run_swarms()
        # failed tasks come back after the queue's visibility timeout (2 s in the harness)
        pipe.drain(idle_rounds=20)
    finally:
        for table in tables:
            table.client = throttler._client
    view = pipe.api("GET", f"/broadcasts/{body['broadcastId']}")[1]

    assert throttler.throttled > 0
    assert_exact(view, live=len(everyone))
    assert view["partitions"] == 12
    assert {c: len(f) for c, f in pipe.connections.frames.items()} == dict.fromkeys(everyone, 1)
