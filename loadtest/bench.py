"""`make bench`: run the benchmarks, write loadtest/results/bench.json and docs/benchmarks.md.

Usage (from the repository root)::

    .venv/bin/python -m loadtest.bench                 # everything the machine can run
    .venv/bin/python -m loadtest.bench --only post,plan,balance   # no local stack needed
    .venv/bin/python -m loadtest.bench --sizes 1000,10000          # a shorter scale curve

Sections:

- ``post``: CPU per delivered frame, engine vs boto3 vs aioboto3 (loadtest/bench_post.py);
- ``plan``: the quota model (fanout/plan.py) fed with the measured post costs;
- ``balance``: partition balance and DynamoDB reads per connect of the engine's partition choice
  (partitions/choice.py) under churn and 50 concurrent connectors, against hash-mod-N;
- ``stack``: on the local stack (infra/local/stack.py), one fresh stack per size with ~100 connections
  per partition and simulated connections (loadtest/seed.py): the scale curve (broadcast time and CPU per
  delivered frame), engine vs the naive sender (loadtest/naive.py) at 10k connections with 0 and 20 ms
  of added latency, and engine vs a bare posting loop (the local ceiling) at 100k (loadtest/bench_stack.py);
- ``audiences``: a 10,000-member channel in 100,000 connections vs everyone on 10,000, a user's three
  devices vs everyone on one connection, and what reading a channel costs (loadtest/bench_audiences.py).

The runners are in loadtest/bench_runners.py and loadtest/bench_stack.py, the results' records in
loadtest/bench_models.py, the document in loadtest/bench_report.py. Every figure in docs/benchmarks.md
comes from the JSON this run writes; a section that did not run says "not run" with the reason. These
are measurements, never pass/fail tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from loadtest.bench_audiences import run_audiences
from loadtest.bench_models import SECTIONS, BenchResults, Machine, StackFailure
from loadtest.bench_report import goals, met, write_markdown
from loadtest.bench_runners import LoadSampler, log, run_balance, run_plan, run_post
from loadtest.bench_stack import bare_loop_main, merge_stack, run_stack, stack_status

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "loadtest" / "results" / "bench.json"
DOC = ROOT / "docs" / "benchmarks.md"
GOAL_LINE = "{met:9s} {goal}: {measured} (target {target})"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n")[0] if __doc__ else None)
    sub = p.add_subparsers(dest="cmd")
    b = sub.add_parser("bare-loop")
    b.add_argument("--ids", required=True)
    b.add_argument("--endpoint", required=True)
    b.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--only", default=",".join(SECTIONS), help=f"sections among {','.join(SECTIONS)}")
    p.add_argument("--rounds", type=int, default=5, help="rounds of the post benchmark")
    p.add_argument("--sizes", default="1000,10000,100000,300000", help="scale curve sizes")
    p.add_argument("--post-workers", type=int, default=2)
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--json", type=Path, default=RESULTS)
    p.add_argument("--doc", type=Path, default=DOC)
    p.add_argument("--merge", action="store_true", help="keep sections of an earlier JSON not run now")
    p.add_argument("--note", action="append", default=[], help="add a note to the JSON and the doc")
    p.add_argument("--render", action="store_true", help="only re-render the doc from the JSON")
    return p


def load(path: Path) -> BenchResults:
    return BenchResults.model_validate_json(path.read_text())


def save(results: BenchResults, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results.to_json(), indent=2))


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def start(args: argparse.Namespace, argv: list[str] | None) -> BenchResults:
    """The results this run adds to: the earlier JSON's with `--merge`, else none; this run's header."""
    command = " ".join([".venv/bin/python -m loadtest.bench", *(argv if argv is not None else sys.argv[1:])])
    machine = Machine(cpus=os.cpu_count(), python=platform.python_version(), load_start=loadavg())
    started_at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    if args.merge and args.json.exists():
        results = load(args.json)
        results.started_at, results.command, results.machine = started_at, command, machine
    else:
        results = BenchResults(started_at=started_at, command=command, machine=machine)
    results.skipped = dict(results.skipped)
    results.notes = [*results.notes, *args.note]
    results.load = dict(results.load)
    return results


def run_stack_section(results: BenchResults, args: argparse.Namespace) -> None:
    why = stack_status()
    if why:
        log(f"stack: not run: {why}")
        results.skipped["stack"] = why
        results.stack = None
        return
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s]
        with LoadSampler() as sampler:
            fresh = run_stack(sizes, args.post_workers, args.timeout, log)
        results.load["stack"] = sampler.summary()
        results.stack = merge_stack(results.stack if args.merge else None, fresh)
        results.skipped.pop("stack", None)
    except Exception as exc:
        log(traceback.format_exc())
        results.stack = StackFailure(error=f"failed: {exc!r}")


def run_audiences_section(results: BenchResults, args: argparse.Namespace) -> None:
    why = stack_status()
    if why:
        log(f"audiences: not run: {why}")
        results.skipped["audiences"] = why
        results.audiences = None
        return
    try:
        with LoadSampler() as sampler:
            results.audiences = run_audiences(args.timeout, log)
        results.load["audiences"] = sampler.summary()
        results.skipped.pop("audiences", None)
    except Exception as exc:
        log(traceback.format_exc())
        results.audiences = StackFailure(error=f"failed: {exc!r}")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.cmd == "bare-loop":
        return bare_loop_main(args)
    if args.render:
        saved = load(args.json)
        saved.notes = [*saved.notes, *args.note]
        save(saved, args.json)
        write_markdown(saved, args.doc)
        log(f"rendered {args.doc} from {args.json}")
        return 0

    only = [s for s in args.only.split(",") if s]
    results = start(args, argv)
    runners: dict[str, Callable[[], object]] = {
        "post": lambda: run_post(args.rounds),
        "plan": lambda: run_plan(results.post),
        "balance": run_balance,
    }
    for section in ("post", "plan", "balance"):
        if section in only:
            log(f"{section} ...")
            with LoadSampler() as sampler:
                setattr(results, section, runners[section]())
            results.load[section] = sampler.summary()
            results.skipped.pop(section, None)
    if "stack" in only:
        run_stack_section(results, args)
    if "audiences" in only:
        run_audiences_section(results, args)
    results.machine.load_end = loadavg()
    save(results, args.json)
    write_markdown(results, args.doc)
    log(f"wrote {args.json} and {args.doc}")
    for g in goals(results):
        print(GOAL_LINE.format(met=met(g.met).strip("*"), goal=g.goal, measured=g.measured, target=g.target))
    return 0


if __name__ == "__main__":
    sys.exit(main())
