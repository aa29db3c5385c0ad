"""PostToConnection over aiohttp with the cached-key SigV4 signer: the post stage's hot path.

Why not the boto3/aioboto3 ``apigatewaymanagementapi`` client: it costs several times the CPU per call
of aiohttp with this signer, and the post stage's CPU budget per delivered frame is what bounds a
worker's rate (side by side: `python -m loadtest.bench_post`, figures in docs/benchmarks.md).

Errors are translated here, at the adapter edge, into fanout.errors: 410 → ConnectionGone (with or
without a GoneException error type), 429 → Throttled, 5xx/timeouts/connection errors → RetryableError,
other 4xx → PermanentError.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol
from urllib.parse import quote, urlsplit

import aiohttp
from yarl import URL

from fanout.errors import ConnectionGone, PermanentError, RetryableError, Throttled
from fanout.sigv4 import Credentials, Signer, payload_hash


class Poster(Protocol):
    """Sends one frame to one connection; raises fanout.errors on failure."""

    async def post(self, connection_id: str, frame: bytes, frame_sha256: str) -> None: ...


class ConnectionsPoster(Poster, Protocol):
    """The post stage's poster: posts, and takes fresh credentials once per batch of records (the
    role's credentials rotate while a container lives; reading them per post would cost per frame)."""

    def refresh_credentials(self) -> None: ...


def botocore_credentials() -> Credentials:
    """The caller's AWS credentials, resolved by botocore's provider chain (env, role, ...)."""
    import botocore.session

    creds = botocore.session.get_session().get_credentials()
    if creds is None:
        raise PermanentError("no AWS credentials found for signing PostToConnection")
    frozen = creds.get_frozen_credentials()
    return Credentials(str(frozen.access_key), str(frozen.secret_key), frozen.token)


class ConnectionsClient:
    """The `@connections` API of one WebSocket stage.

    `endpoint` is the stage's callback URL, ``https://{api}.execute-api.{region}.amazonaws.com/{stage}``.
    Credentials are fetched through `credentials` at most once per `refresh_every` posts' worth of batches
    (call `refresh_credentials()` per batch).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        endpoint: str,
        *,
        region: str,
        credentials: Callable[[], Credentials] = botocore_credentials,
        timeout: float = 5.0,
    ) -> None:
        parts = urlsplit(endpoint.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"connections endpoint must be an http(s) URL, got {endpoint!r}")
        self._session = session
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._host = parts.netloc
        self._base_path = parts.path + "/%40connections/"
        self._signer = Signer(region, "execute-api")
        self._get_credentials = credentials
        self._credentials = credentials()
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    def refresh_credentials(self) -> None:
        self._credentials = self._get_credentials()

    def _request(self, connection_id: str, body_sha256: str, method: str) -> tuple[URL, dict[str, str]]:
        path = self._base_path + quote(connection_id, safe="")
        headers = self._signer.sign(
            method=method, host=self._host, path=path, body_sha256=body_sha256, credentials=self._credentials
        )
        return URL(self._origin + path, encoded=True), headers

    async def post(self, connection_id: str, frame: bytes, frame_sha256: str) -> None:
        url, headers = self._request(connection_id, frame_sha256, "POST")
        try:
            async with self._session.post(url, data=frame, headers=headers, timeout=self._timeout) as resp:
                if resp.status == 200:
                    return
                body = await resp.read()
                raise _translate(connection_id, resp.status, resp.headers.get("x-amzn-ErrorType", ""), body)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise RetryableError(f"PostToConnection to {connection_id} failed: {exc!r}") from exc

    async def delete(self, connection_id: str) -> None:
        url, headers = self._request(connection_id, payload_hash(b""), "DELETE")
        async with self._session.delete(url, headers=headers, timeout=self._timeout) as resp:
            if resp.status in (200, 204):
                return
            raise _translate(
                connection_id, resp.status, resp.headers.get("x-amzn-ErrorType", ""), await resp.read()
            )


def _translate(connection_id: str, status: int, error_type: str, body: bytes) -> Exception:
    detail = body[:200].decode("utf-8", "replace")
    if status == 410 or error_type.startswith("GoneException"):
        return ConnectionGone(connection_id)
    if status == 429:
        return Throttled(f"PostToConnection throttled ({error_type or status}): {detail}", status=status)
    if status >= 500:
        return RetryableError(f"PostToConnection answered {status}: {detail}", status=status)
    return PermanentError(f"PostToConnection answered {status} {error_type}: {detail}", status=status)


def new_session(concurrency: int) -> aiohttp.ClientSession:
    """One keep-alive session per container, sized to the post concurrency."""
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency, ttl_dns_cache=300)
    return aiohttp.ClientSession(connector=connector, skip_auto_headers=("User-Agent", "Content-Type"))
