"""RFC 3263 DNS for trunk hosts: NAPTR -> SRV -> A/AAAA, ahead of time, with TTLs.

Theory of operation
-------------------
Emergency calls must never wait on DNS, so trunk names are resolved before any call needs
them and refreshed in the background; a call only reads the last good answer
(:meth:`TrunkResolver.targets`, synchronous, no I/O).

For each trunk gateway written as a host name (a numeric address skips DNS):

==================================  ==============================================
the gateway in the dialplan         lookups (RFC 3263 section 4)
==================================  ==============================================
port given                          A and AAAA of the host, that port
no port                             NAPTR of the host, records for the gateway's
                                    transport (SIP+D2U, SIP+D2T, SIPS+D2T) by order
                                    and preference; each replacement's SRV (or,
                                    without NAPTR, ``_sip._udp``/``_sip._tcp``/
                                    ``_sips._tcp`` of the host); SRV targets by
                                    priority, weighted within one (RFC 2782); then
                                    A/AAAA of each target; without SRV: A/AAAA of
                                    the host on the transport's default port
==================================  ==============================================

The transport is the one the operator wrote: NAPTR records of other transports are not
followed (a trunk set to tls never gets a plain-text target). Every address found is one
target; the router makes each target a hop of the failover list, in order. An answer is
kept for its smallest TTL (at least ``min_ttl``) and refreshed when that runs out; a
failed refresh, or one that finds no address, keeps the last good answer (and says so
in the log). Until a name has
been resolved once, the gateway keeps the name as its hop and the transport adapter
resolves it with a bounded wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver
import structlog

from gateway.sip.address import Address, address_text, is_ip_literal
from gateway.sip.routing import DEFAULT_PORTS
from gateway.tasks import stop_task

__all__ = ["DnsQuery", "TrunkResolver", "order_srv"]

log = structlog.get_logger("gateway.dns")

#: RFC 3263 section 4.1 / RFC 3261 section 26: NAPTR service field for each transport
NAPTR_SERVICES: dict[str, str] = {"udp": "SIP+D2U", "tcp": "SIP+D2T", "tls": "SIPS+D2T"}
#: RFC 3263 section 4.2: the SRV prefix of each transport
SRV_PREFIXES: dict[str, str] = {"udp": "_sip._udp.", "tcp": "_sip._tcp.", "tls": "_sips._tcp."}


@dataclass(frozen=True, slots=True)
class DnsQuery:
    """One trunk gateway to resolve: ``address`` as written (host name, port, transport);
    ``port_given``: the port was written, so no NAPTR/SRV (RFC 3263 section 4.2)."""

    address: Address
    port_given: bool


is_numeric = is_ip_literal  # a numeric address skips DNS (RFC 3263 section 4.2)


def order_srv(
    records: Iterable[tuple[int, int, int, str]], rng: random.Random
) -> list[tuple[int, str]]:
    """(port, target) of SRV records (priority, weight, port, target) in the order to try
    them: lowest priority first; within a priority, RFC 2782's weighted random order."""
    by_priority: dict[int, list[tuple[int, int, str]]] = {}
    for priority, weight, port, target in records:
        by_priority.setdefault(priority, []).append((weight, port, target))
    ordered: list[tuple[int, str]] = []
    for priority in sorted(by_priority):
        group = sorted(by_priority[priority], key=lambda r: r[0])  # weight 0 first
        while group:
            total = sum(weight for weight, _, _ in group)
            pick = rng.uniform(0, total) if total else 0
            running = 0
            for index, (weight, port, target) in enumerate(group):
                running += weight
                if running >= pick:
                    ordered.append((port, target))
                    del group[index]
                    break
    return ordered


@dataclass
class _Answer:
    targets: list[Address]
    expires: float


