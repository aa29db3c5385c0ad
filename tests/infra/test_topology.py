"""One topology (fanout/topology.py), read by the CDK app, the local stack and `fanout plan`.

- The synthesized template and the local stack's runtime configuration agree on every function's
  timeout and every event source mapping's batch size, batching window and maximum concurrency.
- `fanout plan`'s printed `cdk deploy -c ...` line, synthesized, deploys what the plan says.
- Settings reach the functions under the environment names the settings model reads.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fanout.settings import Settings
from fanout.tools.cli import parser as cli_parser
from fanout.tools.plan import add_parser, cdk_context
from fanout.topology import (
    BROADCASTS_PENDING_INDEX,
    CONNECTIONS_INDEX,
    Ref,
    TopologyConfig,
    env_name,
    environment,
    topology,
)
from infra.local.resources import QueueSet
from infra.local.stack import FUNCTIONS, PREFIX, StackOptions, function_environment, runtime_config
from tests.infra.conftest import PARTITIONS, SHARDS

pytestmark = pytest.mark.slow


# -- the module is the bottom layer ---------------------------------------------------------------------
def test_the_topology_imports_no_aws_sdk_and_no_cdk() -> None:
    code = (
        "import sys, fanout.topology; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'boto3', 'botocore', 'aioboto3', 'aiobotocore', 'aws_cdk', 'infra', 'handlers'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_env_names_come_from_the_settings_model() -> None:
    assert env_name("post_queue_urls") == "FANOUT_POST_QUEUE_URLS"
    assert env_name("region") == "FANOUT_REGION"  # its own alias wins over the prefix
    with pytest.raises(KeyError):
        env_name("broadcasts_pending_index")  # no such setting: nothing would read it
    # every setting any function is given is one the model reads
    for fn in topology().functions:
        assert environment(fn.settings, lambda ref: "x"), fn.key
        for name in fn.settings:
            assert name in Settings.model_fields, (fn.key, name)


def test_index_names_are_the_ones_the_engine_queries() -> None:
    from fanout.store import PENDING_INDEX

    assert BROADCASTS_PENDING_INDEX == PENDING_INDEX
    assert Settings().connections_index == CONNECTIONS_INDEX


def test_knobs_lambda_would_refuse_are_refused() -> None:
    with pytest.raises(ValueError, match="batching window"):
        TopologyConfig(post_sqs_batch_size=50)
    TopologyConfig(post_sqs_batch_size=50, post_batching_window_seconds=1)
    with pytest.raises(ValueError, match="exceed the post budget"):
        TopologyConfig(post_rate_budget=1000, post_max_concurrency=5, post_rate_per_worker=100)
    with pytest.raises(ValueError, match="reserved"):
        TopologyConfig(reserve_concurrency=True, post_provisioned_concurrency=1000)


def test_local_tables_and_queues_follow_the_topology() -> None:
    from infra.local.resources import MAX_RECEIVE_COUNT, table_specs

    assert {s["TableName"] for s in table_specs(Settings())} == {
        getattr(Settings(), t.setting) for t in topology().tables
    }
    (connections,) = [s for s in table_specs(Settings()) if s["TableName"] == Settings().connections_table]
    assert connections["GlobalSecondaryIndexes"][0]["IndexName"] == CONNECTIONS_INDEX
    assert connections["StreamSpecification"]["StreamViewType"] == "NEW_AND_OLD_IMAGES"
    assert topology().stage("post").shards[0].max_receive_count == MAX_RECEIVE_COUNT


# -- template and local stack from one source -----------------------------------------------------------
def by_type(t: dict[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    return {k: r for k, r in t["Resources"].items() if r["Type"] == type_}


def _function_of(t: dict[str, Any], value: Any) -> str:
    """The FunctionName of the function a CloudFormation value names, directly or by its alias."""
    text = json.dumps(value)
    functions = by_type(t, "AWS::Lambda::Function")
    for lid, r in by_type(t, "AWS::Lambda::Alias").items():
        if f'"{lid}"' in text:
            text = json.dumps(r["Properties"]["FunctionName"])
    (name,) = [r["Properties"]["FunctionName"] for lid, r in functions.items() if f'"{lid}"' in text]
    return str(name)


STREAM_ARNS = {"connections": "arn:stream:connections", "subscriptions": "arn:stream:subscriptions"}


def template_facts(t: dict[str, Any]) -> dict[str, Any]:
    """Per function name: its timeout and the (batch size, window, max concurrency) of its mappings."""
    queues = {k: r["Properties"]["QueueName"] for k, r in by_type(t, "AWS::SQS::Queue").items()}
    timeouts = {
        r["Properties"]["FunctionName"]: r["Properties"]["Timeout"]
        for r in by_type(t, "AWS::Lambda::Function").values()
        if "FunctionName" in r["Properties"]
    }
    mappings: dict[str, list[tuple[str, int, int, int | None]]] = {}
    for m in by_type(t, "AWS::Lambda::EventSourceMapping").values():
        p = m["Properties"]
        source = json.dumps(p["EventSourceArn"])
        queue = next((name for lid, name in queues.items() if f'"{lid}"' in source), "stream")
        mappings.setdefault(_function_of(t, p["FunctionName"]), []).append(
            (
                queue,
                p["BatchSize"],
                p.get("MaximumBatchingWindowInSeconds", 0),
                p.get("ScalingConfig", {}).get("MaximumConcurrency"),
            )
        )
    return {"timeouts": timeouts, "mappings": {k: sorted(v) for k, v in mappings.items()}}


def local_facts(options: StackOptions) -> dict[str, Any]:
    """The same facts from the local stack's runtime configuration, built without starting anything."""
    queues = QueueSet(
        [f"http://sqs/{PREFIX}-partition-{i}" for i in range(options.shards)],
        [f"http://sqs/{PREFIX}-post-{i}" for i in range(options.shards)],
        [f"http://sqs/{PREFIX}-{s}-{i}-dlq" for s in ("partition", "post") for i in range(options.shards)],
        f"http://sqs/{PREFIX}-swarm-failures",
    )
    env = function_environment(
        options, Settings(), queues, connections_endpoint="http://ws/local", token_secret_arn="arn:secret"
    )
    config = runtime_config(env, queues, STREAM_ARNS, options)
    mappings: dict[str, list[tuple[str, int, int, int | None]]] = {}
    for m in config["sqsMappings"]:
        mappings.setdefault(m["function"], []).append(
            (
                m["queueUrl"].rsplit("/", 1)[1],
                m["batchSize"],
                int(m["maximumBatchingWindow"]),
                m["maximumConcurrency"],
            )
        )
    for m in config["dynamodbStreamMappings"]:
        # a stream mapping has no MaximumConcurrency (its parallelization is per shard)
        mappings.setdefault(m["function"], []).append(
            ("stream", m["batchSize"], int(m["maximumBatchingWindow"]), None)
        )
    timeouts = {f["name"]: int(f["timeout"]) for f in config["functions"]}
    return {"timeouts": timeouts, "mappings": {k: sorted(v) for k, v in mappings.items()}}


