"""Where a post worker's CPU goes: a cProfile dump's own time, grouped by the code that spends it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loadtest.bench_models import Profile, ProfileEntry, ProfileGroup

ROOT = Path(__file__).resolve().parents[1]
BOTO_GROUP = "botocore/aiobotocore (DynamoDB requests)"
# (group, needles): an entry of the dump goes to the first group one of whose needles its
# "file:line(function)" contains.
CATEGORIES = (
    (
        "signing (fanout/sigv4.py, urllib quote, hashlib/hmac)",
        ("fanout/sigv4.py", "urllib/parse.py", "_hashlib", "hmac"),
    ),
    (
        "engine delivery (fanout/delivery.py, fanout/postclient.py)",
        ("fanout/delivery.py", "fanout/postclient.py"),
    ),
    (
        "post stage (fanout/stages.py, models, pydantic, json)",
        ("fanout/stages.py", "fanout/models.py", "fanout/store.py", "pydantic", "json/"),
    ),
    (BOTO_GROUP, ("botocore/", "aiobotocore/", "aioboto3/", "jmespath/", "email/", "dateutil/")),
    ("aiohttp/yarl/multidict client machinery", ("aiohttp/", "yarl/", "multidict/")),
    ("socket send/recv (kernel calls)", ("_socket.socket", "select.epoll")),
    ("asyncio event loop, tasks, futures", ("asyncio/", "_asyncio", "_contextvars")),
    (
        # uvloop is C: its scheduling, epoll and socket reads show as the own time of the call running
        # it, the worker's (loadtest/bench_post_workers.py, started through loadtest/bench_post.py)
        "uvloop (C; own time of the call that runs the loop)",
        ("uvloop", "loadtest/bench_post", "fanout/container.py"),
    ),
)


def profile_breakdown(path: str, frames: int, top: int = 12) -> Profile:
    """Own (tottime) CPU of a cProfile dump, per frame, grouped by where it is spent, plus the top entries."""
    import pstats

    stats = pstats.Stats(path)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values())
    groups = {name: 0.0 for name, _ in CATEGORIES} | {"other": 0.0}
    rows = []
    for (filename, line, func), (_cc, ncalls, tottime, cumtime, _callers) in raw.items():
        where = f"{filename}:{line}({func})"
        for name, needles in CATEGORIES:
            if any(n in where for n in needles):
                groups[name] += tottime
                break
        else:
            groups["other"] += tottime
        rows.append((tottime, ncalls, cumtime, where.replace(str(ROOT) + "/", "")))
    rows.sort(reverse=True)
    return Profile(
        total_seconds=round(total, 3),
        frames=frames,
        groups={
            k: ProfileGroup(share=round(v / total, 3), us_per_frame=round(v / frames * 1e6, 1))
            for k, v in groups.items()
        },
        top=[
            ProfileEntry(
                tottime_s=round(t, 3),
                ncalls=n,
                cumtime_s=round(c, 3),
                function=w.split("site-packages/")[-1],
            )
            for t, n, c, w in rows[:top]
        ],
    )
