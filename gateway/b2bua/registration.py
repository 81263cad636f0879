"""Outbound REGISTER to carriers with registration-based trunks (issue 13).

Theory of operation
-------------------
A trunk with ``register`` in the dialplan gets one :class:`TrunkRegistration`: the gateway
registers an address-of-record (``sip:<aor_user>@<domain>``) at the trunk's first gateway
and keeps it registered. It runs on the call layer's clock and timer heap (time comes in as
``now``; nothing is awaited) and sends through the transaction layer as the owner of its
client transactions (:class:`~gateway.sip.owners.ClientOwner`).

================  =============================  =========================================
state             on                             then
================  =============================  =========================================
unregistered      start                          REGISTER -> registering
registering       2xx                            registered; refresh at ``refresh_ratio``
                                                 of the granted time (Contact ``expires``,
                                                 else Expires, else what was asked)
registering       401/407, first of this         REGISTER again with credentials (CSeq+1)
                  REGISTER, credentials known
registering       423 with Min-Expires           REGISTER again asking Min-Expires
registering       other final, no answer,        failed; REGISTER again after a backoff:
                  second challenge               ``retry_min_s`` doubling up to
                                                 ``retry_max_s``, jittered (0.8..1.0), to
                                                 the next of the gateway's DNS targets
                                                 (RFC 3263: the next SRV target or
                                                 address) unless a binding is still granted
registered        refresh time                   REGISTER (state stays registered until
                                                 the binding's own expiry passes)
failed            retry time                     REGISTER -> registering
registered, or    the node stops, or a reload    REGISTER with Expires: 0 (credentials on a
registering       removes the binding            challenge, as above) -> unregistered on its
                                                 2xx; no refresh, no retry either way
================  =============================  =========================================

Un-REGISTER on a clean stop (:meth:`TrunkRegistrations.unregister`): else the carrier
keeps sending calls, a PSAP's callback among them, to a node that is gone until the binding
runs out (an hour by default). The node waits a moment for the answers
(``gateway/app.py``); a crash or ``kill -9`` leaves the binding to expire.

A reload (:meth:`TrunkRegistrations.use_plans`, SPEC O-1) compares each trunk's new plan
with the running one: the same plan is left alone; the same binding (registrar, AOR,
Request-URI) with other settings (credentials, expiry, timers) is REGISTERed again at once
on its Call-ID; another binding, or a trunk gone from the dialplan, is un-REGISTERed as on
a stop and the new one (if any) registered; a new trunk registers at once.

Every REGISTER of one registration shares its Call-ID and From tag, CSeq counting up (RFC
3261 section 10.2). Calls never wait for it: the router places calls on the trunk whatever
the registration's state, and an emergency call fails over from the trunk as usual (SPEC
E-2, E-3). State changes are logged (``trunk_registration``) and readable for metrics
(:attr:`TrunkRegistration.registered`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from gateway.b2bua.core import CallCore, log
from gateway.b2bua.timers import Timer
from gateway.config.dialplan import Trunk
from gateway.config.trunk_auth import TrunkCredentials, TrunkRegister
from gateway.registrar.digest_client import authorized_retry
from gateway.sip.message import Request, Response
from gateway.sip.owners import ClientOwner
from gateway.sip.transaction import Address, ClientTransaction

__all__ = ["RegistrationPlan", "RegistrationState", "TrunkRegistration", "TrunkRegistrations"]


class RegistrationState(StrEnum):
    UNREGISTERED = "unregistered"
    REGISTERING = "registering"
    REGISTERED = "registered"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class RegistrationPlan:
    """What one trunk's registration needs: where, as whom, how often."""

    trunk: str
    registrar: Address
    aor_user: str
    domain: str
    settings: TrunkRegister
    credentials: TrunkCredentials | None = None
    #: the gateway as the dialplan writes it (its DNS targets are the registrars to try)
    written: Address | None = None

    @property
    def request_uri(self) -> str:
        host = f"[{self.domain}]" if ":" in self.domain else self.domain
        port = "" if self.settings.domain is not None else f":{self.registrar.port}"
        transport = (
            "" if self.registrar.transport == "udp" else ";transport=" + (self.registrar.transport)
        )
        return f"sip:{host}{port}{transport}"

    @property
    def aor(self) -> str:
        host = f"[{self.domain}]" if ":" in self.domain else self.domain
        return f"sip:{self.aor_user}@{host}"

    @property
    def binding(self) -> tuple[Address, str, str]:
        """What the registrar keeps: where, for which AOR, under which Request-URI."""
        return (self.registrar, self.aor, self.request_uri)


