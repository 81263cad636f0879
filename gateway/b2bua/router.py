"""Where a new call goes: inbound from a trunk to a queue, outbound from an agent to a trunk.

Theory of operation
-------------------
The source of an INVITE decides its direction (SPEC R-1, R-2, R-3):

=====================================  =========================================
source                                 decision
=====================================  =========================================
a trunk gateway's host:port, or a      inbound: the first ``inbound`` rule whose
network in the trunk's inbound_from    ``match`` fits the DID -> that queue; else 404
a network in registrar                 outbound without authentication (a lab)
.unauthenticated_outbound_from
anyone else                            must authenticate as an agent (407), then
                                       outbound by the ``outbound`` rules
=====================================  =========================================

Behind a cluster's front (``node.fronts``) every request comes from the front's address;
"source" above and below is then the address the front names in ``X-Gateway-Source``
(:mod:`gateway.fronts`, the one place that reads it), and the front's own address is none
of the rows (no trunk, no registration, no trusted network).

Outbound routing is the first matching outbound rule; its trunk's gateways become the hop
list, tried in order by the B2BUA. A gateway written as a host name becomes one hop per
address DNS gave for it (``targets``: RFC 3263 NAPTR/SRV/A order, already resolved ahead
of time by ``gateway/transport/dns.py``, so no call waits on DNS).

Who is calling (SPEC E-13) is decided once, for every call from the agents' side: verified
digest credentials on the request, else a live registration from the request's source
(transport, address and port; for TCP its connection). Never the From header. That identity
drives the lock-down (E-8: an agent on an emergency call places no other call) and every
emergency exemption.

Emergency calls are looked for first (E-1), on the Request-URI as received and then on what
the first ordinary rule would make of it (9 + 911). They are never refused (E-3):

=====================================  =========================================
caller                                 emergency call placed as
=====================================  =========================================
identified agent                       the agent's call (DID, DND, location)
unidentified, network trusted for      the site's call: the ``sites`` entry
unauthenticated phones                 covering the source (callback number,
                                       location); no site: no callback number
unidentified, anywhere else            challenged (407); with valid credentials,
                                       that agent's call
=====================================  =========================================
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping

import structlog

from gateway.b2bua.answers import uri_dialled
from gateway.b2bua.call import NextHop
from gateway.b2bua.decisions import Decision, Emergency, Outbound, Queued, RouteRefusal
from gateway.b2bua.queues import best_binding, binding_address
from gateway.config.dialplan import Dialplan, RouteDecision, Site
from gateway.config.keepalive import gateway_key
from gateway.config.trunk_auth import TrunkCredentials
from gateway.emergency.callbacks import strip_untrusted_priority
from gateway.emergency.numbers import detect, detect_rewritten
from gateway.emergency.routing import RoutePlan
from gateway.emergency.service import EmergencyCall, EmergencyService
from gateway.fronts import Fronts
from gateway.registrar.service import AuthRefusal, log_auth_failed
from gateway.sip.address import Address, address_text, ip_of
from gateway.sip.message import Request
from gateway.sip.routing import resolve_next_hop
from gateway.sip.uri import Uri
from gateway.stores.ports import Binding

log = structlog.get_logger("gateway.router")

__all__ = ["Authenticator", "ContactCentreRouter", "DialplanRouter"]

#: checks an agent's credentials on a request: the agent id, or the refusal to send (407)
Authenticator = Callable[[Request], "str | AuthRefusal"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def refusal_of(refusal: AuthRefusal) -> RouteRefusal:
    """The registrar's answer to a request that is not an agent's, as the call's answer."""
    return RouteRefusal(refusal.status, refusal.reason, refusal.warning, refusal.headers)


def _networks(items: tuple[str, ...]) -> list[_Network]:
    return [ipaddress.ip_network(item, strict=False) for item in items]


def _in(host: str, networks: list[_Network]) -> bool:
    if not networks:
        return False
    address = ip_of(host)
    if address is None:
        return False
    return any(address in network for network in networks)


