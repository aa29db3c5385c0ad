"""The swarm function, invoked asynchronously (boto3 Lambda client passed in)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fanout.adapters.errors import AWS_ERRORS, translate
from fanout.errors import PermanentError
from fanout.history import RecoverFrom
from fanout.models import RecoverItem, RecoveryRequest, SwarmRequest

if TYPE_CHECKING:
    from mypy_boto3_lambda.client import LambdaClient


class SwarmLauncher:
    """Hands a broadcast to the swarm function (InvocationType=Event: Lambda queues it and retries)."""

    def __init__(self, client: LambdaClient, function_name: str) -> None:
        self.client = client
        self.function_name = function_name

    def launch(self, broadcast_id: str) -> None:
        """Raises fanout.errors (Throttled, RetryableError, PermanentError) when Lambda refuses."""
        payload = SwarmRequest(broadcast_id=broadcast_id).model_dump_json(by_alias=True)
        try:
            self.client.invoke(FunctionName=self.function_name, InvocationType="Event", Payload=payload)
        except AWS_ERRORS as exc:
            raise translate(exc, f"invoke {self.function_name}") from exc


class RecoveryLauncher:
    """Hands a reconnected connection's ?recover= to the recovery function (InvocationType=Event)."""

    def __init__(self, client: LambdaClient, function_name: str) -> None:
        self.client = client
        self.function_name = function_name

    def launch(self, connection_id: str, items: list[RecoverFrom]) -> None:
        if not self.function_name:
            raise PermanentError("no recovery function is configured (FANOUT_RECOVERY_FUNCTION_NAME)")
        request = RecoveryRequest(
            connection_id=connection_id,
            items=[RecoverItem(channel=i.channel, since=i.since, epoch=i.epoch) for i in items],
        )
        try:
            self.client.invoke(
                FunctionName=self.function_name,
                InvocationType="Event",
                Payload=request.model_dump_json(by_alias=True),
            )
        except AWS_ERRORS as exc:
            raise translate(exc, f"invoke {self.function_name}") from exc
