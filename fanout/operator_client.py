"""A client of the operator API: the local stack (bearer token) or a deployed stack (SigV4, IAM)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fanout.errors import BroadcastNotFound, FanoutError, InvalidInput, PayloadTooLarge, Unauthorized

LOCAL_STATE = Path(".fanout") / "local.json"


class OperatorApiError(FanoutError):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"operator API answered {status}: {body.get('message') or body}")
        self.status = status
        self.body = body


@dataclass
class OperatorClient:
    base_url: str
    bearer_token: str | None = None
    region: str | None = None
    timeout: float = 10.0

    @classmethod
    def from_local_state(cls, path: Path = LOCAL_STATE) -> OperatorClient:
        if not path.exists():
            raise FanoutError(
                f"{path} not found: start the local stack with `fanout local up`, or pass --api URL"
            )
        state = json.loads(path.read_text())
        return cls(state["httpApiUrl"], bearer_token=state["operatorToken"])

    @classmethod
    def for_deployed(cls, url: str, region: str | None = None) -> OperatorClient:
        host = urlsplit(url).hostname or ""
        if region is None and ".execute-api." in host:
            region = host.split(".execute-api.")[1].split(".")[0]
        return cls(url, region=region or "us-east-1")

    def _request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> Any:
        url = self.base_url.rstrip("/") + path
        data = json.dumps(body).encode() if body is not None else None
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        if self.bearer_token:
            hdrs["Authorization"] = f"Bearer {self.bearer_token}"
        else:
            hdrs = self._sigv4(method, url, data, hdrs)
        request = urllib.request.Request(url, data=data, headers=hdrs, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = {"message": raw.decode("utf-8", "replace")[:300]}
            raise _translate(exc.code, payload) from None

    def _sigv4(self, method: str, url: str, data: bytes | None, headers: dict[str, str]) -> dict[str, str]:
        import botocore.session
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        creds = botocore.session.get_session().get_credentials()
        if creds is None:
            raise Unauthorized("no AWS credentials found to sign the operator API request (IAM)")
        request = AWSRequest(method=method, url=url, data=data, headers=headers)
        SigV4Auth(creds, "execute-api", self.region or "us-east-1").add_auth(request)
        return dict(request.headers.items())

    def start(self, message: Any, idempotency_key: str | None = None) -> str:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return str(self._request("POST", "/broadcasts", {"message": message}, headers)["broadcastId"])

    def status(self, broadcast_id: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/broadcasts/{broadcast_id}"))

    def wait(
        self,
        broadcast_id: str,
        *,
        timeout: float = 300.0,
        interval: float = 0.2,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            view = self.status(broadcast_id)
            if on_progress:
                on_progress(view)
            if view["status"] in ("completed", "failed"):
                return view
            if time.monotonic() > deadline:
                raise TimeoutError(f"broadcast {broadcast_id} still {view['status']} after {timeout:.0f} s")
            time.sleep(interval)


def _translate(status: int, body: dict[str, Any]) -> FanoutError:
    message = str(body.get("message") or body)
    if status == 413:
        return PayloadTooLarge(int(body.get("size") or 0), int(body.get("limit") or 0))
    if status in (400, 422):
        return InvalidInput(message, field=body.get("field"))
    if status in (401, 403):
        return Unauthorized(message)
    if status == 404:
        return BroadcastNotFound(message)
    return OperatorApiError(status, body)
