"""The pure sizing rules and the typed config (no synthesis)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fanout.plan import DEFAULT_POST_RATE_SHARE
from fanout.topology import topology
from infra.cdk.config import FanoutConfig
from infra.cdk.sizing import post_concurrency_plan, visibility_timeout_seconds


def test_default_budget_plan() -> None:
    # 10,000 posts/s at 1,000 per worker = 10 workers over 4 shards -> 3 per shard, paced at 833/s.
    plan = post_concurrency_plan(10_000, 4, 1_000)
    assert plan.max_concurrency_per_shard == 3
    assert plan.total_workers == 12
    assert plan.rate_per_worker == pytest.approx(833.333, abs=0.001)


def test_small_budget_respects_lambda_minimum_of_two() -> None:
    plan = post_concurrency_plan(100, 8, 1_000)
    assert plan.max_concurrency_per_shard == 2
    assert plan.total_workers * plan.rate_per_worker <= 100 + 1e-6


@given(
    budget=st.floats(min_value=1, max_value=1e6),
    shards=st.integers(min_value=1, max_value=100),
    capacity=st.floats(min_value=10, max_value=10_000),
)
def test_plan_never_exceeds_the_budget_and_reaches_it_when_possible(
    budget: float, shards: int, capacity: float
) -> None:
    plan = post_concurrency_plan(budget, shards, capacity)
    assert 2 <= plan.max_concurrency_per_shard <= 1000
    assert plan.total_workers == plan.max_concurrency_per_shard * shards
    assert plan.total_workers * plan.rate_per_worker <= budget * (1 + 1e-6) + 0.001 * plan.total_workers
    if math.ceil(math.ceil(budget / capacity) / shards) <= 1000:
        # enough workers that, each at capacity, the fleet can use the whole budget
        assert plan.total_workers * capacity >= budget * (1 - 1e-9)
        assert plan.rate_per_worker <= capacity + 0.001


def test_plan_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        post_concurrency_plan(0, 4, 1_000)
    with pytest.raises(ValueError):
        post_concurrency_plan(100, 0, 1_000)


def test_visibility_timeout_is_six_times_the_function_timeout_plus_window() -> None:
    assert visibility_timeout_seconds(60) == 360
    assert visibility_timeout_seconds(60, 5) == 365
    with pytest.raises(ValueError):
        visibility_timeout_seconds(10_000)


class Context(dict[str, object]):
    def try_get_context(self, key: str) -> object:
        return self.get(key)


def test_config_from_cli_strings() -> None:
    config = FanoutConfig.from_context(
        Context(
            shards="3", partitions="2500", loadtest="true", removalPolicy="destroy", postRateBudget="50000"
        )
    )
    assert config.shards == 3 and config.partitions == 2500 and config.loadtest is True
    assert config.removal_policy.value == "destroy"
    assert config.post_plan.total_workers * config.post_plan.rate_per_worker <= 50_000 + 1


@pytest.mark.parametrize(
    "bad", [{"shards": "0"}, {"billingMode": "ONDEMAND"}, {"shardz": "3"}, {"logRetentionDays": "31"}]
)
def test_config_rejects_bad_context(bad: dict[str, str]) -> None:
    if "shardz" in bad:  # unknown keys are ignored by from_context but refused by the model
        with pytest.raises(ValueError):
            FanoutConfig.model_validate(bad)
        return
    with pytest.raises(ValueError, match="invalid fanout context"):
        FanoutConfig.from_context(Context(bad))


def test_post_budget_is_a_share_of_the_account_quota_unless_given() -> None:
    # the account throttle is shared by every API and client message of the account: 80 % by default
    assert FanoutConfig().post_budget == 8_000
    assert FanoutConfig().post_rate_share == DEFAULT_POST_RATE_SHARE  # what `fanout plan` assumes
    shared = FanoutConfig.from_context(Context(accountPostQuota="50000", postRateShare="0.5"))
    assert shared.post_budget == 25_000
    assert shared.post_plan.total_workers * shared.post_plan.rate_per_worker <= 25_000 + 0.01
    explicit = FanoutConfig.from_context(Context(accountPostQuota="50000", postRateBudget="1200"))
    assert explicit.post_budget == 1_200
    for bad in ({"postRateShare": "0"}, {"postRateShare": "1.5"}, {"accountPostQuota": "-1"}):
        with pytest.raises(ValueError, match="invalid fanout context"):
            FanoutConfig.from_context(Context(bad))


def _reserved(config: FanoutConfig) -> dict[str, int]:
    return {f.key: f.reserved_concurrency for f in topology(config).functions if f.reserved_concurrency}


def test_reserved_concurrency_is_opt_in() -> None:
    assert FanoutConfig().reserve_concurrency is False
    assert _reserved(FanoutConfig()) == {}
    on = FanoutConfig.from_context(Context(reserveConcurrency="true"))
    assert _reserved(on) == {
        "post": on.post_plan.total_workers,
        "reconciler": 1,
        "channel-reconciler": 1,
        "sweeper": 1,
    }


def test_name_prefix_follows_the_stack_unless_given() -> None:
    assert FanoutConfig().for_stack("Fanout").name("post-0") == "fanout-post-0"
    assert FanoutConfig().for_stack("FanoutStaging").name("swarm") == "fanoutstaging-swarm"
    given_prefix = FanoutConfig.from_context(Context(namePrefix="blue"))
    assert given_prefix.for_stack("FanoutStaging").name("swarm") == "blue-swarm"
    with pytest.raises(ValueError, match="namePrefix"):
        FanoutConfig().for_stack("F" * 40)
    with pytest.raises(ValueError, match="not resolved"):
        FanoutConfig().name("swarm")
