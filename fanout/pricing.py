"""The cost model: what a broadcast costs on AWS, for the partitioned engine and the naive sender.

Plain data in, plain data out; no I/O (`fanout.tools.pricing` renders it; docs/cost.md explains it).
In US dollars at list prices (`Prices`; free tiers and volume tiers ignored): per broadcast and design,
the API Gateway messages (32 KB units per connection), Lambda requests and GB-seconds per stage, SQS
requests (64 KB chunks), DynamoDB read and write units, X-Ray traces; per day, the standing costs of
each design and the upkeep of N connections, the same for every design. Durations come from the quota
model (`fanout.plan`): a post invocation lasts as long as its worker rate says (CPU-bound or
latency-bound, paced), a query invocation as long as its partition tasks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from fanout.accounting import chunk_ids, counter_shards, post_entry, query_entry
from fanout.models import PartitionTask, PostBatch
from fanout.plan import Costs, Deployment, Prediction, query_task_seconds, worker_rate
from fanout.prices import DEFAULT_PRICES, Prices
from fanout.prices import PRICE_FIELDS as PRICE_FIELDS  # re-exported: the tools read them here
from fanout.prices import PricesError as PricesError
from fanout.prices import override_prices as override_prices
from fanout.topology import Topology, topology

APIGW_UNIT_BYTES = 32 * 1024  # WebSocket messages are metered in 32 KB increments
SQS_CHUNK_BYTES = 64 * 1024  # each 64 KB chunk of a request's payload is billed as one request
SQS_BATCH = 10  # entries per SendMessageBatch / DeleteMessageBatch, messages per ReceiveMessage
READ_UNIT_BYTES = 4 * 1024
WRITE_UNIT_BYTES = 1024
LAMBDA_TIMEOUT_SECONDS = 900
ONE_VCPU_MB = 1769  # Lambda gives a function one full vCPU at 1,769 MB, proportionally less below
DAY_SECONDS = 86_400
HOURS_PER_MONTH = 730  # how AWS prorates monthly prices


# -- metering rules -----------------------------------------------------------------------------------
def apigw_units(frame_bytes: int) -> int:
    """WebSocket message units one frame costs per connection (32 KB each, at least one)."""
    return max(1, math.ceil(frame_bytes / APIGW_UNIT_BYTES))


def sqs_requests(payload_bytes: int) -> int:
    """Requests one SQS call is billed as: one per 64 KB chunk of its payload, at least one."""
    return max(1, math.ceil(payload_bytes / SQS_CHUNK_BYTES))


def read_units(item_bytes: float, *, consistent: bool, transactional: bool = False) -> float:
    """Read units of reading `item_bytes` (4 KB each; eventually consistent halves, transactional doubles)."""
    units = max(1, math.ceil(item_bytes / READ_UNIT_BYTES))
    return units * (2.0 if transactional else 1.0 if consistent else 0.5)


def write_units(item_bytes: float, *, transactional: bool = False) -> int:
    """Write units of writing an item of `item_bytes` (1 KB each; transactional doubles)."""
    return max(1, math.ceil(item_bytes / WRITE_UNIT_BYTES)) * (2 if transactional else 1)


def sampled(invocations: float, seconds: float, reservoir_per_s: float, rate: float) -> float:
    """Invocations X-Ray records over `seconds`: the reservoir each second, then `rate` of the rest."""
    fixed = min(invocations, reservoir_per_s * max(1, math.ceil(seconds)))
    return fixed + rate * max(0.0, invocations - fixed)


def vcpu_scale(memory_mb: int) -> float:
    """How much longer single-threaded CPU work takes at `memory_mb` than on one full vCPU."""
    return max(1.0, ONE_VCPU_MB / memory_mb)


# -- inputs -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemorySizes:
    """MB per function, and the naive sender's. `from_topology()` reads the deployed sizes; the
    defaults here are that topology's at its default knobs (a test keeps them equal)."""

    authorizer: int = 512
    connect: int = 512
    disconnect: int = 256
    default: int = 256
    partition_counter: int = 512
    reconciler: int = 512
    channel_counter: int = 512  # channel occupancy: not billed by the broadcast cost model yet
    channel_reconciler: int = 512
    operator_api: int = 512
    swarm: int = 1024
    query: int = 1024
    post: int = 1769
    sweeper: int = 256
    recovery: int = 512  # reconnect recovery: not billed by the broadcast cost model yet
    naive: int = 1024

    @classmethod
    def from_topology(cls, system: Topology | None = None, *, naive: int = 1024) -> MemorySizes:
        """The memory size of every function as the topology deploys it."""
        system = system or topology()
        return cls(**{f.key.replace("-", "_"): f.memory_mb for f in system.functions}, naive=naive)