def synthesize(context: dict[str, str], outdir: Path) -> dict[str, Any]:
    from infra.cdk.app import build_app

    app = build_app({"bundle": "false", **context}, outdir=str(outdir))
    app.synth()  # cdk-nag runs: an unacknowledged finding fails here
    return dict(json.loads((outdir / "Fanout.template.json").read_text()))


def test_local_defaults_are_the_deployed_timeouts_batch_sizes_and_windows(fanout: dict[str, Any]) -> None:
    deployed = template_facts(fanout)
    local = local_facts(StackOptions(partitions=PARTITIONS, shards=SHARDS))
    assert local["timeouts"] == deployed["timeouts"]
    assert set(local["timeouts"]) == set(FUNCTIONS)
    assert local["timeouts"]["fanout-swarm"] == 300 and local["timeouts"]["fanout-reconciler"] == 55

    def without_concurrency(facts: dict[str, Any]) -> dict[str, Any]:
        return {fn: [m[:3] for m in ms] for fn, ms in facts["mappings"].items()}

    # the post mapping's BatchSize locally is the deployed one (1 by default)
    assert without_concurrency(local) == without_concurrency(deployed)
    assert {m[1] for m in deployed["mappings"]["fanout-post"]} == {TopologyConfig().post_sqs_batch_size}


@pytest.fixture(scope="module")
def local_options() -> StackOptions:
    # more post workers than shards, a post batch above 10 (so a window): every knob shows
    return StackOptions(
        partitions=PARTITIONS,
        shards=SHARDS,
        post_workers=7,
        query_workers=4,
        post_sqs_batch_size=20,
        post_batching_window_seconds=2,
    )


