"""A client of the operator API: the local stack (bearer token) or a deployed stack (SigV4, IAM)."""

from __future__ import annotations

import json
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import urllib3
from urllib3.util import Retry

from fanout.errors import BroadcastNotFound, FanoutError, InvalidInput, PayloadTooLarge, Unauthorized

LOCAL_STATE = Path(".fanout") / "local.json"


# Answers worth another attempt; 409 is "a broadcast with this Idempotency-Key is being started".
RETRY_STATUSES = frozenset({409, 429, 500, 502, 503, 504})


class OperatorApiUnavailable(FanoutError):
    """No answer (connection refused, timed out) after every attempt."""


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
    attempts: int = 4
    pool: urllib3.PoolManager = field(default_factory=urllib3.PoolManager, repr=False, compare=False)

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
        # urllib3's Retry: backoff with jitter, Retry-After honoured. A POST is retried only when it
        # carries an Idempotency-Key (the API then returns the first broadcast instead of a second).
        idempotent = method == "GET" or "Idempotency-Key" in hdrs
        retry = Retry(
            total=self.attempts - 1,
            allowed_methods=frozenset({method}) if idempotent else frozenset(),
            status_forcelist=RETRY_STATUSES if idempotent else frozenset(),
            backoff_factor=0.5,
            backoff_max=10,
            backoff_jitter=0.5,
            raise_on_status=False,
        )
        try:
            resp = self.pool.request(
                method, url, body=data, headers=hdrs, retries=retry, timeout=self.timeout, redirect=False
            )
        except urllib3.exceptions.HTTPError as exc:
            reason = getattr(exc, "reason", None) or exc
            raise OperatorApiUnavailable(
                f"operator API at {self.base_url} did not answer after {self.attempts} attempts: {reason}"
            ) from None
        if resp.status >= 400:
            try:
                payload = json.loads(resp.data)
            except ValueError:
                payload = {"message": resp.data.decode("utf-8", "replace")[:300]}
            raise _translate(resp.status, payload if isinstance(payload, dict) else {"message": payload})
        return json.loads(resp.data or b"{}")

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

    def start(
        self, message: Any, idempotency_key: str | None = None, *, to: dict[str, list[str]] | None = None
    ) -> str:
        """Start a broadcast, to everyone or to `to` ({"channels"|"users"|"connections": [...]}).
        Without a key, one is made for this call so that its retries are safe."""
        headers = {"Idempotency-Key": idempotency_key or f"client-{uuid.uuid4()}"}
        body = {"message": message, **({"to": to} if to is not None else {})}
        return str(self._request("POST", "/broadcasts", body, headers)["broadcastId"])

    def channel(self, name: str) -> dict[str, Any]:
        """A channel's occupancy: {"channel", "connections", "users"}."""
        return dict(self._request("GET", f"/channels/{urllib.parse.quote(name, safe=':')}"))

    def history(self, name: str, since: int = 0, epoch: str | None = None) -> dict[str, Any]:
        """A page of a channel's history after offset `since`: {"channel","epoch","messages","more"};
        OperatorApiError with status 410 (code recovery_impossible) when it is not kept."""
        query = urllib.parse.urlencode({"since": since, **({"epoch": epoch} if epoch else {})})
        return dict(self._request("GET", f"/channels/{urllib.parse.quote(name, safe=':')}/history?{query}"))

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