class ContactCentreRouter:
    """Inbound calls to queues, outbound calls by the outbound rules (see the table)."""

    def __init__(
        self,
        dialplan: Dialplan,
        authenticate: Authenticator | None = None,
        emergency: EmergencyService | None = None,
        contacts: Callable[[str], list[Binding]] | None = None,
        agent_at: Callable[[Address], str | None] | None = None,
        targets: Callable[[Address], list[Address]] | None = None,
        health: Mapping[str, bool] | None = None,
        fronts: Fronts | None = None,
    ):
        self.dialplan = dialplan
        #: the cluster's SIP fronts: a request from one is judged by the source it names
        #: (``X-Gateway-Source``), never by the front's own address (issue #12)
        self.fronts = fronts if fronts is not None else Fronts(dialplan.node.fronts)
        self.authenticate = authenticate
        self.emergency = emergency
        self.contacts = contacts
        #: the agent whose live registration came from a source (SPEC E-13)
        self.agent_at = agent_at
        #: the addresses to try for a trunk gateway, in order (RFC 3263); none: as written
        self.targets = targets or (lambda address: [address])
        #: trunk gateway health from OPTIONS keep-alives (``gateway_key -> up``, SPEC O-3)
        self.health: Mapping[str, bool] = health if health is not None else {}
        self._trunk_by_address: dict[tuple[str, int], str] = {}
        self._trunk_networks: list[tuple[str, list[_Network]]] = []
        for name, trunk in dialplan.trunks.items():
            for gw in trunk.gateways:
                self._trunk_by_address.setdefault((gw.host, gw.port), name)
            if trunk.inbound_from:
                self._trunk_networks.append((name, _networks(trunk.inbound_from)))
        self._open = _networks(dialplan.registrar.unauthenticated_outbound_from)
        #: trunks whose unreadable secret was logged already (once per dialplan)
        self._secret_warned: set[str] = set()
        for name, trunk in dialplan.trunks.items():
            if trunk.auth is not None:
                self.credentials(name)  # read the secret now, not on the first call

    def with_dialplan(self, dialplan: Dialplan) -> ContactCentreRouter:
        """The same router over a reloaded ``dialplan`` (its indexes built afresh)."""
        return ContactCentreRouter(
            dialplan,
            self.authenticate,
            self.emergency,
            self.contacts,
            self.agent_at,
            self.targets,
            self.health,
            self.fronts,
        )

    def trunk_of(self, source: Address) -> str | None:
        """The trunk a request from ``source`` (an origin) belongs to, if any; a front's
        own address is no trunk's."""
        if self.fronts.is_front(source):
            return None
        name = self._trunk_by_address.get((source.host, source.port))
        if name is not None:
            return name
        for trunk, networks in self._trunk_networks:
            if _in(source.host, networks):
                return trunk
        return None

    def trusted_source(self, source: Address) -> bool:
        """Is ``source`` (an origin) a trunk, a registered agent's phone or on a network
        trusted for unauthenticated phones? (Strangers' requests are rate-limited, SPEC
        O-6.) A front itself is not limited either: it carries every call's in-dialog
        requests and its own OPTIONS probes, and limits floods itself (pike)."""
        if self.fronts.is_front(source):
            return True
        if self.trunk_of(source) is not None or self._open_network(source):
            return True
        return self.agent_at is not None and self.agent_at(source) is not None

    def _open_network(self, source: Address) -> bool:
        """Is ``source`` (an origin) on a network trusted for unauthenticated phones? A
        front's own address never is (every phone behind it shares it)."""
        return _in(source.host, self._open) and not self.fronts.is_front(source)

    def may_be_priority(self, uri: Uri, source: Address) -> bool:
        """Might a new INVITE to ``uri`` from ``source`` be an emergency call or an
        emergency callback? The overload gate asks before it sheds (SPEC O-4): cheap, and
        erring towards yes; :meth:`route` decides, on identity, as always."""
        emergency = self.emergency
        if emergency is None:
            return False
        dialled = uri_dialled(uri)
        trunk = self.trunk_of(source)
        if trunk is not None:
            return emergency.callback_for(dialled, trunk).callback
        if detect(uri, None) is not None:
            return True
        ordinary = self.dialplan.route(dialled)
        return ordinary is not None and detect_rewritten(ordinary.user, dialled, None) is not None

    def route(self, request: Request, dialled: str, source: Address) -> Decision:
        source = self.fronts.origin_of(request, source)
        trunk = self.trunk_of(source)
        if trunk is None or not self.dialplan.trunks[trunk].trusted:
            removed = strip_untrusted_priority(request)  # SPEC C-2
            if removed:
                log.info("priority_stripped", removed=removed, source=address_text(source))
        emergency = self.emergency
        if trunk is not None:
            if emergency is not None:
                callback = emergency.callback_for(dialled, trunk)
                if callback.callback and callback.agent_id is not None:
                    return self._callback(callback.agent_id, callback.test, dialled)
            for rule in self.dialplan.inbound:
                if rule.pattern.fullmatch(dialled):
                    return Queued(rule.queue, rule.priority, trunk)
            return RouteRefusal(404, "Not Found", f"no inbound rule matches {dialled[:64]}")
        open_network = self._open_network(source)
        agent, identified_by = self._identify(request, source)
        # the ordinary rules are run once: emergency detection looks at their rewrite, and
        # an ordinary call is routed with it
        ordinary = self.dialplan.route(dialled)
        if emergency is not None:
            # SPEC E-1: before every other rule, and never refused (E-3)
            decision = self._emergency(
                request, dialled, source, agent, identified_by, open_network, ordinary
            )
            if decision is not None:
                return decision
        if agent is None and not open_network:
            if self.authenticate is None:
                return RouteRefusal(
                    403, "Forbidden", "unknown source and no agents to authenticate"
                )
            outcome = self.authenticate(request)
            if isinstance(outcome, AuthRefusal):
                return refusal_of(outcome)
            agent = outcome
        if emergency is not None and emergency.agent_busy_with_emergency(agent):
            # SPEC E-8: while an agent's emergency call is up, no other outbound call
            return RouteRefusal(403, "Forbidden", "agent is on an emergency call")
        return self.outbound(dialled, agent, source, ordinary)

    def _identify(self, request: Request, source: Address) -> tuple[str | None, str | None]:
        """The agent behind a request and how it is known (SPEC E-13): verified digest
        credentials on the request, else a live registration from the request's source
        (transport, address and port; for TCP the connection). Never the From header,
        which the phone writes as it likes."""
        if request.get("proxy-authorization") is not None and self.authenticate is not None:
            outcome = self.authenticate(request)
            if isinstance(outcome, str):
                return outcome, "credentials"
            if not any("stale=true" in value for _, value in outcome.headers):
                log_auth_failed(request, source, "proxy-authorization")
        if self.agent_at is not None and not self.fronts.is_front(source):
            agent = self.agent_at(source)
            if agent is not None:
                return agent, "registration"
        return None, None

    def _emergency(
        self,
        request: Request,
        dialled: str,
        source: Address,
        agent: str | None,
        identified_by: str | None,
        open_network: bool,
        ordinary: RouteDecision | None,
    ) -> Decision | None:
        """An emergency call from the agents' side (SPEC E-1, E-13), or None.

        The Request-URI as received is looked at first; failing that, what the first
        matching ordinary rule makes of the dialled string (9 + 911 behind an outside-line
        rule is an emergency call too). Identified callers place the call as themselves.
        An unidentified phone on a network trusted for unauthenticated phones places it for
        its site; anywhere else it is challenged (407): a challenge is not a refusal, and
        once the credentials check out it is that agent's call.
        """
        assert self.emergency is not None
        rewritten: str | None = None
        if detect(request.uri, None) is None:
            if ordinary is None or detect_rewritten(ordinary.user, dialled, None) is None:
                return None  # not an emergency string in any country
            rewritten = ordinary.user
        site: tuple[str, Site] | None = None
        if agent is None:
            found = self._unidentified(request, dialled, source, open_network)
            if isinstance(found, RouteRefusal):
                return found
            agent, identified_by, site = found
        if agent is not None:
            location = self.dialplan.agents[agent].location
            country = location.country if location is not None else None
        else:
            country = site[1].location.country if site is not None else None
        if rewritten is None:
            detection = detect(request.uri, country)
        else:
            detection = detect_rewritten(rewritten, dialled, country)
        if detection is None:
            return None  # SPEC E-1: another country's dial string is an ordinary call
        if agent is None:
            log.warning(
                "emergency_caller_unidentified",
                source=address_text(source),
                site=site[0] if site is not None else None,
                detail="no registration from this source and no credentials: placed as "
                + (f"the call of site {site[0]!r}" if site is not None else "a call of no site"),
            )
        call = self.emergency.emergency_call(
            detection,
            agent,
            identified_by=identified_by,
            site=site[0] if site is not None else None,
            source=address_text(source),
        )
        plan = call.plan
        hops = self.emergency_hops(plan) if plan is not None else []
        return Emergency(call, hops, plan.warning if plan is not None else None)

    def emergency_hops(self, plan: RoutePlan) -> list[NextHop]:
        """An emergency route plan as B2BUA hops (emergency timers, failover codes)."""
        return [
            NextHop(
                trunk=hop.route,
                address=address,
                user=hop.user or "",
                failover_codes=hop.failover_codes,
                provisional_timeout=hop.provisional_timeout_s,
                request_uri=hop.request_uri,
                accepts_location=hop.accepts_location,
                setup_timeout=self.dialplan.emergency.setup_timeout_s,
                credentials=self.credentials(hop.trunk),
            )
            for hop in plan.hops
            for address in self.targets(Address(hop.transport, hop.host, hop.port))
        ]

    def _unidentified(
        self, request: Request, dialled: str, source: Address, open_network: bool
    ) -> tuple[str | None, str | None, tuple[str, Site] | None] | RouteRefusal:
        """An emergency caller not known by its source (SPEC E-13): its credentials (a
        407 challenge first, which is not a refusal), or on an open network its site."""
        if not open_network and self.authenticate is not None:
            challenge = self.authenticate(request)
            if isinstance(challenge, AuthRefusal):
                log.warning(
                    "emergency_call_challenged",
                    source=address_text(source),
                    dialled=dialled[:64],
                    status=challenge.status,
                )
                return refusal_of(challenge)
            return challenge, "credentials", None
        if self.fronts.is_front(source):
            return None, None, None  # the front's own address is no site's phone
        return None, None, self.dialplan.site_for(source.host)

    def _callback(self, agent_id: str, test: bool, dialled: str) -> Decision:
        """SPEC C-1, C-3: ring the agent at once, else its fallback destination."""
        assert self.emergency is not None
        agent = self.dialplan.agents[agent_id]
        hops: list[NextHop] = []
        best = best_binding(self.contacts(agent_id)) if self.contacts is not None else None
        if best is not None:
            hops.append(
                NextHop(
                    trunk=f"agent:{agent_id}",
                    address=binding_address(best),
                    user=agent.username or agent_id,
                    failover_codes=frozenset(range(300, 700)),
                    provisional_timeout=self.dialplan.emergency.callback_ring_timeout_s,
                    request_uri=best.contact_uri,
                    ring_timeout=self.dialplan.emergency.callback_ring_timeout_s,
                    agent=agent_id,
                    route=best.path,
                )
            )
        if agent.callback_fallback:
            try:
                address = resolve_next_hop(agent.callback_fallback)
            except ValueError:
                log.error(
                    "callback_fallback_unusable", agent=agent_id, fallback=agent.callback_fallback
                )
            else:
                hops.append(
                    NextHop(
                        trunk="callback-fallback",
                        address=address,
                        user=dialled,
                        failover_codes=frozenset(),
                        provisional_timeout=10.0,
                        request_uri=agent.callback_fallback,
                    )
                )
        call = EmergencyCall(None, agent_id, None, test, callback=True, did=dialled)
        return Emergency(call, hops, "the agent is unreachable and has no callback_fallback")

    def outbound(
        self,
        dialled: str,
        agent: str | None,
        source: Address | None = None,
        decision: RouteDecision | None = None,
    ) -> Decision:
        """The ordinary call's hops by the outbound rules (``decision``: their result for
        ``dialled``, when the caller already has it)."""
        if decision is None:
            decision = self.dialplan.route(dialled)
        if decision is None:
            return RouteRefusal(404, "Not Found", f"no outbound rule matches {dialled[:64]}")
        trunk = decision.trunk
        codes = frozenset(trunk.failover_codes)
        health = self.health
        gateways = [gw for gw in trunk.gateways if health.get(gateway_key(gw), True)]
        if not gateways:  # SPEC O-3: down gateways are skipped for ordinary calls
            warning = f"every gateway of trunk {decision.trunk_name} is down (OPTIONS keep-alives)"
            return RouteRefusal(503, "Service Unavailable", warning)
        hops = [
            NextHop(
                trunk=decision.trunk_name,
                address=address,
                user=decision.user,
                failover_codes=codes,
                provisional_timeout=trunk.provisional_timeout_s,
                trusted=trunk.trusted,
                credentials=self.credentials(decision.trunk_name),
            )
            for gw in gateways
            for address in self.targets(Address(gw.transport, gw.host, gw.port))
        ]
        return Outbound(hops, agent, self.caller_id(decision.rule, agent, source))

    def credentials(self, trunk_name: str) -> TrunkCredentials | None:
        """The digest credentials of a trunk (its ``auth``), None without or unreadable."""
        trunk = self.dialplan.trunks.get(trunk_name)
        if trunk is None or trunk.auth is None:
            return None
        credentials = trunk.auth.credentials
        if credentials is None and trunk_name not in self._secret_warned:
            self._secret_warned.add(trunk_name)
            log.error("trunk_credentials_unavailable", trunk=trunk_name, detail=trunk.auth.problem)
        return credentials

    def caller_id(self, rule_name: str, agent: str | None, source: Address | None) -> str | None:
        """The E.164 number an outbound call presents, as the rule's ``caller_id`` says:
        the identified agent's ``identity``, a queue's, the caller's site's callback
        number, or none. Never a header of the phone's (From, P-Asserted-Identity and
        P-Preferred-Identity are the phone's own claims)."""
        rule = next(r for r in self.dialplan.outbound if r.name == rule_name)
        kind, _, name = rule.caller_id.partition(":")
        if kind == "agent":
            return self.dialplan.agents[agent].identity if agent is not None else None
        if kind == "queue":
            return self.dialplan.queues[name].identity
        if kind == "site" and source is not None and not self.fronts.is_front(source):
            site = self.dialplan.site_for(source.host)
            return site[1].callback_number if site is not None else None
        return None


class DialplanRouter(ContactCentreRouter):
    """Outbound rules only, every source allowed: the relay of the SIP core's own tests."""

    def route(self, request: Request, dialled: str, source: Address) -> Decision:
        return self.outbound(dialled, None)
