"""HTTP Digest for SIP (gateway.registrar.digest): RFC 7616 vectors, nonces, replay, parsing."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.registrar.digest import (
    Credentials,
    DigestParseError,
    NonceManager,
    NonceState,
    challenge,
    compute_ha1,
    compute_response,
    parse_authorization,
    parse_challenge,
    verify,
)
from gateway.registrar.digest_client import authorization_for_challenge, make_authorization

NOW = 1_700_000_000.0
SECRET = bytes(range(32))

# RFC 7616 section 3.9.1
RFC_REALM = "http-auth@example.org"
RFC_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
RFC_SHA256 = "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
RFC_MD5 = "8ca523f5e9506fed4657c9700eebdbec"

# the RFC's Authorization value as printed (folded over lines)
RFC_AUTHORIZATION_SHA256 = f"""Digest username="Mufasa",
       realm="http-auth@example.org",
       uri="/dir/index.html",
       algorithm=SHA-256,
       nonce="{RFC_NONCE}",
       nc=00000001,
       cnonce="{RFC_CNONCE}",
       qop=auth,
       response="{RFC_SHA256}",
       opaque="{RFC_OPAQUE}\""""

REALM = "gateway.test"
USERS = {
    "alice": Credentials.from_password("alice", REALM, "s3cret"),
    "Mufasa": Credentials.from_password("Mufasa", RFC_REALM, "Circle of Life"),
    "carol": Credentials("carol", REALM, ha1_md5=compute_ha1("MD5", "carol", REALM, "md5only")),
}


def lookup(username: str, realm: str) -> Credentials | None:
    found = USERS.get(username)
    return found if found is not None and found.realm == realm else None


class AcceptRfcNonce(NonceManager):
    """The RFC's nonce is not one of ours: accept it as valid, keep the replay tracking."""

    def check(self, nonce: str, now: float) -> NonceState:
        return "valid" if nonce == RFC_NONCE else super().check(nonce, now)


def nonces(ttl: float = 300.0, **kwargs: int) -> NonceManager:
    return NonceManager(SECRET, ttl, random_bytes=random.Random(7).randbytes, **kwargs)


def auth(
    nm: NonceManager,
    *,
    password: str = "s3cret",
    algorithm: str = "SHA-256",
    nc: int = 1,
    issued: float = NOW,
    username: str = "alice",
    method: str = "REGISTER",
) -> str:
    return make_authorization(
        method=method,
        uri="sip:gateway.test",
        username=username,
        realm=REALM,
        nonce=nm.make(issued),
        cnonce="0a4f113b",
        password=password,
        nc=nc,
        algorithm=algorithm,
    )


# -- RFC 7616 section 3.9.1 --------------------------------------------------------------------


@pytest.mark.parametrize(("algorithm", "expected"), [("SHA-256", RFC_SHA256), ("MD5", RFC_MD5)])
def test_rfc7616_example_response(algorithm: str, expected: str) -> None:
    ha1 = compute_ha1(algorithm, "Mufasa", RFC_REALM, "Circle of Life")
    got = compute_response(
        algorithm=algorithm,
        ha1=ha1,
        method="GET",
        uri="/dir/index.html",
        nonce=RFC_NONCE,
        nc="00000001",
        cnonce=RFC_CNONCE,
        qop="auth",
    )
    assert got == expected


@pytest.mark.parametrize(("algorithm", "expected"), [("SHA-256", RFC_SHA256), ("MD5", RFC_MD5)])
def test_rfc7616_example_verifies(algorithm: str, expected: str) -> None:
    value = make_authorization(
        method="GET",
        uri="/dir/index.html",
        username="Mufasa",
        realm=RFC_REALM,
        nonce=RFC_NONCE,
        cnonce=RFC_CNONCE,
        password="Circle of Life",
        algorithm=algorithm,
        opaque=RFC_OPAQUE,
    )
    assert parse_authorization(value)["response"] == expected
    result = verify("GET", value, lookup, AcceptRfcNonce(SECRET, 300), RFC_REALM, NOW)
    assert result.ok, result.reason
    assert result.username == "Mufasa"
    assert not result.stale


def test_rfc7616_authorization_text_as_printed_verifies() -> None:
    result = verify(
        "GET", RFC_AUTHORIZATION_SHA256, lookup, AcceptRfcNonce(SECRET, 300), RFC_REALM, NOW
    )
    assert result.ok, result.reason
    params = parse_authorization(RFC_AUTHORIZATION_SHA256)
    assert params["nc"] == "00000001"
    assert params["opaque"] == RFC_OPAQUE