@dataclass(frozen=True)
class Workload:
    """What is broadcast, how often, and how the connections live (each an explicit assumption)."""

    connections: int
    message_bytes: int = 512  # the frame each connection receives, envelope included
    broadcasts_per_day: float = 1.0
    connected_hours_per_day: float = 24.0  # each of the N connections is connected this long a day
    connection_lifetime_hours: float = 2.0  # API Gateway closes a connection after 2 h: it reconnects
    heartbeat_seconds: float = 300.0  # client ping interval (0: no heartbeat); each ping gets a pong
    gone_fraction: float = 0.0  # connections that answer 410 at a broadcast (pruned)
    dynamodb_billing: Literal["on_demand", "provisioned"] = "on_demand"
    warm: bool = False  # workers already warm at each broadcast: no init phase billed
    provisioned_hours_per_day: float = 24.0  # when the deployment has provisioned concurrency


@dataclass(frozen=True)
class Footprint:
    """Item and message sizes, and durations of the small functions: assumed, not measured."""

    connection_id: str = "L0SM9cOFvHcCIhw="  # an API Gateway connection id's shape
    connection_row_bytes: int = 150  # connectionId, partitionId, connectedAt, expiresAt, userId, sourceIp
    gsi_item_bytes: int = 45  # keys-only GSI: connectionId + partitionId
    partition_item_bytes: int = 70  # partitionId, connectionCount, countedAt, reconciledAt
    broadcast_item_bytes: int = 250  # the broadcast row without its frame and partition ids
    partition_id_bytes: int = 4  # one number of the broadcast row's partitionIds list
    shard_item_bytes: int = 150  # a counter shard without its `applied` set
    idempotency_item_bytes: int = 400
    authorizer_ms: float = 5.0
    connect_ms: float = 15.0
    disconnect_ms: float = 15.0
    heartbeat_ms: float = 3.0
    operator_api_ms: float = 60.0
    # the naive sender: boto3 CPU per PostToConnection, sequential; and with threads, under the GIL
    naive_post_cpu_us: float = 1971.0
    naive_threaded_post_cpu_us: float = 900.0
    naive_threads: int = 64
    esm_pollers_per_queue: int = 5  # an idle SQS event source mapping keeps polling
    long_poll_seconds: float = 20.0
    secret_refresh_seconds: float = 300.0  # the authorizer's secret cache (handlers.authorizer)
    reconcile_threads: int = 8
    reconcile_per_run: int = 100  # the reconciler's reconcile_partitions_per_run default (Settings)
    stream_parallelization: int = 2  # the CDK app's streamParallelization
    stream_batch_size: int = 500  # the CDK app's streamBatchSize
    partition_view_seconds: float = 3.0  # connect's partition view refresh (Settings)
    min_counter_shards: int = 4  # Settings.counter_shards
    inline_payload_limit: int = 4096  # Settings.inline_payload_limit
    xray_reservoir_per_s: float = 1.0  # X-Ray's default rule: the first request each second
    xray_rate: float = 0.05  # and 5 % of the rest
    xray_retrieved_per_day: float = 0.0  # traces someone reads or scans


@dataclass(frozen=True)
class CostInputs:
    workload: Workload
    deployment: Deployment
    prediction: Prediction  # the quota model's prediction for this deployment (duration, throughput)
    costs: Costs = field(default_factory=Costs)
    memory: MemorySizes = field(default_factory=MemorySizes.from_topology)
    footprint: Footprint = field(default_factory=Footprint)
    prices: Prices = DEFAULT_PRICES


