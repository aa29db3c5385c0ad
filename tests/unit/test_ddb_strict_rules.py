"""The strict DynamoDB layer's rules as plain functions: item identity and the conflict table.

The AWS page behind every rule: https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/transaction-apis.html#transaction-conflict-handling
"""

from __future__ import annotations

from infra.local.ddb_strict_rules import (
    ItemHolds,
    Ref,
    cancellation_body,
    database_of,
    item_refs,
    tables_needing_schema,
    throttle_outcomes,
)

AUTH = (
    "AWS4-HMAC-SHA256 Credential=local/20261201/us-east-1/dynamodb/aws4_request, "
    "SignedHeaders=host;x-amz-date, Signature=abc"
)


def ref(pk: str, table: str = "t1", db: str = "local/us-east-1") -> Ref:
    return item_refs("DeleteItem", {"TableName": table, "Key": {"pk": {"S": pk}}}, db, {})[0]  # type: ignore[return-value]


def test_database_is_the_access_key_and_region() -> None:
    assert database_of(AUTH) == "local/us-east-1"
    assert database_of("") == ""


def test_an_item_is_its_table_and_key_whatever_the_spelling() -> None:
    db = "local/us-east-1"
    by_arn = item_refs(
        "UpdateItem",
        {"TableName": "arn:aws:dynamodb:us-east-1:000000000000:table/t1", "Key": {"n": {"N": "1.0"}}},
        db,
        {},
    )
    plain = item_refs("DeleteItem", {"TableName": "t1", "Key": {"n": {"N": "1"}}}, db, {})
    assert by_arn == plain
    # another database (access key or Region) is another item
    assert (
        item_refs("DeleteItem", {"TableName": "t1", "Key": {"n": {"N": "1"}}}, "other/us-east-1", {}) != plain
    )


def test_a_put_is_found_through_the_key_schema() -> None:
    params = {"TableName": "t1", "Item": {"pk": {"S": "a"}, "data": {"S": "x"}}}
    assert tables_needing_schema("PutItem", params) == {"t1"}
    assert item_refs("PutItem", params, "local/us-east-1", {"t1": ("pk",)}) == [ref("a")]
    assert item_refs("PutItem", params, "local/us-east-1", {}) == [None]  # unknown table: never held


def test_transaction_items_keep_their_order() -> None:
    params = {
        "TransactItems": [
            {"Put": {"TableName": "t1", "Item": {"pk": {"S": "a"}, "x": {"N": "1"}}}},
            {"ConditionCheck": {"TableName": "t1", "Key": {"pk": {"S": "b"}}, "ConditionExpression": "x"}},
            {"Update": {"TableName": "t1", "Key": {"pk": {"S": "c"}}, "UpdateExpression": "ADD n :o"}},
            {"Delete": {"TableName": "t1", "Key": {"pk": {"S": "d"}}}},
        ]
    }
    refs = item_refs("TransactWriteItems", params, "local/us-east-1", {"t1": ("pk",)})
    assert refs == [ref("a"), ref("b"), ref("c"), ref("d")]


def test_a_transaction_conflicts_with_a_transaction_or_a_single_write_in_flight() -> None:
    holds = ItemHolds()
    assert holds.begin_transaction([ref("a"), ref("b")]) is None
    assert holds.begin_transaction([ref("c"), ref("b")]) == [False, True]
    assert holds.begin_write(ref("b")) is False
    assert holds.begin_write(ref("c")) is True  # a single write holds its item too
    assert holds.begin_transaction([ref("c")]) == [True]
    holds.end_write(ref("c"))
    holds.end_transaction([ref("a"), ref("b")])
    assert holds.begin_transaction([ref("c"), ref("b")]) is None


def test_single_writes_do_not_conflict_with_each_other() -> None:
    holds = ItemHolds()
    assert holds.begin_write(ref("a")) and holds.begin_write(ref("a"))
    holds.end_write(ref("a"))
    assert holds.begin_transaction([ref("a")]) == [True]  # one write is still in flight
    holds.end_write(ref("a"))
    assert holds.begin_transaction([ref("a")]) is None


def test_a_transactional_read_is_cancelled_by_any_write_before_or_during_it() -> None:
    holds = ItemHolds()
    holds.begin_batch_write([ref("a")])
    assert holds.begin_read([ref("b"), ref("a")]) == [False, True]
    holds.end_batch_write([ref("a")])
    read = holds.begin_read([ref("b"), ref("a")])
    assert not isinstance(read, list)
    assert holds.begin_write(ref("b")) is True  # the write wins; the read will be cancelled
    assert holds.end_read(read) == [True, False]
    read = holds.begin_read([ref("a")])
    assert not isinstance(read, list)
    assert holds.end_read(read) is None
    assert holds.reads == {}


def test_cancellation_message_lists_every_reason_in_order() -> None:
    body = cancellation_body([False, True])
    assert body["Message"].endswith("[None, TransactionConflict]")
    assert body["CancellationReasons"][0] == {"Code": "None"}


def test_throttle_outcomes_depend_only_on_the_seed() -> None:
    assert throttle_outcomes(0.5, 0.5, 3, 50) == throttle_outcomes(0.5, 0.5, 3, 50)
    assert throttle_outcomes(0.0, 0.5, 3, 50) == [None] * 50
    assert None not in throttle_outcomes(1.0, 0.0, None, 20)