def test_rfc7616_wrong_password_fails() -> None:
    value = RFC_AUTHORIZATION_SHA256.replace(RFC_SHA256, RFC_SHA256[::-1])
    result = verify("GET", value, lookup, AcceptRfcNonce(SECRET, 300), RFC_REALM, NOW)
    assert not result.ok
    assert not result.stale
    other = make_authorization(
        method="GET",
        uri="/dir/index.html",
        username="Mufasa",
        realm=RFC_REALM,
        nonce=RFC_NONCE,
        cnonce=RFC_CNONCE,
        password="Circle of Death",
    )
    assert not verify("GET", other, lookup, AcceptRfcNonce(SECRET, 300), RFC_REALM, NOW).ok


def test_wrong_method_fails() -> None:
    result = verify(
        "POST", RFC_AUTHORIZATION_SHA256, lookup, AcceptRfcNonce(SECRET, 300), RFC_REALM, NOW
    )
    assert not result.ok


# -- verification against our own nonces -------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5", "SHA-256-sess", "MD5-sess"])
def test_our_nonce_verifies(algorithm: str) -> None:
    nm = nonces()
    result = verify("REGISTER", auth(nm, algorithm=algorithm), lookup, nm, REALM, NOW + 1)
    assert result.ok, result.reason
    assert result.username == "alice"


def test_wrong_password_is_not_stale() -> None:
    nm = nonces()
    result = verify("REGISTER", auth(nm, password="guess"), lookup, nm, REALM, NOW)
    assert (result.ok, result.stale) == (False, False)
    assert "wrong" in result.reason


def test_stale_nonce_with_right_password_is_stale() -> None:
    nm = nonces(ttl=300)
    value = auth(nm, issued=NOW)
    result = verify("REGISTER", value, lookup, nm, REALM, NOW + 301)
    assert (result.ok, result.stale) == (False, True)
    assert verify("REGISTER", value, lookup, nonces(ttl=300), REALM, NOW + 299).ok


def test_stale_nonce_with_wrong_password_is_not_stale() -> None:
    nm = nonces(ttl=300)
    result = verify("REGISTER", auth(nm, password="guess"), lookup, nm, REALM, NOW + 301)
    assert (result.ok, result.stale) == (False, False)


def test_replayed_nonce_count_is_rejected() -> None:
    nm = nonces()
    nonce = nm.make(NOW)

    def value(nc: int) -> str:
        return make_authorization(
            method="REGISTER",
            uri="sip:gateway.test",
            username="alice",
            realm=REALM,
            nonce=nonce,
            cnonce="c",
            password="s3cret",
            nc=nc,
        )

    assert verify("REGISTER", value(1), lookup, nm, REALM, NOW).ok
    replay = verify("REGISTER", value(1), lookup, nm, REALM, NOW)
    assert not replay.ok
    assert replay.stale  # the UA may retry at once with a fresh nonce
    assert "replayed" in replay.reason
    assert verify("REGISTER", value(3), lookup, nm, REALM, NOW).ok
    assert not verify("REGISTER", value(2), lookup, nm, REALM, NOW).ok
    assert verify("REGISTER", value(4), lookup, nm, REALM, NOW).ok


def test_failed_attempt_does_not_burn_a_nonce_count() -> None:
    nm = nonces()
    nonce = nm.make(NOW)

    def value(password: str) -> str:
        return make_authorization(
            method="REGISTER",
            uri="sip:gateway.test",
            username="alice",
            realm=REALM,
            nonce=nonce,
            cnonce="c",
            nc=5,
            password=password,
        )

    assert not verify("REGISTER", value("x"), lookup, nm, REALM, NOW).ok
    assert verify("REGISTER", value("s3cret"), lookup, nm, REALM, NOW).ok


def test_forgotten_nonces_are_never_replayable() -> None:
    nm = nonces(max_tracked=2)
    first = auth(nm, issued=NOW)
    assert verify("REGISTER", first, lookup, nm, REALM, NOW).ok
    assert verify("REGISTER", auth(nm, issued=NOW + 1), lookup, nm, REALM, NOW + 1).ok
    assert verify("REGISTER", auth(nm, issued=NOW + 2), lookup, nm, REALM, NOW + 2).ok
    assert nm.tracked == 2
    # the first nonce was forgotten: its count 1 cannot be replayed, not even at a higher nc
    replay = verify("REGISTER", first, lookup, nm, REALM, NOW + 3)
    assert (replay.ok, replay.stale) == (False, True)
    again = first.replace("nc=00000001", "nc=00000002")
    assert not verify("REGISTER", again, lookup, nm, REALM, NOW + 3).ok
    # a nonce issued after the watermark is fine
    assert verify("REGISTER", auth(nm, issued=NOW + 3), lookup, nm, REALM, NOW + 3).ok