@dataclass(frozen=True)
class Line:
    service: str
    item: str
    quantity: float
    unit: str
    usd: float


@dataclass(frozen=True)
class DesignCost:
    """One design's bill: per broadcast, and what it costs per day whether it broadcasts or not."""

    name: str
    seconds: float  # one broadcast, start to end
    per_broadcast: list[Line]
    standing_per_day: list[Line]
    fits_one_invocation: bool = True  # False: longer than Lambda's 15 minutes
    max_connections_one_invocation: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def broadcast_usd(self) -> float:
        return sum(line.usd for line in self.per_broadcast)

    @property
    def standing_usd(self) -> float:
        return sum(line.usd for line in self.standing_per_day)


@dataclass(frozen=True)
class CostBreakdown:
    workload: Workload
    prices: Prices
    engine: DesignCost
    naive: DesignCost  # one function, a sequential loop
    naive_threaded: DesignCost  # one function, posting from threads
    upkeep_per_day: list[Line]  # N connections, the same for every design

    @property
    def broadcasts_per_day(self) -> float:
        return self.workload.broadcasts_per_day

    @property
    def upkeep_usd(self) -> float:
        return sum(line.usd for line in self.upkeep_per_day)

    def per_day_usd(self, design: DesignCost) -> float:
        return self.broadcasts_per_day * design.broadcast_usd + design.standing_usd + self.upkeep_usd

    def by_service(self, design: DesignCost) -> dict[str, tuple[float, float]]:
        """service → (per broadcast, per day) for `design`, upkeep included per day."""
        out: dict[str, list[float]] = {}
        for line in design.per_broadcast:
            out.setdefault(line.service, [0.0, 0.0])[0] += line.usd
            out[line.service][1] += line.usd * self.broadcasts_per_day
        for line in [*design.standing_per_day, *self.upkeep_per_day]:
            out.setdefault(line.service, [0.0, 0.0])[1] += line.usd
        return {k: (v[0], v[1]) for k, v in out.items()}


APIGW, LAMBDA, SQS = "API Gateway", "Lambda", "SQS"
DDB, SECRETS, XRAY = "DynamoDB", "Secrets Manager", "X-Ray"


class _Bill:
    """Collects lines; DynamoDB units are kept apart so that they can be billed on demand or provisioned."""

    def __init__(self, p: Prices) -> None:
        self.lines: list[Line] = []
        self.reads: list[tuple[str, float]] = []
        self.writes: list[tuple[str, float]] = []
        self.traces = 0.0
        self.prices = p

    def add(self, service: str, item: str, quantity: float, unit: str, price: str) -> None:
        """A line of `quantity` units at the `Prices` field `price` (per million, per 10k or per unit)."""
        per = 1e6 if price.endswith("_per_million") else 1e4 if price.endswith("_per_10k") else 1.0
        if quantity > 0:
            usd = quantity * getattr(self.prices, price) / per
            self.lines.append(Line(service, item, quantity, unit, usd))

    def messages(self, item: str, units: float) -> None:
        self.add(APIGW, item, units, "32 KB message units", "apigw_message_per_million")

    def gb_s(self, item: str, gb_s: float) -> None:
        self.add(LAMBDA, item, gb_s, "GB-s", "lambda_gb_second")

    def invoke(self, fn: str, invocations: float, seconds_each: float, memory_mb: int) -> None:
        """`invocations` of `fn` lasting `seconds_each`."""
        self.add(LAMBDA, f"{fn} requests", invocations, "requests", "lambda_request_per_million")
        self.gb_s(f"{fn} duration", memory_mb / 1024 * invocations * seconds_each)

    def sqs(self, item: str, requests: float) -> None:
        self.add(SQS, item, requests, "requests (64 KB chunks)", "sqs_request_per_million")

    def ddb(self, item: str, *, reads: float = 0.0, writes: float = 0.0) -> None:
        if reads > 0:
            self.reads.append((item, reads))
        if writes > 0:
            self.writes.append((item, writes))

    def finish(self, billing: str, seconds: float) -> list[Line]:
        """The lines, DynamoDB billed on demand, or provisioned at the rate it needs over `seconds`
        (held for whole hours: a broadcast's peak for ceil(seconds / 1 h) hours, a day's mean for 24 h)."""
        kinds = (("read", self.reads, "RRU", "RCU"), ("write", self.writes, "WRU", "WCU"))
        for kind, items, unit, capacity in kinds:
            if billing == "on_demand":
                for item, units in items:
                    self.add(DDB, f"{item} ({kind}s)", units, unit, f"dynamodb_{kind}_unit_per_million")
            else:
                hours = max(1, math.ceil(seconds / 3600))
                need = math.ceil(sum(u for _, u in items) / max(seconds, 1.0))
                label = f"provisioned {kind}s: {need} {capacity} x {hours} h"
                self.add(DDB, label, need * hours, f"{capacity}-h", f"dynamodb_{capacity.lower()}_hour")
        self.add(XRAY, "traces recorded", self.traces, "traces", "xray_traces_recorded_per_million")
        return self.lines


