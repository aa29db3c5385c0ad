"""Properties of the quota model (fanout.plan): pure, no network."""

from __future__ import annotations

import argparse
import json
import shlex
from dataclasses import replace

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fanout.plan import (
    DEFAULT_POST_RATE_SHARE,
    TARGET_FACTOR,
    Costs,
    min_connections_for_target,
    plan,
    predict,
    recommend_deployment,
)
from fanout.tools.plan import add_parser
from fanout.topology import TopologyConfig, topology

MAX_SHARDS = TopologyConfig.model_json_schema()["properties"]["shards"]["maximum"]

connections = st.integers(min_value=1, max_value=3_000_000)
quotas = st.sampled_from([500, 1_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000])
costs = st.builds(
    Costs,
    post_frame_cpu_us=st.floats(min_value=50, max_value=3000),
    post_batch_cpu_us=st.floats(min_value=0, max_value=20_000),
    post_latency_ms=st.floats(min_value=0, max_value=100),
    ddb_ms=st.floats(min_value=1, max_value=50),
    sqs_delivery_ms=st.floats(min_value=5, max_value=500),
    cold_start_ms=st.floats(min_value=0, max_value=5000),
)


@settings(max_examples=200, deadline=None)
@given(n=connections, r=quotas, c=costs, headroom=st.floats(min_value=0.5, max_value=1.0))
def test_the_total_post_rate_never_exceeds_the_quota(n: int, r: int, c: Costs, headroom: float) -> None:
    d = recommend_deployment(n, r, c, headroom=headroom)
    assert d.post_rate_per_worker > 0
    assert d.total_post_rate <= r * headroom + 1e-6
    assert predict(n, r, d, c).throughput <= r


@settings(max_examples=200, deadline=None)
@given(n=connections, r=quotas, c=costs, warm=st.booleans(), provisioned=st.booleans())
# a latency so small that latency/1000 underflows to 0 once divided by zero
@example(n=1, r=500, c=Costs(post_frame_cpu_us=50.0, post_latency_ms=5e-324), warm=False, provisioned=False)
def test_no_plan_beats_the_quota_floor(n: int, r: int, c: Costs, warm: bool, provisioned: bool) -> None:
    d = recommend_deployment(n, r, c, provisioned=provisioned)
    p = predict(n, r, d, c, warm=warm)
    assert p.seconds >= n / r
    assert p.ratio >= 1.0
    assert p.target_met == (p.seconds <= TARGET_FACTOR * n / r)


@settings(max_examples=100, deadline=None)
@given(r=quotas, minutes=st.floats(min_value=0.5, max_value=10))
def test_recommended_settings_are_within_10_percent_for_broadcasts_of_half_a_minute_or_more(
    r: int, minutes: float
) -> None:
    """With the measured default costs, a broadcast that takes at least ~30 s at the quota gets there."""
    n = int(r * 60 * minutes)
    p = plan(n, r)
    assert p.prediction.target_met, p.prediction
    assert p.prediction.seconds <= TARGET_FACTOR * n / r


@settings(max_examples=100, deadline=None)
@given(n=connections, r1=quotas, r2=quotas, provisioned=st.booleans())
def test_more_quota_is_never_slower(n: int, r1: int, r2: int, provisioned: bool) -> None:
    lo, hi = sorted((r1, r2))
    slow = predict(n, lo, recommend_deployment(n, lo, provisioned=provisioned))
    fast = predict(n, hi, recommend_deployment(n, hi, provisioned=provisioned))
    assert fast.seconds <= slow.seconds + 1e-9


