"""The hot-path signer must produce exactly what botocore's SigV4Auth produces."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials
from hypothesis import given, settings
from hypothesis import strategies as st

from fanout.sigv4 import Credentials, Signer, payload_hash

NOW = datetime(2026, 11, 22, 7, 30, 5, tzinfo=UTC)


def botocore_authorization(url: str, body: bytes, creds: Credentials, region: str) -> dict[str, str]:
    request = AWSRequest(method="POST", url=url, data=body)
    auth = SigV4Auth(BotoCredentials(creds.access_key, creds.secret_key, creds.token), "execute-api", region)
    auth.add_auth(request)
    return dict(request.headers.items())


def signed_at(headers: dict[str, str]) -> datetime:
    return datetime.strptime(headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


@pytest.mark.parametrize("token", [None, "session-token/with+chars="])
def test_signature_matches_botocore(token: str | None) -> None:
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    host = "abc123.execute-api.eu-west-1.amazonaws.com"
    path = "/prod/%40connections/L0SM9cOFvHcCIhw%3D"
    body = b'{"type":"broadcast","data":"hello"}'

    theirs = botocore_authorization(f"https://{host}{path}", body, creds, "eu-west-1")
    ours = Signer("eu-west-1").sign(
        method="POST",
        host=host,
        path=path,
        body_sha256=payload_hash(body),
        credentials=creds,
        now=signed_at(theirs),
    )

    assert ours["Authorization"] == theirs["Authorization"]
    assert ours["X-Amz-Date"] == theirs["X-Amz-Date"]
    assert ours.get("X-Amz-Security-Token") == theirs.get("X-Amz-Security-Token")


@settings(max_examples=40, deadline=None)
@given(
    conn_id=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20),
    body=st.binary(max_size=200),
)
def test_signature_matches_botocore_for_any_id_and_body(conn_id: str, body: bytes) -> None:
    from urllib.parse import quote

    creds = Credentials("AKID", "secret")
    host = "127.0.0.1:8080"
    path = "/local/%40connections/" + quote(conn_id, safe="")
    theirs = botocore_authorization(f"http://{host}{path}", body, creds, "us-east-1")
    ours = Signer("us-east-1").sign(
        method="POST",
        host=host,
        path=path,
        body_sha256=payload_hash(body),
        credentials=creds,
        now=signed_at(theirs),
    )
    assert ours["Authorization"] == theirs["Authorization"]


def test_signing_key_is_rederived_when_the_day_or_secret_changes() -> None:
    signer = Signer("us-east-1")
    kwargs = {"method": "POST", "host": "h", "path": "/p", "body_sha256": payload_hash(b"")}
    a = signer.sign(credentials=Credentials("AK", "one"), now=NOW, **kwargs)
    b = signer.sign(credentials=Credentials("AK", "two"), now=NOW, **kwargs)
    c = signer.sign(credentials=Credentials("AK", "two"), now=NOW.replace(day=23), **kwargs)
    signatures = {h["Authorization"].rsplit("=", 1)[1] for h in (a, b, c)}
    assert len(signatures) == 3
