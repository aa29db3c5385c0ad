"""The `fanout` command: run the local stack, send broadcasts, watch them."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from fanout.errors import FanoutError, InvalidInput
from fanout.tools import dlq, plan
from fanout.tools.operator_client import OperatorClient
from infra.local.ddb_strict import parse_rate


def _client(args: argparse.Namespace) -> OperatorClient:
    if args.api:
        return OperatorClient.for_deployed(args.api, region=args.region)
    return OperatorClient.from_local_state()


def _parse_message(text: str) -> Any:
    """A JSON value if the text is one, else the text as a JSON string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def cmd_broadcast(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    api = _client(args)
    broadcast_id = api.start(
        _parse_message(args.message), idempotency_key=args.idempotency_key, to=_audience(args)
    )
    if not args.wait:
        print(json.dumps({"broadcastId": broadcast_id}))
        return 0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(f"broadcast {broadcast_id[:8]}", total=None)

        def show(view: dict[str, Any]) -> None:
            done = view["delivered"] + view["gone"] + view["failed"]
            progress.update(task, total=view["targeted"] or None, completed=done, description=view["status"])

        view = api.wait(broadcast_id, timeout=args.timeout, on_progress=show)
    print(json.dumps(view))
    seconds = ((view["completedAt"] or view["createdAt"]) - view["createdAt"]) / 1000
    console.print(
        f"{view['status']}: {view['delivered']} delivered, {view['gone']} gone, {view['failed']} failed "
        f"of {view['targeted']} targeted over {view['partitions']} partitions in {seconds:.2f} s"
    )
    return 0 if view["status"] == "completed" else 1


def _audience(args: argparse.Namespace) -> dict[str, list[str]] | None:
    """The operator API's "to" from --channel/--user/--connection (each repeatable; one kind)."""
    given = {
        kind: values
        for kind, values in (
            ("channels", args.channel),
            ("users", args.user),
            ("connections", args.connection),
        )
        if values
    }
    if len(given) > 1:
        raise InvalidInput("give --channel, --user or --connection, not several kinds", field="to")
    return given or None


def cmd_channel(args: argparse.Namespace) -> int:
    print(json.dumps(_client(args).channel(args.name)))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    print(json.dumps(_client(args).status(args.broadcast_id)))
    return 0


def _stack_options(args: argparse.Namespace) -> Any:
    from infra.local.stack import StackOptions

    return StackOptions(
        partitions=args.partitions,
        shards=args.shards,
        post_latency_ms=args.post_latency_ms,
        fault_410=args.fault_410,
        fault_429=args.fault_429,
        fault_500=args.fault_500,
        post_workers=args.post_workers,
        ddb_faults=args.ddb_faults == "on",
        ddb_throttle_rate=args.ddb_throttle_rate,
        **({"post_rate_budget": args.post_rate_budget} if args.post_rate_budget else {}),
        # absent: the stack's defaults, the deployed values (fanout/topology.py)
        **{name: getattr(args, name) for name in _TOPOLOGY_FLAGS if getattr(args, name, None) is not None},
    )


# The local stack's topology knobs that `fanout plan` prints for `fanout local up`.
_TOPOLOGY_FLAGS = {
    "post_batch_size": "B connection ids per post batch",
    "post_concurrency": "K posts in flight per post worker",
    "post_sqs_batch_size": "the post event source mappings' BatchSize",
    "post_batching_window_seconds": "the post event source mappings' MaximumBatchingWindow (s)",
    "query_workers": "query function concurrency",
}


def cmd_local_up(args: argparse.Namespace) -> int:
    from infra.local.stack import LocalStack

    stack = LocalStack(_stack_options(args), log=lambda m: print(f"stack: {m}", file=sys.stderr))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        state = stack.start()
        shown = ("websocketUrl", "httpApiUrl", "connectionsUrl", "chatUrl")
        print(json.dumps({k: state[k] for k in shown}, indent=2))
        print("running; Ctrl-C stops every process", file=sys.stderr)
        while not stop.wait(1.0):
            dead = [name for name, proc in stack.children if proc.poll() is not None]
            if dead:
                print(f"stack: {', '.join(dead)} exited; stopping (see .fanout/logs)", file=sys.stderr)
                return 1
        return 0
    finally:
        stack.stop()
        print("stack: stopped", file=sys.stderr)


def cmd_demo(args: argparse.Namespace) -> int:
    from infra.local.demo import demo

    return asyncio.run(demo(args.connections, _stack_options(args)))


def _add_stack_flags(p: argparse.ArgumentParser, partitions: int = 50) -> None:
    p.add_argument("--partitions", type=int, default=partitions, help="N partitions (default %(default)s)")
    p.add_argument("--shards", type=int, default=4, help="Q queue shards per stage (default %(default)s)")
    p.add_argument(
        "--post-workers", type=int, default=2, help="post function concurrency (default %(default)s)"
    )
    p.add_argument(
        "--post-rate-budget",
        type=float,
        help="PostToConnection calls/s of the whole post stage, paced per worker "
        "(default: 10,000, the account's default quota)",
    )
    for name, help_ in _TOPOLOGY_FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), type=int, help=f"{help_} (default: as deployed)")
    p.add_argument("--post-latency-ms", type=float, default=0.0, help="added latency per PostToConnection")
    p.add_argument("--fault-410", type=float, default=0.0, help="rate of 410 answers (0-1)")
    p.add_argument("--fault-429", type=float, default=0.0, help="rate of 429 answers (0-1)")
    p.add_argument("--fault-500", type=float, default=0.0, help="rate of 500 answers (0-1)")
    p.add_argument(
        "--ddb-faults",
        choices=("on", "off"),
        default="on",
        help="DynamoDB as AWS behaves: transaction conflicts (default on; off: DynamoDB Local as is)",
    )
    p.add_argument(
        "--ddb-throttle-rate",
        type=parse_rate,
        default=0.0,
        help="rate of DynamoDB requests answered with a throttling error (0-1)",
    )


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="fanout", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True)

    local = sub.add_parser("local", help="the local stack").add_subparsers(
        dest="local_command", required=True
    )
    up = local.add_parser("up", help="run the whole stack in the foreground until Ctrl-C")
    _add_stack_flags(up)
    up.set_defaults(func=cmd_local_up)

    for name, func, help_ in (
        ("broadcast", cmd_broadcast, "send a broadcast"),
        ("status", cmd_status, "show a broadcast's state and counts"),
        ("channel", cmd_channel, "show a channel's occupancy (connections, users)"),
    ):
        p = sub.add_parser(name, help=help_)
        if name == "broadcast":
            p.add_argument("message", help="a JSON value, or text sent as a JSON string")
            p.add_argument("--wait", action="store_true", help="show progress until the broadcast completes")
            p.add_argument(
                "--timeout", type=float, default=300.0, help="seconds to wait (default %(default)s)"
            )
            p.add_argument("--idempotency-key", help="a repeated key returns the first broadcast")
            for flag, what in (
                ("channel", "a channel"),
                ("user", "a user id"),
                ("connection", "a connection id"),
            ):
                p.add_argument(
                    f"--{flag}",
                    action="append",
                    default=[],
                    metavar=flag.upper(),
                    help=f"send to {what} instead of everyone (repeatable)",
                )
        elif name == "channel":
            p.add_argument("name")
        else:
            p.add_argument("broadcast_id")
        p.add_argument("--api", help="a deployed operator API URL (SigV4-signed); default: the local stack")
        p.add_argument("--region", help="the deployed API's region (default: from the URL)")
        p.set_defaults(func=func)

    demo = sub.add_parser("demo", help="local stack, N WebSocket clients, three broadcasts")
    demo.add_argument("--connections", type=int, default=1000)
    _add_stack_flags(demo, partitions=20)
    demo.set_defaults(func=cmd_demo)

    plan.add_parser(sub)
    dlq.add_parser(sub)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (FanoutError, ClientError, BotoCoreError) as exc:
        print(f"fanout: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
