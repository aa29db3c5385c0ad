"""Q partition-task shards and Q post shards, each with a dead-letter queue (docs/architecture.md)."""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import Duration
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.cdk.config import FanoutConfig
from infra.cdk.nag import acknowledge
from infra.cdk.sizing import visibility_timeout_seconds

MAX_RECEIVE_COUNT = 5
RETENTION = Duration.days(4)
DLQ_RETENTION = Duration.days(14)


@dataclass(frozen=True)
class Shard:
    queue: sqs.Queue
    dlq: sqs.Queue


class Queues(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: FanoutConfig,
        query_timeout: Duration,
        post_timeout: Duration,
    ) -> None:
        super().__init__(scope, id)
        window = config.sqs_batching_window_seconds
        self.partition_shards = [
            self._shard(
                config, f"partition-{i}", visibility_timeout_seconds(int(query_timeout.to_seconds()), window)
            )
            for i in range(config.shards)
        ]
        self.post_shards = [
            self._shard(
                config, f"post-{i}", visibility_timeout_seconds(int(post_timeout.to_seconds()), window)
            )
            for i in range(config.shards)
        ]
        # Stream records the partition counter gave up on (the reconciler corrects the counts anyway).
        self.stream_failures = self._queue(config, "partition-counter-failures", DLQ_RETENTION, None, None)
        acknowledge(
            self.stream_failures,
            "AwsSolutions-SQS3",
            "This queue is itself a dead-letter destination: the on-failure destination of the "
            "connections stream's event source mapping (cdk-nag only recognizes SQS redrive policies).",
        )

        # Asynchronous swarm invocations Lambda gave up on (after its retries or the event's maximum
        # age): without a destination they are dropped and their broadcast stays queued.
        self.swarm_failures = self._queue(config, "swarm-failures", DLQ_RETENTION, None, None)
        acknowledge(
            self.swarm_failures,
            "AwsSolutions-SQS3",
            "This queue is itself a dead-letter destination: the on-failure destination of the swarm "
            "function's asynchronous invocations (cdk-nag only recognizes SQS redrive policies).",
        )

    @property
    def dead_letter_queues(self) -> list[sqs.Queue]:
        return [s.dlq for s in self.partition_shards + self.post_shards] + [
            self.stream_failures,
            self.swarm_failures,
        ]

    def _shard(self, config: FanoutConfig, suffix: str, visibility: int) -> Shard:
        dlq = self._queue(config, f"{suffix}-dlq", DLQ_RETENTION, None, None)
        queue = self._queue(config, suffix, RETENTION, Duration.seconds(visibility), dlq)
        return Shard(queue=queue, dlq=dlq)

    def _queue(
        self,
        config: FanoutConfig,
        suffix: str,
        retention: Duration,
        visibility: Duration | None,
        dlq: sqs.Queue | None,
    ) -> sqs.Queue:
        return sqs.Queue(
            self,
            suffix,
            queue_name=config.name(suffix),
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=retention,
            visibility_timeout=visibility,
            dead_letter_queue=(
                sqs.DeadLetterQueue(queue=dlq, max_receive_count=MAX_RECEIVE_COUNT) if dlq else None
            ),
        )
