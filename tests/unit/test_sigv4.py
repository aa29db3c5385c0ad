"""The hot-path signer must produce exactly what botocore's SigV4Auth produces."""

from __future__ import annotations

import string
from datetime import UTC, datetime
from urllib.parse import quote

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials
from hypothesis import given, settings
from hypothesis import strategies as st

from fanout.postclient import ConnectionsClient
from fanout.sigv4 import _ENCODED_PATH, Credentials, Signer, canonical_uri, payload_hash

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


# API Gateway connection ids are base64-ish ("L0SM9cOFvHcCIhw="); any text is tried too.
BASE64ISH = st.text(alphabet=string.ascii_letters + string.digits + "+/=-_", min_size=1, max_size=24)
ANY_ID = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=20)


def signed_by_connections_client(conn_id: str, body: bytes, endpoint: str) -> tuple[dict[str, str], str]:
    """The headers ConnectionsClient signs for one id (the path it sends), and that path's URL."""
    creds = Credentials("AKID", "secret")
    client = ConnectionsClient(object(), endpoint, region="us-east-1", credentials=lambda: creds)  # type: ignore[arg-type]
    url, headers = client._request(conn_id, payload_hash(body), "POST")
    return headers, str(url)


@settings(max_examples=150, deadline=None)
@given(conn_id=st.one_of(BASE64ISH, ANY_ID), body=st.binary(max_size=200))
def test_signature_matches_botocore_for_any_id_and_body(conn_id: str, body: bytes) -> None:
    path = "/local/%40connections/" + quote(conn_id, safe="")
    creds = Credentials("AKID", "secret")
    theirs = botocore_authorization(f"http://127.0.0.1:8080{path}", body, creds, "us-east-1")
    ours = Signer("us-east-1").sign(
        method="POST",
        host="127.0.0.1:8080",
        path=path,
        body_sha256=payload_hash(body),
        credentials=creds,
        now=signed_at(theirs),
    )
    assert ours["Authorization"] == theirs["Authorization"]


@settings(max_examples=150, deadline=None)
@given(conn_id=st.one_of(BASE64ISH, ANY_ID), stage=st.sampled_from(["local", "prod", "my_stage-2", "v1.0"]))
def test_connections_client_signature_matches_botocore(conn_id: str, stage: str) -> None:
    """What the post path really signs, end to end: the client's path, signed at the clock's second."""
    body = b'{"type":"broadcast"}'
    ours, url = signed_by_connections_client(conn_id, body, f"http://127.0.0.1:8080/{stage}")
    theirs = botocore_authorization(url, body, Credentials("AKID", "secret"), "us-east-1")
    if ours["X-Amz-Date"] != theirs["X-Amz-Date"]:  # the second ticked between the two signatures
        ours, url = signed_by_connections_client(conn_id, body, f"http://127.0.0.1:8080/{stage}")
        theirs = botocore_authorization(url, body, Credentials("AKID", "secret"), "us-east-1")
    assert ours == {"Authorization": theirs["Authorization"], "X-Amz-Date": theirs["X-Amz-Date"]}
    path = url.split("8080", 1)[1]
    assert _ENCODED_PATH.fullmatch(path)  # every path the client sends takes the str.replace fast path


@settings(max_examples=300, deadline=None)
@given(path=st.one_of(st.text(), st.text(alphabet=string.ascii_letters + string.digits + "%/_.~-+=@")))
def test_canonical_uri_is_quote_once_more(path: str) -> None:
    try:
        expected = quote(path, safe="/~")
    except UnicodeEncodeError:  # lone surrogates: never a sendable path
        return
    assert canonical_uri(path) == expected


def test_the_timestamp_is_formatted_once_per_second_from_the_clock() -> None:
    now = [NOW.timestamp() + 0.25]
    signer = Signer("us-east-1", clock=lambda: now[0])
    kwargs = {"method": "POST", "host": "h", "path": "/p", "body_sha256": payload_hash(b"")}
    creds = Credentials("AK", "SK")
    a = signer.sign(credentials=creds, **kwargs)
    now[0] += 0.7  # same second
    b = signer.sign(credentials=creds, **kwargs)
    now[0] += 0.1  # next second
    c = signer.sign(credentials=creds, **kwargs)
    assert a == b == signer.sign(credentials=creds, now=NOW, **kwargs)
    assert c["X-Amz-Date"] == "20261122T073006Z"
    assert c == signer.sign(credentials=creds, now=NOW.replace(second=6), **kwargs)


def test_signing_key_is_rederived_when_the_day_or_secret_changes() -> None:
    signer = Signer("us-east-1")
    kwargs = {"method": "POST", "host": "h", "path": "/p", "body_sha256": payload_hash(b"")}
    a = signer.sign(credentials=Credentials("AK", "one"), now=NOW, **kwargs)
    b = signer.sign(credentials=Credentials("AK", "two"), now=NOW, **kwargs)
    c = signer.sign(credentials=Credentials("AK", "two"), now=NOW.replace(day=23), **kwargs)
    signatures = {h["Authorization"].rsplit("=", 1)[1] for h in (a, b, c)}
    assert len(signatures) == 3
