"""The partition-seed custom resource handler (no AWS: a recording client and a local HTTP sink)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from infra.cdk.seed import index


class RecordingDynamoDB:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def update_item(self, **kwargs: Any) -> dict[str, Any]:
        with self.lock:
            self.calls.append(kwargs)
        return {}


def test_seed_creates_every_partition_without_resetting_counts() -> None:
    ddb = RecordingDynamoDB()
    assert index.seed("fanout-partitions", 25, client=ddb) == 25
    assert sorted(int(c["Key"]["partitionId"]["N"]) for c in ddb.calls) == list(range(25))
    assert all("if_not_exists(connectionCount" in c["UpdateExpression"] for c in ddb.calls)


def test_handler_reports_failure_to_cloudformation(monkeypatch: Any) -> None:
    received: list[dict[str, Any]] = []

    class Sink(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Sink)
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()

    def boom(table: str, count: int, client: Any = None) -> int:
        raise RuntimeError("AccessDenied")

    monkeypatch.setattr(index, "seed", boom)
    event = {
        "RequestType": "Create",
        "ResponseURL": f"http://127.0.0.1:{server.server_port}/presigned",
        "StackId": "stack",
        "RequestId": "req",
        "LogicalResourceId": "Seed",
        "ResourceProperties": {"TableName": "fanout-partitions", "PartitionCount": "3"},
    }
    index.handler(event, None)
    thread.join(5)
    server.server_close()
    (response,) = received
    assert response["Status"] == "FAILED" and "AccessDenied" in response["Reason"]
    assert response["PhysicalResourceId"] == "fanout-partitions-seed"
