"""What an operator watches during a broadcast: one dashboard, alarms to one SNS topic.

Engine metrics come from Powertools (EMF) in namespace ``Fanout`` with the dimension
``service=fanout`` (POWERTOOLS_SERVICE_NAME), so no function needs cloudwatch:PutMetricData.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.cdk.config import FanoutConfig
from infra.cdk.constructs.queues import Queues

NAMESPACE = "Fanout"
DIMENSIONS = {"service": "fanout"}
MINUTE = Duration.minutes(1)
# The authorizer raises "Unauthorized" for every bad token (that is how API Gateway answers 401), so
# its Errors count rejected clients too: its alarm watches Errors minus the refusals it counted
# (ConnectRefused), which leaves the faults (the secret unreadable, a bug) that make connects 500.
FAULTS_NET_OF_REFUSALS = {"authorizer": "ConnectRefused"}
# Handlers that catch a DynamoDB failure and answer 500 (Lambda Errors stays 0): their own counts.
CAUGHT_FAILURES = {"connect": "ConnectFailed", "disconnect": "DisconnectFailed"}


def fanout_metric(name: str, statistic: str = "Sum", period: Duration = MINUTE) -> cw.Metric:
    return cw.Metric(
        namespace=NAMESPACE, metric_name=name, dimensions_map=DIMENSIONS, statistic=statistic, period=period
    )


def authorizer_faults(fn: lambda_.IFunction, refusals: str) -> cw.MathExpression:
    """The authorizer's Errors that are not token refusals (a refusal is an error by design)."""
    return cw.MathExpression(
        # FILL: a minute with errors and no refusal (the secret unreadable) must not drop out.
        expression="FILL(errors, 0) - FILL(refused, 0)",
        using_metrics={
            "errors": fn.metric_errors(period=MINUTE, statistic="Sum"),
            "refused": fanout_metric(refusals),
        },
        label="authorizer faults",
        period=MINUTE,
    )


def iterator_age(fn: lambda_.IFunction) -> cw.Metric:
    """How far behind its stream a stream-fed function is: the age of the last record it got (ms)."""
    return fn.metric("IteratorAge", period=MINUTE, statistic="Maximum")


def per_second(name: str, label: str) -> cw.MathExpression:
    var = name.lower()  # expression ids must be unique within one graph
    return cw.MathExpression(
        expression=f"{var} / PERIOD({var})",
        using_metrics={var: fanout_metric(name)},
        label=label,
        period=MINUTE,
    )