class TrunkRegistration(ClientOwner):
    """One trunk's registration (the table in this module's docstring)."""

    def __init__(
        self,
        core: CallCore,
        plan: RegistrationPlan,
        rng: random.Random,
        targets: Callable[[Address], list[Address]] | None = None,
    ):
        self.core = core
        self.plan = plan
        self.rng = rng
        self.targets = targets
        #: where REGISTERs go now: the plan's registrar, the next target after a failure
        self.registrar = plan.registrar
        self.state = RegistrationState.UNREGISTERED
        self.call_id = core.ids.call_id(core.host_for(plan.registrar))
        self.tag = core.ids.tag()
        self.cseq = 0
        #: failed attempts in a row (the backoff's exponent)
        self.failures = 0
        #: when the binding the registrar granted runs out (None: none granted)
        self.expires_at: float | None = None
        self.granted: int | None = None
        self._asked = plan.settings.expires
        self._challenged = False
        #: un-registering: the node is stopping (no refresh, no retry)
        self._leaving = False
        self._tx: ClientTransaction | None = None
        self._timer: Timer | None = None
        #: why the last REGISTER failed (None once one succeeds)
        self.last_error: str | None = None

    def registered(self, now: float) -> bool:
        """A granted binding that has not run out at ``now``."""
        return self.expires_at is not None and now < self.expires_at

    def describe(self, now: float) -> str:
        """One line for ``gateway trunks``: the state, the time left, the last error."""
        text = self.state.value
        if self.registered(now):
            assert self.expires_at is not None
            text = f"registered, {round(self.expires_at - now)} s left"
        if self.last_error is not None:
            text += f" ({self.last_error})"
        if self._timer is not None and self.state is RegistrationState.FAILED:
            text += f", retry in {max(0, round(self._timer.deadline - now))} s"
        return text

    # -- sending ---------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Send a REGISTER now (the first one, a refresh or a retry)."""
        self._challenged = False
        if self.state is not RegistrationState.REGISTERED:
            self._set_state(RegistrationState.REGISTERING)
        self._send(self._build(), now)

    def _build(self) -> Request:
        plan = self.plan
        self.cseq += 1
        headers = [
            ("max-forwards", "Max-Forwards", "70"),
            ("from", "From", f"<{plan.aor}>;tag={self.tag}"),
            ("to", "To", f"<{plan.aor}>"),
            ("call-id", "Call-ID", self.call_id),
            ("cseq", "CSeq", f"{self.cseq} REGISTER"),
            ("contact", "Contact", self.core.contact_for(self.registrar)),
            ("expires", "Expires", str(self._asked)),
            ("user-agent", "User-Agent", self.core.user_agent),
        ]
        return Request("REGISTER", plan.request_uri, headers)

    def _send(self, request: Request, now: float) -> None:
        core = self.core
        dest = self.registrar
        request.push_via(core.via_for(dest, core.ids.branch()))
        self._tx = core.layer.send_request(request, dest, now)
        self._tx.owner = self

    def _schedule(self, delay: float, now: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.core.timers.at(now + delay, self._on_timer)

    def _on_timer(self, now: float) -> None:
        self._timer = None
        self.start(now)

    def replan(self, plan: RegistrationPlan, now: float) -> None:
        """A reload changed how this binding is kept (credentials, expiry, timers), not the
        binding: REGISTER again now, same Call-ID, next CSeq, with the new settings."""
        self.stop()
        self.plan = plan
        self.registrar = plan.registrar
        self._asked = plan.settings.expires
        self.failures = 0
        self.start(now)

    def unregister(self, now: float) -> bool:
        """The node is stopping, or a reload removed the binding: remove the binding the
        registrar granted (REGISTER with Expires: 0, same Call-ID, next CSeq), or may yet
        grant: a REGISTER still in flight is overtaken (its CSeq is lower, so its answer,
        ignored, cannot undo the removal). False when there is neither (nothing sent). No
        refresh or retry follows."""
        in_flight = self._tx is not None and not self._leaving
        self.stop()
        if not self.registered(now) and not in_flight:
            return False
        self._leaving = True
        self._challenged = False
        self._asked = 0
        self._send(self._build(), now)
        return True

    @property
    def pending(self) -> bool:
        """A REGISTER is waiting for its final answer."""
        return self._tx is not None

    def stop(self) -> None:
        """No more REGISTERs (the binding is left to expire)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._tx is not None and self._tx.owner is self:
            self._tx.owner = None
        self._tx = None

    # -- responses -------------------------------------------------------------------------

    def on_response(self, tx: ClientTransaction, response: Response, now: float) -> None:
        if tx is not self._tx or response.status < 200:
            return
        self._tx = None
        status = response.status
        if status < 300:
            self._registered(response, now)
            return
        retried = (status in (401, 407) and self._answer(tx.request, response, now)) or (
            status == 423 and self._interval_too_brief(response, now)
        )
        if not retried:
            self._failed(f"{status} {response.reason}", now)

    def on_failure(self, tx: ClientTransaction, detail: str, now: float) -> None:
        if tx is not self._tx:
            return
        self._tx = None
        self._failed(detail, now)

    def _answer(self, request: Request, response: Response, now: float) -> bool:
        credentials = self.plan.credentials
        if credentials is None or self._challenged:
            return False
        self.cseq += 1
        retry = authorized_retry(
            request,
            response,
            username=credentials.username,
            password=credentials.password,
            realm=credentials.realm,
            cnonce=self.core.ids.token(8),
            cseq=self.cseq,
        )
        if retry is None:
            return False
        self._challenged = True
        self._send(retry, now)
        return True

    def _interval_too_brief(self, response: Response, now: float) -> bool:
        """423 (RFC 3261 section 10.2.8): ask again for the registrar's Min-Expires."""
        text = (response.get("Min-Expires") or "").strip()
        if not text.isdigit() or int(text) <= self._asked or int(text) > 86400:
            return False
        self._asked = int(text)
        self._send(self._build(), now)
        return True

    def _registered(self, response: Response, now: float) -> None:
        if self._leaving:
            self.expires_at = self.granted = None
            self._set_state(RegistrationState.UNREGISTERED)
            return
        granted = _granted_expires(response, self._asked)
        if granted <= 0:
            self._failed("registrar granted no time", now)
            return
        self.failures = 0
        self.last_error = None
        self.granted = granted
        self.expires_at = now + granted
        self._set_state(RegistrationState.REGISTERED, expires=granted)
        self._schedule(max(granted * self.plan.settings.refresh_ratio, 1.0), now)

    def _failed(self, why: str, now: float) -> None:
        if self._leaving:  # the binding is left to expire; the node is going
            self._set_state(self.state, error=f"un-REGISTER: {why}")
            return
        self.failures += 1
        self.last_error = why
        if not self.registered(now):  # a granted binding stays where it was granted
            self._next_registrar()
        settings = self.plan.settings
        backoff = min(settings.retry_max_s, settings.retry_min_s * 2 ** (self.failures - 1))
        delay = backoff * self.rng.uniform(0.8, 1.0)
        still = self.registered(now)
        self._set_state(
            RegistrationState.REGISTERED if still else RegistrationState.FAILED,
            error=why,
            retry_in_s=round(delay, 1),
            attempt=self.failures,
        )
        self._schedule(delay, now)

    def _next_registrar(self) -> None:
        """After a failure, the next of the gateway's DNS targets (RFC 3263 section 4.3:
        the next SRV target or address), in their current order; the same one when there
        is no other."""
        written = self.plan.written
        if self.targets is None or written is None:
            return
        candidates = self.targets(written)
        if self.registrar in candidates:
            index = candidates.index(self.registrar) + 1
            self.registrar = candidates[index % len(candidates)]
        elif candidates:
            self.registrar = candidates[0]

    def _set_state(self, state: RegistrationState, **fields: object) -> None:
        previous, self.state = self.state, state
        level = log.warning if "error" in fields else log.info
        level(
            "trunk_registration",
            trunk=self.plan.trunk,
            state=state.value,
            previous=previous.value,
            registrar=f"{self.registrar.transport}:{self.registrar.host}:{self.registrar.port}",
            **fields,
        )


def _granted_expires(response: Response, asked: int) -> int:
    """The time the registrar granted: our Contact's ``expires``, else Expires, else asked."""
    for contact in response.contacts:
        value = contact.params.get("expires")
        if value is not None and value.isdigit():
            return int(value)
    header = (response.get("Expires") or "").strip()
    return int(header) if header.isdigit() else asked


class TrunkRegistrations:
    """Every trunk's registration, started together and stopped together."""

    def __init__(
        self,
        core: CallCore,
        plans: Iterable[RegistrationPlan],
        rng: random.Random | None = None,
        targets: Callable[[Address], list[Address]] | None = None,
    ):
        self.core = core
        self.rng = rng or random.Random()
        self.targets = targets
        self.by_trunk = {plan.trunk: self._new(plan) for plan in plans}
        #: bindings a reload removed, waiting for the answer to their un-REGISTER
        self.leaving: list[TrunkRegistration] = []

    def _new(self, plan: RegistrationPlan) -> TrunkRegistration:
        return TrunkRegistration(self.core, plan, self.rng, self.targets)

    def start(self, now: float) -> None:
        for registration in self.by_trunk.values():
            registration.start(now)

    def stop(self) -> None:
        for registration in [*self.by_trunk.values(), *self.leaving]:
            registration.stop()
        self.leaving = []

    def use_plans(self, plans: Iterable[RegistrationPlan], now: float) -> list[str]:
        """A reloaded dialplan's plans (the module's docstring); the trunks whose
        registration changed (re-REGISTERed, moved, removed or added)."""
        self.leaving = [registration for registration in self.leaving if registration.pending]
        new = {plan.trunk: plan for plan in plans}
        changed = []
        for name, registration in list(self.by_trunk.items()):
            plan = new.get(name)
            if plan == registration.plan:
                continue
            changed.append(name)
            if plan is not None and plan.binding == registration.plan.binding:
                registration.replan(plan, now)
                continue
            del self.by_trunk[name]
            if registration.unregister(now):
                self.leaving.append(registration)
        for name, plan in new.items():
            if name not in self.by_trunk:
                if name not in changed:
                    changed.append(name)
                self.by_trunk[name] = self._new(plan)
                self.by_trunk[name].start(now)
        return changed

    def unregister(self, now: float) -> int:
        """Un-REGISTER every binding granted or in flight (the node is stopping); how many
        were sent."""
        return sum(registration.unregister(now) for registration in self.by_trunk.values())

    @property
    def pending(self) -> bool:
        """Some REGISTER still waits for its final answer."""
        every = [*self.by_trunk.values(), *self.leaving]
        return any(registration.pending for registration in every)

    def describe(self, now: float) -> dict[str, str]:
        """trunk -> its registration in one line (``gateway trunks``)."""
        return {name: r.describe(now) for name, r in self.by_trunk.items()}

    def registered(self, now: float) -> dict[str, bool]:
        """trunk -> registered now (for metrics and health)."""
        return {name: r.registered(now) for name, r in self.by_trunk.items()}


def registration_plans(
    trunks: Mapping[str, Trunk],
    targets: Callable[[Address], list[Address]],
    credentials: Callable[[str], TrunkCredentials | None],
) -> list[RegistrationPlan]:
    """The plans of the trunks that have ``register``: their first gateway (its first DNS
    target when resolved), the AOR user (``aor_user``, else the ``auth`` user name)."""
    plans = []
    for name, trunk in trunks.items():
        settings = trunk.registration
        if settings is None:
            continue
        gateway = trunk.gateways[0]
        written = Address(gateway.transport, gateway.host, gateway.port)
        user = settings.aor_user or (trunk.auth.username if trunk.auth is not None else name)
        plans.append(
            RegistrationPlan(
                trunk=name,
                registrar=targets(written)[0],
                written=written,
                aor_user=user,
                domain=settings.domain or gateway.host,
                settings=settings,
                credentials=credentials(name),
            )
        )
    return plans