def _frame(nbytes: int) -> str:
    """A JSON frame of `nbytes` bytes, shaped like the broadcast envelope (for escaping inside JSON)."""
    head = '{"type":"broadcast","broadcastId":"00000000-0000-0000-0000-000000000000","sentAt":0,"data":"'
    return head + "x" * max(0, nbytes - len(head) - 2) + '"}'


def _bodies(partitions: int, shards: int, ids: int, frame: str | None, cid: str) -> tuple[int, int]:
    """Bytes of one partition task and of one post batch of `ids` ids, as the stages serialize them."""
    common = {"broadcast_id": "00000000-0000-0000-0000-000000000000", "partition_id": max(0, partitions - 1),
              "partitions": max(1, partitions), "counter_shards": shards, "frame": frame}  # fmt: skip
    task = PartitionTask(**common).model_dump_json(by_alias=True)
    batch = PostBatch(**common, batch_id=f"p{partitions}-b0", connection_ids=[cid] * max(1, ids))
    return len(task.encode()), len(batch.model_dump_json(by_alias=True, exclude_defaults=True).encode())


def _sends(messages_per_sender: list[int], body_bytes: int, shards: int) -> tuple[int, int]:
    """(SendMessageBatch calls, billed requests) of senders spreading their messages evenly over the
    shards and sending each shard's share in groups of 10 (fanout.adapters.sqs.send_batches)."""
    calls = billed = 0
    for n in messages_per_sender:
        base, extra = divmod(n, shards)
        for share, count in ((base + 1, extra), (base, shards - extra)):
            full, rest = divmod(share, SQS_BATCH)
            calls += count * (full + (1 if rest else 0))
            billed += count * (
                full * sqs_requests(SQS_BATCH * body_bytes) + (sqs_requests(rest * body_bytes) if rest else 0)
            )
    return calls, billed


def _receives(messages: int, batch_size: int, body_bytes: int) -> tuple[int, int, int]:
    """(ESM batches, billed receive requests, delete requests): a batch of up to `batch_size` messages
    takes one ReceiveMessage and one DeleteMessageBatch per 10 messages."""
    batches = math.ceil(messages / batch_size) if messages else 0
    calls = math.ceil(messages / SQS_BATCH) if messages else 0
    per_call = min(SQS_BATCH, max(1, messages)) * body_bytes
    return batches, calls * sqs_requests(per_call), calls


def _shard_units(entries: int, shards: int, entry_bytes: int, base: int) -> tuple[float, float]:
    """(write units of all the counting updates, mean read units of one shard) as the `applied` sets grow:
    the k-th update of a shard writes an item of base + k entries."""
    per_shard, rest = divmod(entries, shards)
    writes = 0.0
    for count, n in ((per_shard + 1, rest), (per_shard, shards - rest)):
        writes += n * sum(write_units(base + k * entry_bytes) for k in range(1, count + 1))
    mean_item = base + entry_bytes * entries / shards / 2
    return writes, read_units(mean_item, consistent=True)


