"""fanout.tokens: HS256 only, exp required, every refusal an Unauthorized with a reason."""

from __future__ import annotations

import base64
import json

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fanout.errors import Unauthorized
from fanout.tokens import TokenClaims, issue_token, verify_token

SECRET = "s3cret-for-tests-" + "0123456789abcdef" * 4
NOW = 1_800_000_000.0


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_round_trip() -> None:
    token = issue_token(SECRET, "user-1", ttl_seconds=60, now=NOW)
    claims = verify_token(SECRET, token, now=NOW + 59)
    assert claims == TokenClaims(sub="user-1", iat=int(NOW), exp=int(NOW) + 60)


@given(subject=st.text(min_size=1, max_size=64), ttl=st.integers(min_value=1, max_value=10**7))
def test_any_subject_round_trips_until_expiry(subject: str, ttl: int) -> None:
    token = issue_token(SECRET, subject, ttl_seconds=ttl, now=NOW)
    assert verify_token(SECRET, token, now=NOW + ttl - 1).sub == subject
    with pytest.raises(Unauthorized, match="expired"):
        verify_token(SECRET, token, now=NOW + ttl)


@pytest.mark.parametrize("token", [None, ""])
def test_missing(token: str | None) -> None:
    with pytest.raises(Unauthorized, match="missing"):
        verify_token(SECRET, token, now=NOW)


def test_wrong_secret_is_a_bad_signature() -> None:
    token = issue_token("another-secret-0123456789abcdef!", "u", now=NOW)
    with pytest.raises(Unauthorized, match="signature"):
        verify_token(SECRET, token, now=NOW)


def test_tampered_payload() -> None:
    header, _, signature = issue_token(SECRET, "alice", now=NOW).split(".")
    forged = _b64({"sub": "admin", "iat": int(NOW), "exp": int(NOW) + 3600})
    with pytest.raises(Unauthorized, match="signature"):
        verify_token(SECRET, f"{header}.{forged}.{signature}", now=NOW)


def test_alg_none_is_refused() -> None:
    payload = {"sub": "admin", "iat": int(NOW), "exp": int(NOW) + 3600}
    token = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(payload)}."
    with pytest.raises(Unauthorized, match="wrong algorithm"):
        verify_token(SECRET, token, now=NOW)


@pytest.mark.parametrize("alg", ["HS512", "HS384"])
def test_other_hmac_algorithms_are_refused(alg: str) -> None:
    token = jwt.encode({"sub": "u", "iat": int(NOW), "exp": int(NOW) + 60}, SECRET, algorithm=alg)
    with pytest.raises(Unauthorized, match="wrong algorithm"):
        verify_token(SECRET, token, now=NOW)


def test_rs256_header_signed_with_the_secret_is_refused() -> None:
    # The classic confusion attack: claim RS256 but sign with HMAC over the shared secret.
    header = _b64({"alg": "RS256", "typ": "JWT"})
    payload = _b64({"sub": "u", "iat": int(NOW), "exp": int(NOW) + 60})
    hs = jwt.encode({"sub": "u", "iat": int(NOW), "exp": int(NOW) + 60}, SECRET, algorithm="HS256")
    with pytest.raises(Unauthorized, match="wrong algorithm"):
        verify_token(SECRET, f"{header}.{payload}.{hs.split('.')[2]}", now=NOW)


@pytest.mark.parametrize("missing", ["exp", "iat", "sub"])
def test_required_claims(missing: str) -> None:
    claims: dict[str, object] = {"sub": "u", "iat": int(NOW), "exp": int(NOW) + 60}
    del claims[missing]
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    with pytest.raises(Unauthorized, match=missing):
        verify_token(SECRET, token, now=NOW)


@pytest.mark.parametrize("bad", [{"exp": "tomorrow"}, {"exp": True}, {"sub": 42}, {"sub": ""}, {"iat": None}])
def test_invalid_claim_types(bad: dict[str, object]) -> None:
    claims: dict[str, object] = {"sub": "u", "iat": int(NOW), "exp": int(NOW) + 60, **bad}
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    with pytest.raises(Unauthorized):
        verify_token(SECRET, token, now=NOW)


def test_issued_in_the_future() -> None:
    token = issue_token(SECRET, "u", ttl_seconds=7200, now=NOW + 3600)
    with pytest.raises(Unauthorized, match="future"):
        verify_token(SECRET, token, now=NOW)


@given(garbage=st.text(max_size=200))
def test_garbage_is_refused_never_crashes(garbage: str) -> None:
    with pytest.raises(Unauthorized):
        verify_token(SECRET, garbage, now=NOW)


@given(data=st.data())
def test_any_single_character_change_is_refused(data: st.DataObject) -> None:
    token = issue_token(SECRET, "user", now=NOW)
    i = data.draw(st.integers(min_value=0, max_value=len(token) - 1))
    replacement = data.draw(
        st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
    )
    tampered = token[:i] + replacement + token[i + 1 :]
    if tampered == token:
        return
    try:
        claims = verify_token(SECRET, tampered, now=NOW)
    except Unauthorized:
        return
    # base64url's last character can carry padding bits that decode to the same bytes.
    assert claims == verify_token(SECRET, token, now=NOW)


def test_no_secret_configured_refuses() -> None:
    token = issue_token(SECRET, "u", now=NOW)
    with pytest.raises(Unauthorized, match="secret"):
        verify_token("", token, now=NOW)


# -- rights: channels and publish ---------------------------------------------------------------------
def test_rights_round_trip() -> None:
    token = issue_token(
        SECRET, "u", now=NOW, channels=["room:*", "news"], publish=["$user", "$all", "room:1"]
    )
    claims = verify_token(SECRET, token, now=NOW)
    assert claims.channels == ("room:*", "news")
    assert claims.publish == ("$user", "$all", "room:1")


def test_no_claim_no_right() -> None:
    claims = verify_token(SECRET, issue_token(SECRET, "u", now=NOW), now=NOW)
    assert claims.channels == () and claims.publish == ()
    assert "channels" not in jwt.decode(
        issue_token(SECRET, "u", now=NOW), options={"verify_signature": False}
    )


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("channels", "room:*"),
        ("channels", None),
        ("channels", {"room": 1}),
        ("channels", [7]),
        ("channels", ["room 1"]),
        ("channels", ["ro*om"]),
        ("channels", ["x" * 129]),
        ("channels", ["$user"]),  # a special of publish only
        ("channels", [""]),
        ("publish", "$all"),
        ("publish", ["$everyone"]),
        ("publish", ["room:*", None]),
    ],
)
def test_a_token_with_bad_rights_is_refused_with_a_reason(claim: str, value: object) -> None:
    payload = {"sub": "u", "iat": int(NOW), "exp": int(NOW) + 60, claim: value}
    token = jwt.encode(payload, SECRET, algorithm="HS256")
    with pytest.raises(Unauthorized, match=f"invalid claims: {claim} \\(") as caught:
        verify_token(SECRET, token, now=NOW)
    assert token not in str(caught.value)


@pytest.mark.parametrize(("claim", "value"), [("channels", ["bad name"]), ("publish", ["$nobody"])])
def test_issuing_bad_rights_is_a_value_error(claim: str, value: list[str]) -> None:
    with pytest.raises(ValueError, match=claim):
        issue_token(SECRET, "u", now=NOW, **{claim: value})  # type: ignore[arg-type]


def test_prefix_patterns() -> None:
    token = issue_token(SECRET, "u", now=NOW, channels=["*", "room:*"])
    assert verify_token(SECRET, token, now=NOW).channels == ("*", "room:*")
