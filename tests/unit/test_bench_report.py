"""docs/benchmarks.md generator: every goal next to its figure, and what limits each goal not met."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loadtest.bench_models import BenchResults, StackFailure, StackRun
from loadtest.bench_report import goals, render, write_markdown
from loadtest.bench_stack import merge_stack, stack_post_batch_size

ROUNDS = 5


def profile(**shares: float) -> dict[str, Any]:
    return {
        "totalSeconds": 2.5,
        "frames": 5000,
        "groups": {k: {"share": v, "usPerFrame": v * 500} for k, v in shares.items()},
        "top": [
            {"tottimeS": 0.2, "ncalls": 5000, "cumtimeS": 0.9, "function": "aiohttp/client.py:500(_request)"}
        ],
        "cpuUsPerFrameUnderProfiler": 500.0,
    }


def variant(name: str, us: float, posts: int = 5000) -> dict[str, Any]:
    return {
        "variant": name,
        "posts": posts,
        "rounds": ROUNDS,
        "cpu_us_per_frame_median": us,
        "cpu_us_per_frame_min": us,
        "cpu_us_per_frame_max": us,
        "frames_per_s_median": 3000.0,
        "samples": [us] * ROUNDS,
    }


def measures(name: str, us: float, posts: int = 5000) -> list[dict[str, Any]]:
    cpu = us * posts / 1e6
    measure = {"variant": name, "posts": posts, "delivered": posts, "cpu_s": cpu, "wall_s": posts / 3000}
    return [measure | {"cpu_us_per_frame": us}] * ROUNDS


def point(n: int, seconds: float, us: float) -> dict[str, Any]:
    cpu = {"fanout-post": 0.5 * us * n / 1e6, "dynamodb": 0.3 * us * n / 1e6, "gateway": 0.2 * us * n / 1e6}
    return {
        "connections": n,
        "partitions": n // 100,
        "postBatchSize": 150,
        "largestPartition": 106,
        "seconds": seconds,
        "framesPerSecond": round(n / seconds, 1),
        "delivered": n,
        "cpuUsPerFrame": us,
        "postCpuUsPerFrame": us / 2,
        "stackCpuSeconds": cpu,
        "stackCpuUsPerFrame": us,
    }


def results() -> dict[str, Any]:
    """A run's JSON as loadtest/bench.py writes it (figures made up, layout real)."""
    return {
        "startedAt": "2026-11-26 00:00:00 UTC",
        "command": ".venv/bin/python -m loadtest.bench",
        "machine": {"cpus": 2, "python": "3.11.7", "loadStart": [1, 1, 1], "loadEnd": [1, 1, 1]},
        "load": {"post": {"min": 0.5, "median": 1.0, "max": 2.0}},
        "post": {
            "command": ".venv/bin/python -m loadtest.bench_post --rounds 5",
            "benchmark": "post_cost",
            "frame_bytes": 185,
            "aioboto3_inflight": 50,
            "loop": "uvloop",
            "machine": {"cpus": 2, "python": "3.11.7", "load": [1.0, 1.0, 1.0]},
            "variants": {
                "engine": variant("engine", 280),
                "stage": variant("stage", 420),
                "boto3": variant("boto3", 1600, 1000),
                "floor": variant("floor", 230),
            },
            "ratios": {"boto3/engine": 5.71},
            "measures": [
                *measures("engine", 280),
                *measures("stage", 420),
                *measures("boto3", 1600, 1000),
                *measures("floor", 230),
            ],
            "profile": {
                "engine": profile(**{"aiohttp/yarl/multidict client machinery": 0.7, "other": 0.3}),
                "stage": profile(
                    **{
                        "aiohttp/yarl/multidict client machinery": 0.6,
                        "botocore/aiobotocore (DynamoDB requests)": 0.1,
                    }
                ),
                "command": ".venv/bin/python -m loadtest.bench_post --profile engine|stage",
            },
        },
        "stack": {
            "command": ".venv/bin/python -m loadtest.bench --only stack --sizes 1000,10000,100000",
            "postWorkers": 2,
            "scale": [point(1000, 2.0, 800), point(10_000, 6.0, 1300), point(100_000, 80.0, 1400)],
            "failed": [{"connections": 300_000, "error": "TimeoutError()"}],
            "naive": {
                "connections": 10_000,
                "0ms": {
                    "engineSeconds": 6.0,
                    "naiveSeconds": 18.0,
                    "naiveDelivered": 10_000,
                    "naiveCpuSeconds": 15.0,
                    "speedup": 3.0,
                },
                "20ms": {
                    "engineSeconds": 6.1,
                    "naiveSeconds": 250.0,
                    "naiveDelivered": 10_000,
                    "speedup": 41.0,
                },
            },
            "ceiling": {
                "connections": 100_000,
                "workers": 2,
                "concurrency": 64,
                "delivered": 100_000,
                "seconds": 25.0,
                "framesPerSecond": 4000.0,
                "engineFramesPerSecond": 1250.0,
                "ratio": 0.31,
                "loopCpuSeconds": 30.0,
                "stackCpuSeconds": {"gateway": 18.0},
            },
        },
    }


