"""The `@connections` API for the few frames a function posts itself (boto3 client passed in).

The post stage has its own poster (fanout.postclient: thousands of posts a second); recovery posts a
connection's missed messages one by one, in order, and needs no more than boto3's client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fanout.adapters.errors import AWS_ERRORS, http_status, translate

if TYPE_CHECKING:
    from mypy_boto3_apigatewaymanagementapi.client import ApiGatewayManagementApiClient

# What API Gateway answers for a connection it cannot post to: gone, or not open yet (its $connect
# has not returned).
NOT_THERE = frozenset({403, 410})


class CallbackPoster:
    def __init__(self, client: ApiGatewayManagementApiClient) -> None:
        self.client = client

    def post(self, connection_id: str, frame: str) -> bool:
        """Post one frame; False when the connection is not there (gone, or not open yet)."""
        try:
            self.client.post_to_connection(ConnectionId=connection_id, Data=frame.encode("utf-8"))
        except AWS_ERRORS as exc:
            if http_status(exc) in NOT_THERE:
                return False
            raise translate(exc, f"post to {connection_id}") from exc
        return True
