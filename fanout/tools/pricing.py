"""What a broadcast costs on AWS: the cost model's flags, rendering and JSON (the model: `fanout.pricing`).

`fanout plan` adds these flags with `add_cost_arguments` and prints `render_costs`; on its own,
``python -m fanout.tools.pricing --connections N`` plans the deployment as `fanout plan` does and
prints its bill.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

from fanout.plan import DEFAULT_POST_RATE_SHARE, Costs, Plan, plan
from fanout.pricing import (
    DEFAULT_PRICES,
    PRICE_FIELDS,
    CostBreakdown,
    CostInputs,
    DesignCost,
    Line,
    MemorySizes,
    Prices,
    PricesError,
    Workload,
    cost_of_broadcast,
    override_prices,
)

_MEMORY = tuple(f.name for f in fields(MemorySizes))


def _prices_file(value: str) -> dict[str, Any]:
    """--prices FILE: a JSON object of price overrides, validated on the spot."""
    try:
        data = json.loads(Path(value).read_text())
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {value}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{value} is not JSON: {exc}") from None
    try:
        override_prices(data)
    except PricesError as exc:
        raise argparse.ArgumentTypeError(f"{value}: {exc}") from None
    return dict(data)


def _price(value: str) -> tuple[str, float]:
    """--price NAME=USD: one price override."""
    name, sep, raw = value.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{value!r} is not NAME=PRICE (names: {', '.join(PRICE_FIELDS)})")
    try:
        override_prices({name.strip(): raw.strip()})
    except PricesError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return name.strip(), float(raw)


def _memory(value: str) -> tuple[str, int]:
    """--memory FUNCTION=MB: one function's memory size."""
    name, sep, raw = value.partition("=")
    key = name.strip().replace("-", "_")
    if not sep or key not in _MEMORY or not raw.strip().isdigit() or not 128 <= int(raw) <= 10_240:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not FUNCTION=MB with MB in 128..10240 (functions: {', '.join(_MEMORY)})"
        )
    return key, int(raw)