def test_every_goal_not_met_says_what_limits_it(tmp_path: Path) -> None:
    # Given a run where some goals are met and some are not
    data = BenchResults.model_validate(results())
    rows = {g.goal: g.met for g in goals(data)}
    assert rows["1. engine vs boto3"] is True
    assert rows["1. whole post stage (ledger, counting) per frame"] is False
    assert rows["2. engine vs naive, 10k, 20ms added"] is True

    # When the doc is rendered
    doc = tmp_path / "benchmarks.md"
    write_markdown(data, doc)
    text = doc.read_text()

    # Then each goal not met (and only those) has its limit, with figures from this run
    limits = text.split("### What limits the goals not met", 1)[1].split("\n## ", 1)[0]
    unmet = [g for g, ok in rows.items() if ok is False]
    assert unmet
    for g in unmet:
        assert f"- **{g}**:" in limits
    assert "- **1. engine vs boto3**" not in limits
    assert "140 us per frame more than the engine" in limits  # stage 420 - engine 280
    assert "5x needs the engine to finish in 3.60 s" in limits  # naive 18 s / 5
    assert "**300,000 connections: failed**" in text
    assert "| 10,000 | 100 | 106 | 150 |" in text


def test_a_run_without_the_stack_renders(tmp_path: Path) -> None:
    data = results()
    del data["stack"]
    data["skipped"] = {"stack": "infra/local/gateway.py is missing"}
    write_markdown(BenchResults.model_validate(data), tmp_path / "b.md")
    assert "**Not run yet**: infra/local/gateway.py is missing." in (tmp_path / "b.md").read_text()


def test_a_stack_section_that_failed_says_why() -> None:
    data = results() | {"stack": {"error": "failed: RuntimeError('no gateway')"}}
    text = render(BenchResults.model_validate(data))
    assert "**Not run yet**: failed: RuntimeError('no gateway')." in text
    assert "| 2. engine vs naive, 10k, 20ms added | >= 40x faster | - | not run |" in text


def test_a_saved_run_loads_and_saves_to_the_same_json() -> None:
    # Given a run's JSON, with a point kept from an earlier run and the naive runs beside `connections`
    data = results()
    data["stack"]["scale"][0]["run"] = ".venv/bin/python -m loadtest.bench --only stack --sizes 1000"

    # When it is read into the records and written back
    saved = BenchResults.model_validate(data).to_json()

    # Then nothing is lost, added or retyped: an int stays an int, absent fields stay absent
    assert saved == data
    assert saved["stack"]["scale"][0]["cpuUsPerFrame"] == 800 and isinstance(
        saved["stack"]["scale"][0]["cpuUsPerFrame"], int
    )
    assert list(saved["stack"]["naive"]) == ["connections", "0ms", "20ms"]