def test_nonce_is_signed_and_dated() -> None:
    nm = nonces(ttl=60)
    nonce = nm.make(NOW)
    assert len(nonce) == 48
    assert nm.check(nonce, NOW) == "valid"
    assert nm.check(nonce, NOW + 60) == "valid"
    assert nm.check(nonce, NOW + 61) == "stale"
    assert nm.check(nonce, NOW - 60) == "invalid"  # from the future beyond the clock skew
    tampered = nonce[:10] + ("A" if nonce[10] != "A" else "B") + nonce[11:]
    assert nm.check(tampered, NOW) == "invalid"
    assert NonceManager(b"another secret of 32 bytes......", 60).check(nonce, NOW) == "invalid"
    for junk in ("", "x" * 48, "é" * 48, RFC_NONCE, nonce + "="):
        assert nm.check(junk, NOW) == "invalid"
    # another node with the same secret accepts it
    assert NonceManager(SECRET, 60).check(nonce, NOW + 1) == "valid"


def test_nonces_differ_within_one_millisecond() -> None:
    nm = nonces()
    assert nm.make(NOW) != nm.make(NOW)


def test_nonce_manager_refuses_weak_settings() -> None:
    with pytest.raises(ValueError):
        NonceManager(b"short", 60)
    with pytest.raises(ValueError):
        NonceManager(SECRET, 0)


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (('realm="gateway.test"', 'realm="elsewhere"'), "realm"),
        (("algorithm=SHA-256", "algorithm=SHA-512-256"), "algorithm"),
        (("qop=auth", "qop=auth-int"), "qop"),
        ((", qop=auth", ""), "qop"),
        (('cnonce="0a4f113b"', 'cnonce=""'), "cnonce"),
        (("nc=00000001", "nc=1"), "nonce-count"),
        (("nc=00000001", "nc=0000000g"), "nonce-count"),
        (('uri="sip:gateway.test"', 'uri=""'), "uri"),
        (("Digest ", "Basic "), "malformed"),
        (('username="alice"', 'username="mallory"'), "unknown user"),
        (('username="alice"', 'username="alice", userhash=true'), "userhash"),
    ],
)
def test_bad_credentials_are_refused(edit: tuple[str, str], reason: str) -> None:
    nm = nonces()
    value = auth(nm)
    assert edit[0] in value
    result = verify("REGISTER", value.replace(*edit), lookup, nm, REALM, NOW)
    assert not result.ok
    assert not result.stale
    assert reason in result.reason


def test_nonce_not_ours_is_refused() -> None:
    nm = nonces()
    value = auth(nonces(), issued=NOW)
    other = NonceManager(b"x" * 32, 300)
    assert verify("REGISTER", value, lookup, nm, REALM, NOW).ok
    result = verify("REGISTER", value, lookup, other, REALM, NOW)
    assert not result.ok and "nonce" in result.reason


def test_user_without_sha256_credentials() -> None:
    nm = nonces()
    sha = auth(nm, username="carol", password="md5only")
    result = verify("REGISTER", sha, lookup, nm, REALM, NOW)
    assert not result.ok and "SHA-256" in result.reason
    md5 = auth(nm, username="carol", password="md5only", algorithm="MD5")
    assert verify("REGISTER", md5, lookup, nm, REALM, NOW).ok
    assert USERS["carol"].algorithms == ("MD5", "MD5-sess")


def test_missing_algorithm_means_md5() -> None:
    nm = nonces()
    value = auth(nm, algorithm="MD5").replace(", algorithm=MD5", "")
    assert "algorithm" not in value
    assert verify("REGISTER", value, lookup, nm, REALM, NOW).ok


def test_response_compare_ignores_hex_case_and_survives_non_ascii() -> None:
    nm = nonces()
    value = auth(nm)
    response = parse_authorization(value)["response"]
    assert verify("REGISTER", value.replace(response, response.upper()), lookup, nm, REALM, NOW).ok
    assert not verify("REGISTER", value.replace(response, "é" * 64), lookup, nm, REALM, NOW).ok


