"""The sections of docs/benchmarks.md, one per benchmark: its command, tables and profiles."""

from __future__ import annotations

from collections.abc import Sequence

from loadtest import bench_text as t
from loadtest.bench_models import (
    BalanceResult,
    BenchResults,
    Ceiling,
    CpuSeconds,
    PlanResult,
    PostResult,
    Profile,
    ScalePoint,
    StackFailure,
    StackRun,
)


def table_row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table_head(columns: Sequence[str]) -> list[str]:
    return [table_row(*columns), table_row(*["---"] * len(columns))]


def us(seconds: float, frames: int) -> float:
    """CPU seconds as microseconds per frame."""
    return seconds / max(1, frames) * 1e6


def met(ok: bool | None) -> str:
    return t.NOT_RUN if ok is None else (t.MET if ok else t.NOT_MET)


def per_process(cpu: CpuSeconds, delivered: int, n: int = 4) -> str:
    """The `n` largest CPU consumers of the stack, in us per delivered frame."""
    top = sorted(((k, v) for k, v in cpu.items() if v > 0), key=lambda kv: -kv[1])[:n]
    return ", ".join(t.US_OF.format(process=k, us=v / max(1, delivered) * 1e6) for k, v in top)


def growth(a: ScalePoint, b: ScalePoint) -> str:
    """Which processes' CPU per frame grew most from point `a` to point `b`."""
    cpu_a, cpu_b = a.stack_cpu_seconds or {}, b.stack_cpu_seconds or {}
    grew = {
        k: us(cpu_b.get(k, 0.0), b.delivered) - us(cpu_a.get(k, 0.0), a.delivered)
        for k in set(cpu_a) | set(cpu_b)
    }
    top = sorted(grew.items(), key=lambda kv: -kv[1])[:4]
    return t.GROWTH.format(processes=", ".join(t.GROWTH_OF.format(process=k, growth=g) for k, g in top))


# -- 1. post stage cost ----------------------------------------------------------------------------------
def post_section(post: PostResult | None) -> list[str]:
    out = [t.POST_HEADING, ""]
    if not post:
        return [*out, t.NOT_RUN_SECTION, ""]
    rounds = len(post.measures) // len(post.variants)
    out += [t.POST_INTRO.format(command=post.command, frame_bytes=post.frame_bytes, rounds=rounds), ""]
    out += table_head(t.POST_COLUMNS)
    for v, s in post.variants.items():
        out.append(
            table_row(
                v,
                f"{s.posts:,}",
                f"**{s.cpu_us_per_frame_median:.0f}**",
                f"{s.cpu_us_per_frame_min:.0f}",
                f"{s.cpu_us_per_frame_max:.0f}",
                f"{s.frames_per_s_median:,.0f}",
            )
        )
    ratios = ", ".join(t.POST_RATIO.format(name=k, ratio=v) for k, v in post.ratios.items())
    out += ["", t.POST_RATIOS.format(ratios=ratios), ""]
    out += [t.POST_VARIANTS.format(loop=post.loop), ""]
    e, b3, fl = (post.median(k) for k in ("engine", "boto3", "floor"))
    if e is not None and b3 is not None and fl is not None:
        floor = t.POST_FLOOR.format(
            floor=fl, boto3_over_floor=b3 / fl, engine_over_floor=e / fl, above_floor=e - fl
        )
        if b3 / e < 5:
            floor += t.POST_FLOOR_GOAL.format(within=(b3 / 5) - fl)
        out += [floor, ""]
    profiles = post.profile
    for variant, title in t.PROFILE_TITLES.items():
        prof = profiles.of(variant) if profiles else None
        if profiles and prof:
            out += profile_section(title, profiles.command.replace("engine|stage", variant), prof)
    return out


def profile_section(title: str, command: str, prof: Profile) -> list[str]:
    under = prof.cpu_us_per_frame_under_profiler
    out = [t.PROFILE_INTRO.format(title=title, command=command, under_profiler=under), ""]
    out += table_head(t.PROFILE_COLUMNS)
    for name, g in sorted(prof.groups.items(), key=lambda kv: -kv[1].share):
        if g.us_per_frame >= 0.5:
            out.append(table_row(name, f"{g.share:.0%}", f"{g.us_per_frame:.0f}"))
    out += ["", t.PROFILE_TOP, "", *table_head(t.PROFILE_TOP_COLUMNS)]
    out += [table_row(e.tottime_s, e.ncalls, e.cumtime_s, f"`{e.function}`") for e in prof.top]
    return [*out, ""]


