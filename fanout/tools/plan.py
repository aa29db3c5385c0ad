"""`fanout plan`: the quota model's command line and its rendering (the model: `fanout.plan`)."""

from __future__ import annotations

import argparse
import json
import math
import shlex
from dataclasses import asdict
from typing import Any

from fanout import plan as _model
from fanout.plan import DEFAULT_POST_RATE_SHARE, TARGET_FACTOR, Costs, Deployment, Plan, plan
from fanout.pricing import CostBreakdown
from fanout.tools.pricing import add_cost_arguments, breakdown_from_args, costs_to_json, render_costs
from fanout.topology import context_args, env_name

model_doc = _model.__doc__

_COST_FLAGS = {
    "post_frame_cpu_us": "CPU us per delivered frame in the post path (measured: bench_post engine)",
    "post_batch_cpu_us": "CPU us per post batch: ledger, counting, completion (measured: stage - engine)",
    "cpu_factor": "Lambda vCPU slowdown against this machine's core",
    "post_latency_ms": "PostToConnection round trip",
    "ddb_ms": "one DynamoDB call",
    "sqs_send_ms": "one SendMessageBatch",
    "sqs_delivery_ms": "message sent → ESM invokes the function",
    "invoke_overhead_ms": "fixed cost per invocation",
    "cold_start_ms": "Lambda init (ignored with --warm)",
}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `fanout plan` on the CLI's subparsers."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "plan",
        help="predict a broadcast's time at a PostToConnection quota and print the settings to deploy with",
        description=model_doc.split("\n\n")[0] if model_doc else None,
    )
    p.add_argument("--connections", type=int, required=True, help="N live connections")
    p.add_argument(
        "--post-quota",
        type=float,
        default=10_000,
        help="the account's API Gateway throttle, requests/s, shared by every API (default 10,000)",
    )
    p.add_argument(
        "--share",
        type=_share,
        default=DEFAULT_POST_RATE_SHARE,
        help="share of the quota the post stage uses, the CDK postRateShare (default %(default)s)",
    )
    p.add_argument(
        "--headroom", type=float, default=0.97, help="fraction of the budget to pace at (default 0.97)"
    )
    p.add_argument("--warm", action="store_true", help="workers already warm (no cold starts)")
    p.add_argument(
        "--no-provisioned",
        dest="provisioned",
        action="store_false",
        help="do not recommend provisioned concurrency (cold starts on the critical path)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    defaults = Costs()
    for name, help_ in _COST_FLAGS.items():
        p.add_argument(
            "--" + name.replace("_", "-"),
            type=float,
            default=getattr(defaults, name),
            help=f"{help_} (default %(default)s)",
        )
    add_cost_arguments(p)
    p.set_defaults(func=cmd_plan)
    return p


def _share(value: str) -> float:
    try:
        share = float(value)
    except ValueError:
        share = math.nan
    if not 0 < share <= 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a share in (0, 1]")
    return share


def cmd_plan(args: argparse.Namespace) -> int:
    costs = Costs(**{name: getattr(args, name) for name in _COST_FLAGS})
    result = plan(
        args.connections,
        args.post_quota,
        costs,
        headroom=args.headroom,
        warm=args.warm,
        provisioned=args.provisioned,
        share=args.share,
    )
    bill = breakdown_from_args(args, result, costs)
    if args.json:
        print(json.dumps(to_json(result, costs, bill), indent=2))
    else:
        print(render(result, bill))
    return 0


def cdk_context(result: Plan) -> dict[str, str]:
    """The plan as CDK context: every knob it decides (raises ValueError if the stack cannot take it)."""
    return result.topology_config().context()


def cdk_deploy_args(result: Plan) -> list[str]:
    """``cdk deploy -c key=value ...``: the command that deploys this plan."""
    return ["cdk", "deploy", *context_args(cdk_context(result))]


def _number(value: float) -> str:
    return f"{round(value, 3):g}" if not float(value).is_integer() else str(int(value))


def local_up_args(d: Deployment) -> list[str]:
    """``fanout local up ...``: the local stack with the plan's knobs (its workers on this machine).

    The post rate budget is the fleet's total (workers x rate), which the local stack divides over
    its post workers again, so each one is paced as deployed.
    """
    args = ["fanout", "local", "up", "--partitions", str(d.partitions), "--shards", str(d.shards),
            "--post-batch-size", str(d.post_batch_size), "--post-concurrency", str(d.post_concurrency),
            "--post-workers", str(d.post_workers), "--post-sqs-batch-size", str(d.post_sqs_batch_size),
            "--post-batching-window-seconds", str(d.post_batching_window_s),
            "--query-workers", str(d.query_workers)]  # fmt: skip
    if d.post_rate_per_worker > 0:
        args += ["--post-rate-budget", _number(d.total_post_rate)]
    return args


def command_lines(result: Plan) -> dict[str, Any]:
    """The command lines of the plan; ``cdkError`` says why the CDK app would refuse it, if it would."""
    out: dict[str, Any] = {"localUp": local_up_args(result.deployment)}
    out["localUpCommand"] = shlex.join(out["localUp"])
    try:
        out["cdkContext"] = cdk_context(result)
    except ValueError as exc:
        out["cdkError"] = str(exc)
        return out
    out["cdkDeploy"] = cdk_deploy_args(result)
    out["cdkDeployCommand"] = shlex.join(out["cdkDeploy"])
    return out


def to_json(result: Plan, costs: Costs, bill: CostBreakdown | None = None) -> dict[str, Any]:
    out = {
        "deployment": asdict(result.deployment)
        | {"postWorkers": result.deployment.post_workers, "totalPostRate": result.deployment.total_post_rate},
        "prediction": asdict(result.prediction),
        "accountQuota": result.account_quota,
        "share": result.share,
        "budget": result.budget,
        "headroom": result.headroom,
        "warm": result.warm,
        "minConnectionsForTarget": result.min_connections_for_target,
        "costs": asdict(costs),
        "commands": command_lines(result),
    }
    if bill is not None:
        out["cost"] = costs_to_json(bill)
    return out


def render(result: Plan, bill: CostBreakdown | None = None) -> str:
    d, p = result.deployment, result.prediction
    others = 1 - result.share
    rows = [
        ("CDK -c accountPostQuota", f"{result.account_quota:g}", "the account's throttle, requests/s"),
        (
            "CDK -c postRateShare",
            f"{result.share:g}",
            f"post budget {result.budget:,.0f}/s"
            + (f"; {others:.0%} left to other APIs and client messages" if others > 0 else ""),
        ),
        (env_name("partition_count"), f"{d.partitions}", "~100 connections per partition"),
        (env_name("shard_count"), f"{d.shards}", "Q: each shard's ESM starts 5 workers at once"),
        (
            env_name("post_batch_size"),
            f"{d.post_batch_size}",
            "B: above the largest partition, one batch each",
        ),
        (env_name("post_concurrency"), f"{d.post_concurrency}", "K posts in flight per worker"),
        (env_name("post_rate_per_worker"), f"{d.post_rate_per_worker:g}", "posts/s per worker (limiter)"),
        (
            "post ESM MaximumConcurrency",
            f"{d.post_max_concurrency_per_shard} x {d.shards} shards",
            f"{d.post_workers} post workers",
        ),
        (
            "post ESM BatchSize / window",
            f"{d.post_sqs_batch_size} / {d.post_batching_window_s} s",
            "amortizes per-invocation costs",
        ),
        (
            "query ESM MaximumConcurrency",
            f"{d.query_max_concurrency_per_shard} x {d.shards} shards",
            f"{d.query_workers} query workers",
        ),
        (env_name("swarm_send_concurrency"), f"{d.swarm_send_concurrency}", "SendMessageBatch in flight"),
        (
            "provisioned concurrency",
            f"swarm 1, query {d.query_workers}, post {d.post_workers}"
            if d.provisioned_concurrency
            else "none",
            "keeps cold starts off the critical path" if d.provisioned_concurrency else "cold starts count",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    out = [
        f"fanout plan: {p.connections:,} connections at a budget of {p.quota:,.0f} posts/s "
        f"({result.share:.0%} of the account's {result.account_quota:,.0f}/s; "
        f"{'warm' if result.warm or d.provisioned_concurrency else 'cold'} workers, "
        f"{result.headroom:.0%} of the budget)",
        "",
        "settings to deploy with",
    ]
    out += [f"  {name:<{width}}  {value:<{vwidth}}  {why}" for name, value, why in rows]
    out += [
        f"  total post rate: {d.post_workers} x {d.post_rate_per_worker:g} = "
        f"{d.post_workers * d.post_rate_per_worker:,.0f}/s (budget {p.quota:,.0f}/s)",
        "",
        "predicted broadcast",
        f"  floor N / R          {p.floor_seconds:9.2f} s",
        f"  predicted            {p.seconds:9.2f} s  ({p.ratio:.3f} x the floor; "
        f"target <= {TARGET_FACTOR:.2f}: {'met' if p.target_met else 'NOT met'})",
        f"    start latency      {p.start_seconds:9.2f} s  (invoke, swarm, query, SQS delivery"
        f"{'' if result.warm or d.provisioned_concurrency else ', cold starts'})",
        f"    delivery           {p.delivery_seconds:9.2f} s  at {p.throughput:,.0f} frames/s "
        f"(bound: {p.bottleneck}; ramp {p.ramp_seconds:.2f} s)",
        f"    tail               {p.tail_seconds:9.2f} s",
        f"  one post worker: {p.post_worker_rate:,.0f} frames/s unpaced; "
        f"fleet {p.post_capacity:,.0f}/s paced; query supply {p.query_supply:,.0f} ids/s; "
        f"{p.lambda_concurrency} concurrent Lambdas",
    ]
    if result.min_connections_for_target is not None:
        out.append(
            f"  within 10% of N / R from about {result.min_connections_for_target:,} connections "
            "at this budget"
        )
    else:
        out.append("  never within 10% of N / R at this budget with these costs")
    out += [f"  warning: {w}" for w in p.warnings]
    commands = command_lines(result)
    out += ["", "deploy to AWS (every setting above, as CDK context):"]
    if "cdkDeployCommand" in commands:
        out.append(f"  {commands['cdkDeployCommand']}")
    else:
        out.append(f"  the CDK app cannot deploy this as is: {commands['cdkError']}")
    out += [
        "run it locally (the same knobs; this machine runs the workers):",
        f"  {commands['localUpCommand']}",
    ]
    if bill is not None:
        out += ["", render_costs(bill)]
    return "\n".join(out)
