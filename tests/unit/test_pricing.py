"""The cost model (fanout.pricing) and its command line (fanout.tools.pricing): pure, no network."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fanout.plan import Costs, Deployment, plan, predict
from fanout.pricing import (
    DEFAULT_PRICES,
    CostBreakdown,
    CostInputs,
    DesignCost,
    Footprint,
    MemorySizes,
    PricesError,
    Workload,
    _sends,
    apigw_units,
    cost_of_broadcast,
    override_prices,
    read_units,
    sqs_requests,
    write_units,
)
from fanout.tools.pricing import add_cost_arguments, breakdown_from_args, costs_to_json, main, render_costs

# What `fanout plan --connections 300000` recommends at 10,000/s x 0.8: written out, so that the
# worked example below does not move when the planner's choices do.
D300K = Deployment(
    partitions=3000,
    shards=1,
    post_batch_size=150,
    post_concurrency=80,
    post_max_concurrency_per_shard=3,
    post_rate_per_worker=2586.6,
    post_sqs_batch_size=100,
    post_batching_window_s=1,
    query_max_concurrency_per_shard=2,
    provisioned_concurrency=True,
)


def bill_for(n: int, s: int = 1024, d: Deployment = D300K, **workload: object) -> CostBreakdown:
    w = Workload(connections=n, message_bytes=s, **workload)  # type: ignore[arg-type]
    return cost_of_broadcast(CostInputs(w, d, predict(n, 8000, d, Costs())))


def line(lines: list, service: str, item: str) -> object:
    found = [x for x in lines if x.service == service and x.item == item]
    assert len(found) == 1, f"no single line {service}: {item} in {[(x.service, x.item) for x in lines]}"
    return found[0]


def usd(design_lines: list, service: str) -> float:
    return sum(x.usd for x in design_lines if x.service == service)


# -- the worked example: 300,000 connections, 1 KB frames, 10 broadcasts a day -----------------------
def test_worked_example_by_hand() -> None:
    bill = bill_for(300_000, 1024, broadcasts_per_day=10)
    e, loop, threads = bill.engine, bill.naive, bill.naive_threaded
    # API Gateway: 300,000 posts x ceil(1,024 / 32,768) = 1 unit = 300,000 units x $1/M = $0.30
    assert line(e.per_broadcast, "API Gateway", "PostToConnection").usd == pytest.approx(0.30)
    # SQS: swarm 3,000 tasks / 10 = 300 calls; query ESM 300 receives + 300 deletes; one post batch
    # per partition, one SendMessageBatch each = 3,000; post ESM 3,000 / 10 = 300 receives + 300 deletes
    assert usd(e.per_broadcast, "SQS") == pytest.approx((300 + 600 + 3000 + 600) * 0.40 / 1e6)
    # counter shards: 3,000 query entries + 3,000 post entries = 6,000 / 250 per shard = 24 shards;
    # the completion check after each of the 3,000 batches reads all 24 (1 RRU each, consistent)
    check = line(e.per_broadcast, "DynamoDB", "post: completion check, every shard (consistent) (reads)")
    assert check.quantity == 3000 * 24
    # counting: 250 updates per shard of 150 + 13 k bytes: 67 of 1 WRU, 79 of 2, 78 of 3, 26 of 4
    # = 563 WRU per shard x 24 shards = 13,512 WRU
    counting = line(e.per_broadcast, "DynamoDB", "counter shards: counting updates (writes)")
    assert counting.quantity == (67 * 1 + 79 * 2 + 78 * 3 + 26 * 4) * 24
    # plans: 100 ids x (16 + 4) bytes + 100 = 2,100 bytes = 3 WRU, one per partition = 9,000 WRU
    assert line(e.per_broadcast, "DynamoDB", "query: plan (writes)").quantity == 3 * 3000
    # post worker: CPU 235 + 4,800 / 100 = 283 us a frame -> 1e6 / 283 x 0.85 = 3,003.5/s, above the
    # limiter's 2,586.6/s; an invocation of 100 batches x 100 = 10,000 frames takes 10,000 / 2,586.6
    # + 0.041 s (invoke + 2 DynamoDB calls) = 3.9071 s -> 2,559.46 frames/s; 300,000 / 2,559.46 =
    # 117.21 s at 1,769 MB = 202.49 GB-s
    gb_s = line(e.per_broadcast, "Lambda", "post duration").quantity
    assert gb_s == pytest.approx(300_000 / (10_000 / (10_000 / 2586.6 + 0.041)) * 1769 / 1024, rel=1e-6)
    # query: 300 invocations x (3 DynamoDB calls x 8 ms + 1 send x 12 ms + 25 ms) = 0.061 s at 1 GB
    assert line(e.per_broadcast, "Lambda", "query duration").quantity == pytest.approx(300 * 0.061)
    # provisioned concurrency all day: swarm 1,024 + query 2 x 1,024 + post 3 x 1,769 MB = 8,379 MB
    # = 8.1826 GB x 86,400 s = 706,978 GB-s x $0.0000033334 = $2.3566
    provisioned = line(e.standing_per_day, "Lambda", "provisioned concurrency")
    assert provisioned.usd == pytest.approx(8379 / 1024 * 86_400 * 0.0000033334)

    # naive loop: 20 ms + 1,971 us of boto3 CPU x 1,769 / 1,024 (a 1,024 MB function has 0.58 vCPU)
    # = 23.405 ms a post; the scan: 300,000 x 150 B = 43 pages of 1 MB x 8 ms + 25 ms = 0.369 s
    per_post = 0.020 + 0.001971 * 1769 / 1024
    assert loop.seconds == pytest.approx(0.369 + 300_000 * per_post)  # 7,021.9 s
    assert not loop.fits_one_invocation  # ceil(7,021.9 / 900) = 8 chained 15-minute invocations
    assert line(loop.per_broadcast, "Lambda", "naive sender requests").quantity == 8
    # one function finishes (900 - 0.369) / 0.023405 = 38,437 posts
    assert loop.max_connections_one_invocation == 38_437
    # 64 threads: 900 us x 1,769 / 1,024 = 1.5548 ms a post, CPU-bound: 466.8 s, fits
    assert threads.seconds == pytest.approx(0.369 + 300_000 * 0.000900 * 1769 / 1024)
    assert threads.fits_one_invocation and threads.max_connections_one_invocation == 578_620
    # the scan: 45,000,000 B / 4,096 = 10,987 units x 0.5 (eventually consistent) = 5,493.5 RRU
    assert line(loop.per_broadcast, "DynamoDB", "connections scan (reads)").quantity == 5493.5

    up = bill.upkeep_per_day
    # 300,000 connections x 1,440 minutes = 432,000,000 minutes x $0.25/M = $108
    assert line(up, "API Gateway", "connection minutes").usd == pytest.approx(108.0)
    # a ping every 300 s: 300,000 x 288 = 86,400,000 pings, each in and out = 172,800,000 units = $172.80
    assert line(up, "API Gateway", "heartbeats: ping in + pong out").usd == pytest.approx(172.80)
    # and 86,400,000 invocations of $default x $0.20/M = $17.28
    assert line(up, "Lambda", "default (pong) requests").usd == pytest.approx(17.28)
    # reconnects every 2 h: 300,000 x 12 = 3,600,000 a day, a row put (1 WRU) and a delete (1 WRU) each
    assert line(up, "DynamoDB", "connection rows: put (writes)").usd == pytest.approx(3_600_000 * 0.625 / 1e6)
    # the secret: 24 h / 730 h of $0.40, and one container refreshing every 300 s = 288 calls
    assert line(up, "Secrets Manager", "the token secret").usd == pytest.approx(0.40 * 24 / 730)
    assert line(up, "Secrets Manager", "GetSecretValue (cache refreshes)").quantity == 288

    # per day: 10 broadcasts + the engine's standing costs + the upkeep every design pays
    assert bill.per_day_usd(e) == pytest.approx(10 * e.broadcast_usd + e.standing_usd + bill.upkeep_usd)
    assert bill.per_day_usd(e) > bill.per_day_usd(threads)  # the engine's partitions cost ~$12.6/day more
    assert bill.upkeep_usd / bill.per_day_usd(e) > 0.9  # keeping 300,000 connections is the bill


def test_cdk_defaults_are_what_the_model_assumes() -> None:
    from fanout.adapters.sqs import SQS_BATCH
    from fanout.pricing import SQS_BATCH as MODEL_SQS_BATCH
    from fanout.settings import ReconcilePart, Settings
    from fanout.topology import topology
    from handlers.authorizer import SECRET_MAX_AGE_SECONDS
    from infra.cdk.config import FanoutConfig

    memory, deployed = MemorySizes(), MemorySizes.from_topology()
    assert memory == deployed
    assert {f.key.replace("-", "_") for f in topology().functions} | {"naive"} == set(vars(memory))
    f, config, settings_ = Footprint(), FanoutConfig(), Settings()
    assert (f.stream_batch_size, f.stream_parallelization) == (
        config.stream_batch_size,
        config.stream_parallelization,
    )
    assert f.min_counter_shards == settings_.counter_shards
    assert f.inline_payload_limit == settings_.inline_payload_limit
    assert f.partition_view_seconds == settings_.partition_view_ttl_seconds
    assert f.reconcile_per_run == ReconcilePart.model_fields["reconcile_partitions_per_run"].default
    assert f.secret_refresh_seconds == SECRET_MAX_AGE_SECONDS
    assert MODEL_SQS_BATCH == SQS_BATCH


# -- metering boundaries ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("size", "units"), [(1, 1), (32_767, 1), (32_768, 1), (32_769, 2), (65_536, 2), (65_537, 3), (131_072, 4)]
)
def test_api_gateway_meters_32_kb_units(size: int, units: int) -> None:
    assert apigw_units(size) == units
    bill = bill_for(1000, size)
    assert line(bill.engine.per_broadcast, "API Gateway", "PostToConnection").quantity == 1000 * units


@pytest.mark.parametrize(("size", "requests"), [(0, 1), (1, 1), (65_536, 1), (65_537, 2), (262_144, 4)])
def test_sqs_bills_64_kb_chunks(size: int, requests: int) -> None:
    assert sqs_requests(size) == requests


def test_a_send_message_batch_is_billed_by_its_payload() -> None:
    # 25 messages of 7,000 bytes to 1 queue: calls of 10, 10, 5; 70,000 B = 2 chunks, 35,000 B = 1
    assert _sends([25], 7000, 1) == (3, 2 + 2 + 1)
    # the same spread over 3 shards by one sender: 9, 8, 8 messages, one call each, 63,000 B or less
    assert _sends([25], 7000, 3) == (3, 3)


def test_dynamodb_units() -> None:
    assert read_units(4096, consistent=True) == 1
    assert read_units(4097, consistent=True) == 2
    assert read_units(4097, consistent=False) == 1.0
    assert read_units(0, consistent=False) == 0.5  # an item not found still costs the minimum
    assert read_units(4096, consistent=True, transactional=True) == 2
    assert write_units(1024) == 1
    assert write_units(1025) == 2
    assert write_units(1025, transactional=True) == 4


def test_large_frames_travel_by_reference() -> None:
    inline, by_reference = bill_for(30_000, 4096), bill_for(30_000, 4097)
    assert "frame inline" in inline.engine.notes[0]
    assert "frame by reference" in by_reference.engine.notes[0]
    item = "frame by reference, once per worker (reads)"
    assert line(by_reference.engine.per_broadcast, "DynamoDB", item).quantity > 0


def test_provisioned_dynamodb_is_billed_per_hour_at_the_peak_rate() -> None:
    bill = bill_for(300_000, 1024, dynamodb_billing="provisioned")
    e = bill.engine
    on_demand = bill_for(300_000, 1024)
    reads = sum(x.quantity for x in on_demand.engine.per_broadcast if x.unit == "RRU")
    [rcu] = [x for x in e.per_broadcast if x.unit == "RCU-h"]
    # the broadcast's reads spread over its 39.7 s, held for one whole hour
    assert rcu.quantity == pytest.approx(-(-reads // e.seconds))
    assert rcu.usd == pytest.approx(rcu.quantity * 0.00013)
    assert not [x for x in e.per_broadcast if x.unit in ("RRU", "WRU")]


# -- overrides ----------------------------------------------------------------------------------------
def test_override_prices_keeps_the_rest_and_validates() -> None:
    prices = override_prices({"apigw_message_per_million": 0.8})
    assert prices.apigw_message_per_million == 0.8
    assert prices.lambda_gb_second == DEFAULT_PRICES.lambda_gb_second
    with pytest.raises(PricesError, match="apigw_messages_per_million"):
        override_prices({"apigw_messages_per_million": 0.8})
    with pytest.raises(PricesError, match="greater than or equal to 0"):
        override_prices({"sqs_request_per_million": -1})
    with pytest.raises(PricesError, match="object of name: price"):
        override_prices([1, 2])  # type: ignore[arg-type]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_cost_arguments(p)
    return p


def test_a_price_file_and_flags_are_applied_flags_last(tmp_path: Path) -> None:
    file = tmp_path / "prices.json"
    file.write_text(json.dumps({"apigw_message_per_million": 0.8, "sqs_request_per_million": 0.5}))
    args = parser().parse_args(["--prices", str(file), "--price", "sqs_request_per_million=0.3"])
    result = plan(300_000, 10_000, Costs(), share=0.8)
    bill = breakdown_from_args(args, result, Costs())
    assert bill.prices.apigw_message_per_million == 0.8
    assert bill.prices.sqs_request_per_million == 0.3
    assert line(bill.engine.per_broadcast, "API Gateway", "PostToConnection").usd == pytest.approx(0.24)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not JSON"),
        ('{"lambda_gb_second": "cheap"}', "lambda_gb_second"),
        ('{"unknown_price": 1}', "unknown_price"),
        ("[1, 2]", "object of name: price"),
        ('{"secret_month": -0.4}', "greater than or equal to 0"),
    ],
)
def test_a_bad_price_file_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    file = tmp_path / "prices.json"
    file.write_text(content)
    with pytest.raises(SystemExit) as exit_:
        main(["--connections", "1000", "--prices", str(file)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["--prices", "/nonexistent/prices.json"],
        ["--price", "lambda_gb_second"],
        ["--price", "lambda_gb_second=-1"],
        ["--memory", "post=64"],
        ["--memory", "nosuch=512"],
        ["--message-bytes", "0"],
        ["--gone-fraction", "2"],
        ["--connection-lifetime-hours", "0"],
        ["--connected-hours", "25"],
        ["--broadcasts-per-day", "-1"],
    ],
)
def test_bad_flags_are_clear_errors(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--connections", "1000", *argv])
    assert exit_.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_memory_flags_change_the_bill() -> None:
    result = plan(300_000, 10_000, Costs(), share=0.8)
    base = breakdown_from_args(parser().parse_args([]), result, Costs())
    bigger = breakdown_from_args(parser().parse_args(["--memory", "naive=2048"]), result, Costs())
    # twice the memory and the whole of a vCPU: the CPU part of a post runs 1.7275x faster
    assert bigger.naive.seconds < base.naive.seconds
    base_gb_s = line(base.naive.per_broadcast, "Lambda", "naive sender duration").quantity
    assert line(bigger.naive.per_broadcast, "Lambda", "naive sender duration").quantity > base_gb_s


def test_main_prints_the_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--connections", "300000", "--message-bytes", "1024", "--broadcasts-per-day", "10"]) == 0
    text = capsys.readouterr().out
    assert "what dominates" in text and "naive, loop" in text and "connection minutes" in text
    assert main(["--connections", "300000", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["engine"]["perDayUsd"] == pytest.approx(
        data["engine"]["perBroadcastUsd"] * 1 + data["engine"]["standingPerDayUsd"] + data["upkeepPerDayUsd"]
    )
    assert data["prices"]["as_of"] == DEFAULT_PRICES.as_of


def test_render_and_json_agree() -> None:
    bill = bill_for(50_000, 2000, broadcasts_per_day=3)
    data = costs_to_json(bill)
    assert f"{bill.per_day_usd(bill.engine):,.2f}" in render_costs(bill)
    assert data["naive"]["fitsOneInvocation"] is False
    assert data["workload"]["broadcasts_per_day"] == 3


# -- properties ---------------------------------------------------------------------------------------
SMALL = replace(D300K, partitions=500, post_batch_size=150)
sizes = st.integers(min_value=1, max_value=131_072)
counts = st.integers(min_value=1, max_value=400_000)


def broadcast_messages(d: DesignCost) -> float:
    return sum(x.usd for x in d.per_broadcast if x.item == "PostToConnection")


@settings(max_examples=60, deadline=None)
@given(n=counts, s=sizes)
def test_engine_and_naive_pay_the_same_for_the_messages(n: int, s: int) -> None:
    bill = bill_for(n, s, SMALL)
    assert (
        broadcast_messages(bill.engine)
        == broadcast_messages(bill.naive)
        == broadcast_messages(bill.naive_threaded)
    )
    assert broadcast_messages(bill.engine) == pytest.approx(n * apigw_units(s) / 1e6)


@settings(max_examples=60, deadline=None)
@given(n=counts, extra=st.integers(min_value=1, max_value=50_000), s=sizes)
def test_cost_grows_with_the_connections(n: int, extra: int, s: int) -> None:
    a, b = bill_for(n, s, SMALL), bill_for(n + extra, s, SMALL)
    for design in ("naive", "naive_threaded"):
        assert getattr(b, design).broadcast_usd >= getattr(a, design).broadcast_usd
    # not X-Ray: its reservoir follows the predicted duration, which fanout.plan does not make monotone in
    # N at a fixed deployment (it sizes every partition as the largest one)
    for service in ("API Gateway", "Lambda", "SQS"):
        assert usd(b.engine.per_broadcast, service) >= usd(a.engine.per_broadcast, service) - 1e-12
    assert b.upkeep_usd > a.upkeep_usd
    assert b.per_day_usd(b.engine) > a.per_day_usd(a.engine)
    if b.engine.notes[0].split("; ")[2] == a.engine.notes[0].split("; ")[2]:  # same counter shards
        assert b.engine.broadcast_usd >= a.engine.broadcast_usd


@settings(max_examples=60, deadline=None)
@given(n=counts, s=sizes, extra=st.integers(min_value=1, max_value=65_536))
def test_cost_grows_with_the_message(n: int, s: int, extra: int) -> None:
    t = min(131_072, s + extra)
    a, b = bill_for(n, s, SMALL), bill_for(n, t, SMALL)
    for design in ("naive", "naive_threaded"):
        assert getattr(b, design).broadcast_usd >= getattr(a, design).broadcast_usd
    for service in ("API Gateway", "DynamoDB", "Lambda"):
        assert usd(b.engine.per_broadcast, service) >= usd(a.engine.per_broadcast, service)
    if (s <= 4096) == (t <= 4096):  # both inline, or both by reference
        assert b.engine.broadcast_usd >= a.engine.broadcast_usd
