"""A small authoritative DNS responder on loopback UDP, written with dnspython, for tests.

``DnsServer(records)`` answers from ``records``: ``{(name, type): (ttl, [rdata text])}``
(``("_sip._udp.carrier.test", "SRV"): (60, ["10 1 5070 a.carrier.test."])``); a name it
has no record of gets NXDOMAIN, a known name without that type an empty answer. The test
may change ``records`` while it runs (a moved SBC). It runs in a thread of the test
process (``with DnsServer(...) as dns:``), counts the questions it was asked
(``queries``), and stops on exit.
"""

from __future__ import annotations

import select
import socket
import threading
from types import TracebackType

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

__all__ = ["DnsServer", "Records"]

Records = dict[tuple[str, str], tuple[int, list[str]]]


class DnsServer:
    """See the module docstring."""

    def __init__(self, records: Records, host: str = "127.0.0.1"):
        self.records = records
        self.queries: list[tuple[str, str]] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((host, 0))
        self.host = host
        self.port = int(self._sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="test-dns", daemon=True)

    @property
    def address(self) -> str:
        """``host:port``, the form of ``GATEWAY_DNS_SERVER``."""
        return f"{self.host}:{self.port}"

    def __enter__(self) -> DnsServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._sock], [], [], 0.05)
            if not ready:
                continue
            data, peer = self._sock.recvfrom(4096)
            try:
                query = dns.message.from_wire(data)
            except Exception:
                continue
            self._sock.sendto(self._answer(query).to_wire(), peer)

    def _answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= 0x0400  # AA: authoritative
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, rdtype))
        records = dict(self.records)  # the test may change it meanwhile
        if not any(key[0].lower() == name for key in records):
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response
        for (record_name, record_type), (ttl, values) in records.items():
            if record_name.lower() == name and record_type == rdtype and values:
                response.answer.append(
                    dns.rrset.from_text_list(question.name, ttl, "IN", rdtype, values)
                )
        return response
