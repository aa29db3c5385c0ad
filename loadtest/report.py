"""Reports of a load test: a PNG of the delivery latency per broadcast and a short text summary.

Inputs, all under the results directory:

- `<prefix>_stats.csv`: Locust's `--csv` statistics (rows `deliver`/`duplicate`/`gap`/`expected`/
  `unexpected` per broadcast id, each counting (connection, channel) frames,
  `WS connect`, `operator complete broadcast`, ...);
- `broadcasts.json`: the broadcasts of the run and the engine's final counts, written by the master
  (`--fanout-results`);
- `latency.json` (optional): the full delivery latency histogram per broadcast (Locust's own
  response-time buckets, all workers merged), also written by the master; without it the chart
  uses the CSV's percentiles;
- `simulated.json` (optional): the gateway's `GET {adminUrl}/simulated/stats` after the run, fetched
  with `--admin-url` (or `--state`), for runs with simulated connections (`loadtest/seed.py`);
- `chat_latency.json` (optional): the chat users' publish→receive histogram per room, written by the
  master; the CSV's `publish` / `receive` / `chat gap` / ... rows per room make the chat section
  (`loadtest/chat_report.py`).

Outputs: `latency.png`, `summary.txt`, `summary.json`.

    .venv/bin/python -m loadtest.report --results loadtest/results --prefix run --state .fanout/local.json
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loadtest.chat_report import CHAT_TYPES, ChatSummary, render_chat, summarize_chat

AUDIENCE_KINDS = ("everyone", "channels", "users")

PERCENTILE_COLUMNS = ["50%", "66%", "75%", "80%", "90%", "95%", "98%", "99%", "99.9%", "99.99%", "100%"]


@dataclass
class StatsRow:
    type: str
    name: str
    requests: int
    failures: int
    median: float | None
    average: float | None
    maximum: float | None
    percentiles: dict[float, float] = field(default_factory=dict)  # 50.0 → ms

    def p(self, q: float) -> float | None:
        return self.percentiles.get(q)


def _num(value: str | None) -> float | None:
    if value is None or value in ("", "N/A"):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def read_stats(path: Path) -> list[StatsRow]:
    """The rows of Locust's `<prefix>_stats.csv` (the `Aggregated` row included)."""
    rows = []
    with path.open(newline="") as f:
        for r in csv.DictReader(f):
            pct = {}
            for col in PERCENTILE_COLUMNS:
                v = _num(r.get(col))
                if v is not None:
                    pct[float(col.rstrip("%"))] = v
            rows.append(
                StatsRow(
                    type=r.get("Type", ""),
                    name=r.get("Name", ""),
                    requests=int(_num(r.get("Request Count")) or 0),
                    failures=int(_num(r.get("Failure Count")) or 0),
                    median=_num(r.get("Median Response Time")),
                    average=_num(r.get("Average Response Time")),
                    maximum=_num(r.get("Max Response Time")),
                    percentiles=pct,
                )
            )
    return rows


