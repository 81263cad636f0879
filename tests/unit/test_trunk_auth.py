"""Trunk authentication (issue 13): a trunk's 401/407 answered with its credentials, once.

The digest response is recomputed here with hashlib from RFC 7616 section 3.4.1 (not with
the gateway's own digest code); the call layer is driven by the two-ended fake peers.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from b2bua_peers import ANSWER, CALLER, GATEWAY, GW1, GW2, Net, Peer, hop, outbound
from pydantic import ValidationError

from gateway.b2bua.call import NextHop
from gateway.cli import main
from gateway.config.trunk_auth import TrunkAuth, TrunkCredentials, TrunkRegister
from gateway.registrar.digest import parse_authorization
from gateway.registrar.digest_client import authorized_retry, chosen_challenge
from gateway.sip.dialog import Dialog
from gateway.sip.message import Request, Response, make_response
from gateway.sip.transaction import RequestReceived

CREDENTIALS = TrunkCredentials("acme", "s3cret-pw", None)
SHA_CHALLENGE = 'Digest realm="carrier", nonce="n-sha", algorithm=SHA-256, qop="auth"'
MD5_CHALLENGE = 'Digest realm="carrier", nonce="n-md5", algorithm=MD5, qop="auth"'


def _hash(algorithm: str, text: str) -> str:
    name = "sha256" if algorithm == "SHA-256" else "md5"
    return hashlib.new(name, text.encode()).hexdigest()


def _expected(fields: dict[str, str], method: str, password: str) -> str:
    """RFC 7616 section 3.4.1 with qop=auth, from the fields of the Authorization."""
    alg = fields["algorithm"]
    ha1 = _hash(alg, f"{fields['username']}:{fields['realm']}:{password}")
    ha2 = _hash(alg, f"{method}:{fields['uri']}")
    tail = f"{fields['nonce']}:{fields['nc']}:{fields['cnonce']}:{fields['qop']}:{ha2}"
    return _hash(alg, f"{ha1}:{tail}")


def _challenge(ev: RequestReceived, status: int, *values: str) -> Response:
    name = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
    return make_response(ev.request, status, to_tag="chal", extra=tuple((name, v) for v in values))


def _send(peer: Peer, ev: RequestReceived, response: Response) -> None:
    peer.layer.send_response(ev.transaction, response, peer.net.now)
    peer.net.exchange()


def _trunk_hop() -> NextHop:
    return hop(GW1, codes=(401, 407, 503), credentials=CREDENTIALS)


# -- the digest answer (sans-I/O) ------------------------------------------------------------


def _invite() -> Request:
    headers = [
        ("via", "Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKold"),
        ("from", "From", "<sip:gw@192.0.2.1>;tag=ft"),
        ("to", "To", "<sip:911@192.0.2.21>"),
        ("call-id", "Call-ID", "cid@192.0.2.1"),
        ("cseq", "CSeq", "1 INVITE"),
    ]
    return Request("INVITE", "sip:911@192.0.2.21", headers, b"v=0\r\n")


def test_sha256_is_chosen_before_md5_and_the_response_is_rfc_7616() -> None:
    invite = _invite()
    challenge = make_response(
        invite,
        401,
        extra=(("WWW-Authenticate", MD5_CHALLENGE), ("WWW-Authenticate", SHA_CHALLENGE)),
    )
    retry = authorized_retry(
        invite, challenge, username="acme", password="s3cret-pw", realm=None, cnonce="c0", cseq=2
    )
    assert retry is not None
    assert retry.call_id == "cid@192.0.2.1" and retry.from_tag == "ft" and retry.cseq.number == 2
    assert retry.get("via") is None and retry.body == invite.body
    fields = parse_authorization(retry.get("Authorization") or "")
    assert fields["algorithm"] == "SHA-256" and fields["nonce"] == "n-sha"
    assert (fields["qop"], fields["nc"], fields["cnonce"]) == ("auth", "00000001", "c0")
    assert fields["response"] == _expected(fields, "INVITE", "s3cret-pw")


def test_md5_only_and_a_407_gives_proxy_authorization() -> None:
    invite = _invite()
    challenge = make_response(invite, 407, extra=(("Proxy-Authenticate", MD5_CHALLENGE),))
    retry = authorized_retry(
        invite, challenge, username="acme", password="pw", realm="carrier", cnonce="c1", cseq=5
    )
    assert retry is not None and retry.get("Authorization") is None
    fields = parse_authorization(retry.get("Proxy-Authorization") or "")
    assert fields["algorithm"] == "MD5" and fields["response"] == _expected(fields, "INVITE", "pw")


@pytest.mark.parametrize(
    "value",
    [
        'Digest realm="other", nonce="n", qop="auth"',  # another realm than configured
        'Digest realm="carrier", nonce="n", algorithm=SHA-512-256, qop="auth"',
        'Digest realm="carrier", nonce="n", qop="auth-int"',
        'Basic realm="carrier"',
        'Digest realm="carrier", nonce="unterminated',
    ],
)
def test_a_challenge_we_cannot_answer_gives_none(value: str) -> None:
    challenge = make_response(_invite(), 401, extra=(("WWW-Authenticate", value),))
    assert chosen_challenge(challenge, "carrier") is None


# -- the B-leg INVITE ------------------------------------------------------------------------


def test_a_challenged_invite_is_sent_again_with_credentials_and_not_failed_over() -> None:
    net = Net(outbound(_trunk_hop(), hop(GW2)))
    caller, trunk = net.peer(CALLER), net.peer(GW1)
    caller.invite()
    (first,) = trunk.requests("INVITE")
    _send(trunk, first, _challenge(first, 407, SHA_CHALLENGE))
    assert len(net.sent(GATEWAY, GW1, "ACK")) == 1  # the 407 is ACKed (17.1.1.3)
    first_req, second_req = (e.request for e in trunk.requests("INVITE"))
    assert second_req.call_id == first_req.call_id and second_req.from_tag == first_req.from_tag
    assert second_req.cseq.number == first_req.cseq.number + 1
    assert second_req.top_via.branch != first_req.top_via.branch
    assert second_req.body == first_req.body
    fields = parse_authorization(second_req.get("Proxy-Authorization") or "")
    assert fields["response"] == _expected(fields, "INVITE", "s3cret-pw")
    assert net.sent(GATEWAY, GW2, "INVITE") == []  # a challenge is not a failover
    trunk.answer(trunk.requests("INVITE")[1], 200, ANSWER)
    assert caller.statuses() == [100, 200]
    (call,) = net.b2bua.calls.values()
    assert call.failures == [] and call.b is not None and call.b.dialog is not None
    assert call.b.dialog.local_cseq == 2  # the BYE later gets 3


def test_a_second_challenge_is_a_failure_and_fails_over_once() -> None:
    net = Net(outbound(_trunk_hop(), hop(GW2)))
    caller, trunk, second = net.peer(CALLER), net.peer(GW1), net.peer(GW2)
    caller.invite()
    _send(
        trunk,
        trunk.requests("INVITE")[0],
        _challenge(trunk.requests("INVITE")[0], 401, SHA_CHALLENGE),
    )
    retried = trunk.requests("INVITE")[1]
    _send(trunk, retried, _challenge(retried, 401, SHA_CHALLENGE))
    assert len(trunk.requests("INVITE")) == 2  # one retry only
    assert len(second.requests("INVITE")) == 1  # then the next path
    (call,) = net.b2bua.calls.values()
    assert [f.code for f in call.failures] == [401]


def test_without_credentials_a_challenge_fails_over_as_before() -> None:
    """An emergency hop (401/407 among its failover codes) with no ``auth``: next path."""
    net = Net(outbound(hop(GW1, codes=(401, 407, 503)), hop(GW2)))
    caller, trunk, second = net.peer(CALLER), net.peer(GW1), net.peer(GW2)
    caller.invite()
    (first,) = trunk.requests("INVITE")
    _send(trunk, first, _challenge(first, 407, SHA_CHALLENGE))
    assert len(trunk.requests("INVITE")) == 1
    assert len(second.requests("INVITE")) == 1


def test_a_challenge_after_the_caller_cancelled_is_not_answered() -> None:
    net = Net(outbound(_trunk_hop()))
    caller, trunk = net.peer(CALLER), net.peer(GW1)
    tx = caller.invite()
    (first,) = trunk.requests("INVITE")
    trunk.answer(first, 180)
    caller.cancel(tx)
    _send(trunk, first, _challenge(first, 401, SHA_CHALLENGE))
    assert len(trunk.requests("INVITE")) == 1
    assert net.b2bua.calls == {}


# -- in the dialog ---------------------------------------------------------------------------


def _connected_through_trunk(net: Net) -> tuple[Peer, Peer, Dialog]:
    caller, trunk = net.peer(CALLER), net.peer(GW1)
    tx = caller.invite()
    (incoming,) = trunk.requests("INVITE")
    trunk.answer(incoming, 200, ANSWER)
    dialog = caller.uac_dialog(tx)
    caller.ack(tx, dialog)
    return caller, trunk, dialog


def test_a_challenged_bye_to_the_trunk_is_sent_again_with_the_next_cseq() -> None:
    net = Net(outbound(_trunk_hop()))
    caller, trunk, a_dialog = _connected_through_trunk(net)
    caller.request(a_dialog, "BYE")
    (bye,) = trunk.requests("BYE")
    _send(trunk, bye, _challenge(bye, 401, MD5_CHALLENGE))
    byes = trunk.requests("BYE")
    assert len(byes) == 2
    again = byes[1].request
    assert again.cseq.number == bye.request.cseq.number + 1
    assert again.to_tag == bye.request.to_tag and again.call_id == bye.request.call_id
    fields = parse_authorization(again.get("Authorization") or "")
    assert fields["response"] == _expected(fields, "BYE", "s3cret-pw")
    trunk.answer(byes[1], 200)


def test_a_challenged_reinvite_is_relayed_again_with_credentials() -> None:
    net = Net(outbound(_trunk_hop()))
    caller, trunk, a_dialog = _connected_through_trunk(net)
    caller.request(a_dialog, "INVITE", b"v=0\r\no=- 3 3 IN IP4 192.0.2.10\r\n")
    reinvite = trunk.requests("INVITE")[1]
    _send(trunk, reinvite, _challenge(reinvite, 407, SHA_CHALLENGE))
    again = trunk.requests("INVITE")[2]
    assert again.request.cseq.number == reinvite.request.cseq.number + 1
    assert again.request.get("Proxy-Authorization") is not None
    trunk.answer(again, 200, ANSWER)
    assert caller.final().status == 200
    assert 401 not in caller.statuses() and 407 not in caller.statuses()


# -- configuration ---------------------------------------------------------------------------


def test_auth_needs_exactly_one_secret_source() -> None:
    with pytest.raises(ValidationError, match="exactly one of password_env"):
        TrunkAuth(username="acme")
    with pytest.raises(ValidationError, match="exactly one of password_env"):
        TrunkAuth(username="acme", password_env="X", password_file="/run/secrets/x")
    with pytest.raises(ValidationError):
        TrunkAuth(username="acme", password="inline")  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="retry_max_s"):
        TrunkRegister(retry_min_s=10, retry_max_s=5)


def test_the_secret_comes_from_env_or_file_and_never_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRUNK_PW_TEST", "env-secret")
    from_env = TrunkAuth(username="acme", password_env="TRUNK_PW_TEST").credentials
    assert from_env is not None and from_env.password == "env-secret"
    assert "env-secret" not in repr(from_env)
    secret = tmp_path / "pw"
    secret.write_text("file-secret\n")
    from_file = TrunkAuth(username="acme", password_file=str(secret), realm="r").credentials
    assert from_file == TrunkCredentials("acme", "file-secret", "r")
    missing = TrunkAuth(username="acme", password_env="TRUNK_PW_UNSET_TEST")
    assert missing.credentials is None
    assert missing.problem == "environment variable TRUNK_PW_UNSET_TEST is not set or empty"
    unreadable = TrunkAuth(username="acme", password_file=str(tmp_path / "absent"))
    assert unreadable.credentials is None and "cannot be read" in (unreadable.problem or "")


def test_gateway_check_names_an_unreadable_secret_and_never_prints_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRUNK_A_PW", "printed-never-1")
    monkeypatch.delenv("TRUNK_B_PW", raising=False)
    path = tmp_path / "d.yaml"
    path.write_text(
        "version: 1\n"
        "listen: [ { transport: udp, host: 127.0.0.1, port: 5060 } ]\n"
        "trunks:\n"
        "  a:\n"
        "    gateways: [ { host: 127.0.0.1, port: 5080 } ]\n"
        "    auth: { username: acme, password_env: TRUNK_A_PW }\n"
        "    register: { expires: 300 }\n"
        "  b:\n"
        "    gateways: [ { host: 127.0.0.1, port: 5081 } ]\n"
        "    auth: { username: acme, password_env: TRUNK_B_PW }\n"
        "outbound:\n"
        "  - { name: all, match: '.*', trunk: a }\n"
    )
    assert main(["check", str(path)]) == 0  # a warning: b's calls still go out
    captured = capsys.readouterr()
    assert "trunk b: auth: environment variable TRUNK_B_PW is not set" in captured.out
    assert "trunk a" not in captured.out
    assert "printed-never-1" not in captured.out + captured.err
