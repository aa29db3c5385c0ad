"""The benchmarks' results as typed records: what loadtest/results/bench.json (and bench_post.json) hold.

The aliases are the JSON keys the runs write (camelCase, except the post section and the quota model's
own snake_case), so the files of earlier runs load as they are. A record keeps the keys it does not
know, and `to_json` writes only the fields that a run (or the file it was read from) set: a file read
and written again by `--render` keeps its layout.
"""

from __future__ import annotations

import statistics
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

# A measured figure keeps the JSON number it was written as (1 stays 1, 1.0 stays 1.0), so a
# re-rendered doc prints it as the run did.
Number = int | float
CpuSeconds = dict[str, Number]


class Record(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow")

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


class LoadSummary(Record):
    """The 1-minute load average while a section ran."""

    min: Number
    median: Number
    max: Number


class Machine(Record):
    cpus: int | None
    python: str
    load_start: list[Number] = Field(alias="loadStart")
    load_end: list[Number] | None = Field(default=None, alias="loadEnd")


# -- post stage cost ------------------------------------------------------------------------------------
class Measure(Record):
    """One worker process of one variant and round: what it posted, delivered and spent."""

    variant: str
    posts: int
    delivered: int
    cpu_s: float
    wall_s: float

    def us_per_frame(self) -> float:
        return self.cpu_s / max(1, self.delivered) * 1e6


class MeasureRecord(Measure):
    """A measure as the result lists it, with its CPU per frame."""

    cpu_us_per_frame: float


class VariantSummary(Record):
    variant: str
    posts: int
    rounds: int
    cpu_us_per_frame_median: float
    cpu_us_per_frame_min: float
    cpu_us_per_frame_max: float
    frames_per_s_median: float
    samples: list[float]


class PostMachine(Record):
    cpus: int | None
    python: str
    load: list[float]


class ProfileGroup(Record):
    share: Number
    us_per_frame: Number = Field(alias="usPerFrame")


class ProfileEntry(Record):
    tottime_s: Number = Field(alias="tottimeS")
    ncalls: int
    cumtime_s: Number = Field(alias="cumtimeS")
    function: str


class Profile(Record):
    """Own CPU of a cProfile dump, grouped by where it is spent, and its top entries."""

    total_seconds: Number = Field(alias="totalSeconds")
    frames: int
    groups: dict[str, ProfileGroup]
    top: list[ProfileEntry]
    cpu_us_per_frame_under_profiler: Number | None = Field(default=None, alias="cpuUsPerFrameUnderProfiler")


class PostProfiles(Record):
    engine: Profile | None = None
    stage: Profile | None = None
    command: str

    def of(self, variant: str) -> Profile | None:
        return {"engine": self.engine, "stage": self.stage}.get(variant)


class PostResult(Record):
    benchmark: str
    frame_bytes: int
    aioboto3_inflight: int
    loop: str = "asyncio"
    machine: PostMachine
    variants: dict[str, VariantSummary]
    ratios: dict[str, float]
    measures: list[MeasureRecord]
    command: str | None = None
    profile: PostProfiles | None = None

    def median(self, variant: str) -> float | None:
        v = self.variants.get(variant)
        return v.cpu_us_per_frame_median if v else None


# -- quota model (the layout of fanout.tools.plan.to_json; what the report reads is typed) ----------------
class Prediction(Record):
    connections: int
    quota: Number
    seconds: Number
    floor_seconds: Number
    ratio: Number
    target_met: bool
    start_seconds: Number
    ramp_seconds: Number
    tail_seconds: Number
    bottleneck: str


class Deployment(Record):
    shards: int
    post_workers: int = Field(alias="postWorkers")
    post_rate_per_worker: Number
    post_sqs_batch_size: int


class PlanScenario(Record):
    prediction: Prediction
    deployment: Deployment
    min_connections_for_target: int | None = Field(default=None, alias="minConnectionsForTarget")


class PlanResult(Record):
    costs: dict[str, Any]
    scenarios: list[PlanScenario]
    command: str


# -- partition balance ----------------------------------------------------------------------------------
class BalanceScenario(Record):
    partitions: int
    connects: int
    disconnects: int
    connectors: int
    events_per_second: Number = Field(alias="eventsPerSecond")
    stream_lag_seconds: Number = Field(alias="streamLagSeconds")
    view_ttl_seconds: Number = Field(alias="viewTtlSeconds")
    choices: int
    seed: int


class Assignment(Record):
    """How one assignment spread the live connections over the partitions."""

    max_over_mean: Number = Field(alias="maxOverMean")
    max: int
    min: int
    mean: Number
    view_loads: int | None = Field(default=None, alias="viewLoads")
    reads_per_connect: Number = Field(alias="readsPerConnect")


class BalanceResult(Record):
    scenario: BalanceScenario
    live: int
    engine: Assignment
    hash_mod_n: Assignment = Field(alias="hashModN")
    command: str


# -- local stack ----------------------------------------------------------------------------------------
class BroadcastRun(Record):
    """One engine broadcast on the local stack, with the CPU the stack spent on it."""

    broadcast_id: str | None = Field(default=None, alias="broadcastId")
    status: str | None = None
    targeted: int | None = None
    delivered: int
    gone: int | None = None
    failed: int | None = None
    seconds: Number
    server_seconds: Number | None = Field(default=None, alias="serverSeconds")
    frames_per_second: Number | None = Field(alias="framesPerSecond")
    # The Lambda functions' CPU (and the runtime's pollers), in seconds.
    cpu_seconds: CpuSeconds | None = Field(default=None, alias="cpuSeconds")
    cpu_us_per_frame: Number = Field(alias="cpuUsPerFrame")
    post_cpu_us_per_frame: Number = Field(alias="postCpuUsPerFrame")
    # Every process of the stack (DynamoDB Local, SQS, gateway, ...), in seconds.
    stack_cpu_seconds: CpuSeconds | None = Field(default=None, alias="stackCpuSeconds")
    stack_cpu_us_per_frame: Number | None = Field(default=None, alias="stackCpuUsPerFrame")
    # The gateway emulator's count of the broadcast's frames, as its stats report it.
    gateway: Any = None


class ScalePoint(BroadcastRun):
    """One size of the scale curve: the broadcast and the stack it ran on."""

    connections: int
    partitions: int
    post_batch_size: int | None = Field(default=None, alias="postBatchSize")
    largest_partition: int | None = Field(default=None, alias="largestPartition")
    seed_seconds: Number | None = Field(default=None, alias="seedSeconds")
    # The command of the earlier run this point was kept from (`--merge`).
    run: str | None = None


class FailedSize(Record):
    connections: int
    error: str


class NaiveSenderRun(Record):
    """What loadtest/naive.py prints, and the stack's CPU while it ran."""

    delivered: int
    seconds: Number
    cpu_seconds: Number = Field(alias="cpuSeconds")
    stack_cpu_seconds: CpuSeconds | None = Field(default=None, alias="stackCpuSeconds")


class NaiveRun(Record):
    """The engine and the naive sender at one added latency."""

    engine_seconds: Number = Field(alias="engineSeconds")
    engine_delivered: int | None = Field(default=None, alias="engineDelivered")
    naive_seconds: Number = Field(alias="naiveSeconds")
    naive_delivered: int = Field(alias="naiveDelivered")
    naive_cpu_seconds: Number | None = Field(default=None, alias="naiveCpuSeconds")
    engine_stack_cpu_seconds: CpuSeconds | None = Field(default=None, alias="engineStackCpuSeconds")
    naive_stack_cpu_seconds: CpuSeconds | None = Field(default=None, alias="naiveStackCpuSeconds")
    speedup: Number


class NaiveComparison(Record):
    """The runs by added latency ("0ms", "20ms"), which the JSON holds beside `connections`."""

    connections: int
    runs: dict[str, NaiveRun] = Field(default_factory=dict)
    run: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _gather_runs(cls, data: Any) -> Any:
        if isinstance(data, dict) and "runs" not in data:
            own = {k: v for k, v in data.items() if k in ("connections", "run")}
            return own | {"runs": {k: v for k, v in data.items() if k not in own}}
        return data

    @model_serializer(mode="wrap")
    def _spread_runs(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        runs = out.pop("runs", {})
        return {"connections": out.pop("connections")} | runs | out


class Ceiling(Record):
    """The bare posting loop at the largest size, against the engine's broadcast there."""

    connections: int
    workers: int
    concurrency: int
    delivered: int
    seconds: Number
    frames_per_second: Number = Field(alias="framesPerSecond")
    loop_cpu_seconds: Number | None = Field(default=None, alias="loopCpuSeconds")
    stack_cpu_seconds: CpuSeconds | None = Field(default=None, alias="stackCpuSeconds")
    engine_frames_per_second: Number | None = Field(alias="engineFramesPerSecond")
    ratio: Number
    run: str | None = None


class StackRun(Record):
    scale: list[ScalePoint]
    failed: list[FailedSize] = Field(default_factory=list)
    naive: NaiveComparison | None = None
    ceiling: Ceiling | None = None
    post_workers: int = Field(alias="postWorkers")
    command: str | None = None
    cpu_slope_us_per_decade: Number | None = Field(default=None, alias="cpuSlopeUsPerDecade")


class StackFailure(BaseModel):
    """A stack section that failed as a whole."""

    model_config = ConfigDict(extra="forbid")

    error: str

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class AudiencesRun(Record):
    """The audiences section (loadtest/bench_audiences.py): seconds from POST to completed, POST to
    frame latencies, and what reading an audience costs."""

    everyone_seconds: list[Number] = Field(alias="everyoneSeconds", description="on a 10k stack")
    channel_seconds: list[Number] = Field(alias="channelSeconds", description="10k channel in 100k")
    everyone_single_p50_ms: Number = Field(alias="everyoneSingleP50Ms")
    user_p50_ms: Number = Field(alias="userP50Ms", description="a user with 3 connections")
    sends: int
    reads: dict[str, Number] = Field(default_factory=dict)
    storage: dict[str, Number] = Field(default_factory=dict)
    command: str | None = None

    @property
    def channel_ratio(self) -> float:
        return float(statistics.median(self.channel_seconds) / statistics.median(self.everyone_seconds))


# -- the whole run --------------------------------------------------------------------------------------
SECTIONS = ("post", "plan", "balance", "stack", "audiences")


class BenchResults(Record):
    started_at: str = Field(alias="startedAt")
    command: str | None = None
    machine: Machine
    skipped: dict[str, str] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    load: dict[str, LoadSummary] = Field(default_factory=dict)
    post: PostResult | None = None
    plan: PlanResult | None = None
    balance: BalanceResult | None = None
    stack: StackRun | StackFailure | None = None
    audiences: AudiencesRun | StackFailure | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON layout: a section not run is absent, not null."""
        absent = {name for name in SECTIONS if getattr(self, name) is None}
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude=absent)

    def stack_run(self) -> StackRun | None:
        return self.stack if isinstance(self.stack, StackRun) else None
