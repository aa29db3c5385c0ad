"""`fanout plan`: the quota model's command line and its rendering (the model: `fanout.plan`)."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict
from typing import Any

from fanout import plan as _model
from fanout.plan import DEFAULT_POST_RATE_SHARE, TARGET_FACTOR, Costs, Plan, plan

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
    if args.json:
        print(json.dumps(to_json(result, costs), indent=2))
    else:
        print(render(result))
    return 0


def to_json(result: Plan, costs: Costs) -> dict[str, Any]:
    return {
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
    }


def render(result: Plan) -> str:
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
        ("FANOUT_PARTITION_COUNT", f"{d.partitions}", "~100 connections per partition"),
        ("FANOUT_SHARD_COUNT", f"{d.shards}", "Q: each shard's ESM starts 5 workers at once"),
        ("FANOUT_POST_BATCH_SIZE", f"{d.post_batch_size}", "B: above the largest partition, one batch each"),
        ("FANOUT_POST_CONCURRENCY", f"{d.post_concurrency}", "K posts in flight per worker"),
        ("FANOUT_POST_RATE_PER_WORKER", f"{d.post_rate_per_worker:g}", "posts/s per worker (limiter)"),
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
        ("FANOUT_SWARM_SEND_CONCURRENCY", f"{d.swarm_send_concurrency}", "SendMessageBatch in flight"),
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
    return "\n".join(out)
