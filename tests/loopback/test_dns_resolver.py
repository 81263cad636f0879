"""RFC 3263 resolution of trunk hosts against a DNS server on loopback (issue 13).

The server is ``testkit.dnsserver.DnsServer`` (dnspython, in a thread of the test); the
resolver under test is the gateway's ``TrunkResolver``, on the test's event loop.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import pytest

from gateway.sip.address import Address
from gateway.transport.dns import DnsQuery, TrunkResolver, order_srv
from testkit.dnsserver import DnsServer, Records

pytestmark = pytest.mark.loopback

CARRIER = Address("udp", "carrier.test", 5060)


def carrier_records(ttl: int = 60) -> Records:
    return {
        ("carrier.test", "NAPTR"): (
            ttl,
            [
                '10 50 "s" "SIPS+D2T" "" _sips._tcp.carrier.test.',
                '20 50 "s" "SIP+D2U" "" _sip._udp.carrier.test.',
            ],
        ),
        ("_sip._udp.carrier.test", "SRV"): (
            ttl,
            ["20 0 5072 b.carrier.test.", "10 0 5071 a.carrier.test."],
        ),
        ("_sips._tcp.carrier.test", "SRV"): (ttl, ["10 0 5061 tls.carrier.test."]),
        ("a.carrier.test", "A"): (ttl, ["127.0.0.11"]),
        ("b.carrier.test", "A"): (ttl, ["127.0.0.12"]),
        ("b.carrier.test", "AAAA"): (ttl, ["::1"]),
        ("tls.carrier.test", "A"): (ttl, ["127.0.0.13"]),
        ("plain.carrier.test", "A"): (ttl, ["127.0.0.14"]),
    }


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    with DnsServer(carrier_records()) as server:
        yield server


def resolver(server: DnsServer, *queries: DnsQuery, min_ttl: float = 5.0) -> TrunkResolver:
    return TrunkResolver(
        queries,
        nameserver=server.address,
        timeout=1.0,
        min_ttl=min_ttl,
        clock=asyncio.get_running_loop().time,
    )


async def test_naptr_srv_a_in_priority_order_for_the_trunks_transport(
    dns_server: DnsServer,
) -> None:
    found: list[tuple[Address, Address]] = []
    r = resolver(dns_server, DnsQuery(CARRIER, port_given=False))
    r.on_resolved = lambda target, original: found.append((target, original))
    await r.start()
    try:
        assert r.targets(CARRIER) == [
            Address("udp", "127.0.0.11", 5071),  # SRV priority 10
            Address("udp", "127.0.0.12", 5072),  # SRV priority 20: A, then AAAA
            Address("udp", "::1", 5072),
        ]
        # the SIPS+D2T record is another transport's: not followed for a udp trunk
        assert ("_sips._tcp.carrier.test", "SRV") not in dns_server.queries
        assert found[0] == (Address("udp", "127.0.0.11", 5071), CARRIER)
        tls = Address("tls", "carrier.test", 5061)
        await r.refresh(DnsQuery(tls, port_given=False))
        assert r.targets(tls) == [Address("tls", "127.0.0.13", 5061)]
    finally:
        await r.close()


async def test_a_given_port_or_a_numeric_host_skips_naptr_and_srv(dns_server: DnsServer) -> None:
    plain = Address("tcp", "plain.carrier.test", 5080)
    numeric = Address("udp", "127.0.0.9", 5060)
    r = resolver(dns_server, DnsQuery(plain, port_given=True), DnsQuery(numeric, port_given=False))
    await r.start()
    try:
        assert r.targets(plain) == [Address("tcp", "127.0.0.14", 5080)]
        assert r.targets(numeric) == [numeric]
        assert {t for _, t in dns_server.queries} == {"A", "AAAA"}
        assert all(name == "plain.carrier.test" for name, _ in dns_server.queries)
    finally:
        await r.close()


async def test_ttl_expiry_picks_up_a_moved_sbc_and_a_lost_name_keeps_the_last_answer(
    dns_server: DnsServer,
) -> None:
    sbc = Address("udp", "plain.carrier.test", 5060)
    dns_server.records[("plain.carrier.test", "A")] = (1, ["127.0.0.14"])
    r = resolver(dns_server, DnsQuery(sbc, port_given=True), min_ttl=0.0)
    await r.start()
    try:
        assert r.targets(sbc) == [Address("udp", "127.0.0.14", 5060)]
        dns_server.records[("plain.carrier.test", "A")] = (1, ["127.0.0.15"])
        assert r.targets(sbc) == [Address("udp", "127.0.0.14", 5060)]  # until the TTL ends
        for _ in range(40):
            await asyncio.sleep(0.1)
            if r.targets(sbc) != [Address("udp", "127.0.0.14", 5060)]:
                break
        assert r.targets(sbc) == [Address("udp", "127.0.0.15", 5060)]
        # the name disappears: the last good answer stays (an emergency call still has it)
        del dns_server.records[("plain.carrier.test", "A")]
        await r.refresh(DnsQuery(sbc, port_given=True))
        assert r.targets(sbc) == [Address("udp", "127.0.0.15", 5060)]
    finally:
        await r.close()


async def test_a_dead_dns_server_bounds_the_start_and_keeps_names_as_written() -> None:
    with DnsServer({}) as server:
        silent = f"127.0.0.1:{server.port}"
    r = TrunkResolver(
        [DnsQuery(CARRIER, port_given=False)],
        nameserver=silent,
        timeout=0.3,
        clock=asyncio.get_running_loop().time,
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    await r.start()
    try:
        assert loop.time() - started < 1.5
        assert r.targets(CARRIER) == [CARRIER]
    finally:
        await r.close()


def test_srv_order_is_by_priority_then_weighted() -> None:
    records = [(20, 0, 1, "late"), (10, 1, 2, "light"), (10, 99, 3, "heavy")]
    firsts = [order_srv(records, random.Random(seed))[0][1] for seed in range(200)]
    assert firsts.count("heavy") > 170  # weight 99 of 100 (RFC 2782)
    assert all(order_srv(records, random.Random(s))[-1] == (1, "late") for s in range(20))


async def test_a_reloaded_dialplans_new_name_is_resolved_at_once_and_a_gone_one_forgotten(
    dns_server: DnsServer,
) -> None:
    """A reload (SPEC O-1) adds a trunk by name: it is resolved in the background at once
    (not at the next refresh, up to a minute later); the name the reload dropped is
    forgotten. The resolver started with no name at all (no background task yet)."""
    r = resolver(dns_server)
    await r.start()
    plain = Address("udp", "plain.carrier.test", 5080)
    try:
        r.use_queries([DnsQuery(CARRIER, port_given=False), DnsQuery(plain, port_given=True)])
        assert r.targets(plain) == [plain]  # not yet: the name as written (never waits)
        for _ in range(100):
            if r.targets(plain) != [plain] and r.targets(CARRIER) != [CARRIER]:
                break
            await asyncio.sleep(0.02)
        assert r.targets(plain) == [Address("udp", "127.0.0.14", 5080)]
        assert r.targets(CARRIER)[0] == Address("udp", "127.0.0.11", 5071)
        r.use_queries([DnsQuery(plain, port_given=True)])
        assert r.targets(CARRIER) == [CARRIER]
        assert r.targets(plain) == [Address("udp", "127.0.0.14", 5080)]
    finally:
        await r.close()