# -- the engine -------------------------------------------------------------------------------------
def _engine(i: CostInputs) -> DesignCost:
    w, d, c, m, f, p = i.workload, i.deployment, i.costs, i.memory, i.footprint, i.prices
    n, s = w.connections, w.message_bytes
    bill = _Bill(p)
    # balanced partitions (the connect path keeps them within ~10 %): r of q + 1 connections, the rest of q
    partitions = min(d.partitions, n)  # the non-empty ones
    q, r = divmod(n, partitions)
    per_partition = q + (1 if r else 0)  # the largest

    def each(cost: Any) -> float:  # the sum of cost(size) over the partitions
        return float((partitions - r) * cost(q) + (r * cost(q + 1) if r else 0))

    batch = min(d.post_batch_size, per_partition)
    post_batches = round(each(lambda k: math.ceil(k / d.post_batch_size)))
    sizes = [q + 1] * r + [q] * (partitions - r)
    shards = counter_shards(sizes, d.post_batch_size, minimum=f.min_counter_shards)
    inline = s <= f.inline_payload_limit
    frame = _frame(s) if inline else None
    cold = not (w.warm or d.provisioned_concurrency)
    seconds = i.prediction.seconds

    # operator API: the request, its function, the idempotency record, the broadcast row
    bill.add(APIGW, "operator API request", 1, "requests", "http_api_request_per_million")
    bill.invoke("operator-api", 1, f.operator_api_ms / 1000, m.operator_api)
    bill.ddb("operator API: idempotency record", writes=2 * write_units(f.idempotency_item_bytes))
    bill.ddb("operator API: broadcast row", writes=write_units(f.broadcast_item_bytes + s))

    # swarm: read the broadcast, scan the partitions, start, send one task per partition
    row = f.broadcast_item_bytes + s
    scan_pages = max(1, math.ceil(d.partitions / c.scan_page_items))
    task_body, post_body = _bodies(partitions, shards, batch, frame, f.connection_id)
    task_calls, task_billed = _sends([partitions], task_body, d.shards)
    bill.ddb("swarm: broadcast row (consistent)", reads=read_units(row, consistent=True))
    bill.ddb(
        "swarm: scan partitions", reads=read_units(d.partitions * f.partition_item_bytes, consistent=False)
    )
    bill.ddb("swarm: start", writes=write_units(row + partitions * f.partition_id_bytes))
    sending = math.ceil(task_calls / d.swarm_send_concurrency) * c.sqs_send_ms
    swarm_s = (c.invoke_overhead_ms + (2 + scan_pages) * c.ddb_ms + sending) / 1000
    bill.invoke("swarm", 1, swarm_s, m.swarm)
    bill.sqs("swarm: SendMessageBatch of partition tasks", task_billed)

    # query: per task, read the (absent) plan, page the GSI, store the plan, count, send post batches
    q_batches, q_receives, q_deletes = _receives(partitions, d.query_sqs_batch_size, task_body)
    query_s = query_task_seconds(d, c, per_partition) + c.invoke_overhead_ms / 1000
    bill.invoke("query", q_batches, query_s, m.query)
    bill.sqs("query: ReceiveMessage by the ESM", q_receives)
    bill.sqs("query: DeleteMessageBatch by the ESM", q_deletes)

    def plan_writes(k: int) -> int:
        chunks = chunk_ids([f.connection_id] * k)
        units = sum(write_units(len(ch) * (len(f.connection_id) + 4) + 100) for ch in chunks)
        return units * (2 if len(chunks) > 1 else 1)  # several items: one transaction

    bill.ddb("query: plan lookup (consistent)", reads=partitions * read_units(0, consistent=True))
    bill.ddb("query: GSI query", reads=each(lambda k: read_units(k * f.gsi_item_bytes, consistent=False)))
    bill.ddb("query: plan", writes=each(plan_writes))
    batches_each = [math.ceil(k / d.post_batch_size) for k in sizes]
    _, post_billed = _sends(batches_each, post_body, d.shards)
    bill.sqs("query: SendMessageBatch of post batches", post_billed)

    # counting: one entry per partition and one per post batch, spread over the counter shards
    # an entry of the `applied` string set: its characters and a few bytes of overhead
    entry = max(len(query_entry(partitions)), len(post_entry(f"p{partitions}-b{batches_each[0]}", 1))) + 3
    entries = partitions + post_batches
    count_writes, shard_read = _shard_units(entries, shards, entry, f.shard_item_bytes)
    bill.ddb("counter shards: counting updates", writes=count_writes)

    # post: per batch, the ledger check, the posts, the count, the completion check over every shard
    p_batches, p_receives, p_deletes = _receives(post_batches, d.post_sqs_batch_size, post_body)
    cpu_costs = replace(c, cpu_factor=c.cpu_factor * vcpu_scale(m.post))
    # worker_rate's arithmetic (a min with B, a product) holds for the mean batch size, which keeps the
    # per-batch CPU and the per-invocation overhead in proportion to the batches actually sent
    rate = worker_rate(d, cpu_costs, n / post_batches)  # type: ignore[arg-type]
    if i.prediction.bottleneck == "quota":  # a fleet faster than the quota spends the difference backing off
        rate = min(rate, i.prediction.throughput / d.post_workers)
    post_s = n / rate
    bill.add(LAMBDA, "post requests", p_batches, "requests", "lambda_request_per_million")
    bill.gb_s("post duration", m.post / 1024 * post_s)
    bill.sqs("post: ReceiveMessage by the ESM", p_receives)
    bill.sqs("post: DeleteMessageBatch by the ESM", p_deletes)
    bill.ddb("post: ledger check (consistent)", reads=post_batches * shard_read)
    bill.ddb("post: completion check, every shard (consistent)", reads=post_batches * shards * shard_read)
    bill.ddb("post: finish + final read", writes=write_units(row), reads=read_units(row, consistent=True))
    gone = round(n * w.gone_fraction)
    if gone:
        bill.ddb("post: prune 410s (row + GSI)", writes=gone * (write_units(f.connection_row_bytes) + 1))
    if not inline:
        workers = d.post_workers + d.query_workers
        bill.ddb("frame by reference, once per worker", reads=workers * read_units(row, consistent=True))
    bill.messages("PostToConnection", n * apigw_units(s))

    if cold:  # broadcasts hours apart find no warm worker: every worker that runs starts cold
        started = [(m.operator_api, 1), (m.swarm, 1), (m.query, min(d.query_workers, q_batches)),
                   (m.post, min(d.post_workers, p_batches))]  # fmt: skip
        init_gb_s = sum(mb / 1024 * k for mb, k in started) * c.cold_start_ms / 1000
        bill.gb_s("init phases (cold starts)", init_gb_s)
    xr = (f.xray_reservoir_per_s, f.xray_rate)
    bill.traces = 2 + sampled(q_batches, seconds, *xr) + sampled(p_batches, seconds, *xr)
    notes = [
        f"{partitions:,} partitions of <= {per_partition:,}; {post_batches:,} post batches of <= {batch:,}; "
        f"{shards} counter shards; frame {'inline' if inline else 'by reference'}",
        f"post: {rate:,.0f} frames/s per worker, {post_s:,.1f} s of post time in all",
    ]
    lines = bill.finish(w.dynamodb_billing, seconds)
    return DesignCost("engine", seconds, lines, _engine_standing(i), notes=notes)


