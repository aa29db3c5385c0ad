"""docs/benchmarks.md from a run's results: each goal next to its figure, what limits each goal not met,
and one section per benchmark with its command, tables and profiles. The prose is in loadtest/bench_text.py.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from pydantic import BaseModel

from loadtest import bench_text as t
from loadtest.bench_models import (
    AudiencesRun,
    BenchResults,
    NaiveComparison,
    PostResult,
    Profile,
    ScalePoint,
    StackRun,
)
from loadtest.bench_sections import (
    balance_section,
    growth,
    met,
    per_process,
    plan_section,
    post_section,
    stack_section,
    table_row,
    us,
)

# (added latency, speedup the engine should show over the naive sender there)
NAIVE_TARGETS = (("20ms", 40), ("0ms", 5))


class Goal(BaseModel):
    """One row of the goals table: `met` is None when the section did not run."""

    goal: str
    target: str
    measured: str
    met: bool | None


def goals(results: BenchResults) -> list[Goal]:
    return [
        *_post_goals(results.post),
        *_stack_goals(results.stack_run()),
        *_balance_and_plan_goals(results),
        *_audience_goals(results.audiences if isinstance(results.audiences, AudiencesRun) else None),
    ]


GOAL_CHANNEL = "a 10,000-member channel in 100,000 connections vs everyone on 10,000"
TARGET_CHANNEL = "<= 1.25x (medians)"
GOAL_USER = "a user's 3 connections vs everyone on 1 connection, POST to frame p50"
TARGET_USER = "<= 1.00x"


def _limit_audience(run: AudiencesRun, goal: str) -> str:
    if goal == GOAL_USER:
        return (
            f"a user send waits for the slowest of its 3 frames ({run.user_p50_ms:.0f} ms p50) and reads "
            f"the users index once in the swarm; one frame to one connection took "
            f"{run.everyone_single_p50_ms:.0f} ms"
        )
    r = run.reads
    return (
        f"reading the channel's members by Query took {r.get('channelSeconds', '?')} s "
        f"({r.get('channelItems', '?')} items) where every partition of the stack takes "
        f"{r.get('everyoneSeconds', '?')} s ({r.get('everyoneItems', '?')} items); the rest of the "
        f"{statistics.median(run.channel_seconds):.2f} s is posting and queue hops, as for everyone"
    )


def _audience_goals(run: AudiencesRun | None) -> list[Goal]:
    if run is None:
        return [
            Goal(goal=GOAL_CHANNEL, target=TARGET_CHANNEL, measured=t.NOT_MEASURED, met=None),
            Goal(goal=GOAL_USER, target=TARGET_USER, measured=t.NOT_MEASURED, met=None),
        ]
    ratio = run.channel_ratio
    channel = (
        f"{statistics.median(run.channel_seconds):.2f} s vs {statistics.median(run.everyone_seconds):.2f} s"
        f" ({ratio:.2f}x)"
    )
    user_ratio = run.user_p50_ms / run.everyone_single_p50_ms
    user = f"{run.user_p50_ms:.0f} ms vs {run.everyone_single_p50_ms:.0f} ms ({user_ratio:.2f}x)"
    return [
        Goal(goal=GOAL_CHANNEL, target=TARGET_CHANNEL, measured=channel, met=ratio <= 1.25),
        Goal(goal=GOAL_USER, target=TARGET_USER, measured=user, met=user_ratio <= 1.0),
    ]


def _post_goals(post: PostResult | None) -> list[Goal]:
    if not post:
        return [
            Goal(goal=t.GOAL_POST_NOT_RUN, target=t.TARGET_POST_NOT_RUN, measured=t.NOT_MEASURED, met=None)
        ]
    engine = post.variants["engine"].cpu_us_per_frame_median
    ratio = post.ratios.get("boto3/engine")
    stage = post.median("stage")
    rows = [
        Goal(
            goal=t.GOAL_POST,
            target=t.TARGET_POST,
            measured=t.MEASURED_US.format(us=engine),
            met=engine <= 400,
        )
    ]
    if stage is not None:
        rows.append(
            Goal(
                goal=t.GOAL_STAGE,
                target=t.TARGET_POST,
                measured=t.MEASURED_US.format(us=stage),
                met=stage <= 400,
            )
        )
    rows.append(
        Goal(
            goal=t.GOAL_BOTO3,
            target=t.TARGET_BOTO3,
            measured=t.MEASURED_RATIO.format(ratio=ratio),
            met=ratio is not None and ratio >= 5,
        )
    )
    return rows


def _stack_goals(stack: StackRun | None) -> list[Goal]:
    rows: list[Goal] = []
    naive = stack.naive if stack else None
    for latency, target in NAIVE_TARGETS:
        goal, goal_target = t.GOAL_NAIVE.format(latency=latency), t.TARGET_NAIVE.format(target=target)
        run = naive.runs.get(latency) if naive else None
        if run:
            measured = t.MEASURED_SPEEDUP.format(speedup=run.speedup)
            rows.append(Goal(goal=goal, target=goal_target, measured=measured, met=run.speedup >= target))
        else:
            rows.append(Goal(goal=goal, target=goal_target, measured=t.NOT_MEASURED, met=None))
    c = stack.ceiling if stack else None
    if c:
        measured = t.MEASURED_SHARE.format(ratio=c.ratio)
        rows.append(Goal(goal=t.GOAL_CEILING, target=t.TARGET_CEILING, measured=measured, met=c.ratio >= 0.7))
    else:
        rows.append(Goal(goal=t.GOAL_CEILING, target=t.TARGET_CEILING, measured=t.NOT_MEASURED, met=None))
    scale = stack.scale if stack else []
    if len(scale) >= 2:
        first, last = scale[0].cpu_us_per_frame, scale[-1].cpu_us_per_frame
        slope = stack.cpu_slope_us_per_decade if stack else None
        measured = t.MEASURED_FLAT.format(first=first, last=last, slope=slope)
        rows.append(Goal(goal=t.GOAL_FLAT, target=t.TARGET_FLAT, measured=measured, met=last <= first * 1.25))
    else:
        rows.append(Goal(goal=t.GOAL_FLAT, target=t.TARGET_FLAT, measured=t.NOT_MEASURED, met=None))
    return rows


def _balance_and_plan_goals(results: BenchResults) -> list[Goal]:
    rows: list[Goal] = []
    bal = results.balance
    if bal:
        e, h = bal.engine, bal.hash_mod_n
        measured = t.MEASURED_BALANCE.format(
            max_over_mean=e.max_over_mean,
            reads_per_connect=e.reads_per_connect,
            hash_max_over_mean=h.max_over_mean,
        )
        ok = e.max_over_mean <= 1.10 and e.reads_per_connect < 1
        rows.append(Goal(goal=t.GOAL_BALANCE, target=t.TARGET_BALANCE, measured=measured, met=ok))
    else:
        rows.append(
            Goal(goal=t.GOAL_BALANCE, target=t.TARGET_BALANCE_NOT_RUN, measured=t.NOT_MEASURED, met=None)
        )
    for s in results.plan.scenarios if results.plan else []:
        p = s.prediction
        rows.append(
            Goal(
                goal=t.GOAL_PLAN.format(connections=p.connections, quota=p.quota),
                target=t.TARGET_PLAN,
                measured=t.MEASURED_PLAN.format(
                    seconds=p.seconds, floor_seconds=p.floor_seconds, ratio=p.ratio
                ),
                met=bool(p.target_met),
            )
        )
    return rows


# -- what limits the goals not met -----------------------------------------------------------------------
def limit(results: BenchResults, goal: str) -> str:
    """What limits one goal not met, from the figures and profiles of this run."""
    post = results.post
    med = {k: x.cpu_us_per_frame_median for k, x in post.variants.items()} if post else {}
    prof = post.profile if post and post.profile else None
    stack = results.stack_run()
    points = {p.connections: p for p in stack.scale} if stack else {}
    if goal.startswith((t.GOAL_BOTO3, t.GOAL_POST)):
        return _limit_engine(med, prof.engine if prof else None)
    if goal.startswith(t.GOAL_STAGE):
        return _limit_stage(med, prof.stage if prof else None)
    for latency, target in NAIVE_TARGETS:
        if goal == t.GOAL_NAIVE.format(latency=latency):
            return _limit_naive(stack.naive if stack else None, points.get(10_000), latency, target)
    if goal.startswith(t.GOAL_CEILING):
        return _limit_ceiling(stack, points.get(100_000))
    if goal.startswith(t.GOAL_FLAT) and len(points) >= 2:
        return t.LIMIT_FLAT.format(growth=growth(points[min(points)], points[max(points)]))
    audiences = results.audiences if isinstance(results.audiences, AudiencesRun) else None
    if audiences is not None and goal in (GOAL_CHANNEL, GOAL_USER):
        return _limit_audience(audiences, goal)
    for sc in results.plan.scenarios if results.plan else []:
        pr = sc.prediction
        if goal.startswith(t.GOAL_PLAN.format(connections=pr.connections, quota=pr.quota)):
            return t.LIMIT_PLAN.format(
                start_seconds=pr.start_seconds,
                ramp_seconds=pr.ramp_seconds,
                tail_seconds=pr.tail_seconds,
                floor_seconds=pr.floor_seconds,
                bottleneck=pr.bottleneck,
            )
    return t.LIMIT_ELSEWHERE


def top_groups(prof: Profile, n: int = 3, *, but: str = "") -> str:
    """The `n` largest shares of a grouped profile (except `but`), as text."""
    top = sorted(((k, g) for k, g in prof.groups.items() if k != but), key=lambda kv: -kv[1].share)[:n]
    return ", ".join(t.SHARE_OF.format(group=name, share=g.share) for name, g in top)


def _limit_engine(med: dict[str, float], prof: Profile | None) -> str:
    e, b3, fl = med.get("engine"), med.get("boto3"), med.get("floor")
    text = ""
    if e and b3 and fl:
        text = t.LIMIT_ENGINE_FLOOR.format(floor=fl, boto3_over_floor=b3 / fl, above_floor=e - fl)
    if prof:
        text += t.LIMIT_ENGINE_PROFILE.format(groups=top_groups(prof))
    return text or t.LIMIT_SECTION_1


def _limit_stage(med: dict[str, float], prof: Profile | None) -> str:
    from fanout.settings import Settings
    from loadtest.bench_profile import BOTO_GROUP
    from loadtest.bench_stack import stack_post_batch_size

    e, st = med.get("engine"), med.get("stage")
    b = Settings().post_batch_size
    text = ""
    if e and st:
        text = t.LIMIT_STAGE_COST.format(extra=st - e, batch_ms=(st - e) * b / 1000, batch=b)
    if prof:
        boto = prof.groups[BOTO_GROUP].share if BOTO_GROUP in prof.groups else 0.0
        text += t.LIMIT_STAGE_PROFILE.format(
            boto_group=BOTO_GROUP,
            boto_share=boto,
            groups=top_groups(prof, but=BOTO_GROUP),
            batch=stack_post_batch_size(10_000),
        )
    return text or t.LIMIT_SECTION_1


def _limit_naive(naive: NaiveComparison | None, p10: ScalePoint | None, latency: str, target: int) -> str:
    n = naive.runs.get(latency) if naive else None
    if not naive or not n:
        return t.LIMIT_SECTION_2_4
    text = t.LIMIT_NAIVE_TARGET.format(
        target=target,
        needed=n.naive_seconds / target,
        naive_seconds=n.naive_seconds,
        engine_seconds=n.engine_seconds,
    )
    cpu = n.engine_stack_cpu_seconds or (p10.stack_cpu_seconds if p10 else None)
    frames = n.engine_delivered or (p10.delivered if p10 else 0)
    if cpu and frames:
        busy = sum(cpu.values()) / n.engine_seconds
        bound = t.CPU_BOUND if busy >= 1.6 else t.NOT_CPU_BOUND.format(busy=busy)
        text += t.LIMIT_NAIVE_CPU.format(
            bound=bound,
            us_per_frame=us(sum(cpu.values()), frames),
            busy=busy,
            largest=per_process(cpu, frames),
        )
    if "0ms" in naive.runs and "20ms" in naive.runs:
        zero, twenty = naive.runs["0ms"].engine_seconds, naive.runs["20ms"].engine_seconds
        text += t.LIMIT_NAIVE_LATENCIES.format(zero=zero, twenty=twenty)
    if n.naive_cpu_seconds:
        text += t.LIMIT_NAIVE_OWN.format(own=us(n.naive_cpu_seconds, n.naive_delivered))
        gateway = (n.naive_stack_cpu_seconds or {}).get("gateway")
        if gateway:
            text += t.LIMIT_NAIVE_GATEWAY.format(gateway=us(gateway, n.naive_delivered))
        text += t.LIMIT_NAIVE_AWS
    return text


def _limit_ceiling(stack: StackRun | None, p100: ScalePoint | None) -> str:
    c = stack.ceiling if stack else None
    if not (c and p100):
        return t.LIMIT_SECTION_2_4
    text = t.LIMIT_CEILING_ENGINE.format(
        frames_per_second=p100.frames_per_second,
        us_per_frame=p100.stack_cpu_us_per_frame,
        largest=per_process(p100.stack_cpu_seconds or {}, p100.delivered),
    )
    if c.stack_cpu_seconds:
        own = c.loop_cpu_seconds or 0.0
        text += t.LIMIT_CEILING_LOOP.format(
            frames_per_second=c.frames_per_second,
            us_per_frame=us(sum(c.stack_cpu_seconds.values()) + own, c.delivered),
            own=us(own, c.delivered),
            largest=per_process(c.stack_cpu_seconds, c.delivered, 2),
        )
    return text + t.LIMIT_CEILING_WHY


# -- the document ----------------------------------------------------------------------------------------
def head(results: BenchResults) -> list[str]:
    m = results.machine
    last_run = t.LAST_RUN.format(
        started_at=results.started_at,
        command=results.command,
        cpus=m.cpus,
        python=m.python,
        load_start=m.load_start,
        load_end=m.load_end,
    )
    if results.load:
        sections = "; ".join(
            t.LOAD_OF_SECTION.format(section=k, min=x.min, median=x.median, max=x.max)
            for k, x in results.load.items()
        )
        last_run += t.LOAD_PER_SECTION.format(sections=sections)
    return [t.TITLE, "", t.INTRO, "", last_run, ""]


def goals_section(results: BenchResults) -> list[str]:
    rows = goals(results)
    out = [t.GOALS_HEADING, "", t.GOALS_HEADER, table_row(*["---"] * 4)]
    out += [table_row(g.goal, g.target, g.measured, met(g.met)) for g in rows]
    unmet = [g.goal for g in rows if g.met is False]
    if unmet:
        out += ["", t.LIMITS_HEADING, ""]
        out += [t.LIMIT_ITEM.format(goal=g, limit=limit(results, g)) for g in unmet]
    return [*out, ""]


def notes_section(notes: list[str]) -> list[str]:
    if not notes:
        return []
    out = [t.NOTES_HEADING, ""]
    for note in notes:
        out += [note, ""]
    return out


def render(results: BenchResults) -> str:
    """The whole of docs/benchmarks.md."""
    lines = [
        *head(results),
        *goals_section(results),
        *post_section(results.post),
        *stack_section(results),
        *balance_section(results.balance),
        *plan_section(results.plan),
        *notes_section(results.notes),
    ]
    return "\n".join(lines) + "\n"


def write_markdown(results: BenchResults, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(results))