@settings(max_examples=100, deadline=None)
@given(n=connections, r=quotas)
def test_settings_are_deployable(n: int, r: int) -> None:
    d = recommend_deployment(n, r)
    assert 1 <= d.partitions <= 100_000
    assert d.partitions == max(1, -(-n // 100)) or d.partitions == 100_000
    assert 2 <= d.post_max_concurrency_per_shard <= 5  # the ESM starts 5 per shard: no ramp
    assert 2 <= d.query_max_concurrency_per_shard <= 1000
    assert 64 <= d.post_concurrency <= 2000
    per_partition = -(-n // d.partitions)
    assert d.post_batch_size >= min(5000, 1.2 * per_partition)  # one post batch per partition
    assert d.post_sqs_batch_size <= 10 or d.post_batching_window_s >= 1  # Lambda requires a window
    assert predict(n, r, d).ramp_seconds == 0


def test_cold_starts_count_unless_provisioned_or_warm() -> None:
    c = Costs()
    cold = predict(100_000, 10_000, recommend_deployment(100_000, 10_000, c, provisioned=False), c)
    warm = predict(100_000, 10_000, recommend_deployment(100_000, 10_000, c, provisioned=False), c, warm=True)
    provisioned = predict(100_000, 10_000, recommend_deployment(100_000, 10_000, c), c)
    assert cold.start_seconds == pytest.approx(warm.start_seconds + 3 * c.cold_start_ms / 1000)
    assert provisioned.seconds == pytest.approx(warm.seconds)


def test_an_unpaced_fleet_above_the_quota_is_flagged() -> None:
    d = replace(recommend_deployment(100_000, 10_000), post_rate_per_worker=0.0)
    p = predict(100_000, 10_000, d)
    assert p.bottleneck == "quota"
    assert any("429" in w for w in p.warnings)


def test_a_slow_query_stage_is_the_bottleneck() -> None:
    d = replace(recommend_deployment(1_000_000, 100_000), query_max_concurrency_per_shard=2, shards=1)
    assert predict(1_000_000, 100_000, d, Costs(ddb_ms=200)).bottleneck in ("query", "post")


def test_ramp_when_a_shard_needs_more_than_the_esm_starts_with() -> None:
    d = replace(recommend_deployment(1_000_000, 100_000), shards=1, post_max_concurrency_per_shard=40)
    assert predict(1_000_000, 100_000, d).ramp_seconds > 0


def test_small_broadcasts_report_where_the_target_becomes_reachable() -> None:
    p = plan(10_000, 10_000)
    assert not p.prediction.target_met  # 1 s at the quota cannot absorb the pipeline's start latency
    least = p.min_connections_for_target
    assert least is not None and least > 10_000
    assert plan(least, 10_000).prediction.target_met
    assert min_connections_for_target(100_000) is not None


def test_invalid_input() -> None:
    with pytest.raises(ValueError):
        recommend_deployment(0, 10_000)
    with pytest.raises(ValueError):
        recommend_deployment(10, 10_000, headroom=1.5)
    with pytest.raises(ValueError):
        predict(10, 0, recommend_deployment(10, 10))


def test_cli_prints_a_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    root = argparse.ArgumentParser()
    add_parser(root.add_subparsers(dest="command", required=True))
    args = root.parse_args(["plan", "--connections", "300000", "--post-quota", "10000"])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "FANOUT_POST_RATE_PER_WORKER" in text and "predicted" in text
    args = root.parse_args(
        ["plan", "--connections", "300000", "--post-quota", "100000", "--json", "--post-latency-ms", "5"]
    )
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["deployment"]["totalPostRate"] <= 100_000
    assert out["costs"]["post_latency_ms"] == 5
    assert out["prediction"]["seconds"] >= 3.0


def test_the_plan_takes_only_its_share_of_the_account_quota() -> None:
    whole = plan(300_000, 10_000)
    shared = plan(300_000, 10_000, share=0.8)
    assert (shared.account_quota, shared.share, shared.budget) == (10_000, 0.8, 8_000)
    assert shared.prediction.floor_seconds == pytest.approx(300_000 / 8_000)
    assert shared.deployment.total_post_rate <= 8_000 * shared.headroom + 1e-6
    assert shared.prediction.seconds > whole.prediction.seconds
    with pytest.raises(ValueError):
        plan(1_000, 10_000, share=0)


def test_cli_defaults_to_the_cdk_share_and_shows_it(capsys: pytest.CaptureFixture[str]) -> None:
    root = argparse.ArgumentParser()
    add_parser(root.add_subparsers(dest="command", required=True))
    args = root.parse_args(["plan", "--connections", "300000", "--post-quota", "10000"])
    assert args.share == DEFAULT_POST_RATE_SHARE
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "postRateShare" in text and "accountPostQuota" in text and "8,000" in text
    args = root.parse_args(["plan", "--connections", "300000", "--share", "0.5", "--json"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["accountQuota"], out["share"], out["budget"]) == (10_000, 0.5, 5_000)
    assert out["deployment"]["totalPostRate"] <= 5_000
    with pytest.raises(SystemExit):  # argparse's clear error, no traceback
        root.parse_args(["plan", "--connections", "10", "--share", "1.5"])


def test_cli_prints_the_deploy_and_local_command_lines(capsys: pytest.CaptureFixture[str]) -> None:
    root = argparse.ArgumentParser()
    add_parser(root.add_subparsers(dest="command", required=True))
    args = root.parse_args(["plan", "--connections", "300000", "--json"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    commands, d = out["commands"], out["deployment"]
    argv = commands["cdkDeploy"]
    assert argv[:2] == ["cdk", "deploy"] and argv[2::2] == ["-c"] * len(commands["cdkContext"])
    assert dict(pair.split("=", 1) for pair in argv[3::2]) == commands["cdkContext"]
    assert shlex.split(commands["cdkDeployCommand"]) == argv
    context = commands["cdkContext"]
    assert context["postSqsBatchSize"] == str(d["post_sqs_batch_size"])
    assert context["postBatchingWindowSeconds"] == str(d["post_batching_window_s"])
    assert context["postMaxConcurrency"] == str(d["post_max_concurrency_per_shard"])
    assert context["postProvisionedConcurrency"] == str(d["postWorkers"])
    assert context["postRateShare"] == str(DEFAULT_POST_RATE_SHARE)
    local = commands["localUp"]
    assert local[:3] == ["fanout", "local", "up"] and shlex.split(commands["localUpCommand"]) == local
    assert local[local.index("--post-sqs-batch-size") + 1] == str(d["post_sqs_batch_size"])
    # the text shows the same two lines
    args = root.parse_args(["plan", "--connections", "300000"])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert commands["cdkDeployCommand"] in text and commands["localUpCommand"] in text


def test_without_provisioned_concurrency_the_command_sets_none() -> None:
    result = plan(300_000, 10_000, share=0.8, provisioned=False)
    context = result.topology_config().context()
    assert not any(k.endswith("ProvisionedConcurrency") for k in context)


@settings(max_examples=100, deadline=None)
@given(n=connections, r=quotas, provisioned=st.booleans())
def test_every_recommended_setting_is_a_deploy_time_knob(n: int, r: int, provisioned: bool) -> None:
    """The plan's knobs build a topology with exactly the plan's post fleet and mappings."""
    result = plan(n, r, share=0.8, provisioned=provisioned)
    d = result.deployment
    if d.shards > MAX_SHARDS:  # a budget of ~100,000/s and more: beyond what the stack deploys
        with pytest.raises(ValueError, match="shards"):
            result.topology_config()
        return
    system = topology(result.topology_config())
    post, query = system.function("post"), system.function("query")
    assert post.sqs is not None and query.sqs is not None
    assert (post.sqs.batch_size, post.sqs.maximum_batching_window_seconds, post.sqs.maximum_concurrency) == (
        d.post_sqs_batch_size,
        d.post_batching_window_s,
        d.post_max_concurrency_per_shard,
    )
    assert (query.sqs.batch_size, query.sqs.maximum_concurrency) == (
        d.query_sqs_batch_size,
        d.query_max_concurrency_per_shard,
    )
    assert len(system.stage("post").shards) == d.shards
    assert float(post.settings["post_rate_per_worker"]) == d.post_rate_per_worker  # type: ignore[arg-type]
    assert post.settings["post_concurrency"] == str(d.post_concurrency)
    assert post.provisioned_concurrency == (d.post_workers if provisioned else 0)
    assert query.provisioned_concurrency == (d.query_workers if provisioned else 0)
    assert system.function("swarm").provisioned_concurrency == (1 if provisioned else 0)


def test_cli_prints_cost_by_service_beside_the_naive_senders(capsys: pytest.CaptureFixture[str]) -> None:
    root = argparse.ArgumentParser()
    add_parser(root.add_subparsers(dest="command", required=True))
    base = ["plan", "--connections", "300000", "--broadcasts-per-day", "10", "--json"]
    args = root.parse_args([*base, "--message-bytes", "1024"])
    assert args.func(args) == 0
    small = json.loads(capsys.readouterr().out)["cost"]
    args = root.parse_args([*base, "--message-bytes", "40000"])
    assert args.func(args) == 0
    big = json.loads(capsys.readouterr().out)["cost"]
    for design in ("engine", "naive", "naiveThreaded"):
        assert {"API Gateway", "Lambda", "DynamoDB"} <= set(small[design]["byService"])
    # one frame per connection either way: 300,000 messages of one 32 KB unit at $1 per million,
    # and a 40,000-byte frame is metered as two units
    assert small["engine"]["byService"]["API Gateway"]["perBroadcast"] == pytest.approx(0.30, abs=1e-5)
    assert big["engine"]["byService"]["API Gateway"]["perBroadcast"] == pytest.approx(0.60, abs=1e-5)
    assert (
        small["naive"]["byService"]["API Gateway"]["perBroadcast"]
        == small["engine"]["byService"]["API Gateway"]["perBroadcast"]
    )
    args = root.parse_args(["plan", "--connections", "1000"])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "connection upkeep per day" in text and "naive" in text