def _engine_standing(i: CostInputs) -> list[Line]:
    """What the partitioned design costs per day besides its broadcasts."""
    w, d, c, m, f, p = i.workload, i.deployment, i.costs, i.memory, i.footprint, i.prices
    bill = _Bill(p)
    n = w.connections
    per_partition = max(1, math.ceil(n / d.partitions))
    xr = (f.xray_reservoir_per_s, f.xray_rate)
    if d.provisioned_concurrency:
        gb = (m.swarm + d.query_workers * m.query + d.post_workers * m.post) / 1024
        gb_s = gb * w.provisioned_hours_per_day * 3600
        bill.add(LAMBDA, "provisioned concurrency", gb_s, "GB-s", "lambda_provisioned_gb_second")
    # every minute: the reconciler (scan + one COUNT query per partition of its slice) and the
    # sweeper (one query)
    runs = 24 * 60
    recounted = min(d.partitions, f.reconcile_per_run)
    scan = read_units(d.partitions * f.partition_item_bytes, consistent=False)
    counts = recounted * read_units(per_partition * f.gsi_item_bytes, consistent=False)
    reconcile_s = (c.invoke_overhead_ms + c.ddb_ms * (1 + math.ceil(recounted / f.reconcile_threads))) / 1000
    bill.invoke("reconciler", runs, reconcile_s, m.reconciler)
    bill.ddb("reconciler: partitions scan + GSI counts", reads=runs * (scan + counts))
    bill.invoke("sweeper", runs, (c.invoke_overhead_ms + c.ddb_ms) / 1000, m.sweeper)
    bill.ddb("sweeper: pending broadcasts query", reads=runs * read_units(0, consistent=False))
    bill.traces += 2 * runs
    # idle long polling of every queue with an event source mapping (Q partition + Q post queues)
    polls = 2 * d.shards * f.esm_pollers_per_queue * DAY_SECONDS / f.long_poll_seconds
    bill.sqs("event source mappings: idle long polls", polls)
    # what the partitions add to each connection's life: GSI writes, the stream's counter, the view
    connects = n * w.connected_hours_per_day / w.connection_lifetime_hours
    bill.ddb("GSI: connection rows written and deleted", writes=2 * connects * write_units(f.gsi_item_bytes))
    records = 2 * connects  # an INSERT and a REMOVE per connection
    if records:
        per_s = records / DAY_SECONDS
        per_batch = min(f.stream_batch_size, max(1.0, per_s / f.stream_parallelization))
        invocations = records / per_batch
        touched = d.partitions * (1 - (1 - 1 / d.partitions) ** per_batch)
        counter_s = (c.invoke_overhead_ms + c.ddb_ms * math.ceil(touched / 8)) / 1000
        bill.invoke("partition-counter", invocations, counter_s, m.partition_counter)
        bill.ddb("partition counter: ADD per touched partition", writes=invocations * touched)
        bill.traces += sampled(invocations, DAY_SECONDS, *xr)
        containers = max(1, math.ceil(connects / DAY_SECONDS * f.connect_ms / 1000))
        views = containers * DAY_SECONDS / f.partition_view_seconds
        bill.ddb("connect: partition view scans", reads=views * scan)
    return bill.finish(w.dynamodb_billing, DAY_SECONDS)


