"""The strict DynamoDB layer (infra/local/ddb_strict.py) against AWS's documented rules.

Each test pins one rule the layer emulates in front of DynamoDB Local, and names the AWS page that
states it. Conflicts are made deterministic by holding a transaction open (a long minimum hold)
and sending the contending request once the layer reports the hold, then releasing it: waits are
on the layer's events, never on sleeps.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import aioboto3
import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from infra.local.ddb_strict import StrictConfig, StrictDynamoDBThread
from infra.local.ddb_strict_rules import CONFLICT_MESSAGE, PROVISIONED, THROTTLING, throttle_outcomes

REGION = "us-east-1"
KEYS: dict[str, Any] = {"aws_access_key_id": "strict", "aws_secret_access_key": "strict"}
LONG_HOLD_MS = 60_000.0  # ended by release_holds() once the contending requests are answered
NO_RETRIES = Config(retries={"mode": "standard", "total_max_attempts": 1})
# the engine's clients (fanout/container.py)
ENGINE_RETRIES = Config(retries={"mode": "standard", "max_attempts": 5})


def client(endpoint: str, config: Config = NO_RETRIES) -> Any:
    return boto3.client("dynamodb", endpoint_url=endpoint, region_name=REGION, config=config, **KEYS)


@contextmanager
def strict(upstream: str, **options: Any) -> Iterator[StrictDynamoDBThread]:
    with StrictDynamoDBThread(StrictConfig(upstream=upstream, **options)) as proxy:
        yield proxy


@pytest.fixture
def table(dynamodb_local_raw: str) -> str:
    """A fresh table (hash key `pk`, S) created directly in DynamoDB Local."""
    name = f"strict-{uuid.uuid4().hex[:10]}"
    client(dynamodb_local_raw).create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return name


def add_one(table: str, pk: str) -> dict[str, Any]:
    return {
        "Update": {
            "TableName": table,
            "Key": {"pk": {"S": pk}},
            "UpdateExpression": "ADD n :one",
            "ExpressionAttributeValues": {":one": {"N": "1"}},
        }
    }


def ledger_put(table: str, pk: str) -> dict[str, Any]:
    return {
        "Put": {
            "TableName": table,
            "Item": {"pk": {"S": pk}},
            "ConditionExpression": "attribute_not_exists(pk)",
        }
    }


def counter(ddb: Any, table: str, pk: str) -> int:
    item = ddb.get_item(TableName=table, Key={"pk": {"S": pk}}, ConsistentRead=True).get("Item")
    return int(item["n"]["N"]) if item else 0


@contextmanager
def held_transaction(
    proxy: StrictDynamoDBThread, ddb: Any, items: list[dict[str, Any]]
) -> Iterator[Future[Any]]:
    """Send a TransactWriteItems in the background and return once the layer holds it; on exit,
    release the hold and wait for its answer."""
    with ThreadPoolExecutor(1) as pool:
        done = pool.submit(ddb.transact_write_items, TransactItems=items)
        proxy.wait_held(1)
        try:
            yield done
        finally:
            proxy.release_holds()
            done.result(timeout=30)


def error(call: Callable[[], Any]) -> dict[str, Any]:
    with pytest.raises(ClientError) as info:
        call()
    return dict(info.value.response)


# -- TransactWriteItems against TransactWriteItems ----------------------------------------------------


def test_transaction_on_an_item_held_by_another_transaction_is_cancelled(
    dynamodb_local_raw: str, table: str
) -> None:
    """https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/transaction-apis.html#transaction-conflict-handling
    ("An item within a TransactWriteItems request is part of another ongoing TransactWriteItems
    request") and https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_TransactWriteItems.html
    (TransactionCanceledException; CancellationReasons ordered like TransactItems, code None for
    the items that did not cause the cancellation, TransactionConflict with "Transaction is ongoing
    for the item" for the contended one)."""
    with strict(dynamodb_local_raw, transaction_hold_ms=LONG_HOLD_MS) as proxy:
        ddb = client(proxy.endpoint)
        with held_transaction(proxy, ddb, [ledger_put(table, "ledger-1"), add_one(table, "hot")]):
            response = error(
                lambda: ddb.transact_write_items(
                    TransactItems=[
                        ledger_put(table, "ledger-2"),
                        add_one(table, "hot"),
                        {
                            "ConditionCheck": {
                                "TableName": table,
                                "Key": {"pk": {"S": "cold"}},
                                "ConditionExpression": "attribute_not_exists(pk)",
                            }
                        },
                    ]
                )
            )
        raw = client(dynamodb_local_raw)
        assert response["Error"]["Code"] == "TransactionCanceledException"
        assert response["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert response["Error"]["Message"] == (
            "Transaction cancelled, please refer cancellation reasons for specific reasons "
            "[None, TransactionConflict, None]"
        )
        assert response["CancellationReasons"] == [
            {"Code": "None"},
            {"Code": "TransactionConflict", "Message": CONFLICT_MESSAGE},
            {"Code": "None"},
        ]
        assert response["ResponseMetadata"]["RetryAttempts"] == 0  # botocore does not retry it
        # the cancelled transaction applied nothing; the held one applied everything
        assert counter(raw, table, "hot") == 1
        assert "Item" not in raw.get_item(TableName=table, Key={"pk": {"S": "ledger-2"}})
        assert "Item" in raw.get_item(TableName=table, Key={"pk": {"S": "ledger-1"}})
        assert proxy.stats()["transactionsCancelled"] == 1


async def test_aioboto3_sees_the_same_cancellation_reasons(dynamodb_local_raw: str, table: str) -> None:
    """https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_TransactWriteItems.html
    and https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_CancellationReason.html:
    the engine's aioboto3 clients parse the cancellation as botocore does against AWS."""
    with strict(dynamodb_local_raw, transaction_hold_ms=LONG_HOLD_MS) as proxy:
        sync = client(proxy.endpoint)
        with held_transaction(proxy, sync, [add_one(table, "hot")]):
            session = aioboto3.Session()
            async with session.client(
                "dynamodb", endpoint_url=proxy.endpoint, region_name=REGION, config=ENGINE_RETRIES, **KEYS
            ) as ddb:
                with pytest.raises(ClientError) as info:
                    await ddb.transact_write_items(
                        TransactItems=[add_one(table, "hot"), ledger_put(table, "other")]
                    )
        response = info.value.response
        assert response["Error"]["Code"] == "TransactionCanceledException"
        assert response["CancellationReasons"] == [
            {"Code": "TransactionConflict", "Message": CONFLICT_MESSAGE},
            {"Code": "None"},
        ]
        assert response["ResponseMetadata"]["RetryAttempts"] == 0


def test_concurrent_transactions_on_one_item_apply_exactly_the_successful_ones(
    dynamodb_local_raw: str, table: str
) -> None:
    """https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/transaction-apis.html#transaction-conflict-handling
    ("Multiple transactions updating the same items simultaneously can cause conflicts that cancel
    the transactions"): of N concurrent transactions on one item, the ones cancelled with
    TransactionConflict applied nothing, and the others applied exactly once (no lost update, no
    phantom one). The first transaction is held until every other one has been answered, so the
    outcome does not depend on timing: exactly one succeeds."""
    contenders = 12
    with strict(dynamodb_local_raw, transaction_hold_ms=LONG_HOLD_MS) as proxy:
        ddb = client(proxy.endpoint)
        start = threading.Barrier(contenders)
        answered: list[str] = []
        lock = threading.Lock()

        def transact(i: int) -> str:
            start.wait()
            try:
                ddb.transact_write_items(
                    TransactItems=[ledger_put(table, f"ledger-{i}"), add_one(table, "hot")]
                )
                outcome = "applied"
            except ClientError as exc:
                reasons = exc.response.get("CancellationReasons")
                assert reasons == [
                    {"Code": "None"},
                    {"Code": "TransactionConflict", "Message": CONFLICT_MESSAGE},
                ]
                outcome = "cancelled"
            with lock:
                answered.append(outcome)
            return outcome

        with ThreadPoolExecutor(contenders) as pool:
            futures = [pool.submit(transact, i) for i in range(contenders)]
            proxy.wait_held(1)
            # every other transaction is answered while the first one is held
            proxy.wait_for(lambda s: s["transactionsCancelled"] == contenders - 1)
            proxy.release_holds()
            outcomes = [f.result(timeout=30) for f in futures]

    raw = client(dynamodb_local_raw)
    applied = [i for i, o in enumerate(outcomes) if o == "applied"]
    assert len(applied) == 1
    assert counter(raw, table, "hot") == len(applied)
    ledgers = {
        i
        for i in range(contenders)
        if "Item" in raw.get_item(TableName=table, Key={"pk": {"S": f"ledger-{i}"}}, ConsistentRead=True)
    }
    assert ledgers == set(applied)


def test_storm_of_transactions_loses_no_update(dynamodb_local_raw: str, table: str) -> None:
    """https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/transaction-apis.html#transaction-conflict-handling:
    threads retrying their transaction on TransactionConflict (as a caller must on AWS) end with
    the counter equal to the number of successful calls, while the layer reports the conflicts it
    caused (DynamoDB Local alone applies every one: see the faults-off test)."""
    threads, rounds = 6, 3
    with strict(dynamodb_local_raw, transaction_hold_ms=200.0) as proxy:
        ddb = client(proxy.endpoint)
        start = threading.Barrier(threads)
        cancelled = [0] * threads

        def worker(t: int) -> int:
            start.wait()
            done = 0
            for r in range(rounds):
                while True:
                    try:
                        ddb.transact_write_items(
                            TransactItems=[ledger_put(table, f"ledger-{t}-{r}"), add_one(table, "hot")]
                        )
                        done += 1
                        break
                    except ClientError as exc:
                        assert exc.response["Error"]["Code"] == "TransactionCanceledException"
                        cancelled[t] += 1
            return done

        with ThreadPoolExecutor(threads) as pool:
            successes = sum(pool.map(worker, range(threads)))
        stats = proxy.stats()
    assert successes == threads * rounds
    assert counter(client(dynamodb_local_raw), table, "hot") == successes
    assert stats["transactionsCancelled"] == sum(cancelled)


# -- single-item writes and reads against a transaction -----------------------------------------------


def test_single_item_writes_on_an_item_in_a_transaction_fail_with_transaction_conflict(
    dynamodb_local_raw: str, table: str
) -> None:
    """https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/transaction-apis.html#transaction-conflict-handling
    ("A PutItem, UpdateItem, or DeleteItem request for an item conflicts with an ongoing
    TransactWriteItems request that includes the same item ... the request fails with a
    TransactionConflictException"); botocore's standard retry mode does not retry it (it retries
    TransactionInProgressException only), so the engine sees it even with its retries on."""
    with strict(dynamodb_local_raw, transaction_hold_ms=LONG_HOLD_MS) as proxy:
        ddb = client(proxy.endpoint, ENGINE_RETRIES)
        key = {"pk": {"S": "hot"}}
        with held_transaction(proxy, ddb, [add_one(table, "hot")]):
            rejected = [
                error(lambda: ddb.put_item(TableName=table, Item={**key, "put": {"S": "x"}})),
                error(
                    lambda: ddb.update_item(
                        TableName=table,
                        Key=key,
                        UpdateExpression="SET upd = :x",
                        ExpressionAttributeValues={":x": {"S": "x"}},
                    )
                ),
                error(lambda: ddb.delete_item(TableName=table, Key=key)),
            ]
            # another item is not affected
            ddb.put_item(TableName=table, Item={"pk": {"S": "cold"}})
        for response in rejected:
            assert response["Error"] == {"Code": "TransactionConflictException", "Message": CONFLICT_MESSAGE}
            assert response["ResponseMetadata"]["HTTPStatusCode"] == 400
            assert response["ResponseMetadata"]["RetryAttempts"] == 0
        item = client(dynamodb_local_raw).get_item(TableName=table, Key=key, ConsistentRead=True)["Item"]
        assert item == {**key, "n": {"N": "1"}}  # the transaction applied, none of the writes did
        assert proxy.stats()["writesRejected"] == 3


def test_transactional_read_of_an_item_in_a_transaction_is_cancelled_but_get_item_succeeds(
    dynamodb_local_raw: str, table: str
) -> None:
    """https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/transaction-apis.html#transaction-conflict-handling
    ("An item within a TransactGetItems request is part of an ongoing TransactWriteItems ...
    request" cancels the TransactGetItems; "If an ongoing TransactWriteItems or TransactGetItems
    operation conflicts with a concurrent GetItem request, both operations can succeed")."""
    with strict(dynamodb_local_raw, transaction_hold_ms=LONG_HOLD_MS) as proxy:
        ddb = client(proxy.endpoint)
        with held_transaction(proxy, ddb, [add_one(table, "hot")]):
            response = error(
                lambda: ddb.transact_get_items(
                    TransactItems=[
                        {"Get": {"TableName": table, "Key": {"pk": {"S": "cold"}}}},
                        {"Get": {"TableName": table, "Key": {"pk": {"S": "hot"}}}},
                    ]
                )
            )
            ddb.get_item(TableName=table, Key={"pk": {"S": "hot"}})
        assert response["Error"]["Code"] == "TransactionCanceledException"
        assert response["CancellationReasons"] == [
            {"Code": "None"},
            {"Code": "TransactionConflict", "Message": CONFLICT_MESSAGE},
        ]
        # once the transaction is over, the same read succeeds
        items = ddb.transact_get_items(
            TransactItems=[{"Get": {"TableName": table, "Key": {"pk": {"S": "hot"}}}}]
        )["Responses"]
        assert items == [{"Item": {"pk": {"S": "hot"}, "n": {"N": "1"}}}]


def test_items_are_identified_by_table_and_key_after_a_table_is_recreated(dynamodb_local_raw: str) -> None:
    """https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/HowItWorks.CoreComponents.html#HowItWorks.CoreComponents.PrimaryKey
    (an item is identified by its table and primary key): a PutItem's item is found through the
    table's key schema, which must follow a DeleteTable and CreateTable of the same name with
    another key."""
    name = f"strict-{uuid.uuid4().hex[:10]}"
    with strict(dynamodb_local_raw, transaction_hold_ms=LONG_HOLD_MS) as proxy:
        ddb = client(proxy.endpoint)

        def create(key: str) -> None:
            ddb.create_table(
                TableName=name,
                KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
                AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
                BillingMode="PAY_PER_REQUEST",
            )

        create("a")
        ddb.put_item(TableName=name, Item={"a": {"S": "1"}})  # the layer learns key `a`
        ddb.delete_table(TableName=name)
        create("b")
        put = {"Put": {"TableName": name, "Item": {"b": {"S": "1"}, "a": {"S": "2"}}}}
        with held_transaction(proxy, ddb, [put]):
            # the same item by key `b`, a different `a`: only the new schema sees the conflict
            response = error(lambda: ddb.put_item(TableName=name, Item={"b": {"S": "1"}, "a": {"S": "3"}}))
        assert response["Error"]["Code"] == "TransactionConflictException"


# -- throttling -----------------------------------------------------------------------------------


def test_throttling_at_a_seeded_rate_answers_the_documented_codes(
    dynamodb_local_raw: str, table: str
) -> None:
    """https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Programming.Errors.html
    (ProvisionedThroughputExceededException and ThrottlingException, HTTP 400, "OK to retry? Yes")
    and https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_ThrottlingReason.html
    (each throttling exception carries ThrottlingReasons naming the resource): with a seed, the
    n-th data-plane request is throttled or not exactly as `throttle_outcomes` says."""
    rate, share, seed, n = 0.4, 0.3, 11, 30
    expected = throttle_outcomes(rate, share, seed, n)
    assert {PROVISIONED, THROTTLING, None} <= set(expected)  # the seed exercises every outcome
    client(dynamodb_local_raw).put_item(TableName=table, Item={"pk": {"S": "k"}})
    with strict(dynamodb_local_raw, throttle_rate=rate, throttling_exception_share=share, seed=seed) as proxy:
        ddb = client(proxy.endpoint)
        ddb.describe_table(TableName=table)  # control plane: never throttled
        seen: list[str | None] = []
        reasons: list[Any] = []
        for _ in range(n):
            try:
                ddb.get_item(TableName=table, Key={"pk": {"S": "k"}})
                seen.append(None)
            except ClientError as exc:
                assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 400
                seen.append(exc.response["Error"]["Code"])
                reasons.append(exc.response.get("ThrottlingReasons") or exc.response.get("throttlingReasons"))
        stats = proxy.stats()
    assert seen == expected
    assert stats[PROVISIONED] == expected.count(PROVISIONED)
    assert stats[THROTTLING] == expected.count(THROTTLING)
    resource = f"arn:aws:dynamodb:{REGION}:000000000000:table/{table}"
    assert all(r and r[0]["resource"] == resource and r[0]["reason"].startswith("TableRead") for r in reasons)


def test_botocore_standard_retries_absorb_throttling(dynamodb_local_raw: str, table: str) -> None:
    """https://docs.aws.amazon.com/sdkref/latest/guide/feature-retry-behavior.html (standard mode
    retries throttling errors with backoff) and
    https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Programming.Errors.html#Programming.Errors.RetryAndBackoff:
    with the engine's retry settings, every call succeeds and the retries botocore made are
    exactly the requests the layer throttled."""
    rate, seed, calls = 0.3, 5, 10
    outcomes = throttle_outcomes(rate, 0.5, seed, 40)
    assert {PROVISIONED, THROTTLING} <= set(outcomes[:15])  # both kinds are retried below
    with strict(dynamodb_local_raw, throttle_rate=rate, throttling_exception_share=0.5, seed=seed) as proxy:
        ddb = client(proxy.endpoint, ENGINE_RETRIES)
        retries = 0
        for i in range(calls):
            if i % 2:
                response = ddb.put_item(TableName=table, Item={"pk": {"S": f"k{i}"}})
            else:
                response = ddb.transact_write_items(TransactItems=[add_one(table, "hot")])
            retries += response["ResponseMetadata"]["RetryAttempts"]
        stats = proxy.stats()
    throttled = stats[PROVISIONED] + stats[THROTTLING]
    assert throttled > 0
    assert retries == throttled
    assert counter(client(dynamodb_local_raw), table, "hot") == calls // 2


# -- faults off -----------------------------------------------------------------------------------


def test_faults_off_is_dynamodb_local_unchanged(dynamodb_local_raw: str, table: str) -> None:
    """https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/DynamoDBLocal.UsageNotes.html
    (DynamoDB Local differs from the service): with faults off the layer forwards every request
    untouched, so concurrent transactions on one item all apply (DynamoDB Local runs them one
    after another), nothing is throttled, and answers are DynamoDB Local's own, byte for byte."""
    contenders = 8
    with strict(
        dynamodb_local_raw, faults=False, throttle_rate=1.0, transaction_hold_ms=LONG_HOLD_MS
    ) as proxy:
        ddb = client(proxy.endpoint)
        start = threading.Barrier(contenders)

        def transact(i: int) -> None:
            start.wait()
            ddb.transact_write_items(TransactItems=[ledger_put(table, f"ledger-{i}"), add_one(table, "hot")])

        with ThreadPoolExecutor(contenders) as pool:
            list(pool.map(transact, range(contenders)))
        assert counter(ddb, table, "hot") == contenders

        # DynamoDB Local's own cancellation, as it wrote it
        failing = [ledger_put(table, "ledger-0"), add_one(table, "hot")]
        via_proxy = error(lambda: ddb.transact_write_items(TransactItems=failing))
        direct = error(lambda: client(dynamodb_local_raw).transact_write_items(TransactItems=failing))
        assert via_proxy["CancellationReasons"] == direct["CancellationReasons"]
        assert via_proxy["Error"] == direct["Error"]
        assert via_proxy["ResponseMetadata"]["HTTPHeaders"]["server"].startswith("Jetty")

        streams = boto3.client("dynamodbstreams", endpoint_url=proxy.endpoint, region_name=REGION, **KEYS)
        assert streams.list_streams(TableName=table)["Streams"] == []
        stats = proxy.stats()
    refused = ("transactionsCancelled", "writesRejected", "transactGetsCancelled", PROVISIONED, THROTTLING)
    assert all(stats[k] == 0 for k in refused)
