"""The topology's queues (fanout/topology.py): Q partition-task shards and Q post shards, each with a
dead-letter queue, and the failure queues of the two streams (connections, subscriptions) and of the
swarm's async invokes."""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import Duration
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from fanout.topology import Queue, Topology
from infra.cdk.config import FanoutConfig
from infra.cdk.nag import acknowledge


@dataclass(frozen=True)
class Shard:
    queue: sqs.Queue
    dlq: sqs.Queue


class Queues(Construct):
    def __init__(self, scope: Construct, id: str, *, config: FanoutConfig, topology: Topology) -> None:
        super().__init__(scope, id)
        self.config = config
        self.by_key: dict[str, sqs.Queue] = {}
        self.stages: dict[str, list[Shard]] = {
            s.stage: [self._shard(q) for q in s.shards] for s in topology.queue_stages
        }
        self.partition_shards = self.stages["partition"]
        self.post_shards = self.stages["post"]
        self.stream_failures = self._queue(topology.stream_failures)
        acknowledge(
            self.stream_failures,
            "AwsSolutions-SQS3",
            "This queue is itself a dead-letter destination: the on-failure destination of the "
            "connections stream's event source mapping (cdk-nag only recognizes SQS redrive policies).",
        )
        self.swarm_failures = self._queue(topology.swarm_failures)
        acknowledge(
            self.swarm_failures,
            "AwsSolutions-SQS3",
            "This queue is itself a dead-letter destination: the on-failure destination of the swarm "
            "function's asynchronous invocations (cdk-nag only recognizes SQS redrive policies).",
        )
        self.channel_counter_failures = self._queue(topology.channel_counter_failures)
        acknowledge(
            self.channel_counter_failures,
            "AwsSolutions-SQS3",
            "This queue is itself a dead-letter destination: the on-failure destination of the "
            "subscriptions stream's event source mapping (cdk-nag only recognizes SQS redrive policies).",
        )

        self.recovery_failures = self._queue(topology.recovery_failures)
        acknowledge(
            self.recovery_failures,
            "AwsSolutions-SQS3",
            "This queue is itself a dead-letter destination: the on-failure destination of the recovery "
            "function's asynchronous invocations (cdk-nag only recognizes SQS redrive policies).",
        )

    @property
    def dead_letter_queues(self) -> list[sqs.Queue]:
        return [s.dlq for s in self.partition_shards + self.post_shards] + [
            self.stream_failures,
            self.swarm_failures,
            self.channel_counter_failures,
            self.recovery_failures,
        ]

    def _shard(self, spec: Queue) -> Shard:
        if spec.dead_letter is None or spec.max_receive_count is None:
            raise ValueError(f"queue shard {spec.key} has no dead-letter queue or no maxReceiveCount")
        dlq = self._queue(spec.dead_letter)
        return Shard(queue=self._queue(spec, dlq, spec.max_receive_count), dlq=dlq)

    def _queue(self, spec: Queue, dlq: sqs.Queue | None = None, max_receive_count: int = 0) -> sqs.Queue:
        visibility = spec.visibility_timeout_seconds
        queue = sqs.Queue(
            self,
            spec.key,
            queue_name=self.config.name(spec.key),
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=Duration.seconds(spec.retention_seconds),
            visibility_timeout=Duration.seconds(visibility) if visibility is not None else None,
            dead_letter_queue=(
                sqs.DeadLetterQueue(queue=dlq, max_receive_count=max_receive_count) if dlq else None
            ),
        )
        self.by_key[spec.key] = queue
        return queue