@pytest.fixture(scope="module")
def local_template(local_options: StackOptions, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The app synthesized with the local stack's knobs."""
    return synthesize(local_options.topology_config().context(), tmp_path_factory.mktemp("local-knobs"))


def test_template_and_local_stack_agree_when_built_from_the_same_knobs(
    local_options: StackOptions, local_template: dict[str, Any]
) -> None:
    deployed, local = template_facts(local_template), local_facts(local_options)
    assert local == deployed
    post = deployed["mappings"]["fanout-post"]
    assert len(post) == SHARDS and {m[1:] for m in post} == {(20, 2, 3)}  # ceil(7 / 3) per shard
    query = deployed["mappings"]["fanout-query"]
    assert {m[1:] for m in query} == {(10, 0, 2)}


def test_the_template_carries_the_local_stack_environment(
    local_options: StackOptions, local_template: dict[str, Any]
) -> None:
    """Every literal setting locally is the template's value for the functions that get it."""
    env = {
        r["Properties"]["FunctionName"]: r["Properties"]["Environment"]["Variables"]
        for r in by_type(local_template, "AWS::Lambda::Function").values()
        if "FunctionName" in r["Properties"]
    }
    for fn in local_options.topology().functions:
        literal = {k: v for k, v in fn.settings.items() if not isinstance(v, Ref)}
        for name, value in environment(literal, lambda ref: None).items():
            assert env[fn.name(PREFIX)][name] == value, (fn.key, name)


# -- fanout plan -> cdk deploy -c ... -> template ------------------------------------------------------
def _plan_output(*argv: str) -> Iterator[str]:
    root = argparse.ArgumentParser()
    add_parser(root.add_subparsers(dest="command", required=True))
    args = root.parse_args(["plan", *argv])
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert args.func(args) == 0
    yield from out.getvalue().splitlines()


def _context_pairs(argv: list[str]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for flag, value in itertools.pairwise(argv):
        if flag == "-c":
            key, _, v = value.partition("=")
            pairs[key] = v
    return pairs


PLAN_ARGS = ("--connections", "300000", "--post-quota", "10000")


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], dict[str, Any]]:
    (line,) = [x.strip() for x in _plan_output(*PLAN_ARGS) if x.strip().startswith("cdk deploy ")]
    argv = shlex.split(line)
    assert argv[:2] == ["cdk", "deploy"]
    context = _context_pairs(argv[2:])
    assert len(context) * 2 == len(argv) - 2  # nothing but -c pairs
    return context, synthesize(context, tmp_path_factory.mktemp("planned"))


def test_the_printed_cdk_command_deploys_the_plan(planned: tuple[dict[str, str], dict[str, Any]]) -> None:
    from fanout.plan import plan

    context, t = planned
    d = plan(300_000, 10_000, share=0.8).deployment
    assert d.provisioned_concurrency and d.post_sqs_batch_size > 10  # the case worth deploying
    fns = {
        r["Properties"]["FunctionName"]: (lid, r["Properties"])
        for lid, r in by_type(t, "AWS::Lambda::Function").items()
        if "FunctionName" in r["Properties"]
    }
    post_id, post = fns["fanout-post"]
    env = post["Environment"]["Variables"]
    assert env[env_name("post_batch_size")] == str(d.post_batch_size)
    assert env[env_name("post_concurrency")] == str(d.post_concurrency)
    assert float(env[env_name("post_rate_per_worker")]) == d.post_rate_per_worker
    assert env[env_name("partition_count")] == str(d.partitions)
    assert env[env_name("shard_count")] == str(d.shards)
    assert fns["fanout-swarm"][1]["Environment"]["Variables"][env_name("swarm_send_concurrency")] == str(
        d.swarm_send_concurrency
    )
    assert post["MemorySize"] == topology().function("post").memory_mb
    # no reservation: the plan recommends none, and none is deployed
    assert all("ReservedConcurrentExecutions" not in p for _, p in fns.values())

    aliases = {
        _function_of(t, r["Properties"]["FunctionName"]): (lid, r["Properties"])
        for lid, r in by_type(t, "AWS::Lambda::Alias").items()
    }
    provisioned = {
        name: p["ProvisionedConcurrencyConfig"]["ProvisionedConcurrentExecutions"]
        for name, (_, p) in aliases.items()
    }
    assert provisioned == {"fanout-swarm": 1, "fanout-query": d.query_workers, "fanout-post": d.post_workers}

    mappings = template_facts(t)["mappings"]
    assert {m[1:] for m in mappings["fanout-post"]} == {
        (d.post_sqs_batch_size, d.post_batching_window_s, d.post_max_concurrency_per_shard)
    }
    assert len(mappings["fanout-post"]) == d.shards
    assert {m[1:] for m in mappings["fanout-query"]} == {
        (d.query_sqs_batch_size, d.query_batching_window_s, d.query_max_concurrency_per_shard)
    }
    # the post mappings invoke the alias (provisioned), never $LATEST
    post_alias = aliases["fanout-post"][0]
    for m in by_type(t, "AWS::Lambda::EventSourceMapping").values():
        if _function_of(t, m["Properties"]["FunctionName"]) == "fanout-post":
            assert f'"{post_alias}"' in json.dumps(m["Properties"]["FunctionName"])
            assert f'"{post_id}"' not in json.dumps(m["Properties"]["FunctionName"])
    # the swarm is invoked through its alias, and its async failures are configured there
    swarm_alias = aliases["fanout-swarm"][0]
    for caller in ("fanout-operator-api", "fanout-sweeper"):
        name = fns[caller][1]["Environment"]["Variables"][env_name("swarm_function_name")]
        assert name == {"Ref": swarm_alias}, caller
    (invoke,) = [
        c
        for c in by_type(t, "AWS::Lambda::EventInvokeConfig").values()
        if _function_of(t, c["Properties"]["FunctionName"]) == "fanout-swarm"
    ]
    assert f'"{swarm_alias}"' in json.dumps(invoke["Properties"]["Qualifier"])
    assert context == cdk_context(plan(300_000, 10_000, share=0.8))


