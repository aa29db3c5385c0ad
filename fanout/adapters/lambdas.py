"""The swarm function, invoked asynchronously (boto3 Lambda client passed in)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fanout.adapters.errors import AWS_ERRORS, translate
from fanout.models import SwarmRequest

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