def histogram_percentile(hist: Mapping[float, int], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of a {value: count} histogram."""
    total = sum(hist.values())
    if total == 0:
        return None
    rank = max(1, min(total, -(-q * total // 100)))  # ceil(q/100 * total)
    seen = 0
    for value in sorted(hist):
        seen += hist[value]
        if seen >= rank:
            return float(value)
    return float(max(hist))


@dataclass
class BroadcastSummary:
    index: int
    broadcast_id: str
    status: str
    audience: str
    to: dict[str, list[str]] | None
    targeted: int | None
    delivered: int | None
    gone: int | None
    failed: int | None
    engine_seconds: float | None
    start_latency_ms: float | None
    real_received: int
    real_duplicates: int
    real_gaps: int
    simulated_received: int | None
    simulated_duplicates: int | None
    simulated_gaps: int | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    # exactness of the real connections per (connection, channel): frames they were targeted by (as
    # judged by each connection), frames never received among those, first frames they were not targeted by
    real_expected: int = 0
    real_unexpected: int = 0

    @property
    def real_missing(self) -> int:
        return self.real_gaps

    @property
    def complete(self) -> bool:
        return self.status == "completed" and self.targeted is not None and self.delivered == self.targeted


@dataclass
class AudienceExactness:
    """Real connections' frames of every broadcast of one audience kind, per (connection, channel)."""

    broadcasts: int = 0
    expected: int = 0
    received: int = 0
    duplicates: int = 0
    missing: int = 0
    unexpected: int = 0

    @property
    def exact(self) -> bool:
        return self.duplicates == 0 and self.missing == 0 and self.unexpected == 0


def exactness_by_audience(broadcasts: Iterable[BroadcastSummary]) -> dict[str, AudienceExactness]:
    """The audience kinds of the run (everyone / channels / users), each with its frames' exactness."""
    out: dict[str, AudienceExactness] = {}
    for b in broadcasts:
        e = out.setdefault(b.audience, AudienceExactness())
        e.broadcasts += 1
        e.expected += b.real_expected
        e.received += b.real_received
        e.duplicates += b.real_duplicates
        e.missing += b.real_gaps
        e.unexpected += b.real_unexpected
    order = {k: i for i, k in enumerate(AUDIENCE_KINDS)}
    return dict(sorted(out.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


@dataclass
class Summary:
    real_connections: int
    connect_failures: int
    disconnects: int
    simulated_connections: int
    broadcasts: list[BroadcastSummary]
    delivered: int
    real_received: int
    simulated_received: int
    duplicates: int
    gaps: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    other_failures: int
    unexpected: int = 0
    by_audience: dict[str, AudienceExactness] = field(default_factory=dict)
    chat: ChatSummary | None = None

    @property
    def ok(self) -> bool:
        # a chat run may have no broadcast and no WebSocket user of the broadcast kind
        return (
            (bool(self.broadcasts) or self.chat is not None)
            and (self.real_connections + self.simulated_connections > 0 or self.chat is not None)
            and (self.chat is None or self.chat.ok)
            and self.duplicates == 0
            and self.gaps == 0
            and self.unexpected == 0
            and self.connect_failures == 0
            and all(b.complete for b in self.broadcasts)
        )

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        for kind, e in self.by_audience.items():
            out["by_audience"][kind]["exact"] = e.exact
        out["chat"] = self.chat.to_json() if self.chat is not None else None
        return out


def summarize(
    rows: Iterable[StatsRow],
    broadcasts: list[dict[str, Any]],
    simulated: dict[str, Any] | None = None,
    latency: Mapping[str, Mapping[float, int]] | None = None,
    chat_latency: Mapping[str, Mapping[float, int]] | None = None,
) -> Summary:
    rows = list(rows)
    by_key = {(r.type, r.name): r for r in rows}

    def row(kind: str, name: str) -> StatsRow | None:
        return by_key.get((kind, name))

    connect = row("WS", "connect")
    disconnected = row("WS", "disconnected")
    sim_broadcasts: dict[str, Any] = (simulated or {}).get("broadcasts", {})
    sim_live = int((simulated or {}).get("live", 0))
    known = {str(b["broadcastId"]) for b in broadcasts}
    # Broadcasts received but missing from broadcasts.json (another operator, or no results dir).
    extra = sorted({name for (kind, name) in by_key if kind == "deliver"} - known)
    records = list(broadcasts) + [
        {"broadcastId": bid, "index": len(broadcasts) + i + 1, "status": "unknown"}
        for i, bid in enumerate(extra)
    ]

    out: list[BroadcastSummary] = []
    for b in sorted(records, key=lambda b: int(b.get("index", 0))):
        bid = str(b["broadcastId"])
        if b.get("status") == "unstarted":
            continue
        deliver, dup, gap = row("deliver", bid), row("duplicate", bid), row("gap", bid)
        expected, unexpected = row("expected", bid), row("unexpected", bid)
        hist = (latency or {}).get(bid)
        if hist:
            p50, p95, p99 = (histogram_percentile(hist, q) for q in (50, 95, 99))
            top: float | None = float(max(hist))
        else:
            p50, p95, p99 = (deliver.p(q) if deliver else None for q in (50.0, 95.0, 99.0))
            top = deliver.maximum if deliver else None
        sim = sim_broadcasts.get(bid) if simulated is not None else None
        created, completed = b.get("createdAt"), b.get("completedAt")
        out.append(
            BroadcastSummary(
                index=int(b.get("index", 0)),
                broadcast_id=bid,
                status=str(b.get("status", "unknown")),
                audience=str(b.get("audience") or "everyone"),
                to=b.get("to"),
                targeted=b.get("targeted"),
                delivered=b.get("delivered"),
                gone=b.get("gone"),
                failed=b.get("failed"),
                engine_seconds=(completed - created) / 1000 if created and completed else None,
                start_latency_ms=b.get("startLatencyMs"),
                real_received=deliver.requests if deliver else 0,
                real_duplicates=dup.requests if dup else 0,
                real_gaps=gap.requests if gap else 0,
                simulated_received=int(sim["ids"]) if sim else (0 if simulated is not None else None),
                simulated_duplicates=int(sim["duplicates"])
                if sim
                else (0 if simulated is not None else None),
                simulated_gaps=(sim_live - int(sim["ids"]) if sim else sim_live)
                if simulated is not None
                else None,
                p50_ms=p50,
                p95_ms=p95,
                p99_ms=p99,
                max_ms=top,
                real_expected=expected.requests if expected else 0,
                real_unexpected=unexpected.requests if unexpected else 0,
            )
        )

    merged: dict[float, int] = {}
    for done in out:
        for value, count in ((latency or {}).get(done.broadcast_id) or {}).items():
            merged[value] = merged.get(value, 0) + count
    if merged:
        p50, p95, p99 = (histogram_percentile(merged, q) for q in (50, 95, 99))
    elif len(out) == 1:
        p50, p95, p99 = out[0].p50_ms, out[0].p95_ms, out[0].p99_ms
    else:  # no histogram: the worst broadcast's percentiles bound the run's
        p50, p95, p99 = (
            (
                max((v for v in vals if v is not None), default=None)
                for vals in zip(*((b.p50_ms, b.p95_ms, b.p99_ms) for b in out), strict=False)
            )
            if out
            else (None, None, None)
        )

    judged = {"deliver", "duplicate", "gap", "expected", "unexpected"}
    other_failures = sum(
        r.failures
        for r in by_key.values()
        if r.type not in judged
        and r.type not in CHAT_TYPES  # the chat section counts its own
        and r.name != "Aggregated"
        and (r.type, r.name) != ("WS", "connect")
    )
    return Summary(
        real_connections=(connect.requests - connect.failures) if connect else 0,
        connect_failures=connect.failures if connect else 0,
        disconnects=disconnected.requests if disconnected else 0,
        simulated_connections=int((simulated or {}).get("registered", 0)),
        broadcasts=out,
        delivered=sum(b.delivered or 0 for b in out),
        real_received=sum(b.real_received for b in out),
        simulated_received=sum(b.simulated_received or 0 for b in out),
        duplicates=sum(b.real_duplicates + (b.simulated_duplicates or 0) for b in out),
        gaps=sum(b.real_gaps + max(0, b.simulated_gaps or 0) for b in out),
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        other_failures=other_failures,
        unexpected=sum(b.real_unexpected for b in out),
        by_audience=exactness_by_audience(out),
        chat=summarize_chat(rows, chat_latency),
    )


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def _audience(b: BroadcastSummary) -> str:
    to = b.to or {}
    names = to.get("channels") or to.get("users") or []
    return b.audience + (
        f" ({len(names)}: {','.join(names[:3])}{',...' if len(names) > 3 else ''})" if names else ""
    )


def render_text(s: Summary) -> str:
    lines = [
        f"connections: {s.real_connections} real ({s.connect_failures} failed to connect, "
        f"{s.disconnects} dropped), {s.simulated_connections} simulated",
        f"broadcasts: {len(s.broadcasts)}; delivered (engine) {s.delivered}; "
        f"received: {s.real_received} real, {s.simulated_received} simulated",
        f"duplicates: {s.duplicates}; gaps: {s.gaps}; unexpected: {s.unexpected}; "
        f"other failures: {s.other_failures}",
        f"delivery latency (real connections): p50 {_ms(s.p50_ms)} ms, p95 {_ms(s.p95_ms)} ms, "
        f"p99 {_ms(s.p99_ms)} ms",
        "",
        f"{'#':>2} {'broadcast':<36} {'status':<10} {'targeted':>9} {'delivered':>9} {'gone':>5} "
        f"{'failed':>6} {'time s':>7} {'real':>6} {'sim':>7} {'dup':>4} {'gaps':>5} "
        f"{'p50':>6} {'p95':>6} {'p99':>6} {'expect':>6} {'unexp':>5} audience",
    ]
    for b in s.broadcasts:
        sim = "-" if b.simulated_received is None else str(b.simulated_received)
        dups = b.real_duplicates + (b.simulated_duplicates or 0)
        gaps = b.real_gaps + max(0, b.simulated_gaps or 0)
        secs = "-" if b.engine_seconds is None else f"{b.engine_seconds:.2f}"
        lines.append(
            f"{b.index:>2} {b.broadcast_id:<36} {b.status:<10} {b.targeted!s:>9} {b.delivered!s:>9} "
            f"{b.gone!s:>5} {b.failed!s:>6} {secs:>7} {b.real_received:>6} {sim:>7} {dups:>4} {gaps:>5} "
            f"{_ms(b.p50_ms):>6} {_ms(b.p95_ms):>6} {_ms(b.p99_ms):>6} {b.real_expected:>6} "
            f"{b.real_unexpected:>5} {_audience(b)}"
        )
    if s.by_audience:
        lines += [
            "",
            "exactness per (connection, channel), real connections:",
            f"{'audience':<10} {'broadcasts':>10} {'expected':>9} {'received':>9} {'dup':>5} {'missing':>8} "
            f"{'unexpected':>10}",
        ]
        for kind, e in s.by_audience.items():
            lines.append(
                f"{kind:<10} {e.broadcasts:>10} {e.expected:>9} {e.received:>9} {e.duplicates:>5} "
                f"{e.missing:>8} {e.unexpected:>10}  {'exact' if e.exact else 'NOT EXACT'}"
            )
    if s.chat is not None:
        lines += ["", *render_chat(s.chat)]
    lines += ["", "result: " + ("OK" if s.ok else "PROBLEMS (see above)")]
    return "\n".join(lines) + "\n"


def plot(
    summary: Summary,
    rows: Iterable[StatsRow],
    latency: Mapping[str, Mapping[float, int]] | None,
    path: Path,
) -> Path:
    """Delivery latency per broadcast: cumulative distribution (left) and p50/p95/p99 (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_key = {(r.type, r.name): r for r in rows}
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    labels = []
    for b in summary.broadcasts:
        label = f"#{b.index} ({b.real_received} users)"
        hist = (latency or {}).get(b.broadcast_id)
        if hist:
            xs = sorted(hist)
            total = sum(hist.values())
            acc, ys = 0, [0.0]
            xs = [xs[0], *xs]  # the curve starts at 0 % at the fastest delivery
            for x in xs[1:]:
                acc += hist[x]
                ys.append(100.0 * acc / total)
            left.step(xs, ys, where="post", label=label)
        else:
            deliver = by_key.get(("deliver", b.broadcast_id))
            if deliver and deliver.percentiles:
                qs = sorted(deliver.percentiles)
                left.plot([deliver.percentiles[q] for q in qs], qs, marker="o", label=label)
        labels.append(f"#{b.index}")
    left.set_xlabel("delivery latency, receive time - sentAt (ms)")
    left.set_ylabel("connections received (%)")
    left.set_title("Delivery latency distribution per broadcast")
    left.set_ylim(0, 101)
    left.grid(alpha=0.3)
    if summary.broadcasts:
        left.legend(fontsize="small")
    width = 0.25
    for k, (name, attr) in enumerate((("p50", "p50_ms"), ("p95", "p95_ms"), ("p99", "p99_ms"))):
        values = [getattr(b, attr) or 0 for b in summary.broadcasts]
        right.bar([i + (k - 1) * width for i in range(len(values))], values, width, label=name)
    right.set_xticks(range(len(labels)), labels)
    right.set_ylabel("ms")
    right.set_title("Percentiles per broadcast")
    right.legend(fontsize="small")
    right.grid(axis="y", alpha=0.3)
    fig.suptitle(
        f"{summary.real_connections} real + {summary.simulated_connections} simulated connections, "
        f"{len(summary.broadcasts)} broadcast(s)"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def read_latency(path: Path) -> dict[str, dict[float, int]] | None:
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    return {bid: {float(k): int(v) for k, v in hist.items()} for bid, hist in raw.items()}


def fetch_simulated(admin_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{admin_url.rstrip('/')}/simulated/stats", timeout=30) as resp:
        data: dict[str, Any] = json.loads(resp.read())
    return data


def write_reports(
    results: Path, prefix: str, *, admin_url: str | None = None
) -> tuple[Summary, dict[str, Path]]:
    """Read what the run left in `results`, write the chart and the summaries; return the summary."""
    rows = read_stats(results / f"{prefix}_stats.csv")
    bpath = results / "broadcasts.json"
    broadcasts = json.loads(bpath.read_text()) if bpath.exists() else []
    simulated = None
    spath = results / "simulated.json"
    if admin_url:
        simulated = fetch_simulated(admin_url)
        spath.write_text(json.dumps(simulated, indent=2))
    elif spath.exists():
        simulated = json.loads(spath.read_text())
    if simulated is not None and not simulated.get("registered"):
        simulated = None  # no simulated connections in this run
    latency = read_latency(results / "latency.json")
    chat_latency = read_latency(results / "chat_latency.json")
    summary = summarize(rows, broadcasts, simulated, latency, chat_latency)
    paths = {
        "png": plot(summary, rows, latency, results / "latency.png"),
        "txt": results / "summary.txt",
        "json": results / "summary.json",
    }
    paths["txt"].write_text(render_text(summary))
    paths["json"].write_text(json.dumps(summary.to_json(), indent=2))
    return summary, paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Chart and summary of a fanout load test")
    parser.add_argument("--results", type=Path, default=Path("loadtest/results"))
    parser.add_argument("--prefix", default="run", help="the --csv prefix's file name part")
    parser.add_argument("--admin-url", default=None, help="gateway admin URL: fetch the simulated stats")
    parser.add_argument("--state", type=Path, default=None, help="local.json: take the admin URL from it")
    args = parser.parse_args(argv)
    admin = args.admin_url
    if admin is None and args.state is not None and args.state.exists():
        admin = json.loads(args.state.read_text()).get("adminUrl")
    summary, paths = write_reports(args.results, args.prefix, admin_url=admin)
    sys.stdout.write(render_text(summary))
    print(f"chart: {paths['png']}\nsummary: {paths['txt']}")
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
