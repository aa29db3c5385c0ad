"""The operator API handler: validation, limits, idempotency and the IAM requirement."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.pipeline_harness import Pipeline, pipeline


@pytest.fixture
def pipe(dynamodb_local: str, local_sqs: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pipeline]:
    with pipeline(dynamodb_local, local_sqs, monkeypatch, partition_count=4, shard_count=2) as p:
        yield p


def test_post_answers_202_with_an_id_and_starts_the_swarm_once(pipe: Pipeline) -> None:
    status, body, _ = pipe.api("POST", "/broadcasts", body={"message": [1, 2, 3]})
    assert status == 202
    assert pipe.lambdas.invocations == [("fanout-swarm", "Event", {"broadcastId": body["broadcastId"]})]
    status, view, _ = pipe.api("GET", f"/broadcasts/{body['broadcastId']}")
    assert status == 200
    assert view["status"] == "queued"
    assert set(view) == set(
        [
            "broadcastId",
            "status",
            "partitions",
            "targeted",
            "delivered",
            "gone",
            "failed",
            "createdAt",
            "completedAt",
            "error",
        ]
    )
    assert view["error"] is None


def test_a_repeated_idempotency_key_returns_the_first_broadcast(pipe: Pipeline) -> None:
    headers = {"Idempotency-Key": "deploy-2026-11-22"}
    s1, b1, _ = pipe.api("POST", "/broadcasts", body={"message": "hi"}, headers=headers)
    s2, b2, _ = pipe.api("POST", "/broadcasts", body={"message": "hi"}, headers=headers)
    assert (s1, s2) == (202, 202)
    assert b1["broadcastId"] == b2["broadcastId"]
    assert len(pipe.lambdas.invocations) == 1


def test_an_idempotency_key_reused_with_another_message_is_refused(pipe: Pipeline) -> None:
    headers = {"Idempotency-Key": "k1"}
    assert pipe.api("POST", "/broadcasts", body={"message": "a"}, headers=headers)[0] == 202
    status, body, _ = pipe.api("POST", "/broadcasts", body={"message": "b"}, headers=headers)
    assert status == 422
    assert "different message" in body["message"]


def test_a_frame_above_128_kb_is_refused_with_413_naming_the_limit(pipe: Pipeline) -> None:
    status, body, _ = pipe.api("POST", "/broadcasts", body={"message": "x" * (128 * 1024)})
    assert status == 413
    assert "131072" in body["message"]
    assert body["field"] == "message"
    assert pipe.lambdas.invocations == []


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('{"msg": 1}', "message"),
        ("{not json", None),
        ("[1,2]", None),
        ('{"message": 1, "extra": 2}', "extra"),
    ],
)
def test_malformed_bodies_get_422_naming_the_field(pipe: Pipeline, raw: str, field: str | None) -> None:
    status, body, _ = pipe.api("POST", "/broadcasts", raw_body=raw)
    assert status == 422
    if field:
        assert field in str(body)
    assert pipe.lambdas.invocations == []


def test_requests_without_an_iam_principal_are_refused(pipe: Pipeline) -> None:
    status, _, _ = pipe.api("POST", "/broadcasts", body={"message": "x"}, iam=False)
    assert status == 403
    assert pipe.lambdas.invocations == []
    status, _, _ = pipe.api("GET", "/broadcasts/6f1d2a8e-3c1b-4e55-9a57-0d9f9c1e2b3a", iam=False)
    assert status == 403


def test_get_answers_404_for_an_unknown_id_and_400_for_a_malformed_one(pipe: Pipeline) -> None:
    assert pipe.api("GET", "/broadcasts/6f1d2a8e-3c1b-4e55-9a57-0d9f9c1e2b3a")[0] == 404
    status, body, _ = pipe.api("GET", "/broadcasts/not-a-uuid")
    assert status == 400
    assert body["field"] == "broadcastId"