# -- 2-4. end to end on the local stack ------------------------------------------------------------------
def stack_section(results: BenchResults) -> list[str]:
    out = [t.STACK_HEADING, ""]
    stack = results.stack_run()
    if not stack:
        failure = results.stack.error if isinstance(results.stack, StackFailure) else None
        reason = failure or results.skipped.get("stack", "not requested")
        return [*out, t.STACK_NOT_RUN.format(reason=reason), ""]
    out += [t.STACK_INTRO.format(command=stack.command, post_workers=stack.post_workers), ""]
    out += table_head(t.STACK_COLUMNS)
    for p in stack.scale:
        out.append(
            table_row(
                f"{p.connections:,}",
                f"{p.partitions:,}",
                "-" if p.largest_partition is None else p.largest_partition,
                100 if p.post_batch_size is None else p.post_batch_size,
                p.seconds,
                f"{p.frames_per_second:,}",
                p.cpu_us_per_frame,
                p.post_cpu_us_per_frame,
            )
        )
    out.append("")
    for f in stack.failed:
        out += [t.STACK_FAILED.format(connections=f.connections, error=f.error), ""]
    if len(stack.scale) >= 2:
        cheapest = min(stack.scale, key=lambda p: p.cpu_us_per_frame)
        largest = max(stack.scale, key=lambda p: p.connections)
        if cheapest is not largest:
            text = t.STACK_GROWTH.format(
                cheapest=cheapest.connections,
                cheapest_us=cheapest.cpu_us_per_frame,
                largest=largest.connections,
                largest_us=largest.cpu_us_per_frame,
                growth=largest.cpu_us_per_frame / cheapest.cpu_us_per_frame,
                processes=growth(cheapest, largest),
            )
            out += [text, ""]
    out += per_process_table(stack)
    if stack.naive:
        out += [t.NAIVE_INTRO, "", *table_head(t.NAIVE_COLUMNS)]
        for k, v in stack.naive.runs.items():
            out.append(table_row(k, v.engine_seconds, v.naive_seconds, f"{v.speedup}x"))
        out.append("")
    if stack.ceiling:
        out += ceiling_section(stack.ceiling)
    return out


def per_process_table(stack: StackRun) -> list[str]:
    with_cpu = [p for p in stack.scale if p.stack_cpu_seconds]
    if not with_cpu:
        return []
    names = sorted({k for p in with_cpu for k, v in (p.stack_cpu_seconds or {}).items() if v > 0})
    out = [t.STACK_PER_PROCESS, "", *table_head(["connections", *names, "total"])]
    for p in with_cpu:
        per = {k: v / max(1, p.delivered) * 1e6 for k, v in (p.stack_cpu_seconds or {}).items()}
        cells = [f"{per.get(k, 0):.0f}" for k in names]
        out.append(table_row(f"{p.connections:,}", *cells, f"{p.stack_cpu_us_per_frame:.0f}"))
    return [*out, ""]


def ceiling_section(c: Ceiling) -> list[str]:
    text = t.CEILING.format(
        workers=c.workers,
        concurrency=c.concurrency,
        frames_per_second=c.frames_per_second,
        engine_frames_per_second=c.engine_frames_per_second,
        ratio=c.ratio,
    )
    out = [text, ""]
    if c.stack_cpu_seconds:
        per = {k: us(x, c.delivered) for k, x in c.stack_cpu_seconds.items() if x > 0}
        per[t.BARE_LOOP_PROCESSES] = us(c.loop_cpu_seconds or 0.0, c.delivered)
        ranked = sorted(per.items(), key=lambda kv: -kv[1])
        processes = ", ".join(t.US_OF.format(process=k, us=x) for k, x in ranked)
        out += [t.CEILING_CPU.format(processes=processes, total=sum(per.values())), ""]
    return out


# -- 5. partition balance --------------------------------------------------------------------------------
def balance_section(bal: BalanceResult | None) -> list[str]:
    out = [t.BALANCE_HEADING, ""]
    if not bal:
        return [*out, t.NOT_RUN_SECTION, ""]
    s, e, h = bal.scenario, bal.engine, bal.hash_mod_n
    intro = t.BALANCE_INTRO.format(
        command=bal.command,
        choices=s.choices,
        view_ttl_seconds=s.view_ttl_seconds,
        stream_lag_seconds=s.stream_lag_seconds,
        partitions=s.partitions,
        connects=s.connects,
        disconnects=s.disconnects,
        events_per_second=s.events_per_second,
        connectors=s.connectors,
    )
    return [
        *out,
        intro,
        "",
        *table_head(t.BALANCE_COLUMNS),
        table_row(t.BALANCE_ENGINE, e.max_over_mean, e.max, e.min, e.reads_per_connect),
        table_row(t.BALANCE_HASH, h.max_over_mean, h.max, h.min, 0),
        "",
    ]


# -- 6. quota model --------------------------------------------------------------------------------------
def plan_section(plan: PlanResult | None) -> list[str]:
    out = [t.PLAN_HEADING, ""]
    if not plan:
        return [*out, t.NOT_RUN_SECTION, ""]
    out += [t.PLAN_INTRO.format(command=plan.command), "", *table_head(t.PLAN_COLUMNS)]
    for s in plan.scenarios:
        p, d = s.prediction, s.deployment
        out.append(
            table_row(
                f"{p.connections:,}",
                f"{p.quota:,.0f}",
                f"{p.floor_seconds:.2f}",
                f"{p.seconds:.2f}",
                f"{p.ratio:.3f}",
                d.shards,
                f"{d.post_workers} x {d.post_rate_per_worker:g}",
                d.post_sqs_batch_size,
                met(bool(p.target_met)),
            )
        )
    # One entry per quota: the fewest connections whose broadcast is predicted within 10% of N/R.
    mins = {s.prediction.quota: s.min_connections_for_target for s in plan.scenarios}
    sizes = ", ".join(t.PLAN_SIZE.format(connections=n, quota=q) for q, n in mins.items() if n)
    return [*out, "", t.PLAN_WITHIN.format(sizes=sizes), ""]
