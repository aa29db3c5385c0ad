"""The quota model: predicted broadcast time of the deployed design, and the settings to deploy with.

A broadcast to N connections can never beat N / R seconds, R being the account's PostToConnection
quota (API Gateway throttles every callback call). This module predicts how close the partitioned
pipeline gets, from per-stage costs, and picks the settings that bring it within 10% of that floor:

    time = start latency (invoke swarm → first partition task queried → first post batch polled)
         + delivery of N frames at the pipeline's throughput, with the post workers' ramp-up
         + tail (the last batch's ledger transaction and the completion check)

    throughput = min(post capacity, query supply, swarm supply, quota)

Post capacity is what W post workers deliver under the rate limit (`post_rate_per_worker`), after each
invocation's fixed overhead; a worker is CPU-bound (the measured CPU per frame, docs/benchmarks.md) or
latency-bound (K posts in flight / PostToConnection latency). W comes from Q shards x the per-shard
`MaximumConcurrency`: an SQS event source mapping starts 5 concurrent batches and adds up to 300 per
minute, so Q = ceil(W / 5) shards put every worker to work at once (no ramp).

The account's throttle is shared by every API and every client message of the account and Region,
so a deployment's post stage gets a share of it (the CDK app's `postRateShare`, 80 % by default): the
model plans against that budget, quota x share.

Pure: plain data in, plain data out; no I/O. `fanout plan` (`fanout.tools.plan`) prints it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from fanout.sizing import SQS_MAX_MAXIMUM_CONCURRENCY, SQS_MIN_MAXIMUM_CONCURRENCY
from fanout.topology import TopologyConfig

# ESM facts (AWS Lambda docs, "Configuring scaling behavior for SQS event source mappings"): five
# concurrent batches at first, then up to 300 more per minute; MaximumConcurrency is 2..1,000.
ESM_MIN_CONCURRENCY = SQS_MIN_MAXIMUM_CONCURRENCY
ESM_MAX_CONCURRENCY = SQS_MAX_MAXIMUM_CONCURRENCY
SQS_BATCH_SIZES = (10, 20, 50, 100)  # post ESM batch sizes considered; above 10 needs a batching window
MAX_POST_CONCURRENCY = 2000  # Settings.post_concurrency's bound
TARGET_FACTOR = 1.10  # "within 10% of N / R"
# The deployed default postRateShare (fanout.topology.TopologyConfig): what `fanout plan` assumes.
DEFAULT_POST_RATE_SHARE = TopologyConfig.model_fields["post_rate_share"].default


@dataclass(frozen=True)
class Costs:
    """Per-stage costs. Defaults: measured here where marked, else typical AWS figures (assumed)."""

    # Measured by `python -m loadtest.bench_post` (docs/benchmarks.md): CPU per delivered frame in the
    # engine's post path, and the post stage's per-batch CPU (ledger read, counting transaction,
    # completion check through aioboto3), as (stage - engine) per frame x B.
    post_frame_cpu_us: float = 235.0
    post_batch_cpu_us: float = 4800.0
    # How much slower a Lambda vCPU (1,769 MB = one vCPU) is than this machine's core (assumed 1.0).
    cpu_factor: float = 1.0
    # Leave this much of a worker's CPU unused (GC, logging, metrics flush).
    cpu_headroom: float = 0.85
    # Round trip of one PostToConnection in AWS (the "closer to AWS" figure: 20 ms).
    post_latency_ms: float = 20.0
    # One DynamoDB call (GetItem, Query page, TransactWriteItems), one SendMessageBatch.
    ddb_ms: float = 8.0
    sqs_send_ms: float = 12.0
    # From a message being sent to the ESM invoking the function with it (long polling, warm pollers).
    sqs_delivery_ms: float = 60.0
    # Per invocation: Lambda invoke + DeleteMessageBatch by the ESM + handler entry/exit.
    invoke_overhead_ms: float = 25.0
    # Async Invoke of the swarm function by the operator API.
    async_invoke_ms: float = 40.0
    # Cold start of a Python function with aioboto3 + aiohttp + Powertools (init phase).
    cold_start_ms: float = 1200.0
    # Items per page of the partitions table scan (keys + one number: ~40 B each, 1 MB pages).
    scan_page_items: int = 20_000
    # Items per page of the keys-only GSI query (1 MB pages of ~60 B items).
    query_page_items: int = 15_000
    esm_initial_concurrency: int = 5
    esm_ramp_per_minute: int = 300


@dataclass(frozen=True)
class Deployment:
    """The settings to deploy with (names as in fanout.settings and the CDK config)."""

    partitions: int  # N partitions (FANOUT_PARTITION_COUNT)
    shards: int  # Q queue shards per stage (FANOUT_SHARD_COUNT)
    post_batch_size: int  # B (FANOUT_POST_BATCH_SIZE)
    post_concurrency: int  # K posts in flight per worker (FANOUT_POST_CONCURRENCY)
    post_max_concurrency_per_shard: int  # post ESM MaximumConcurrency, per shard
    post_rate_per_worker: float  # FANOUT_POST_RATE_PER_WORKER (0 = unpaced)
    post_sqs_batch_size: int  # post ESM BatchSize
    post_batching_window_s: int  # post ESM MaximumBatchingWindowInSeconds (required when BatchSize > 10)
    query_max_concurrency_per_shard: int  # query ESM MaximumConcurrency, per shard
    query_sqs_batch_size: int = 10
    query_batching_window_s: int = 0  # batches of 10 need no window
    swarm_send_concurrency: int = 32  # FANOUT_SWARM_SEND_CONCURRENCY
    # provisioned concurrency on swarm (1), query and post (their maximum concurrency): no cold starts
    provisioned_concurrency: bool = False

    @property
    def post_workers(self) -> int:
        return self.shards * self.post_max_concurrency_per_shard

    @property
    def query_workers(self) -> int:
        return self.shards * self.query_max_concurrency_per_shard

    @property
    def total_post_rate(self) -> float:
        """The most posts per second the fleet may make: the sum of the per-worker limits."""
        return self.post_workers * self.post_rate_per_worker if self.post_rate_per_worker > 0 else math.inf


@dataclass(frozen=True)
class Prediction:
    connections: int
    quota: float
    seconds: float
    floor_seconds: float  # N / R
    ratio: float  # seconds / floor_seconds
    target_met: bool  # ratio <= 1.10
    throughput: float  # frames/s in steady state
    bottleneck: str  # which bound sets the throughput
    start_seconds: float
    delivery_seconds: float
    ramp_seconds: float
    tail_seconds: float
    post_worker_rate: float  # frames/s one post worker can make (unpaced, after overheads)
    post_capacity: float  # frames/s of the whole post fleet, paced
    query_supply: float  # connection ids/s the query stage can emit
    swarm_supply: float  # connection ids/s the swarm can queue (as partition tasks)
    lambda_concurrency: int  # post + query workers at peak (+1 swarm)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Plan:
    deployment: Deployment
    prediction: Prediction  # against the budget: prediction.quota is account_quota x share
    headroom: float
    warm: bool
    min_connections_for_target: int | None  # smallest N within 10% of N/R at this budget (None: never)
    account_quota: float  # the account's throttle, shared by every API and client message
    share: float  # the part of it this deployment's post stage uses (CDK postRateShare)

    @property
    def budget(self) -> float:
        return self.prediction.quota

    def topology_config(self) -> TopologyConfig:
        """The deploy-time knobs of this plan; its fields set are the ones the plan decides.

        Raises ValueError when the deployment cannot be deployed (a knob beyond what the stack allows).
        """
        d = self.deployment
        provisioned = (
            {
                "swarm_provisioned_concurrency": 1,
                "query_provisioned_concurrency": d.query_workers,
                "post_provisioned_concurrency": d.post_workers,
            }
            if d.provisioned_concurrency
            else {}
        )
        return TopologyConfig(
            account_post_quota=self.account_quota,
            post_rate_share=self.share,
            partitions=d.partitions,
            shards=d.shards,
            post_batch_size=d.post_batch_size,
            post_concurrency=d.post_concurrency,
            post_max_concurrency=d.post_max_concurrency_per_shard,
            **({"post_rate_per_worker": d.post_rate_per_worker} if d.post_rate_per_worker > 0 else {}),
            post_sqs_batch_size=d.post_sqs_batch_size,
            post_batching_window_seconds=d.post_batching_window_s,
            query_sqs_batch_size=d.query_sqs_batch_size,
            query_batching_window_seconds=d.query_batching_window_s,
            query_max_concurrency=d.query_max_concurrency_per_shard,
            swarm_send_concurrency=d.swarm_send_concurrency,
            **provisioned,
        )


# -- the model ------------------------------------------------------------------------------------------
def _frames_per_invocation(d: Deployment, per_partition: int) -> int:
    batch = max(1, min(d.post_batch_size, per_partition))
    return d.post_sqs_batch_size * batch


def worker_rate(d: Deployment, costs: Costs, per_partition: int, *, paced: bool = True) -> float:
    """Frames/s one post worker delivers over a whole invocation, fixed per-invocation costs included."""
    batch = max(1, min(d.post_batch_size, per_partition))
    cpu_us = (costs.post_frame_cpu_us + costs.post_batch_cpu_us / batch) * costs.cpu_factor
    cpu_rate = 1e6 / cpu_us * costs.cpu_headroom
    latency_s = costs.post_latency_ms / 1000  # tested against 0 after the division: it can underflow
    latency_rate = d.post_concurrency / latency_s if latency_s > 0 else math.inf
    rate = min(cpu_rate, latency_rate)
    if paced and d.post_rate_per_worker > 0:
        rate = min(rate, d.post_rate_per_worker)
    frames = _frames_per_invocation(d, per_partition)
    # the last batch's ledger transaction and completion check are not overlapped with posting
    fixed_s = (costs.invoke_overhead_ms + 2 * costs.ddb_ms) / 1000
    return frames / (frames / rate + fixed_s)


def query_task_seconds(d: Deployment, costs: Costs, per_partition: int) -> float:
    pages = max(1, math.ceil(per_partition / costs.query_page_items))
    batches = max(1, math.ceil(per_partition / d.post_batch_size))
    sends = math.ceil(batches / 10)
    # ledger read + GSI pages + counting transaction, then SendMessageBatch of the post batches
    return ((2 + pages) * costs.ddb_ms + sends * costs.sqs_send_ms) / 1000


def _deliver_seconds(n: float, rate_per_worker: float, workers: int, c0: float, per_s: float) -> float:
    """Time to deliver n frames when c(t) = min(workers, c0 + per_s * t) workers each run at rate."""
    if n <= 0:
        return 0.0
    c0 = min(c0, workers)
    if c0 >= workers or per_s <= 0:
        return n / (rate_per_worker * c0)
    t_ramp = (workers - c0) / per_s
    ramp_frames = rate_per_worker * (c0 * t_ramp + per_s * t_ramp**2 / 2)
    if n >= ramp_frames:
        return t_ramp + (n - ramp_frames) / (rate_per_worker * workers)
    # rate * (c0 t + per_s t^2 / 2) = n
    a, b, c = rate_per_worker * per_s / 2, rate_per_worker * c0, -n
    return (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)


def predict(
    connections: int, quota: float, d: Deployment, costs: Costs | None = None, *, warm: bool = False
) -> Prediction:
    """Predicted broadcast time of deployment `d` for `connections` at a quota of `quota` posts/s."""
    if connections < 1 or quota <= 0:
        raise ValueError("connections must be >= 1 and quota > 0")
    costs = costs or Costs()
    n, r = connections, float(quota)
    per_partition = max(1, math.ceil(n / d.partitions))
    warnings: list[str] = []

    # supply rates of the stages before post
    w_rate = worker_rate(d, costs, per_partition)
    post_capacity = d.post_workers * w_rate
    tq = query_task_seconds(d, costs, per_partition)
    query_invocation = tq + costs.invoke_overhead_ms / 1000  # a batch's tasks run concurrently
    query_supply = d.query_workers * d.query_sqs_batch_size * per_partition / query_invocation
    swarm_supply = d.swarm_send_concurrency * 10 * per_partition / (costs.sqs_send_ms / 1000)
    bounds = {"quota": r, "post": post_capacity, "query": query_supply, "swarm": swarm_supply}
    bottleneck = min(bounds, key=lambda k: bounds[k])
    throughput = bounds[bottleneck]
    if d.total_post_rate > r:
        warnings.append(
            f"the post fleet may post {d.total_post_rate:,.0f}/s, above the quota of {r:,.0f}/s: expect "
            "429s and back-off (set post_rate_per_worker)"
        )

    # start latency: operator API → swarm → first task queried → first post batch in a worker
    cold = 0.0 if warm or d.provisioned_concurrency else costs.cold_start_ms / 1000
    scan_s = math.ceil(d.partitions / costs.scan_page_items) * costs.ddb_ms / 1000
    sqs_s = costs.sqs_delivery_ms / 1000
    first_post_batch = d.post_sqs_batch_size * max(1, min(d.post_batch_size, per_partition))
    fill_s = 0.0
    if d.post_batching_window_s > 0 and d.post_sqs_batch_size > 10:
        # the ESM waits for a full batch or the window, whichever comes first
        fill_s = min(float(d.post_batching_window_s), first_post_batch / max(1.0, query_supply))
    start = (
        costs.async_invoke_ms / 1000
        + cold
        + 2 * costs.ddb_ms / 1000  # read the broadcast, mark it running
        + scan_s
        + costs.sqs_send_ms / 1000
        + sqs_s
        + cold
        + tq
        + sqs_s
        + fill_s
        + cold
        + costs.ddb_ms / 1000  # post ledger read
    )

    # post workers: each shard's ESM starts at 5 concurrent batches and adds 5 per second
    per_shard_start = min(d.post_max_concurrency_per_shard, costs.esm_initial_concurrency)
    c0 = float(d.shards * per_shard_start)
    per_s = d.shards * costs.esm_ramp_per_minute / 60
    rate_each = throughput / d.post_workers
    delivery = _deliver_seconds(n, rate_each, d.post_workers, c0, per_s)
    steady = n / throughput
    ramp = max(0.0, delivery - steady)
    if d.partitions > n:
        warnings.append(f"{d.partitions - n} partitions stay empty at {n} connections")
    concurrency = d.post_workers + d.query_workers + 1
    if concurrency > 1000:
        warnings.append(f"{concurrency} concurrent Lambdas: above the default regional limit of 1,000")

    tail = (costs.invoke_overhead_ms + 3 * costs.ddb_ms) / 1000
    seconds = start + delivery + tail
    floor = n / r
    return Prediction(
        connections=n,
        quota=r,
        seconds=round(seconds, 4),
        floor_seconds=round(floor, 4),
        ratio=round(seconds / floor, 4),
        target_met=seconds <= TARGET_FACTOR * floor,
        throughput=round(throughput, 1),
        bottleneck=bottleneck,
        start_seconds=round(start, 4),
        delivery_seconds=round(delivery, 4),
        ramp_seconds=round(ramp, 4),
        tail_seconds=round(tail, 4),
        post_worker_rate=round(worker_rate(d, costs, per_partition, paced=False), 1),
        post_capacity=round(post_capacity, 1),
        query_supply=round(query_supply, 1),
        swarm_supply=round(swarm_supply, 1),
        lambda_concurrency=concurrency,
        warnings=warnings,
    )


def recommend_deployment(
    connections: int,
    quota: float,
    costs: Costs | None = None,
    *,
    headroom: float = 0.97,
    provisioned: bool = True,
) -> Deployment:
    """The settings that keep the total post rate just under `headroom` x quota, with no ESM ramp.

    Provisioned concurrency is recommended by default: three cold starts (swarm, query, post) sit on a
    broadcast's critical path, more than the 10% margin for any broadcast shorter than ~40 s.
    """
    if connections < 1 or quota <= 0:
        raise ValueError("connections must be >= 1 and quota > 0")
    if not 0 < headroom <= 1:
        raise ValueError("headroom must be in (0, 1]")
    costs = costs or Costs()
    partitions = max(1, min(100_000, math.ceil(connections / 100)))
    per_partition = max(1, math.ceil(connections / partitions))
    # B above the largest partition (balanced partitions reach ~1.1x the mean): one post batch per
    # partition. With B equal to the mean, about half the partitions add a batch of a few ids (measured on
    # the local stack: batches of 1-2 ids next to full ones), each paying the per-batch DynamoDB calls.
    batch = max(100, min(5000, 50 * math.ceil(1.5 * per_partition / 50)))
    target = quota * headroom

    # K: enough posts in flight that PostToConnection latency never bounds a worker below its CPU rate
    cpu_rate = 1e6 / ((costs.post_frame_cpu_us + costs.post_batch_cpu_us / batch) * costs.cpu_factor)
    k = math.ceil(cpu_rate * costs.cpu_headroom * costs.post_latency_ms / 1000 * 1.25)
    k = max(64, min(MAX_POST_CONCURRENCY, k))

    def build(sqs_batch: int, workers: int, shards: int) -> Deployment:
        per_shard = max(ESM_MIN_CONCURRENCY, math.ceil(workers / shards))
        return Deployment(
            partitions=partitions,
            shards=shards,
            post_batch_size=batch,
            post_concurrency=k,
            post_max_concurrency_per_shard=min(ESM_MAX_CONCURRENCY, per_shard),
            post_rate_per_worker=0.0,
            post_sqs_batch_size=sqs_batch,
            post_batching_window_s=1 if sqs_batch > 10 else 0,
            query_max_concurrency_per_shard=ESM_MIN_CONCURRENCY,
        )

    def fleet(sqs_batch: int) -> Deployment:
        probe = build(sqs_batch, 1, 1)
        unpaced = worker_rate(probe, costs, per_partition, paced=False)
        workers = max(1, math.ceil(target / unpaced))
        shards = max(1, math.ceil(workers / costs.esm_initial_concurrency))
        d = build(sqs_batch, workers, shards)
        # the limiter paces posts, not invocations: the fleet's sum of limits stays under the target
        rate = math.floor(target / d.post_workers * 10) / 10
        d = replace(d, post_rate_per_worker=max(0.1, rate), provisioned_concurrency=provisioned)
        # query: enough workers that the post queues never run dry (1.5x the post throughput)
        tq = query_task_seconds(d, costs, per_partition) + costs.invoke_overhead_ms / 1000
        per_query_worker = d.query_sqs_batch_size * per_partition / tq
        need = math.ceil(1.5 * min(target, connections) / per_query_worker / d.shards)
        return replace(
            d, query_max_concurrency_per_shard=max(ESM_MIN_CONCURRENCY, min(ESM_MAX_CONCURRENCY, need))
        )

    # the post ESM batch size that gives the shortest predicted broadcast: bigger batches amortize the
    # per-invocation cost, but above 10 the ESM waits (up to its window) to fill the first batch
    candidates = [fleet(b) for b in SQS_BATCH_SIZES]
    return min(candidates, key=lambda d: predict(connections, quota, d, costs, warm=False).seconds)


def min_connections_for_target(
    quota: float,
    costs: Costs | None = None,
    *,
    headroom: float = 0.97,
    warm: bool = False,
    provisioned: bool = True,
) -> int | None:
    """The smallest N (within 1%) whose recommended plan is within 10% of N / R; None if none is."""

    def ok(n: int) -> bool:
        d = recommend_deployment(n, quota, costs, headroom=headroom, provisioned=provisioned)
        return predict(n, quota, d, costs, warm=warm).target_met

    hi = 1000
    while not ok(hi):
        hi *= 2
        if hi > 100_000_000:
            return None
    lo = hi // 2
    while hi - lo > max(1, hi // 100):
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


def plan(
    connections: int,
    quota: float,
    costs: Costs | None = None,
    *,
    headroom: float = 0.97,
    warm: bool = False,
    provisioned: bool = True,
    share: float = 1.0,
) -> Plan:
    """The plan for `connections` when the post stage may use `share` of the account's `quota`."""
    if not 0 < share <= 1:
        raise ValueError("share must be in (0, 1]")
    costs = costs or Costs()
    budget = quota * share
    d = recommend_deployment(connections, budget, costs, headroom=headroom, provisioned=provisioned)
    p = predict(connections, budget, d, costs, warm=warm)
    least = min_connections_for_target(budget, costs, headroom=headroom, warm=warm, provisioned=provisioned)
    return Plan(d, p, headroom, warm, least, account_quota=quota, share=share)
