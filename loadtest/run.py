"""`make loadtest`: a headless Locust run against the local stack, with its reports.

1. uses the local stack described by `--state` (`.fanout/local.json`) if it answers, else starts one
   (`infra.local.stack.LocalStack`) and stops it at the end;
2. optionally registers `--simulated` socketless connections (`loadtest/seed.py`);
3. runs `locust -f loadtest/locustfile.py --headless` with `--users` WebSocket users in `--processes`
   worker processes, `--broadcasts` broadcasts, `--csv` and `--html` under `--results`;
4. writes the chart and the summary (`loadtest/report.py`), fetching the gateway's simulated stats.

Every process it starts is stopped, also on Ctrl-C. Defaults take about a minute here::

    .venv/bin/python -m loadtest.run --users 200 --broadcasts 1
    .venv/bin/python -m loadtest.run --users 5000 --processes 2 --broadcasts 3
    .venv/bin/python -m loadtest.run --users 1000 --simulated 200000 --broadcasts 1 --processes 1
    .venv/bin/python -m loadtest.run --users 200 --channels 4 --audience mixed --broadcasts 3
    .venv/bin/python -m loadtest.run --users 0 --broadcasts 0 --chat-users 200 --rooms 5 \
        --publish-rate 1 --reconnect-every 3m --duration 600

Exit status: 0 when every broadcast completed with delivered = targeted and no user saw a duplicate,
a gap or an unexpected frame, and (with chat users) every room's messages reached every member once
across reconnects, else 1.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadtest.chat_report import parse_duration

ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name, "")
    return float(value) if value.strip() else default


def stack_answers(state_path: Path) -> dict[str, Any] | None:
    """The state of a running local stack at `state_path`, or None if there is none or it is down."""
    if not state_path.exists():
        return None
    try:
        state: dict[str, Any] = json.loads(state_path.read_text())
        with urllib.request.urlopen(f"{state['adminUrl'].rstrip('/')}/stats", timeout=3) as resp:
            resp.read()
    except (OSError, ValueError, KeyError):
        return None
    return state


def locust_command(args: argparse.Namespace, state_path: Path, results: Path) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--users",
        str(args.users),
        "--csv",
        str(results / args.prefix),
        "--html",
        str(results / f"{args.prefix}.html"),
        "--fanout-state",
        str(state_path),
        "--fanout-results",
        str(results),
        "--broadcasts",
        str(args.broadcasts),
        "--broadcast-interval",
        str(args.interval),
        "--ramp-rate",
        str(args.ramp_rate),
        "--settle",
        str(args.settle),
        "--grace",
        str(args.grace),
        "--ping-interval",
        str(args.ping_interval),
        "--stop-timeout",
        "10",
        # master, workers and the whole local stack share this machine's cores
        "--heartbeat-liveness",
        "30",
    ]
    if args.duration > 0:
        cmd += ["--run-time", f"{int(args.duration)}s"]
    if args.processes > 1:
        cmd += ["--processes", str(args.processes)]
    if args.source_ips:
        cmd += ["--source-ips", args.source_ips]
    if args.channels > 0 or args.audience != "everyone":
        cmd += [
            "--channels",
            str(args.channels),
            "--channels-per-user",
            str(args.channels_per_user),
            "--audience",
            args.audience,
        ]
    if args.chat_users > 0:
        cmd += [
            "--chat-users",
            str(args.chat_users),
            "--rooms",
            str(args.rooms),
            "--rooms-per-user",
            str(args.rooms_per_user),
            "--publish-rate",
            str(args.publish_rate),
            "--reconnect-every",
            args.reconnect_every,
        ]
    return cmd


def run_locust(cmd: Sequence[str], *, timeout: float, log_path: Path) -> int:
    """Run Locust in its own process group (its --processes workers included); stop the group on exit."""
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            list(cmd),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                sys.stderr.write(line)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"locust still running after {timeout:.0f} s")
            return proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Headless Locust load test against the local stack")
    p.add_argument("--users", type=int, default=_env_int("USERS", 200), help="real WebSocket users")
    p.add_argument("--simulated", type=int, default=_env_int("SIMULATED", 0), help="socketless connections")
    p.add_argument(
        "--duration",
        type=float,
        default=_env_float("DURATION", 0),
        help="minimum seconds at full load (the run also waits for the broadcasts)",
    )
    p.add_argument("--processes", type=int, default=_env_int("PROCESSES", 1), help="Locust worker processes")
    p.add_argument("--broadcasts", type=int, default=_env_int("BROADCASTS", 1))
    p.add_argument("--interval", type=float, default=_env_float("INTERVAL", 5.0), help="between broadcasts")
    p.add_argument(
        "--ramp-rate",
        type=float,
        default=_env_float("RAMP_RATE", 50.0),
        help="connections/s (default %(default)s: what the local stack's $connect path absorbs on 2 cores; "
        "AWS allows 500/s by default)",
    )
    p.add_argument("--settle", type=float, default=3.0, help="seconds between all connected and go")
    p.add_argument("--grace", type=float, default=5.0, help="seconds after completion before gaps count")
    p.add_argument("--ping-interval", type=float, default=300.0)
    p.add_argument("--source-ips", default="", help="comma-separated local addresses for the sockets")
    p.add_argument(
        "--channels", type=int, default=_env_int("CHANNELS", 0), help="channels lt:0..lt:C-1 (0: none)"
    )
    p.add_argument("--channels-per-user", type=int, default=_env_int("CHANNELS_PER_USER", 2))
    p.add_argument(
        "--audience",
        choices=["everyone", "channels", "users", "mixed"],
        default=os.environ.get("AUDIENCE") or "everyone",
        help="what the broadcasts target (mixed: everyone, channels, users in turn)",
    )
    c = p.add_argument_group("chat users (on top of --users)")
    c.add_argument("--chat-users", type=int, default=_env_int("CHAT_USERS", 0), help="chat users (0: none)")
    c.add_argument("--rooms", type=int, default=_env_int("ROOMS", 5), help="rooms room:lt-0..R-1")
    c.add_argument("--rooms-per-user", type=int, default=_env_int("ROOMS_PER_USER", 1))
    c.add_argument(
        "--publish-rate",
        type=float,
        default=_env_float("PUBLISH_RATE", 1.0),
        help="messages/s per chat user",
    )
    c.add_argument(
        "--reconnect-every",
        default=os.environ.get("RECONNECT_EVERY") or "3m",
        help="mean time between a chat user's deliberate drops: 90s, 3m, 1h (0: never)",
    )
    p.add_argument("--results", type=Path, default=ROOT / "loadtest" / "results")
    p.add_argument("--prefix", default="run")
    p.add_argument("--state", type=Path, default=ROOT / ".fanout" / "local.json")
    p.add_argument("--timeout", type=float, default=None, help="give up on Locust after this many seconds")
    g = p.add_argument_group("local stack (when this run starts one)")
    g.add_argument("--partitions", type=int, default=None)
    g.add_argument("--shards", type=int, default=None)
    g.add_argument("--post-workers", type=int, default=None)
    g.add_argument("--query-workers", type=int, default=None)
    g.add_argument("--connect-workers", type=int, default=None)
    args = p.parse_args(argv)
    try:
        parse_duration(args.reconnect_every)
    except ValueError as exc:
        p.error(f"--reconnect-every: {exc}")
    return args


def start_stack(args: argparse.Namespace) -> Any:
    from infra.local.stack import LocalStack, StackOptions

    overrides = {
        k: v
        for k, v in {
            "partitions": args.partitions,
            "shards": args.shards,
            "post_workers": args.post_workers,
            "query_workers": args.query_workers,
            "connect_workers": args.connect_workers,
        }.items()
        if v is not None
    }
    options = StackOptions(state_dir=args.state.parent, **overrides)
    stack = LocalStack(options, log=lambda m: print(f"stack: {m}", file=sys.stderr))
    stack.start()
    return stack


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    results: Path = args.results
    results.mkdir(parents=True, exist_ok=True)
    for stale in ("broadcasts.json", "latency.json", "chat_latency.json", "simulated.json", "seed.json"):
        (results / stale).unlink(missing_ok=True)
    state_path: Path = args.state.resolve()
    stack = None
    state = stack_answers(state_path)
    if state is None:
        stack = start_stack(args)
        state = stack_answers(state_path)
        if state is None:
            raise SystemExit(f"the local stack started but {state_path} does not answer")
    else:
        print(f"using the running local stack of {state_path}", file=sys.stderr)
    try:
        if args.simulated > 0:
            from loadtest.seed import seed

            summary = seed(state, args.simulated)
            (results / "seed.json").write_text(json.dumps(summary, indent=2))
        cmd = locust_command(args, state_path, results)
        print("$ " + " ".join(cmd), file=sys.stderr)
        timeout = args.timeout or (
            120 + args.duration + (args.users + 1) / max(1.0, args.ramp_rate) + args.broadcasts * 300
        )
        code = run_locust(cmd, timeout=timeout, log_path=results / f"{args.prefix}_locust.log")
        if not (results / f"{args.prefix}_stats.csv").exists():
            print(f"locust exited with {code} and wrote no statistics", file=sys.stderr)
            return 1
        from loadtest.report import render_text, write_reports

        summary_, paths = write_reports(results, args.prefix, admin_url=state["adminUrl"])
        sys.stdout.write(render_text(summary_))
        print(
            f"reports: {paths['txt']}, {paths['png']}, {results / (args.prefix + '.html')}, "
            f"{results / (args.prefix + '_stats.csv')}"
        )
        return 0 if (code == 0 and summary_.ok) else 1
    finally:
        if stack is not None:
            stack.stop()


if __name__ == "__main__":
    sys.exit(main())