# -- challenges ---------------------------------------------------------------------------------


def test_challenge_offers_sha256_then_md5_with_one_nonce() -> None:
    nm = nonces()
    values = challenge(REALM, nm, NOW)
    assert len(values) == 2
    first, second = (parse_challenge(v) for v in values)
    assert (first["algorithm"], second["algorithm"]) == ("SHA-256", "MD5")
    assert first["nonce"] == second["nonce"]
    assert nm.check(first["nonce"], NOW) == "valid"
    for params in (first, second):
        assert params["realm"] == REALM
        assert params["qop"] == "auth"
        assert "stale" not in params
    assert values[0].startswith('Digest realm="gateway.test", nonce="')


def test_stale_challenge_and_choice_of_algorithms() -> None:
    values = challenge(REALM, nonces(), NOW, stale=True, algorithms=("MD5",))
    assert len(values) == 1
    assert parse_challenge(values[0])["stale"] == "true"
    with pytest.raises(ValueError):
        challenge(REALM, nonces(), NOW, algorithms=("SHA-512",))


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_uac_answers_our_challenge(algorithm: str) -> None:
    nm = nonces()
    offered = {parse_challenge(v)["algorithm"]: v for v in challenge(REALM, nm, NOW)}
    value = authorization_for_challenge(
        offered[algorithm],
        method="INVITE",
        uri="sip:911@gateway.test",
        username="alice",
        password="s3cret",
        cnonce="abc",
    )
    result = verify("INVITE", value, lookup, nm, REALM, NOW)
    assert result.ok, result.reason


def test_uac_answers_challenge_without_qop_and_with_opaque() -> None:
    value = authorization_for_challenge(
        'Digest realm="trunk", nonce="abc", opaque="xyz"',
        method="INVITE",
        uri="sip:+15551234567@sbc.example",
        username="u",
        password="p",
        cnonce="c",
    )
    params = parse_authorization(value)
    assert "qop" not in params and "nc" not in params
    assert params["opaque"] == "xyz"
    assert params["algorithm"] == "MD5"
    ha1 = compute_ha1("MD5", "u", "trunk", "p")
    assert params["response"] == compute_response(
        algorithm="MD5",
        ha1=ha1,
        method="INVITE",
        uri="sip:+15551234567@sbc.example",
        nonce="abc",
        nc=None,
        cnonce=None,
        qop=None,
    )
    with pytest.raises(ValueError):
        authorization_for_challenge(
            'Digest realm="r", nonce="n", qop="auth-int"',
            method="INVITE",
            uri="sip:x",
            username="u",
            password="p",
            cnonce="c",
        )


# -- parsing ------------------------------------------------------------------------------------


def test_parse_is_robust_to_quoting_and_whitespace() -> None:
    value = (
        ' digest  username = "al\\"ice" ,realm="r, with comma",, nonce=abc,'
        '\r\n\talgorithm="MD5",QOP=auth ,  uri="sip:a@b;transport=tcp"  '
    )
    assert parse_authorization(value) == {
        "username": 'al"ice',
        "realm": "r, with comma",
        "nonce": "abc",
        "algorithm": "MD5",
        "qop": "auth",
        "uri": "sip:a@b;transport=tcp",
    }


@pytest.mark.parametrize(
    "value",
    [
        "",
        "Digest",  # no parameters is legal syntax: tested below
        "Basic dXNlcjpwYXNz",
        "NoOneKnowsThisScheme opaque-data=here",
        'Digest username="alice',
        "Digest username",
        "Digest username=",
        'Digest username="a" realm="r"',
        'Digest username="a", username="b"',
        'Digest ="a"',
        'Digest username="a\\',
    ],
)
def test_parse_rejects_malformed(value: str) -> None:
    if value == "Digest":
        assert parse_authorization(value) == {}
        return
    with pytest.raises(DigestParseError):
        parse_authorization(value)
    assert issubclass(DigestParseError, ValueError)


@given(st.text(max_size=200))
def test_parse_raises_only_digest_parse_error(text: str) -> None:
    for value in (text, "Digest " + text):
        with contextlib.suppress(DigestParseError):
            parse_authorization(value)


@given(st.text(max_size=120))
def test_verify_never_raises(text: str) -> None:
    nm = nonces()
    for value in (text, "Digest " + text, auth(nm) + text):
        result = verify("REGISTER", value, lookup, nm, REALM, NOW)
        assert isinstance(result.reason, str)