class TrunkResolver:
    """Resolves trunk gateways ahead of time and keeps them fresh (see the module doc).

    ``on_resolved(target, original)`` is told of every address found for a name (the TLS
    peers use it to check that address's certificate against the name).
    """

    def __init__(
        self,
        queries: Iterable[DnsQuery],
        *,
        nameserver: str = "",
        timeout: float = 2.0,
        min_ttl: float = 5.0,
        clock: Callable[[], float],
        rng: random.Random | None = None,
        on_resolved: Callable[[Address, Address], None] | None = None,
    ):
        self.queries = {q.address: q for q in queries if not is_numeric(q.address.host)}
        self.timeout = timeout
        self.min_ttl = min_ttl
        self.clock = clock
        self.rng = rng or random.Random()
        self.on_resolved = on_resolved
        self._answers: dict[Address, _Answer] = {}
        self._resolver = _make_resolver(nameserver, timeout)
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    # -- what calls read -------------------------------------------------------------------

    def targets(self, address: Address) -> list[Address]:
        """The addresses to try for ``address``, in order; ``[address]`` itself for a
        numeric address and for a name not resolved yet (no I/O, never waits)."""
        answer = self._answers.get(address)
        if answer is None or not answer.targets:
            return [address]
        return list(answer.targets)

    # -- lifetime --------------------------------------------------------------------------

    async def start(self) -> None:
        """Resolve every name once (waiting at most ``timeout``), then keep them fresh."""
        if not self.queries:
            return
        first = [asyncio.create_task(self.refresh(q)) for q in self.queries.values()]
        _done, pending = await asyncio.wait(first, timeout=self.timeout + 0.5)
        for task in pending:
            task.cancel()
        await asyncio.gather(*first, return_exceptions=True)
        self._task = asyncio.create_task(self._keep_fresh(), name="dns-refresh")

    async def close(self) -> None:
        await stop_task(self._task)

    def use_queries(self, queries: Iterable[DnsQuery]) -> None:
        """A reloaded dialplan's names: a new one is resolved at once (in the background;
        until then its calls resolve it with a bounded wait), a name gone is forgotten."""
        self.queries = {q.address: q for q in queries if not is_numeric(q.address.host)}
        for address in [a for a in self._answers if a not in self.queries]:
            del self._answers[address]
        if self._task is None and self.queries:
            self._task = asyncio.create_task(self._keep_fresh(), name="dns-refresh")
        self._wake.set()

    async def _keep_fresh(self) -> None:
        while True:
            self._wake.clear()
            now = self.clock()
            due = [q for a, q in self.queries.items() if self._due(a, now)]
            if due:
                await asyncio.gather(*(self.refresh(q) for q in due), return_exceptions=True)
            for query in due:  # a reload dropped the name while it was looked up
                if query.address not in self.queries:
                    self._answers.pop(query.address, None)
            expiries = [a.expires for a in self._answers.values()]
            wait = min(expiries, default=now + self.min_ttl) - self.clock()
            # asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancel (close) that
            # comes as the wake-up does, and this loop would never end
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(max(wait, 0.2), 60.0)):
                    await self._wake.wait()

    def _due(self, address: Address, now: float) -> bool:
        answer = self._answers.get(address)
        return answer is None or answer.expires <= now

    # -- lookups ---------------------------------------------------------------------------

    async def refresh(self, query: DnsQuery) -> None:
        """Resolve ``query`` now; keep the last good answer when this fails."""
        address = query.address
        try:
            async with asyncio.timeout(self.timeout):  # (not wait_for: see _keep_fresh)
                targets, ttl = await self._resolve(query)
        except (dns.exception.DNSException, TimeoutError, OSError) as exc:
            previous = self._answers.get(address)
            log.warning(
                "dns_lookup_failed",
                name=address.host,
                error=str(exc) or type(exc).__name__,
                kept=[address_text(t) for t in previous.targets] if previous else [],
            )
            retry = self.clock() + max(self.min_ttl, 1.0)
            if previous is not None:
                previous.expires = retry
            else:
                self._answers[address] = _Answer([], retry)
            return
        previous = self._answers.get(address)
        if not targets:
            kept = previous.targets if previous is not None else []
            log.warning("dns_no_address", name=address.host, kept=[address_text(t) for t in kept])
            if kept:  # a name that lost its records keeps its last good answer for a while
                assert previous is not None
                previous.expires = self.clock() + max(self.min_ttl, 1.0)
                return
        self._answers[address] = _Answer(targets, self.clock() + max(ttl, self.min_ttl))
        if self.on_resolved is not None:
            for target in targets:
                self.on_resolved(target, address)
        log.info(
            "dns_resolved",
            name=address.host,
            targets=[address_text(t) for t in targets],
            ttl=ttl,
        )

    async def _resolve(self, query: DnsQuery) -> tuple[list[Address], float]:
        address = query.address
        transport = address.transport
        if query.port_given:
            return await self._addresses(address.host, address.port, transport)
        ttls: list[float] = []
        srv_names = await self._naptr(address.host, transport, ttls)
        if not srv_names:
            srv_names = [SRV_PREFIXES.get(transport, "_sip._udp.") + address.host]
        srv: list[tuple[int, int, int, str]] = []
        for name in srv_names:
            srv += await self._srv(name, ttls)
        if not srv:
            port = DEFAULT_PORTS.get(transport, 5060)
            found, ttl = await self._addresses(address.host, port, transport)
            return found, min([ttl, *ttls])
        targets: list[Address] = []
        for port, target in order_srv(srv, self.rng):
            found, ttl = await self._addresses(target, port, transport)
            ttls.append(ttl)
            targets += [t for t in found if t not in targets]
        return targets, min(ttls)

    async def _naptr(self, host: str, transport: str, ttls: list[float]) -> list[str]:
        try:
            answer = await self._resolver.resolve(host, "NAPTR")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        assert answer.rrset is not None
        ttls.append(answer.rrset.ttl)
        wanted = NAPTR_SERVICES.get(transport, "").encode().lower()
        records = sorted(
            (r for r in answer if r.flags.lower() == b"s" and r.service.lower() == wanted),
            key=lambda r: (r.order, r.preference),
        )
        return [r.replacement.to_text(omit_final_dot=True) for r in records]

    async def _srv(self, name: str, ttls: list[float]) -> list[tuple[int, int, int, str]]:
        try:
            answer = await self._resolver.resolve(name, "SRV")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        assert answer.rrset is not None
        ttls.append(answer.rrset.ttl)
        return [
            (r.priority, r.weight, r.port, r.target.to_text(omit_final_dot=True))
            for r in answer
            if r.target.to_text() != "."  # RFC 2782: "." means no service
        ]

    async def _addresses(self, host: str, port: int, transport: str) -> tuple[list[Address], float]:
        """A then AAAA of ``host`` (a numeric target is itself)."""
        if is_numeric(host):
            return [Address(transport, host, port)], float("inf")
        found: list[Address] = []
        ttls: list[float] = []
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self._resolver.resolve(host, rdtype)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            assert answer.rrset is not None
            ttls.append(answer.rrset.ttl)
            found += [Address(transport, r.address, port) for r in answer]
        return found, min(ttls, default=self.min_ttl)


def _make_resolver(nameserver: str, timeout: float) -> dns.asyncresolver.Resolver:
    if nameserver:
        host, _, port = nameserver.rpartition(":")
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [host.removeprefix("[").removesuffix("]")]
        resolver.port = int(port)
    else:
        try:
            resolver = dns.asyncresolver.Resolver()
        except dns.resolver.NoResolverConfiguration:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = ["127.0.0.1"]
    resolver.lifetime = timeout
    resolver.timeout = timeout
    resolver.cache = None  # TTLs are kept here, where the refresh is scheduled
    return resolver