def test_stack_runs_use_a_post_batch_above_the_largest_partition() -> None:
    # balanced partitions of ~100 connections reach ~1.1x the mean
    for size in (1_000, 10_000, 100_000, 300_000):
        assert stack_post_batch_size(size) >= 1.25 * 100


def test_a_merged_stack_run_keeps_the_earlier_sizes_it_did_not_measure_again() -> None:
    # Given an earlier run of 1,000 and 10,000 connections (with the naive runs) and a new run of
    # 10,000 and 100,000 (with the ceiling)
    earlier = results()["stack"] | {"command": "earlier", "ceiling": None}
    earlier["scale"] = [point(1000, 2.0, 800), point(10_000, 6.0, 1300)]
    new = results()["stack"] | {"command": "new", "naive": None, "failed": []}
    new["scale"] = [point(10_000, 5.0, 1000), point(100_000, 70.0, 1200)]

    # When the new run is merged into the earlier one
    merged = merge_stack(StackRun.model_validate(earlier), StackRun.model_validate(new))

    # Then each size has its latest figures, and what came from the earlier run says so
    assert [(p.connections, p.seconds, p.run) for p in merged.scale] == [
        (1000, 2.0, "earlier"),
        (10_000, 5.0, None),
        (100_000, 70.0, None),
    ]
    assert merged.naive is not None and merged.naive.run == "earlier"
    assert merged.ceiling is not None and merged.ceiling.run is None
    assert merged.command == "earlier; then new"
    assert merged.cpu_slope_us_per_decade == 200.0  # 800 -> 1000 -> 1200 us per decade of connections
    assert "run" not in merged.to_json()["scale"][1]


def test_a_stack_run_after_a_failed_one_replaces_it() -> None:
    new = StackRun.model_validate(results()["stack"])
    assert merge_stack(StackFailure(error="failed: TimeoutError()"), new) is new


def audiences(channel: list[float], user_ms: float) -> dict[str, Any]:
    return {
        "everyoneSeconds": [2.0, 2.2, 2.1],
        "channelSeconds": channel,
        "everyoneSingleP50Ms": 50.0,
        "userP50Ms": user_ms,
        "sends": 100,
        "reads": {
            "channelSeconds": 0.3,
            "channelItems": 10000,
            "everyoneSeconds": 2.9,
            "everyoneItems": 100000,
        },
    }


def test_the_audience_goals_compare_medians_and_say_what_limits_them(tmp_path: Path) -> None:
    data = BenchResults.model_validate(results() | {"audiences": audiences([2.5, 2.6, 3.0], 45.0)})
    rows = {g.goal: g for g in goals(data)}
    channel = rows["a 10,000-member channel in 100,000 connections vs everyone on 10,000"]
    user = rows["a user's 3 connections vs everyone on 1 connection, POST to frame p50"]
    assert (channel.met, channel.measured) == (True, "2.60 s vs 2.10 s (1.24x)")
    assert (user.met, user.measured) == (True, "45 ms vs 50 ms (0.90x)")

    slow = BenchResults.model_validate(results() | {"audiences": audiences([2.7, 2.7, 2.7], 60.0)})
    rows = {g.goal: g for g in goals(slow)}
    assert [g.met for g in rows.values() if g.goal.startswith(("a 10,000", "a user"))] == [False, False]
    write_markdown(slow, tmp_path / "b.md")
    text = (tmp_path / "b.md").read_text()
    assert "took 0.3 s (10000 items) where every partition of the stack takes 2.9 s" in text


def test_the_audience_goals_without_the_section_are_not_run() -> None:
    rows = {g.goal: g.met for g in goals(BenchResults.model_validate(results()))}
    assert rows["a 10,000-member channel in 100,000 connections vs everyone on 10,000"] is None