class Monitoring(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: FanoutConfig,
        queues: Queues,
        functions: dict[str, lambda_.Function],
        stream_consumers: Sequence[str] = (),
    ) -> None:
        super().__init__(scope, id)
        # the functions fed by a DynamoDB stream (partition counter, channel counter)
        self.stream_consumers = {k: functions[k] for k in stream_consumers}
        key = kms.Key(
            self,
            "AlarmTopicKey",
            description="encrypts the fanout alarm topic",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.DESTROY,
        )
        # CloudWatch alarms publish to an encrypted topic only if the key lets CloudWatch use it
        # (the AWS-managed aws/sns key does not).
        key.grant(iam.ServicePrincipal("cloudwatch.amazonaws.com"), "kms:Decrypt", "kms:GenerateDataKey")
        self.topic = sns.Topic(
            self, "Alarms", topic_name=config.name("alarms"), master_key=key, enforce_ssl=True
        )
        if config.alarm_email:
            self.topic.add_subscription(subscriptions.EmailSubscription(config.alarm_email))
        self.alarms: list[cw.Alarm] = []
        self._alarms(config, queues, functions)
        self.dashboard = cw.Dashboard(
            self,
            "Dashboard",
            dashboard_name=config.name("broadcasts"),
            default_interval=Duration.hours(1),
        )
        self._widgets(queues, functions)

    # -- alarms --------------------------------------------------------------------------------
    def _alarm(self, id: str, alarm: cw.Alarm) -> None:
        alarm.add_alarm_action(cw_actions.SnsAction(self.topic))
        alarm.add_ok_action(cw_actions.SnsAction(self.topic))
        self.alarms.append(alarm)

    def _alarms(self, config: FanoutConfig, queues: Queues, functions: dict[str, lambda_.Function]) -> None:
        for dlq in queues.dead_letter_queues:
            self._alarm(
                "dlq",
                dlq.metric_approximate_number_of_messages_visible(
                    period=MINUTE, statistic="Maximum"
                ).create_alarm(
                    self,
                    f"{dlq.node.id}-depth",
                    alarm_description=f"messages in dead-letter queue {dlq.node.id}: inspect and redrive",
                    threshold=1,
                    evaluation_periods=1,
                    comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                    treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
                ),
            )
        for shard in queues.partition_shards + queues.post_shards:
            queue: sqs.Queue = shard.queue
            self._alarm(
                "age",
                queue.metric_approximate_age_of_oldest_message(
                    period=MINUTE, statistic="Maximum"
                ).create_alarm(
                    self,
                    f"{queue.node.id}-age",
                    alarm_description=f"{queue.node.id}: oldest message older than "
                    f"{config.queue_age_alarm_seconds}s, consumers are not keeping up",
                    threshold=config.queue_age_alarm_seconds,
                    evaluation_periods=3,
                    datapoints_to_alarm=2,
                    comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
                    treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
                ),
            )
        self._alarm(
            "throttled",
            fanout_metric("Throttled").create_alarm(
                self,
                "PostThrottled",
                alarm_description="PostToConnection throttled (429) above budget: lower postRateShare "
                "(or postRateBudget) or raise the account's API Gateway quota",
                threshold=config.throttled_alarm_per_minute,
                evaluation_periods=3,
                datapoints_to_alarm=2,
                comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            ),
        )
        for key, fn in functions.items():
            if key in FAULTS_NET_OF_REFUSALS:
                self._alarm(
                    "errors",
                    authorizer_faults(fn, FAULTS_NET_OF_REFUSALS[key]).create_alarm(
                        self,
                        f"{key}-errors",
                        alarm_description=f"{config.name(key)} failed other than by refusing a token "
                        "(Errors - ConnectRefused): connects answer 500",
                        threshold=1,
                        # Errors and the EMF count land in different minutes for an invocation that
                        # straddles one: three of five minutes keep a flood of bad tokens quiet.
                        evaluation_periods=5,
                        datapoints_to_alarm=3,
                        comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                        treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
                    ),
                )
                continue
            self._alarm(
                "errors",
                fn.metric_errors(period=MINUTE, statistic="Sum").create_alarm(
                    self,
                    f"{key}-errors",
                    alarm_description=f"{config.name(key)} invocations failed",
                    threshold=1,
                    evaluation_periods=5,
                    datapoints_to_alarm=2,
                    comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                    treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
                ),
            )
        for key, fn in self.stream_consumers.items():
            self._alarm(
                "stream-age",
                iterator_age(fn).create_alarm(
                    self,
                    f"{key}-iterator-age",
                    alarm_description=f"{config.name(key)} is more than {config.stream_age_alarm_seconds}s "
                    "behind its table's stream: the counts it keeps are that old",
                    threshold=config.stream_age_alarm_seconds * 1000,
                    evaluation_periods=3,
                    datapoints_to_alarm=2,
                    comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
                    treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
                ),
            )
        for key, metric in CAUGHT_FAILURES.items():
            self._alarm(
                "caught",
                fanout_metric(metric).create_alarm(
                    self,
                    metric,
                    alarm_description=f"{config.name(key)} answered 500 ({metric}): the connections "
                    "table refused or failed the write",
                    threshold=1,
                    evaluation_periods=5,
                    datapoints_to_alarm=2,
                    comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                    treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
                ),
            )
        self._alarm(
            "conflicts",
            fanout_metric("TransactionConflicts").create_alarm(
                self,
                "TransactionConflicts",
                alarm_description="query/post transactions cancelled for conflicts above "
                f"{config.transaction_conflict_alarm_per_minute}/min: broadcast rows are contended",
                threshold=config.transaction_conflict_alarm_per_minute,
                evaluation_periods=3,
                datapoints_to_alarm=3,
                comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            ),
        )
        self._alarm(
            "rate-limits",
            fanout_metric("RateLimitRejections").create_alarm(
                self,
                "RateLimitRejections",
                alarm_description="client messages refused by the per-connection and per-user rate "
                f"limits above {config.rate_limit_alarm_per_minute}/min: a client floods, or the limits "
                "are too low for the app",
                threshold=config.rate_limit_alarm_per_minute,
                evaluation_periods=5,
                datapoints_to_alarm=3,
                comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            ),
        )
        # A recovery Lambda gave up on (after its retries) left a connection without the messages it
        # missed and without live messages on that channel: the recovery-failures queue's depth alarm
        # fires too; this one says it in the words of the clients.
        self._alarm(
            "recovery",
            queues.recovery_failures.metric_approximate_number_of_messages_visible(
                period=MINUTE, statistic="Maximum"
            ).create_alarm(
                self,
                "RecoveriesFailed",
                alarm_description="reconnect recoveries failed for good: those connections miss the "
                "messages of their ?recover= channels (see the recovery-failures queue)",
                threshold=1,
                evaluation_periods=1,
                comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            ),
        )
        for metric, what in (
            ("BroadcastsRedriven", "the sweeper re-invoked the swarm for a broadcast stuck queued"),
            ("BroadcastsFailed", "the sweeper gave up on a broadcast after its attempts"),
        ):
            self._alarm(
                "sweeper",
                fanout_metric(metric).create_alarm(
                    self,
                    metric,
                    alarm_description=f"{metric}: {what}",
                    threshold=1,
                    evaluation_periods=1,
                    comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                    treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
                ),
            )

    # -- dashboard -----------------------------------------------------------------------------
    def _widgets(self, queues: Queues, functions: dict[str, lambda_.Function]) -> None:
        d = self.dashboard
        wide, half, third = 24, 12, 8
        d.add_widgets(
            cw.TextWidget(
                markdown="# fanout broadcasts\nDelivery rate against the post budget, queue backlog per "
                "shard, and per-function health. Rates are per second over 1-minute periods.",
                width=wide,
                height=2,
            )
        )
        d.add_widgets(
            cw.GraphWidget(
                title="Deliveries/s, gone/s, throttled/s",
                left=[
                    per_second("Delivered", "delivered/s"),
                    per_second("Gone", "gone/s"),
                    per_second("Throttled", "throttled/s"),
                ],
                width=half,
            ),
            cw.GraphWidget(
                title="Failed deliveries",
                left=[fanout_metric("Failed").with_(label="failed")],
                width=half,
            ),
        )
        d.add_widgets(
            cw.GraphWidget(
                title="Broadcasts started / completed",
                left=[fanout_metric("BroadcastsStarted"), fanout_metric("BroadcastsCompleted")],
                width=third,
            ),
            cw.GraphWidget(
                title="Broadcast duration (ms)",
                left=[
                    fanout_metric("BroadcastDuration", "p50").with_(label="p50"),
                    fanout_metric("BroadcastDuration", "p99").with_(label="p99"),
                ],
                width=third,
            ),
            cw.GraphWidget(
                title="Post batch latency (ms)",
                left=[
                    fanout_metric("BatchLatency", "p50").with_(label="p50"),
                    fanout_metric("BatchLatency", "p99").with_(label="p99"),
                ],
                width=third,
            ),
        )
        d.add_widgets(
            cw.GraphWidget(
                title="Connect path failures (clients got 500)",
                left=[
                    fanout_metric("ConnectFailed").with_(label="connect failed"),
                    fanout_metric("DisconnectFailed").with_(label="disconnect failed"),
                    authorizer_faults(functions["authorizer"], FAULTS_NET_OF_REFUSALS["authorizer"]),
                ],
                width=third,
            ),
            cw.GraphWidget(
                title="Transaction conflicts (retried)",
                left=[fanout_metric("TransactionConflicts").with_(label="conflicts")],
                width=third,
            ),
            cw.GraphWidget(
                title="Broadcasts re-driven / failed by the sweeper",
                left=[
                    fanout_metric("BroadcastsRedriven").with_(label="re-driven"),
                    fanout_metric("BroadcastsFailed").with_(label="failed"),
                ],
                width=third,
            ),
        )
        d.add_widgets(
            cw.GraphWidget(
                title="Connections",
                left=[fanout_metric("Connections", "Maximum").with_(label="connections")],
                width=half,
            ),
            cw.GraphWidget(
                title="Partition skew (max / mean)",
                left=[fanout_metric("PartitionSkew", "Maximum").with_(label="skew")],
                width=half,
            ),
        )
        d.add_widgets(
            cw.GraphWidget(
                title="Stream consumer lag (iterator age, ms)",
                left=[iterator_age(f).with_(label=k) for k, f in self.stream_consumers.items()],
                width=third,
            ),
            cw.GraphWidget(
                title="Subscriptions and channels (channel reconciler)",
                left=[
                    fanout_metric("Subscriptions", "Maximum").with_(label="subscriptions"),
                    fanout_metric("Channels", "Maximum").with_(label="channels"),
                ],
                right=[
                    fanout_metric("SubscriptionRecordsCounted").with_(label="stream records counted"),
                    fanout_metric("SubscriptionsExpiredDeleted").with_(label="expired deleted"),
                ],
                width=third,
            ),
            cw.GraphWidget(
                title="Channel occupancy drift and failures",
                left=[
                    fanout_metric("ChannelsCorrected").with_(label="channels corrected"),
                    fanout_metric("ChannelDriftTotal").with_(label="drift (connections)"),
                    fanout_metric("ChannelCounterAddsFailed").with_(label="counter adds failed"),
                    fanout_metric("SubscriptionRecordsMalformed").with_(label="records malformed"),
                ],
                right=[
                    functions[k].metric_errors(period=MINUTE, statistic="Sum", label=f"{k} errors")
                    for k in ("channel-counter", "channel-reconciler")
                    if k in functions
                ],
                width=third,
            ),
        )
        d.add_widgets(
            cw.GraphWidget(
                title="Client messages (publish, sendmessage)",
                left=[
                    fanout_metric("Publishes").with_(label="published"),
                    fanout_metric("DirectMessages").with_(label="sent to a user or everyone"),
                ],
                right=[
                    fanout_metric("RateLimitRejections").with_(label="rate limited"),
                    fanout_metric("ForbiddenSends").with_(label="forbidden"),
                    fanout_metric("ClientMessagesRefused").with_(label="refused (any reason)"),
                ],
                width=wide,
            ),
            cw.GraphWidget(
                title="History and recovery",
                left=[
                    fanout_metric("RecoveriesStarted").with_(label="recoveries started"),
                    fanout_metric("RecoveredMessages").with_(label="messages recovered"),
                    fanout_metric("RecoveriesImpossible").with_(label="recovery impossible"),
                    fanout_metric("HistoryReads").with_(label="history reads"),
                ],
                right=[
                    *(
                        [
                            functions["recovery"].metric_errors(
                                period=MINUTE, statistic="Sum", label="recovery errors"
                            )
                        ]
                        if "recovery" in functions
                        else []
                    ),
                    queues.recovery_failures.metric_approximate_number_of_messages_visible(
                        period=MINUTE, statistic="Maximum", label="recoveries given up on"
                    ),
                ],
                width=wide,
            ),
        )
        for title, shards in (("Partition-task", queues.partition_shards), ("Post", queues.post_shards)):
            d.add_widgets(
                cw.GraphWidget(
                    title=f"{title} queue depth per shard",
                    left=[
                        s.queue.metric_approximate_number_of_messages_visible(
                            period=MINUTE, statistic="Maximum", label=s.queue.node.id
                        )
                        for s in shards
                    ],
                    width=half,
                ),
                cw.GraphWidget(
                    title=f"{title} oldest message age (s) per shard",
                    left=[
                        s.queue.metric_approximate_age_of_oldest_message(
                            period=MINUTE, statistic="Maximum", label=s.queue.node.id
                        )
                        for s in shards
                    ],
                    width=half,
                ),
            )
        d.add_widgets(
            cw.GraphWidget(
                title="Dead-letter queue depth",
                left=[
                    q.metric_approximate_number_of_messages_visible(
                        period=MINUTE, statistic="Maximum", label=q.node.id
                    )
                    for q in queues.dead_letter_queues
                ],
                width=wide,
            )
        )
        fns = list(functions.items())
        d.add_widgets(
            cw.GraphWidget(
                title="Lambda errors",
                left=[f.metric_errors(period=MINUTE, statistic="Sum", label=k) for k, f in fns],
                width=third,
            ),
            cw.GraphWidget(
                title="Lambda throttles",
                left=[f.metric_throttles(period=MINUTE, statistic="Sum", label=k) for k, f in fns],
                width=third,
            ),
            cw.GraphWidget(
                title="Lambda concurrency",
                left=[
                    f.metric("ConcurrentExecutions", period=MINUTE, statistic="Maximum", label=k)
                    for k, f in fns
                ],
                width=third,
            ),
        )
        d.add_widgets(cw.AlarmStatusWidget(title="Alarms", alarms=self.alarms, width=wide, height=6))