# -- the naive sender ---------------------------------------------------------------------------------
def _naive(i: CostInputs, *, threaded: bool) -> DesignCost:
    w, c, m, f, p = i.workload, i.costs, i.memory, i.footprint, i.prices
    n, s = w.connections, w.message_bytes
    bill = _Bill(p)
    scale = c.cpu_factor * vcpu_scale(m.naive)
    if threaded:  # CPU-bound under the GIL, unless the threads wait on the latency or the quota
        per_post = max(f.naive_threaded_post_cpu_us / 1e6 * scale, c.post_latency_ms / 1000 / f.naive_threads)
    else:
        per_post = c.post_latency_ms / 1000 + f.naive_post_cpu_us / 1e6 * scale
    per_post = max(per_post, 1 / i.prediction.quota)
    scan_pages = math.ceil(n * f.connection_row_bytes / (1024 * 1024))
    fixed = (c.invoke_overhead_ms + scan_pages * c.ddb_ms) / 1000
    seconds = fixed + n * per_post
    invocations = max(1, math.ceil(seconds / LAMBDA_TIMEOUT_SECONDS))
    largest = max(0, math.floor((LAMBDA_TIMEOUT_SECONDS - fixed) / per_post))
    bill.add(APIGW, "operator API request", 1, "requests", "http_api_request_per_million")
    bill.invoke("naive sender", invocations, seconds / invocations, m.naive)
    if not w.warm:
        bill.gb_s("naive sender init (cold starts)", m.naive / 1024 * invocations * c.cold_start_ms / 1000)
    bill.ddb("connections scan", reads=read_units(n * f.connection_row_bytes, consistent=False))
    gone = round(n * w.gone_fraction)
    if gone:
        bill.ddb("prune 410s", writes=gone * write_units(f.connection_row_bytes))
    bill.messages("PostToConnection", n * apigw_units(s))
    bill.traces = invocations
    name = "naive, threads" if threaded else "naive, loop"
    notes = [f"{per_post * 1000:.2f} ms per post; one function finishes at most {largest:,} posts in 15 min"]
    if invocations > 1:
        notes.append(
            f"{seconds:,.0f} s of posting: one function cannot finish; billed as {invocations} chained "
            "15-minute invocations (the loop as written dies at the timeout)"
        )
    lines = bill.finish(w.dynamodb_billing, seconds)
    return DesignCost(name, seconds, lines, [], invocations == 1, largest, notes)