def test_the_printed_local_command_runs_the_plans_knobs() -> None:
    from fanout.plan import plan
    from fanout.tools.cli import _stack_options

    (line,) = [x.strip() for x in _plan_output(*PLAN_ARGS) if x.strip().startswith("fanout local up")]
    args = cli_parser().parse_args(shlex.split(line)[1:])
    options = _stack_options(args)
    d = plan(300_000, 10_000, share=0.8).deployment
    local = options.topology()
    post, query = local.function("post").sqs, local.function("query").sqs
    assert post is not None and query is not None
    assert (post.batch_size, post.maximum_batching_window_seconds, post.maximum_concurrency) == (
        d.post_sqs_batch_size,
        d.post_batching_window_s,
        d.post_max_concurrency_per_shard,
    )
    assert query.maximum_concurrency == d.query_max_concurrency_per_shard
    assert (options.partitions, options.shards, options.post_batch_size, options.post_concurrency) == (
        d.partitions,
        d.shards,
        d.post_batch_size,
        d.post_concurrency,
    )
    # each local post worker is paced as a deployed one
    env = function_environment(
        options,
        Settings(),
        QueueSet(["p"] * d.shards, ["q"] * d.shards, ["d"] * 2 * d.shards),
        connections_endpoint="http://ws",
        token_secret_arn="arn",
    )
    assert float(env[env_name("post_rate_per_worker")]) == pytest.approx(d.post_rate_per_worker, abs=1e-3)


def test_the_local_runtime_runs_every_stream_consumer_on_its_tables_stream_and_every_schedule() -> None:
    options = StackOptions(partitions=PARTITIONS, shards=SHARDS, reconcile_every_seconds=2)
    queues = QueueSet(["p"] * SHARDS, ["q"] * SHARDS, ["d"] * 2 * SHARDS)
    config = runtime_config({}, queues, STREAM_ARNS, options)
    streams = {m["function"]: m["streamArn"] for m in config["dynamodbStreamMappings"]}
    assert streams == {
        "fanout-partition-counter": STREAM_ARNS["connections"],
        "fanout-channel-counter": STREAM_ARNS["subscriptions"],
    }
    system = topology()
    counter = system.function("channel-counter")
    assert counter.stream is not None and counter.stream.table == "subscriptions"
    assert counter.stream.on_failure_queue == "channel-counter-failures"
    assert system.queue("channel-counter-failures") in system.dead_letter_queues
    assert [q.key for q in system.stream_failure_queues] == [
        "partition-counter-failures",
        "channel-counter-failures",
    ]
    schedules = {s["function"]: s["rateSeconds"] for s in config["schedules"]}
    # both reconcilers at the cadence the test asked for; the sweeper as deployed
    assert schedules == {"fanout-reconciler": 2, "fanout-channel-reconciler": 2, "fanout-sweeper": 60}


def test_local_stream_arns_cover_every_stream_trigger() -> None:
    tables = {f.stream.table for f in topology().functions if f.stream is not None}
    assert tables == {t.key for t in topology().tables if t.stream} == set(STREAM_ARNS)
