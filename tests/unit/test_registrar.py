"""REGISTER processing (RFC 3261 section 10.3) and agent INVITE authentication (407).

A fake clock (``Clock``) and seeded nonce/tag randomness; a dict stands in for the store.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

import pytest

from gateway.config.loader import load_dialplan_text
from gateway.registrar.digest import (
    AuthResult,
    Credentials,
    NonceManager,
    compute_ha1,
    parse_challenge,
)
from gateway.registrar.digest_client import authorization_for_challenge
from gateway.registrar.registrar import BindingView, RegisterOutcome, Registrar
from gateway.registrar.service import RegistrarService
from gateway.sip.message import Request, Response, parse_message
from gateway.sip.transaction import Address, IdGenerator
from gateway.stores.ports import Binding

REALM = "gateway.test"
T0 = 1_700_000_000.0
SOURCE = "udp:192.0.2.10:5060"

ACCOUNTS: dict[str, tuple[Credentials, str]] = {
    "alice": (Credentials.from_password("alice", REALM, "alice-pw"), "agent-alice"),
    "bob": (Credentials.from_password("bob", REALM, "bob-pw"), "agent-bob"),
    "carol": (
        Credentials("carol", REALM, ha1_md5=compute_ha1("MD5", "carol", REALM, "carol-pw")),
        "agent-carol",
    ),
}
PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}


def lookup(username: str, realm: str) -> tuple[Credentials, str] | None:
    found = ACCOUNTS.get(username)
    return found if found is not None and found[0].realm == realm else None


@dataclass
class Clock:
    now: float = T0

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def make_registrar(*, max_contacts: int = 10, min_expires: int = 60) -> Registrar:
    nm = NonceManager(b"k" * 32, 300, random_bytes=random.Random(1).randbytes)
    return Registrar(
        REALM,
        lookup,
        nm,
        ids=IdGenerator(random.Random(2)),
        max_contacts=max_contacts,
        min_expires=min_expires,
    )


BRANCHES = itertools.count(1)


def register(
    *contacts: str,
    to_user: str = "alice",
    call_id: str = "reg-1@192.0.2.10",
    cseq: int = 1,
    expires: str | None = None,
    authorization: str | None = None,
    extra: tuple[str, ...] = (),
) -> Request:
    lines = [
        "REGISTER sip:gateway.test SIP/2.0",
        f"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKreg{next(BRANCHES)}",
        "Max-Forwards: 70",
        f"From: <sip:{to_user}@gateway.test>;tag=f1",
        f"To: <sip:{to_user}@gateway.test>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        "User-Agent: TestPhone/1.0",
        *(f"Contact: {c}" for c in contacts),
        *([f"Expires: {expires}"] if expires is not None else []),
        *([f"Authorization: {authorization}"] if authorization is not None else []),
        *extra,
    ]
    msg = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(msg, Request)
    return msg


@dataclass
class Phone:
    """A registering UA plus the store the caller would keep: runs the 401 dance."""

    registrar: Registrar
    clock: Clock
    user: str = "alice"
    password: str | None = None
    algorithm: str = "SHA-256"
    call_id: str = "reg-1@192.0.2.10"
    cseq: int = 0
    store: dict[str, list[BindingView]] = field(default_factory=dict)
    challenge_value: str | None = None
    #: the REGISTERs come through a configured front (which alone may add Path)
    path_allowed: bool = False

    def bindings(self, agent_id: str = "agent-alice") -> list[BindingView]:
        return self.store.get(agent_id, [])

    def send(self, *contacts: str, to_user: str | None = None, **kwargs: object) -> RegisterOutcome:
        """One REGISTER; on 401, answer the challenge once (like a phone does)."""
        outcome = self._send(contacts, to_user, None, kwargs)
        if outcome.response.status == 401:
            offered = [
                v
                for v in outcome.response.get_all("www-authenticate")
                if parse_challenge(v)["algorithm"] == self.algorithm
            ]
            if not offered:
                return outcome
            self.challenge_value = offered[0]
            outcome = self._send(contacts, to_user, self._authorization(), kwargs)
        return outcome

    def _authorization(self) -> str:
        assert self.challenge_value is not None
        return authorization_for_challenge(
            self.challenge_value,
            method="REGISTER",
            uri="sip:gateway.test",
            username=self.user,
            password=self.password if self.password is not None else PASSWORDS[self.user],
            cnonce=f"cn{self.cseq}",
            nc=1,
        )

    def _send(
        self,
        contacts: tuple[str, ...],
        to_user: str | None,
        authorization: str | None,
        kwargs: dict[str, object],
    ) -> RegisterOutcome:
        self.cseq += 1
        request = register(
            *contacts,
            to_user=to_user or self.user,
            call_id=self.call_id,
            cseq=self.cseq,
            authorization=authorization,
            **kwargs,  # type: ignore[arg-type]
        )
        agent = lookup(to_user or self.user, REALM)
        agent_id = agent[1] if agent else "nobody"
        outcome = self.registrar.handle_register(
            request, SOURCE, self.clock.now, self.bindings(agent_id), path_allowed=self.path_allowed
        )
        self.apply(agent_id, outcome)
        return outcome

    def apply(self, agent_id: str, outcome: RegisterOutcome) -> None:
        if outcome.response.status != 200:
            assert not outcome.added and not outcome.removed
            return
        current = {b.contact_uri: b for b in self.store.get(agent_id, [])}
        for gone in outcome.removed:
            current.pop(gone.contact_uri, None)
        for new in outcome.added:
            assert new.agent_id == agent_id
            current[new.contact_uri] = BindingView(
                new.contact_uri, new.expires_at, new.call_id, new.cseq
            )
        self.store[agent_id] = list(current.values())


def contacts_of(response: Response) -> dict[str, int]:
    """{contact URI: expires} of a 200 to REGISTER."""
    out: dict[str, int] = {}
    for value in response.get_all("contact"):
        uri, _, params = value.partition(">;")
        assert params.startswith("expires="), value
        out[uri.lstrip("<")] = int(params.removeprefix("expires="))
    return out


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def phone(clock: Clock) -> Phone:
    return Phone(make_registrar(), clock)


ALICE = "<sip:alice@192.0.2.10:5060>"
ALICE_URI = "sip:alice@192.0.2.10:5060"


# -- the full flow ------------------------------------------------------------------------------


def test_first_register_is_challenged_sha256_then_md5(clock: Clock) -> None:
    registrar = make_registrar()
    outcome = registrar.handle_register(register(ALICE), SOURCE, clock.now, [])
    response = outcome.response
    assert response.status == 401
    assert response.to_tag  # the UAS adds a To tag (RFC 3261 section 8.2.6.2)
    challenges = [parse_challenge(v) for v in response.get_all("www-authenticate")]
    assert [c["algorithm"] for c in challenges] == ["SHA-256", "MD5"]
    assert all(c["realm"] == REALM and c["qop"] == "auth" for c in challenges)
    assert challenges[0]["nonce"] == challenges[1]["nonce"]
    assert (outcome.added, outcome.removed, outcome.agent_id) == ([], [], None)


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_register_with_digest_binds_the_contact(phone: Phone, algorithm: str) -> None:
    phone.algorithm = algorithm
    outcome = phone.send(ALICE)
    assert outcome.response.status == 200, outcome.reason
    assert outcome.agent_id == "agent-alice"
    assert contacts_of(outcome.response) == {ALICE_URI: 3600}
    assert outcome.response.get("date") == "Tue, 14 Nov 2023 22:13:20 GMT"
    [binding] = outcome.added
    assert binding.agent_id == "agent-alice"
    assert binding.contact_uri == ALICE_URI
    assert binding.expires_at == T0 + 3600
    assert (binding.call_id, binding.cseq) == ("reg-1@192.0.2.10", 2)
    assert (binding.source, binding.user_agent) == (SOURCE, "TestPhone/1.0")
    assert outcome.removed == []
    assert outcome.auth is not None and outcome.auth.ok


def test_wrong_password_is_challenged_again_without_binding(phone: Phone) -> None:
    phone.password = "guess"
    outcome = phone.send(ALICE)
    assert outcome.response.status == 401
    assert len(outcome.response.get_all("www-authenticate")) == 2
    assert "stale" not in outcome.response.get_all("www-authenticate")[0]
    assert outcome.added == [] and phone.bindings() == []


def test_other_users_aor_is_forbidden(phone: Phone) -> None:
    outcome = phone.send("<sip:bob@192.0.2.10:5060>", to_user="bob")  # alice's credentials
    assert outcome.response.status == 403
    assert outcome.agent_id == "agent-alice"
    assert outcome.added == [] and phone.store == {}


def test_unknown_user_is_challenged(phone: Phone) -> None:
    phone.user = "mallory"
    phone.password = "x"
    assert phone.send("<sip:mallory@192.0.2.10>").response.status == 401


def test_expired_nonce_gets_stale_challenge(phone: Phone, clock: Clock) -> None:
    assert phone.send(ALICE).response.status == 200
    clock.advance(301)  # nonce ttl is 300 s
    phone.cseq += 1
    request = register(ALICE, cseq=phone.cseq, authorization=phone._authorization())
    outcome = phone.registrar.handle_register(request, SOURCE, clock.now, phone.bindings())
    assert outcome.response.status == 401
    values = outcome.response.get_all("www-authenticate")
    assert len(values) == 2
    assert all(parse_challenge(v)["stale"] == "true" for v in values)
    # the phone retries with the new nonce and no new password
    assert phone.send(ALICE).response.status == 200


def test_replayed_register_is_refused(phone: Phone, clock: Clock) -> None:
    assert phone.send(ALICE).response.status == 200
    replay = register(ALICE, cseq=5, authorization=phone._authorization())  # same nc=1
    outcome = phone.registrar.handle_register(replay, SOURCE, clock.now, phone.bindings())
    assert outcome.response.status == 401
    assert "replayed" in outcome.reason


def test_md5_only_user_is_offered_md5_after_a_sha256_try(clock: Clock) -> None:
    phone = Phone(make_registrar(), clock, user="carol")
    outcome = phone.send("<sip:carol@192.0.2.30>", to_user="carol")
    assert outcome.response.status == 401
    assert [
        parse_challenge(v)["algorithm"] for v in outcome.response.get_all("www-authenticate")
    ] == ["MD5"]
    phone.algorithm = "MD5"
    assert phone.send("<sip:carol@192.0.2.30>", to_user="carol").response.status == 200


# -- bindings -----------------------------------------------------------------------------------


def test_unregister_with_expires_zero_param(phone: Phone, clock: Clock) -> None:
    assert phone.send(ALICE).response.status == 200
    clock.advance(10)
    outcome = phone.send(ALICE + ";expires=0")
    assert outcome.response.status == 200
    assert outcome.response.get_all("contact") == []
    assert [b.contact_uri for b in outcome.removed] == [ALICE_URI]
    assert outcome.added == [] and phone.bindings() == []


def test_unregister_with_expires_header_zero(phone: Phone) -> None:
    phone.send(ALICE, "<sip:alice@198.51.100.1>")
    outcome = phone.send(ALICE, expires="0")
    assert contacts_of(outcome.response) == {"sip:alice@198.51.100.1": 3600}
    assert [b.contact_uri for b in outcome.removed] == [ALICE_URI]


def test_unregister_all_with_star(phone: Phone, clock: Clock) -> None:
    phone.send(ALICE, "<sip:alice@198.51.100.1>")
    clock.advance(5)
    outcome = phone.send("*", expires="0")
    assert outcome.response.status == 200
    assert outcome.response.get_all("contact") == []
    assert {b.contact_uri for b in outcome.removed} == {ALICE_URI, "sip:alice@198.51.100.1"}
    assert phone.bindings() == []


@pytest.mark.parametrize(
    ("contacts", "expires"),
    [(("*",), "60"), (("*",), None), (("*", ALICE), "0"), (("*, " + ALICE,), "0")],
)
def test_star_misuse_is_400(phone: Phone, contacts: tuple[str, ...], expires: str | None) -> None:
    phone.send(ALICE)
    outcome = phone.send(*contacts, expires=expires)
    assert outcome.response.status == 400
    assert outcome.removed == [] and len(phone.bindings()) == 1


def test_several_contacts_and_remaining_time(phone: Phone, clock: Clock) -> None:
    outcome = phone.send(ALICE + ";expires=600", "<sip:alice@198.51.100.1;transport=tcp>")
    assert contacts_of(outcome.response) == {
        ALICE_URI: 600,
        "sip:alice@198.51.100.1;transport=tcp": 3600,
    }
    clock.advance(100)
    phone.call_id = "desk-phone@198.51.100.2"  # a second device of the same agent
    outcome = phone.send("<sip:alice@198.51.100.2>", expires="1800")
    assert contacts_of(outcome.response) == {
        ALICE_URI: 500,
        "sip:alice@198.51.100.1;transport=tcp": 3500,
        "sip:alice@198.51.100.2": 1800,
    }
    assert len(phone.bindings()) == 3


def test_query_without_contact_lists_bindings(phone: Phone, clock: Clock) -> None:
    phone.send(ALICE)
    clock.advance(60.5)
    outcome = phone.send()
    assert outcome.response.status == 200
    assert contacts_of(outcome.response) == {ALICE_URI: 3540}  # 3539.5 rounded up
    assert outcome.added == [] and outcome.removed == []


def test_expired_bindings_are_ignored(phone: Phone, clock: Clock) -> None:
    phone.send(ALICE + ";expires=60")
    clock.advance(61)
    outcome = phone.send()
    assert outcome.response.get_all("contact") == []
    assert outcome.removed == []


def test_refresh_replaces_binding_and_equivalent_uri_spelling(phone: Phone, clock: Clock) -> None:
    phone.send("<sip:alice@Host.Example:5060;transport=UDP>")
    clock.advance(30)
    outcome = phone.send("<sip:alice@host.example:5060;transport=udp;ob>")
    assert outcome.response.status == 200
    assert [b.contact_uri for b in outcome.removed] == ["sip:alice@Host.Example:5060;transport=UDP"]
    assert [b.contact_uri for b in outcome.added] == [
        "sip:alice@host.example:5060;transport=udp;ob"
    ]
    assert len(phone.bindings()) == 1
    # a different port is a different contact (RFC 3261 section 19.1.4)
    phone.send("<sip:alice@host.example;transport=udp>")
    assert len(phone.bindings()) == 2


def test_expires_precedence_and_clamp(phone: Phone) -> None:
    outcome = phone.send(
        ALICE + ";expires=120",
        "<sip:alice@198.51.100.1>",
        "<sip:alice@198.51.100.2>;expires=99999",
        expires="300",
    )
    assert contacts_of(outcome.response) == {
        ALICE_URI: 120,
        "sip:alice@198.51.100.1": 300,
        "sip:alice@198.51.100.2": 3600,
    }


def test_interval_too_brief_is_423(phone: Phone) -> None:
    outcome = phone.send(ALICE + ";expires=30")
    assert outcome.response.status == 423
    assert outcome.response.get("min-expires") == "60"
    assert phone.bindings() == []
    outcome = phone.send(ALICE, expires="59")
    assert outcome.response.status == 423
    assert phone.send(ALICE, expires="60").response.status == 200


def test_brief_interval_in_one_contact_fails_the_whole_request(phone: Phone) -> None:
    outcome = phone.send(ALICE, "<sip:alice@198.51.100.1>;expires=10")
    assert outcome.response.status == 423
    assert outcome.added == [] and phone.bindings() == []


@pytest.mark.parametrize(
    ("contact", "expires"),
    [
        (ALICE, "soon"),
        (ALICE, "-1"),
        (ALICE + ";expires=abc", None),
        (ALICE + ";expires", None),
        (ALICE + ";q=2", None),
        (ALICE + ";q=high", None),
        ("<tel:+15551234567>", None),
        ("<sip:alice@192.0.2.10", None),
        (f"{ALICE}, {ALICE}", None),
    ],
)
def test_bad_contact_or_expires_is_400(phone: Phone, contact: str, expires: str | None) -> None:
    outcome = phone.send(contact, expires=expires)
    assert outcome.response.status == 400, outcome.reason
    assert outcome.added == []


def test_q_and_instance_are_kept(phone: Phone) -> None:
    outcome = phone.send(
        ALICE + ';q=0.5;+sip.instance="<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>"'
    )
    [binding] = outcome.added
    assert binding.q == 0.5
    assert binding.instance == "<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>"


# -- Call-ID / CSeq ordering (RFC 3261 section 10.3 step 7) -------------------------------------


def registrar_with_binding(call_id: str = "reg-1", cseq: int = 10) -> tuple[Registrar, Phone]:
    clock = Clock()
    phone = Phone(make_registrar(), clock, call_id=call_id, cseq=cseq - 2)
    assert phone.send(ALICE).response.status == 200
    assert phone.bindings()[0].cseq == cseq
    return phone.registrar, phone


@pytest.mark.parametrize("cseq", [9, 10])
def test_same_call_id_not_higher_cseq_is_500(cseq: int) -> None:
    _, phone = registrar_with_binding(cseq=10)
    phone.cseq = cseq - 2  # the 401 round trip adds 2
    before = list(phone.bindings())
    outcome = phone.send(ALICE + ";expires=0")
    assert outcome.response.status == 500
    assert outcome.added == [] and outcome.removed == []
    assert phone.bindings() == before
    phone.cseq = cseq - 2
    assert phone.send("*", expires="0").response.status == 500


def test_out_of_order_contact_aborts_every_change() -> None:
    _, phone = registrar_with_binding(cseq=10)
    phone.cseq = 7
    outcome = phone.send("<sip:alice@198.51.100.9>", ALICE)  # new one fine, ALICE out of order
    assert outcome.response.status == 500
    assert outcome.added == []
    assert len(phone.bindings()) == 1


def test_other_call_id_may_use_lower_cseq() -> None:
    _, phone = registrar_with_binding(cseq=10)
    phone.call_id = "after-reboot"
    phone.cseq = 0
    outcome = phone.send(ALICE)
    assert outcome.response.status == 200
    [binding] = outcome.added
    assert (binding.call_id, binding.cseq) == ("after-reboot", 2)


def test_higher_cseq_updates() -> None:
    _, phone = registrar_with_binding(cseq=10)
    outcome = phone.send(ALICE + ";expires=120")
    assert outcome.response.status == 200
    assert contacts_of(outcome.response) == {ALICE_URI: 120}


# -- limits and other checks --------------------------------------------------------------------


def test_max_contacts_drops_the_binding_closest_to_expiry(clock: Clock) -> None:
    phone = Phone(make_registrar(max_contacts=2), clock)
    phone.send("<sip:alice@198.51.100.1>;expires=100")
    phone.send("<sip:alice@198.51.100.2>;expires=200")
    outcome = phone.send("<sip:alice@198.51.100.3>")
    assert outcome.response.status == 200
    assert [b.contact_uri for b in outcome.removed] == ["sip:alice@198.51.100.1"]
    assert set(contacts_of(outcome.response)) == {
        "sip:alice@198.51.100.2",
        "sip:alice@198.51.100.3",
    }
    too_many = phone.send(*(f"<sip:alice@198.51.100.{i}>" for i in (4, 5, 6)))
    assert too_many.response.status == 403


def test_require_gets_420(phone: Phone) -> None:
    outcome = phone.send(ALICE, extra=("Require: gruu, path",))
    assert outcome.response.status == 420
    assert outcome.response.get("unsupported") == "gruu, path"


def test_non_sip_address_of_record_is_400_before_auth(clock: Clock) -> None:
    # RFC 4475 section 3.3.4 (unksm2)
    text = (
        "REGISTER sip:example.com SIP/2.0\r\nTo: isbn:2983792873\r\n"
        "From: <http://www.example.com>;tag=3234233\r\n"
        "Call-ID: unksm2.daksdj@hyphenated-host.example.com\r\nCSeq: 234902 REGISTER\r\n"
        "Max-Forwards: 70\r\nVia: SIP/2.0/UDP 192.0.2.21:5060;branch=z9hG4bKkdjuw\r\n"
        "Contact: <name:John_Smith>\r\nl: 0\r\n\r\n"
    )
    request = parse_message(text.encode())
    assert isinstance(request, Request)
    outcome = make_registrar().handle_register(request, SOURCE, clock.now, [])
    assert outcome.response.status == 400


def test_unknown_authorization_scheme_is_challenged(clock: Clock) -> None:
    # RFC 4475 section 3.3.7 (regaut01)
    request = register(ALICE, authorization="NoOneKnowsThisScheme opaque-data=here")
    outcome = make_registrar().handle_register(request, SOURCE, clock.now, [])
    assert outcome.response.status == 401


def test_credentials_for_another_realm_are_ignored(phone: Phone) -> None:
    other = 'Digest username="alice", realm="elsewhere", nonce="n", uri="sip:x", response="0"'
    request = register(ALICE, extra=(f"Authorization: {other}",))
    outcome = phone.registrar.handle_register(request, SOURCE, phone.clock.now, [])
    assert outcome.response.status == 401
    assert outcome.reason == "no credentials for our realm"


def test_handle_register_refuses_other_methods(phone: Phone) -> None:
    request = register(ALICE)
    request.method = "INVITE"
    with pytest.raises(ValueError):
        phone.registrar.handle_register(request, SOURCE, phone.clock.now, [])


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        make_registrar(min_expires=7200)


# -- INVITE authentication (407) ----------------------------------------------------------------


def invite(proxy_authorization: str | None = None, method: str = "INVITE") -> Request:
    lines = [
        f"{method} sip:911@gateway.test SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKinv1",
        "Max-Forwards: 70",
        "From: <sip:alice@gateway.test>;tag=a1",
        "To: <sip:911@gateway.test>",
        "Call-ID: call-1@192.0.2.10",
        f"CSeq: 1 {method}",
        "Contact: <sip:alice@192.0.2.10:5060>",
        *([f"Proxy-Authorization: {proxy_authorization}"] if proxy_authorization else []),
    ]
    msg = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(msg, Request)
    return msg


def answer(response: Response, algorithm: str = "SHA-256", password: str = "alice-pw") -> str:
    [offered] = [
        v
        for v in response.get_all("proxy-authenticate")
        if parse_challenge(v)["algorithm"] == algorithm
    ]
    return authorization_for_challenge(
        offered,
        method="INVITE",
        uri="sip:911@gateway.test",
        username="alice",
        password=password,
        cnonce="inv",
    )


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_invite_is_challenged_with_407_then_authenticates(algorithm: str) -> None:
    registrar = make_registrar()
    first = registrar.authenticate_request(invite(), T0, to_tag="leg-a")
    assert isinstance(first, Response)
    assert first.status == 407
    assert first.to_tag == "leg-a"
    assert [parse_challenge(v)["algorithm"] for v in first.get_all("proxy-authenticate")] == [
        "SHA-256",
        "MD5",
    ]
    assert first.get_all("www-authenticate") == []
    result = registrar.authenticate_request(invite(answer(first, algorithm)), T0 + 1)
    assert isinstance(result, AuthResult)
    assert result.ok and result.username == "alice" and result.agent_id == "agent-alice"


def test_invite_with_wrong_password_or_authorization_header_gets_407() -> None:
    registrar = make_registrar()
    first = registrar.authenticate_request(invite(), T0)
    assert isinstance(first, Response)
    wrong = registrar.authenticate_request(invite(answer(first, password="x")), T0)
    assert isinstance(wrong, Response) and wrong.status == 407
    # credentials in Authorization (meant for a UAS) do not count for the proxy role
    request = invite()
    request.add("Authorization", answer(first))
    assert isinstance(registrar.authenticate_request(request, T0), Response)


def test_invite_with_stale_nonce_gets_stale_407() -> None:
    registrar = make_registrar()
    first = registrar.authenticate_request(invite(), T0)
    assert isinstance(first, Response)
    late = registrar.authenticate_request(invite(answer(first)), T0 + 400)
    assert isinstance(late, Response) and late.status == 407
    assert all(parse_challenge(v)["stale"] == "true" for v in late.get_all("proxy-authenticate"))


@pytest.mark.parametrize("method", ["ACK", "CANCEL"])
def test_ack_and_cancel_cannot_be_challenged(method: str) -> None:
    with pytest.raises(ValueError):
        make_registrar().authenticate_request(invite(method=method), T0)


# -- who is calling (SPEC E-13) --------------------------------------------------------------------


def _service_with(bindings: dict[str, list[tuple[str, str, float]]]) -> RegistrarService:
    text = (
        "version: 1\nlisten: [ { transport: udp, host: 127.0.0.1, port: 5060 } ]\n"
        "agents:\n  alice: { password: a }\n  bob: { password: b }\n"
    )
    service = RegistrarService(
        load_dialplan_text(text, "t.yaml"),
        None,  # type: ignore[arg-type]  # the lookups need no transactions, store, presence
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        loop_clock=lambda: 0.0,
        wall_clock=lambda: 1000.0,
    )
    for agent, items in bindings.items():
        for contact, source, expires in items:
            service.bindings[agent][contact] = Binding(
                agent, contact, expires, "c", 1, source, "ua"
            )
    service._reindex()
    return service


def test_agent_at_is_the_registration_from_that_very_source() -> None:
    service = _service_with({"alice": [("sip:a@h", "udp:127.0.0.1:5071", 2000.0)]})
    assert service.agent_at(Address("udp", "127.0.0.1", 5071)) == "alice"
    assert service.agent_at(Address("udp", "127.0.0.1", 5072)) is None  # another port
    assert service.agent_at(Address("tcp", "127.0.0.1", 5071)) is None  # another transport
    assert service.agent_at(Address("udp", "127.0.0.5", 5071)) is None


def test_agent_at_ignores_expired_and_ambiguous_registrations() -> None:
    expired = _service_with({"alice": [("sip:a@h", "udp:127.0.0.1:5071", 900.0)]})
    assert expired.agent_at(Address("udp", "127.0.0.1", 5071)) is None
    # one phone with two lines: the source names no single agent
    shared = _service_with(
        {
            "alice": [("sip:a@h", "udp:127.0.0.1:5071", 2000.0)],
            "bob": [("sip:b@h", "udp:127.0.0.1:5071", 2000.0)],
        }
    )
    assert shared.agent_at(Address("udp", "127.0.0.1", 5071)) is None