# -- connection upkeep ----------------------------------------------------------------------------------
def _upkeep(i: CostInputs) -> list[Line]:
    """N connections for a day: minutes, reconnects, heartbeats, the authorizer's secret."""
    w, m, f = i.workload, i.memory, i.footprint
    bill = _Bill(i.prices)
    n = w.connections
    xr = (f.xray_reservoir_per_s, f.xray_rate)
    minutes = n * w.connected_hours_per_day * 60
    bill.add(APIGW, "connection minutes", minutes, "minutes", "apigw_connection_minute_per_million")
    connects = n * w.connected_hours_per_day / w.connection_lifetime_hours
    for fn, ms, mem in (("authorizer", f.authorizer_ms, m.authorizer), ("connect", f.connect_ms, m.connect),
                        ("disconnect", f.disconnect_ms, m.disconnect)):  # fmt: skip
        bill.invoke(fn, connects, ms / 1000, mem)
        bill.traces += sampled(connects, DAY_SECONDS, *xr)
    bill.ddb("connection rows: put", writes=connects * write_units(f.connection_row_bytes))
    bill.ddb("connection rows: delete", writes=connects * write_units(f.connection_row_bytes))
    if w.heartbeat_seconds > 0:
        pings = n * w.connected_hours_per_day * 3600 / w.heartbeat_seconds
        bill.messages("heartbeats: ping in + pong out", 2 * pings)
        bill.invoke("default (pong)", pings, f.heartbeat_ms / 1000, m.default)
        bill.traces += sampled(pings, DAY_SECONDS, *xr)
    containers = max(1, math.ceil(connects / DAY_SECONDS * f.authorizer_ms / 1000))
    calls = containers * DAY_SECONDS / f.secret_refresh_seconds
    bill.add(SECRETS, "GetSecretValue (cache refreshes)", calls, "calls", "secrets_api_calls_per_10k")
    bill.add(SECRETS, "the token secret", 24 / HOURS_PER_MONTH, "secret-months", "secret_month")
    retrieved = f.xray_retrieved_per_day
    bill.add(XRAY, "traces retrieved or scanned", retrieved, "traces", "xray_traces_retrieved_per_million")
    return bill.finish(w.dynamodb_billing, DAY_SECONDS)


def cost_of_broadcast(inputs: CostInputs) -> CostBreakdown:
    """The bill of one broadcast and of a day of them, engine and naive sender side by side."""
    w = inputs.workload
    if w.connections < 1 or w.message_bytes < 1:
        raise ValueError("connections and message_bytes must be at least 1")
    if w.broadcasts_per_day < 0 or w.connection_lifetime_hours <= 0 or not 0 <= w.gone_fraction <= 1:
        raise ValueError("broadcasts_per_day >= 0, connection_lifetime_hours > 0, gone_fraction in [0, 1]")
    naive, threaded = _naive(inputs, threaded=False), _naive(inputs, threaded=True)
    return CostBreakdown(w, inputs.prices, _engine(inputs), naive, threaded, _upkeep(inputs))