def _non_negative(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not number >= 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number >= 0")
    return number


def _positive(value: str) -> float:
    number = _non_negative(value)
    if number == 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number > 0")
    return number


def _fraction(value: str) -> float:
    number = _non_negative(value)
    if number > 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a fraction in [0, 1]")
    return number


def _hours(value: str) -> float:
    number = _non_negative(value)
    if number > 24:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of hours in [0, 24]")
    return number


def _positive_int(value: str) -> int:
    if not value.strip().isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number >= 1")
    return int(value)


def add_cost_arguments(parser: argparse.ArgumentParser) -> None:
    """The cost model's flags (a group of `parser`)."""
    g = parser.add_argument_group("cost (fanout.pricing; free tiers ignored)")
    g.add_argument(
        "--message-bytes", type=_positive_int, default=512, help="frame size S as received (default 512)"
    )
    g.add_argument("--broadcasts-per-day", type=_non_negative, default=1.0, help="D (default 1)")
    g.add_argument("--prices", type=_prices_file, help="JSON file of price overrides {name: USD}")
    g.add_argument(
        "--price",
        type=_price,
        action="append",
        default=[],
        metavar="NAME=USD",
        help=f"override one price (after --prices); names: {', '.join(PRICE_FIELDS)}",
    )
    g.add_argument(
        "--memory",
        type=_memory,
        action="append",
        default=[],
        metavar="FUNCTION=MB",
        help=f"a function's memory (default: the CDK app's); functions: {', '.join(_MEMORY)}",
    )
    g.add_argument(
        "--connected-hours",
        type=_hours,
        default=24.0,
        help="hours a day each connection is connected (default 24: all day)",
    )
    g.add_argument(
        "--connection-lifetime-hours",
        type=_positive,
        default=2.0,
        help="hours between reconnects (default 2, API Gateway's maximum)",
    )
    g.add_argument(
        "--heartbeat-seconds",
        type=_non_negative,
        default=300.0,
        help="client ping interval, 0 for none (default 300)",
    )
    g.add_argument(
        "--gone-fraction", type=_fraction, default=0.0, help="connections answering 410 (default 0)"
    )
    g.add_argument(
        "--dynamodb-billing",
        choices=["on_demand", "provisioned"],
        default="on_demand",
        help="DynamoDB capacity mode (default on_demand, the CDK app's)",
    )


def prices_from_args(args: argparse.Namespace) -> Prices:
    overrides = {**(getattr(args, "prices", None) or {}), **dict(getattr(args, "price", None) or [])}
    return override_prices(overrides, DEFAULT_PRICES)


def breakdown_from_args(args: argparse.Namespace, result: Plan, costs: Costs) -> CostBreakdown:
    """The bill of `result`'s deployment and prediction, with the cost flags of `args`."""
    workload = Workload(
        connections=result.prediction.connections,
        message_bytes=args.message_bytes,
        broadcasts_per_day=args.broadcasts_per_day,
        connected_hours_per_day=args.connected_hours,
        connection_lifetime_hours=args.connection_lifetime_hours,
        heartbeat_seconds=args.heartbeat_seconds,
        gone_fraction=args.gone_fraction,
        dynamodb_billing=args.dynamodb_billing,
        warm=result.warm,
    )
    memory = replace(MemorySizes.from_topology(), **dict(args.memory or []))
    inputs = CostInputs(
        workload, result.deployment, result.prediction, costs, memory, prices=prices_from_args(args)
    )
    return cost_of_broadcast(inputs)


# -- rendering --------------------------------------------------------------------------------------------
def _usd(value: float) -> str:
    if value == 0:
        return "-"
    return f"${value:,.2f}" if value >= 100 else f"${value:,.4f}" if value >= 0.01 else f"${value:.6f}"


def _dominant(services: dict[str, float]) -> str:
    total = sum(services.values())
    if total <= 0:
        return "nothing"
    name = max(services, key=lambda k: services[k])
    return f"{name} ({services[name] / total:.0%})"


def render_costs(bill: CostBreakdown) -> str:
    designs = [bill.engine, bill.naive, bill.naive_threaded]
    per = [bill.by_service(d) for d in designs]
    services = sorted({s for p in per for s in p}, key=lambda s: -max(p.get(s, (0, 0))[1] for p in per))
    p = bill.prices
    out = [
        f"cost: {bill.workload.connections:,} connections, {bill.workload.message_bytes:,}-byte frames, "
        f"{bill.broadcasts_per_day:g} broadcasts/day; {p.region} list prices as of {p.as_of} "
        f"(free tiers ignored); DynamoDB {bill.workload.dynamodb_billing.replace('_', '-')}",
        "",
        "per broadcast" + " " * 19 + "".join(f"{d.name:>16}" for d in designs),
    ]
    for service in services:
        row = [per[k].get(service, (0.0, 0.0))[0] for k in range(len(designs))]
        if any(row):
            out.append(f"  {service:<28}" + "".join(f"{_usd(v):>16}" for v in row))
    out.append(f"  {'total':<28}" + "".join(f"{_usd(d.broadcast_usd):>16}" for d in designs))
    out.append(f"  {'duration':<28}" + "".join(f"{d.seconds:>15,.1f}s" for d in designs))
    out += ["", "per day (broadcasts x D + standing + connection upkeep)"]
    for service in services:
        row = [per[k].get(service, (0.0, 0.0))[1] for k in range(len(designs))]
        out.append(f"  {service:<28}" + "".join(f"{_usd(v):>16}" for v in row))
    out.append(f"  {'total':<28}" + "".join(f"{_usd(bill.per_day_usd(d)):>16}" for d in designs))
    e, eng = per[0], bill.engine
    daily = [replace(x, usd=x.usd * bill.broadcasts_per_day) for x in eng.per_broadcast]
    daily += [*eng.standing_per_day, *bill.upkeep_per_day]
    top = sorted(daily, key=lambda x: -x.usd)[:3]
    out += [
        "",
        "what dominates",
        f"  per broadcast: {_dominant({s: v[0] for s, v in e.items()})} of the engine's "
        f"{_usd(eng.broadcast_usd)}",
        f"  per day: {_dominant({s: v[1] for s, v in e.items()})} of the engine's "
        f"{_usd(bill.per_day_usd(eng))}: connection upkeep {_usd(bill.upkeep_usd)} (every design), "
        f"broadcasts {_usd(eng.broadcast_usd * bill.broadcasts_per_day)}, standing {_usd(eng.standing_usd)}",
        "  largest lines per day: " + "; ".join(f"{x.service} {x.item} {_usd(x.usd)}" for x in top),
        "",
        "engine, one broadcast",
        *_lines(eng.per_broadcast),
        "",
        "engine, standing per day (broadcasting or not)",
        *_lines(eng.standing_per_day),
        "",
        "connection upkeep per day (every design)",
        *_lines(bill.upkeep_per_day),
        "",
    ]
    for d in designs:
        out += [f"  note ({d.name}): {n}" for n in d.notes]
    return "\n".join(out)


def _quantity(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _lines(lines: list[Line]) -> list[str]:
    width = max((len(f"{x.service}: {x.item}") for x in lines), default=0)
    return [
        f"  {f'{x.service}: {x.item}':<{width}}  {_quantity(x.quantity):>16} {x.unit:<24} {_usd(x.usd):>12}"
        for x in sorted(lines, key=lambda x: -x.usd)
    ]


def _design_json(bill: CostBreakdown, d: DesignCost) -> dict[str, Any]:
    return {
        "seconds": d.seconds,
        "perBroadcastUsd": d.broadcast_usd,
        "standingPerDayUsd": d.standing_usd,
        "perDayUsd": bill.per_day_usd(d),
        "byService": {s: {"perBroadcast": a, "perDay": b} for s, (a, b) in bill.by_service(d).items()},
        "fitsOneInvocation": d.fits_one_invocation,
        "maxConnectionsOneInvocation": d.max_connections_one_invocation,
        "perBroadcast": [asdict(x) for x in d.per_broadcast],
        "standingPerDay": [asdict(x) for x in d.standing_per_day],
        "notes": d.notes,
    }


def costs_to_json(bill: CostBreakdown) -> dict[str, Any]:
    return {
        "workload": asdict(bill.workload),
        "prices": bill.prices.model_dump(),
        "engine": _design_json(bill, bill.engine),
        "naive": _design_json(bill, bill.naive),
        "naiveThreaded": _design_json(bill, bill.naive_threaded),
        "upkeepPerDayUsd": bill.upkeep_usd,
        "upkeepPerDay": [asdict(x) for x in bill.upkeep_per_day],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fanout.tools.pricing",
        description="the bill of a broadcast for the deployment `fanout plan` recommends",
    )
    parser.add_argument("--connections", type=_positive_int, required=True, help="N live connections")
    parser.add_argument("--post-quota", type=float, default=10_000, help="account throttle (default 10,000)")
    parser.add_argument("--share", type=float, default=DEFAULT_POST_RATE_SHARE, help="CDK postRateShare")
    parser.add_argument("--warm", action="store_true", help="workers already warm (no cold starts)")
    parser.add_argument("--no-provisioned", dest="provisioned", action="store_false")
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_cost_arguments(parser)
    args = parser.parse_args(argv)
    if not 0 < args.share <= 1 or args.post_quota <= 0:
        parser.error("--share must be in (0, 1] and --post-quota above 0")
    costs = Costs()
    result = plan(
        args.connections,
        args.post_quota,
        costs,
        warm=args.warm,
        provisioned=args.provisioned,
        share=args.share,
    )
    try:
        bill = breakdown_from_args(args, result, costs)
    except (PricesError, ValueError) as exc:
        parser.error(str(exc))
    print(json.dumps(costs_to_json(bill), indent=2) if args.json else render_costs(bill))
    return 0


if __name__ == "__main__":
    sys.exit(main())
