"""The app deploys into a fresh account, again after `cdk destroy`, and twice in one Region.

- Retained resources (tables, secret, log groups, the API Gateway logging role) outlive `cdk destroy`:
  a fixed physical name on one would make the next deploy fail with "already exists", so none has one.
- Two stacks of one app (different stack names) claim no physical name twice.
- Under ``removalPolicy=destroy`` nothing is retained; under ``retain`` exactly the data and the logs.
- Reserved concurrency is opt-in (``reserveConcurrency``): AWS keeps 100 of the account's concurrency
  unreserved, so any reservation fails CREATE in a new account with a quota of 10.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from infra.cdk.config import FanoutConfig, RemovalMode
from tests.infra.conftest import Synth

pytestmark = pytest.mark.slow

# The names AWS keeps unique per account and Region (or per account), by resource type.
PHYSICAL_NAME = {
    "AWS::Lambda::Function": "FunctionName",
    "AWS::SQS::Queue": "QueueName",
    "AWS::SNS::Topic": "TopicName",
    "AWS::CloudWatch::Dashboard": "DashboardName",
    "AWS::CloudWatch::Alarm": "AlarmName",
    "AWS::Events::Rule": "Name",
    "AWS::DynamoDB::Table": "TableName",
    "AWS::Logs::LogGroup": "LogGroupName",
    "AWS::SecretsManager::Secret": "Name",
    "AWS::IAM::Role": "RoleName",
    "AWS::KMS::Alias": "AliasName",
    "AWS::ServiceDiscovery::PrivateDnsNamespace": "Name",
    "AWS::ECS::Cluster": "ClusterName",
}
RETAINED = {"Retain", "RetainExceptOnCreate"}


def physical_names(template: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for r in template["Resources"].values():
        prop = PHYSICAL_NAME.get(r["Type"])
        if prop and prop in r.get("Properties", {}):
            out.append((r["Type"], str(r["Properties"][prop])))
    return out


def retained(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: r for k, r in template["Resources"].items() if r.get("DeletionPolicy") in RETAINED}


@pytest.fixture(scope="module")
def two_stacks() -> dict[str, dict[str, Any]]:
    """One app, two fanout stacks: the default config and a test deployment (destroy, reservations)."""
    import aws_cdk as cdk

    from infra.cdk.app import BUNDLING_STACKS
    from infra.cdk.stack import FanoutStack

    app = cdk.App(context={"bundle": "false", BUNDLING_STACKS: []})
    FanoutStack(app, "Fanout", config=FanoutConfig())
    FanoutStack(
        app,
        "FanoutStaging",
        config=FanoutConfig(removal_policy=RemovalMode.DESTROY, reserve_concurrency=True),
    )
    assembly = app.synth()
    return {name: assembly.get_stack_by_name(name).template for name in ("Fanout", "FanoutStaging")}


@pytest.mark.parametrize("stack", ["Fanout", "FanoutLoadTest"])
def test_no_retained_resource_has_a_fixed_physical_name(synth: Synth, stack: str) -> None:
    for lid, r in retained(synth.templates[stack]).items():
        fixed = [p for p in r.get("Properties", {}) if p == "Name" or p.endswith("Name")]
        assert not fixed, f"{lid} ({r['Type']}) is retained with a fixed name: {fixed}"


def test_retain_keeps_the_data_the_logs_and_the_logging_role(fanout: dict[str, Any]) -> None:
    kept = Counter(r["Type"] for r in retained(fanout).values())
    assert set(kept) == {
        "AWS::DynamoDB::Table",
        "AWS::SecretsManager::Secret",
        "AWS::Logs::LogGroup",
        "AWS::IAM::Role",  # the API Gateway CloudWatch role the Region's setting points at
        "AWS::ApiGateway::Account",
    }
    assert kept["AWS::DynamoDB::Table"] == 8 and kept["AWS::IAM::Role"] == 1  # with rate limits and history
    groups = [r for r in fanout["Resources"].values() if r["Type"] == "AWS::Logs::LogGroup"]
    assert all(g["DeletionPolicy"] == "Retain" for g in groups)
    (account,) = [r for r in fanout["Resources"].values() if r["Type"] == "AWS::ApiGateway::Account"]
    (role_id,) = [k for k, r in retained(fanout).items() if r["Type"] == "AWS::IAM::Role"]
    # the retained setting never points at a role that `cdk destroy` deletes
    assert account["Properties"]["CloudWatchRoleArn"] == {"Fn::GetAtt": [role_id, "Arn"]}


def test_two_stacks_in_one_app_claim_no_name_twice(two_stacks: dict[str, dict[str, Any]]) -> None:
    names = {stack: physical_names(t) for stack, t in two_stacks.items()}
    assert names["Fanout"] and len(names["Fanout"]) == len(names["FanoutStaging"])
    every = names["Fanout"] + names["FanoutStaging"]
    duplicates = [n for n, count in Counter(every).items() if count > 1]
    assert not duplicates
    # readable names carry the stack's prefix (the default stack keeps fanout-...)
    assert all(n.startswith("fanout-") for _, n in names["Fanout"])
    assert all(n.startswith("fanoutstaging-") for _, n in names["FanoutStaging"])
    assert ("AWS::Lambda::Function", "fanoutstaging-swarm") in names["FanoutStaging"]


def test_destroy_retains_nothing(two_stacks: dict[str, dict[str, Any]]) -> None:
    staging = two_stacks["FanoutStaging"]
    assert not retained(staging)
    for r in staging["Resources"].values():
        if r["Type"] == "AWS::DynamoDB::Table":
            assert r["Properties"]["DeletionProtectionEnabled"] is False


def test_reserved_concurrency_only_when_asked(two_stacks: dict[str, dict[str, Any]]) -> None:
    def reserved(template: dict[str, Any]) -> dict[str, int]:
        return {
            r["Properties"]["FunctionName"]: r["Properties"]["ReservedConcurrentExecutions"]
            for r in template["Resources"].values()
            if r["Type"] == "AWS::Lambda::Function" and "ReservedConcurrentExecutions" in r["Properties"]
        }

    assert reserved(two_stacks["Fanout"]) == {}
    plan = FanoutConfig().post_plan
    assert reserved(two_stacks["FanoutStaging"]) == {
        "fanoutstaging-post": plan.total_workers,
        "fanoutstaging-reconciler": 1,
        "fanoutstaging-channel-reconciler": 1,
        "fanoutstaging-sweeper": 1,
    }
    # without reservations the post fleet is still bounded: MaximumConcurrency per post shard
    post_fn = next(
        k
        for k, r in two_stacks["Fanout"]["Resources"].items()
        if r["Type"] == "AWS::Lambda::Function" and r["Properties"].get("FunctionName") == "fanout-post"
    )
    caps = [
        m["Properties"]["ScalingConfig"]["MaximumConcurrency"]
        for m in two_stacks["Fanout"]["Resources"].values()
        if m["Type"] == "AWS::Lambda::EventSourceMapping"
        and m["Properties"]["FunctionName"] == {"Ref": post_fn}
    ]
    assert caps == [plan.max_concurrency_per_shard] * FanoutConfig().shards
    assert sum(caps) * plan.rate_per_worker <= FanoutConfig().post_budget + 0.01
