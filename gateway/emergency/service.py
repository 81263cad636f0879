"""The emergency edge: the pure policy applied to live calls, with the store and MQTT.

Theory of operation
-------------------
The router detects emergency calls *before* any other rule (SPEC E-1) and identifies the
caller (E-13: verified credentials or the registration the request came from, never From);
:meth:`EmergencyService.emergency_call` turns the detection, the caller (an agent, or the
site of an unidentified phone on a trusted network) and the route plan into an
:class:`EmergencyCall` that rides on the B2BUA call.

For a call from a trunk, :meth:`callback_for` looks the Request-URI up in the live callback
reservations (kept in memory, written through the store, SPEC E-4/C-1).

The B2BUA then calls the hooks: :meth:`started` (DND, the ``dialled`` and ``route_chosen``
events, the callback DID reservation, awaited at most ``reserve_timeout`` seconds so a slow
store cannot hold the call), :meth:`b_leg_try`, :meth:`b_leg_failed`, :meth:`answered` and
:meth:`ended` (DND restored, ``ended``/``failed``). Events go to the MQTT publisher, which
never blocks (SPEC E-7).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from gateway.config.dialplan import Dialplan, Location
from gateway.emergency.callbacks import CallbackDecision, is_callback
from gateway.emergency.facts import AttemptFacts, CallFacts, HopFacts, OutcomeFacts
from gateway.emergency.lockdown import agent_request_allowed, is_hold_offer
from gateway.emergency.numbers import Detection
from gateway.emergency.reservations import choose_callback_did
from gateway.emergency.routing import RoutePlan, choose_route
from gateway.events.ports import Publisher, Topics
from gateway.events.schema import LockdownReason, emergency_payload, lockdown_payload, rfc3339
from gateway.location import add_location_by_value, has_location
from gateway.location.choice import (
    LocationChoice,
    choose_location,
    current_registration,
    source_host,
)
from gateway.notify import EmergencyNotice, notice_for
from gateway.presence.service import PresenceService
from gateway.sip.address import address_text
from gateway.sip.message import Request
from gateway.stores.ports import Binding, Reservation, ReservationStore

__all__ = ["EmergencyCall", "EmergencyService"]

log = structlog.get_logger("gateway.emergency")


@dataclass(slots=True)
class EmergencyCall:
    """What makes a call an emergency call (or an emergency callback)."""

    detection: Detection | None
    agent: str | None
    plan: RoutePlan | None
    test: bool
    callback: bool = False
    #: an unidentified phone's call on a trusted network: the site it is placed for (E-13)
    site: str | None = None
    #: how the agent was identified: "registration" or "credentials" (None: unidentified)
    identified_by: str | None = None
    #: where the request came from ("udp:192.0.2.7:5060"), for the events of E-13
    source: str | None = None
    did: str | None = None
    dnd: bool = False
    route: str | None = None
    answered: bool = False
    notified: bool = False
    dialled_at: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    #: where the location on the latest B-leg INVITE came from (SPEC E-10; ``trying`` event)
    location_source: str | None = None


class EmergencyService:
    """Emergency detection, routing, reservations, DND and events for one node."""

    def __init__(
        self,
        dialplan: Dialplan,
        reservations: ReservationStore,
        presence: PresenceService,
        publisher: Publisher,
        topics: Topics,
        contacts: Callable[[str], list[Binding]],
        *,
        wall_clock: Callable[[], float] = time.time,
        token: Callable[[int], str] = secrets.token_hex,
        reserve_timeout: float = 0.25,
        notify: Callable[[EmergencyNotice], None] | None = None,
        desktop_location: Callable[[str], Location | None] | None = None,
        health: Mapping[str, bool] | None = None,
        emergency_elsewhere: Callable[[str], bool] | None = None,
    ):
        self.dialplan = dialplan
        self.config = dialplan.emergency
        self.store = reservations
        self.presence = presence
        self.publisher = publisher
        self.topics = topics
        self.contacts = contacts
        self.wall_clock = wall_clock
        #: ``token(n)``: n random bytes as hex (the multipart boundary of a location body)
        self.token = token
        self.reserve_timeout = reserve_timeout
        #: E-6: the e-mail notifier (non-blocking), when a mail server is configured
        self.notify = notify
        #: E-10: the location an agent's desktop confirmed (AgentLocations.desktop)
        self.desktop_location = desktop_location
        #: trunk gateway health from OPTIONS keep-alives (SPEC O-3): down ones tried last
        self.health: Mapping[str, bool] = health if health is not None else {}
        #: is the agent's emergency call up on another live cluster node (issue #12)?
        self.emergency_elsewhere = emergency_elsewhere
        self.live: dict[str, Reservation] = {}  # DID -> live reservation
        #: agents on an emergency call now (E-8: no other outbound call meanwhile)
        self.active_agents: dict[str, int] = {}

    def use_dialplan(self, dialplan: Dialplan) -> None:
        """A reloaded dialplan for new emergency calls (calls in progress keep their plan)."""
        self.dialplan = dialplan
        self.config = dialplan.emergency

    def _now(self) -> datetime:
        """The injected wall clock as an aware UTC datetime (events, PIDF-LO timestamps)."""
        return datetime.fromtimestamp(self.wall_clock(), UTC)

    async def start(self) -> None:
        for reservation in await self.store.live(self.wall_clock()):
            self.live[reservation.did] = reservation
        log.info("callback_reservations_loaded", live=len(self.live))
        for agent_id in self.dialplan.agents:  # E-8: no emergency call survives a restart
            self.lockdown(agent_id, None, None)

    async def refresh_reservations(self) -> None:
        """Take in the callback reservations the other nodes of a cluster made (issue #12):
        the PSAP's callback may reach any node (SPEC C-1). The store's live reservations
        replace this node's copies; expired ones are dropped. One the store does not list
        is kept (during a store outage the store lists only this node's own)."""
        now = self.wall_clock()
        for reservation in await self.store.live(now):
            self.live[reservation.did] = reservation
        for did in [did for did, held in self.live.items() if held.expires_at <= now]:
            del self.live[did]

    # -- classification --------------------------------------------------------------------

    def emergency_call(
        self,
        detection: Detection,
        agent: str | None,
        *,
        identified_by: str | None = None,
        site: str | None = None,
        source: str | None = None,
    ) -> EmergencyCall:
        """The emergency facts of a detected call (SPEC E-1, E-2, E-13).

        ``agent`` is the identified agent (a registration matching the request's source,
        or verified credentials; never From). An unidentified phone on a network trusted
        for unauthenticated phones places the call for its ``site``: the site's callback
        number is presented and its location sent (an MLTS desk phone).
        """
        plan = choose_route(
            detection, detection.country, self.config, self.dialplan.trunks, self.health
        )
        for note in plan.notes:
            log.warning("emergency_route_note", note=note)
        call = EmergencyCall(
            detection,
            agent,
            plan,
            detection.test,
            site=site,
            identified_by=identified_by,
            source=source,
        )
        if agent is None and site is not None:
            call.did = self.dialplan.sites[site].callback_number
        return call

    def callback_for(self, dialled: str, trunk: str) -> CallbackDecision:
        """Is a call from ``trunk`` to ``dialled`` an emergency callback (SPEC C-1)?"""
        trusted = self.dialplan.trunks[trunk].trusted
        now = self.wall_clock()
        reservation = self.live.get(dialled) or self.live.get("+" + dialled.lstrip("+"))
        if reservation is not None and reservation.expires_at <= now:
            reservation = None
        return is_callback(dialled, trunk, trusted, reservation, now)

    def decorate_b_invite(
        self, emergency: object, hop: HopFacts, invite: Request, host: str
    ) -> None:
        """The emergency leg's identity and location (SPEC E-4, E-10); callbacks' priority."""
        if not isinstance(emergency, EmergencyCall):
            return  # not facts of ours (the router puts an EmergencyCall on every call)
        a_identity = emergency.did
        if a_identity is None and emergency.agent is not None:
            a_identity = self.dialplan.agents[emergency.agent].identity
        if emergency.callback:
            if invite.get("Priority") is None:
                invite.set("Priority", "emergency")
            return
        if a_identity is not None:
            # E-4: the callback DID is the calling number, in From and P-Asserted-Identity
            from_ = invite.from_
            invite.set("From", f"<sip:{a_identity}@{host};user=phone>;tag={from_.tag}")
            invite.set("P-Asserted-Identity", f"<sip:{a_identity}@{host};user=phone>")
        invite.set("Priority", "emergency")
        self._add_location(emergency, hop, invite, host)

    def location_choice(
        self, emergency: EmergencyCall, accepts_location: bool, phone_has_location: bool
    ) -> LocationChoice:
        """SPEC E-10: the best location for this call (gateway.location.choice)."""
        agent = emergency.agent
        site_call = desktop = network = static = None
        if agent is None and emergency.site is not None:
            site = self.dialplan.sites.get(emergency.site)
            site_call = site.location if site is not None else None
        if agent is not None:
            desktop = self.desktop_location(agent) if self.desktop_location is not None else None
            static = self.dialplan.agents[agent].location
            registration = current_registration(self.contacts(agent))
            if registration is not None:
                found = self.dialplan.site_for(source_host(registration.source))
                network = found[1].location if found is not None else None
        return choose_location(
            phone_has_location,
            desktop,
            network,
            static,
            site_call=site_call,
            path_accepts_location=accepts_location,
        )

    def _add_location(
        self, emergency: EmergencyCall, hop: HopFacts, invite: Request, host: str
    ) -> None:
        """Add the chosen location by value (RFC 6442), with its method; record its source."""
        choice = self.location_choice(emergency, hop.accepts_location, has_location(invite))
        emergency.location_source = choice.source
        if choice.location is None or choice.method is None:
            return
        who = emergency.agent if emergency.agent is not None else f"site-{emergency.site}"
        try:
            add_location_by_value(
                invite,
                choice.location,
                f"pres:{who}@{self.dialplan.node.name}",
                cid_domain=host
                if ":" not in host and not host.startswith("[")
                else "gateway.invalid",
                now_iso=self._now().isoformat(timespec="seconds").replace("+00:00", "Z"),
                boundary_random=self.token(8),
                method=choice.method,
            )
        except ValueError as exc:  # never let location trouble hold the call
            emergency.location_source = "none"
            log.error("location_by_value_failed", agent=emergency.agent, error=str(exc))

    def in_dialog_allowed(
        self, emergency: object, from_agent: bool, request: Request
    ) -> tuple[bool, str]:
        """SPEC E-8: the agent may only end the call; the emergency side may do anything."""
        hold = False
        if request.method in ("INVITE", "UPDATE") and request.body:
            hold = is_hold_offer(request.body)
        verdict = agent_request_allowed(
            request.method,
            in_dialog=True,
            is_hold_reinvite=hold,
            from_emergency_side=not from_agent,
        )
        return verdict.allowed, verdict.warning or ""

    def agent_busy_with_emergency(self, agent: str | None) -> bool:
        """Is an emergency call (or callback) of ``agent`` up, on this node or, in a
        cluster, on another live node (E-8: her other outbound calls are refused)?"""
        if agent is None:
            return False
        if self.active_agents.get(agent, 0) > 0:
            return True
        return self.emergency_elsewhere is not None and self.emergency_elsewhere(agent)

    # -- hooks -----------------------------------------------------------------------------

    async def reserve(self, call_id: str, emergency: object) -> None:
        """Reserve (or renew) the agent's callback DID (SPEC E-4), bounded in time."""
        pool = list(self.config.callback.dids)
        if not isinstance(emergency, EmergencyCall) or emergency.agent is None or not pool:
            return
        try:
            # awaited in this task (asyncio.timeout, not wait_for's extra task): a store that
            # answers at once (SQLite owned by the node) adds no loop turn to the set-up
            async with asyncio.timeout(self.reserve_timeout):
                reservation, reused = await self.store.reserve(
                    emergency.agent,
                    pool,
                    self.wall_clock(),
                    self.config.callback.window_s,
                    call_id,
                    emergency.test,
                    choose=choose_callback_did,
                )
        except Exception as exc:  # a slow or broken store must not hold the call
            log.error("callback_reservation_failed", call_id=call_id, error=repr(exc))
            return
        self.live[reservation.did] = reservation
        emergency.did = reservation.did
        self.event(
            call_id,
            emergency,
            "callback_reserved",
            expires_at=rfc3339(datetime.fromtimestamp(reservation.expires_at, UTC)),
            reused_oldest=reused,
        )

    def started(self, call_id: str, emergency: EmergencyCall) -> None:
        """The call was detected: DND for the agent, the first events (E-5, E-7)."""
        emergency.dialled_at = self.wall_clock()
        agent = emergency.agent
        if agent is not None:
            self.active_agents[agent] = self.active_agents.get(agent, 0) + 1
            if self.active_agents[agent] == 1:
                self.lockdown(agent, call_id, emergency)
            if not emergency.test or self.config.dnd_on_test_calls:
                emergency.dnd = True
                self.presence.emergency_started(agent)
        detection = emergency.detection
        kind = "callback_ringing" if emergency.callback else "dialled"
        facts: dict[str, Any] = {}
        if not emergency.callback:
            # E-13: say how the caller was identified, and who could not be
            facts["identified_by"] = emergency.identified_by
            if emergency.agent is None:
                facts["unidentified_source"] = emergency.source
                facts["site"] = emergency.site
        if detection is not None and detection.rewritten_from is not None:
            facts["dialled_as"] = detection.rewritten_from  # E-1: 9 + 911
        if detection is not None and detection.any_country and not emergency.callback:
            facts["country_unknown"] = True  # E-11: every country's strings were used
        self.event(
            call_id,
            emergency,
            kind,
            dialled=detection.dialled if detection is not None else None,
            **facts,
        )
        plan = emergency.plan
        if plan is not None and not emergency.callback:
            self.event(
                call_id,
                emergency,
                "route_chosen",
                routes=[hop.route for hop in plan.hops],
                warning=plan.warning,
            )

    def b_leg_try(self, call_id: str, emergency: EmergencyCall, hop: HopFacts) -> None:
        emergency.route = hop.trunk
        self.event(
            call_id,
            emergency,
            "trying",
            gateway=address_text(hop.address),
            location_source=emergency.location_source,
        )
        # E-6: the notification starts once the INVITE is on its way (the B2BUA sends it
        # right after this hook, in the same step; call_soon runs the notifier after it)
        self._notify(call_id, emergency)

    def _notify(self, call_id: str, emergency: EmergencyCall) -> None:
        if emergency.notified or emergency.callback or emergency.agent is None:
            return
        emergency.notified = True
        agent = self.dialplan.agents[emergency.agent]
        if self.notify is None:
            if agent.contact_list:
                log.error(
                    "notification_not_sent",
                    call_id=call_id,
                    agent=emergency.agent,
                    reason="no mail server configured (GATEWAY_SMTP_HOST)",
                )
                self.event(
                    call_id, emergency, "notification_failed", reason="no mail server configured"
                )
            return
        reservation = self.live.get(emergency.did) if emergency.did is not None else None
        detection = emergency.detection
        try:
            notice = notice_for(
                call_id,
                emergency.agent,
                agent,
                dialled=detection.dialled if detection is not None else "",
                callback_did=emergency.did,
                did_expires_at=reservation.expires_at if reservation is not None else None,
                route=emergency.route,
                test=emergency.test,
                at=emergency.dialled_at or self.wall_clock(),
            )
            asyncio.get_running_loop().call_soon(self.notify, notice)
        except Exception:
            log.exception("notification_failed_to_start", call_id=call_id)

    def b_leg_failed(self, call_id: str, emergency: EmergencyCall, failure: AttemptFacts) -> None:
        """One path failed: ``failover`` with path, gateway, code, error and detail."""
        self.event(call_id, emergency, "failover", fields=failure.as_event())

    def answered(self, call_id: str, emergency: EmergencyCall) -> None:
        emergency.answered = True
        self.event(call_id, emergency, "callback_answered" if emergency.callback else "answered")

    def ended(self, call_id: str, emergency: EmergencyCall, outcome: OutcomeFacts) -> None:
        self._notify(call_id, emergency)  # no path at all: the contacts still hear of it
        agent = emergency.agent
        if agent is not None:
            count = self.active_agents.get(agent, 0) - 1
            if count > 0:
                self.active_agents[agent] = count
            else:
                self.active_agents.pop(agent, None)
                self.lockdown(agent, call_id, None)
            if emergency.dnd:
                self.presence.emergency_ended(agent)
        if emergency.answered:
            self.event(call_id, emergency, "ended", result=outcome.kind.value)
        else:
            self.event(
                call_id,
                emergency,
                "failed",
                fields={
                    "result": outcome.kind.value,
                    "status": outcome.status,
                    "attempts": [attempt.as_event() for attempt in outcome.attempts],
                },
            )

    # -- call events (the B2BUA's CallObserver; other calls than emergency ones: ignored) --

    def call_started(self, call: CallFacts) -> None:
        if isinstance(call.emergency, EmergencyCall):
            self.started(call.id, call.emergency)

    def attempt_tried(self, call: CallFacts, hop: HopFacts) -> None:
        if isinstance(call.emergency, EmergencyCall):
            self.b_leg_try(call.id, call.emergency, hop)

    def attempt_failed(self, call: CallFacts, failure: AttemptFacts) -> None:
        if isinstance(call.emergency, EmergencyCall):
            self.b_leg_failed(call.id, call.emergency, failure)

    def call_answered(self, call: CallFacts) -> None:
        if isinstance(call.emergency, EmergencyCall):
            self.answered(call.id, call.emergency)

    def call_ended(self, call: CallFacts) -> None:
        if isinstance(call.emergency, EmergencyCall) and call.outcome is not None:
            self.ended(call.id, call.emergency, call.outcome)

    def lockdown(self, agent: str, call_id: str | None, emergency: EmergencyCall | None) -> None:
        """Tell desktops, retained, that ``agent``'s phone is locked down by the emergency
        call ``emergency`` (E-8: only "end call" is left) or, with ``None``, no longer."""
        now = self._now()
        reason = None
        if emergency is not None:
            callback = emergency.callback
            reason = (
                LockdownReason.EMERGENCY_CALLBACK if callback else LockdownReason.EMERGENCY_CALL
            )
        try:
            payload = lockdown_payload(
                agent=agent,
                active=emergency is not None,
                timestamp=now,
                call=call_id,
                since=datetime.fromtimestamp(emergency.dialled_at, UTC) if emergency else None,
                reason=reason,
                test=emergency.test if emergency is not None else False,
            )
            self.publisher.publish(self.topics.lockdown_suffix(agent), payload, retain=True)
        except ValueError as exc:  # an agent id that cannot be a topic level: log, go on
            log.error("lockdown_not_published", agent=agent, call_id=call_id, error=str(exc))
            return
        log.info("lockdown", agent=agent, call_id=call_id, active=emergency is not None)

    def event(
        self,
        call_id: str,
        emergency: EmergencyCall,
        name: str,
        fields: dict[str, Any] | None = None,
        **extra: Any,
    ) -> None:
        """Publish one emergency event; ``extra`` None values are left out, ``fields``
        (structured values, nulls included) go in as they are."""
        extra = {k: v for k, v in extra.items() if v is not None}
        if fields:
            extra.update(fields)
        payload = emergency_payload(
            call=call_id,
            event=name,
            timestamp=self._now(),
            agent=emergency.agent,
            did=emergency.did,
            route=emergency.route,
            test=emergency.test,
            extra=extra,
        )
        log.info(
            "emergency_event",
            call_id=call_id,
            emergency_event=name,
            agent=emergency.agent,
            did=emergency.did,
            route=emergency.route,
            test=emergency.test,
            **extra,
        )
        self.publisher.publish(self.topics.emergency_suffix(call_id), payload, retain=False)
