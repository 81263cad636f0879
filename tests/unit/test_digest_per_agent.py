"""Digest algorithms per agent (issue 15 hole 7): ``digest_algorithms`` on an agent.

An old phone (baresip 1.0) answers only the first challenge and has no SHA-256; its agent
gets ``digest_algorithms: [MD5]`` while everyone else keeps the registrar's list. The list
is enforced, not only offered: an agent limited to SHA-256 cannot be answered with MD5.
"""

from __future__ import annotations

import random

import pytest

from gateway.config.loader import DialplanError, load_dialplan_text
from gateway.registrar.digest import NonceManager, parse_challenge
from gateway.registrar.digest_client import authorization_for_challenge
from gateway.registrar.registrar import Registrar
from gateway.registrar.service import credentials_from_dialplan
from gateway.sip.message import Request, Response, parse_message

REALM = "test"
NOW = 1_700_000_000.0

DIALPLAN = """\
version: 1
listen: [ { transport: udp, host: 127.0.0.1, port: 5060 } ]
registrar: { realm: test, algorithms: [SHA-256, MD5] }
agents:
  old: { password: old-pw, digest_algorithms: [MD5] }
  new: { password: new-pw }
  strict: { password: strict-pw, digest_algorithms: [SHA-256] }
"""


def _registrar() -> Registrar:
    dialplan = load_dialplan_text(DIALPLAN)
    nonces = NonceManager(b"k" * 32, 300, random_bytes=random.Random(1).randbytes)
    return Registrar(
        REALM, credentials_from_dialplan(dialplan), nonces, algorithms=("SHA-256", "MD5")
    )


def _request(method: str, user: str, authorization: str | None = None, cseq: int = 1) -> Request:
    header = "Authorization" if method == "REGISTER" else "Proxy-Authorization"
    lines = [
        f"{method} sip:{'test' if method == 'REGISTER' else '5551234@test'} SIP/2.0",
        f"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK{user}{cseq}",
        "Max-Forwards: 70",
        f"From: <sip:{user}@test>;tag=f1",
        f"To: <sip:{user if method == 'REGISTER' else '5551234'}@test>",
        f"Call-ID: {user}-1",
        f"CSeq: {cseq} {method}",
        f"Contact: <sip:{user}@192.0.2.10:5060>",
        *([f"{header}: {authorization}"] if authorization else []),
    ]
    message = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(message, Request)
    return message


def _offered(registrar: Registrar, user: str) -> list[str]:
    outcome = registrar.handle_register(_request("REGISTER", user), "udp:192.0.2.10:5060", NOW, [])
    assert outcome.response.status == 401
    return [parse_challenge(v)["algorithm"] for v in outcome.response.get_all("www-authenticate")]


def _register_with(registrar: Registrar, user: str, algorithm: str) -> int:
    """Take the challenge of ``algorithm`` (from a challenge offering both) and answer it."""
    first = registrar.handle_register(_request("REGISTER", "new"), "udp:192.0.2.10:5060", NOW, [])
    (value,) = [
        v
        for v in first.response.get_all("www-authenticate")
        if parse_challenge(v)["algorithm"] == algorithm
    ]
    authorization = authorization_for_challenge(
        value,
        method="REGISTER",
        uri="sip:test",
        username=user,
        password=f"{user}-pw",
        cnonce="cn",
        nc=1,
    )
    request = _request("REGISTER", user, authorization, cseq=2)
    return registrar.handle_register(request, "udp:192.0.2.10:5060", NOW, []).response.status


def test_the_first_challenge_follows_the_agents_own_list() -> None:
    registrar = _registrar()
    assert _offered(registrar, "old") == ["MD5"]  # baresip 1.0 answers the first one
    assert _offered(registrar, "new") == ["SHA-256", "MD5"]  # the registrar's list
    assert _offered(registrar, "strict") == ["SHA-256"]
    assert _offered(registrar, "nobody") == ["SHA-256", "MD5"]


@pytest.mark.parametrize(
    ("user", "algorithm", "status"),
    [
        ("old", "MD5", 200),
        ("old", "SHA-256", 401),  # not in its list: refused, though the password is right
        ("new", "SHA-256", 200),
        ("new", "MD5", 200),
        ("strict", "SHA-256", 200),
        ("strict", "MD5", 401),  # no downgrade to MD5 for an agent limited to SHA-256
    ],
)
def test_the_list_is_enforced_not_only_offered(user: str, algorithm: str, status: int) -> None:
    assert _register_with(_registrar(), user, algorithm) == status


def test_an_invite_is_challenged_with_the_list_of_the_user_in_from() -> None:
    response = _registrar().authenticate_request(_request("INVITE", "old"), NOW)
    assert isinstance(response, Response) and response.status == 407
    values = response.get_all("proxy-authenticate")
    assert [parse_challenge(v)["algorithm"] for v in values] == ["MD5"]


def test_an_empty_list_is_refused_with_its_line() -> None:
    text = DIALPLAN.replace("digest_algorithms: [MD5]", "digest_algorithms: []")
    with pytest.raises(DialplanError) as caught:
        load_dialplan_text(text, "dialplan.yaml")
    assert "digest_algorithms" in str(caught.value)
