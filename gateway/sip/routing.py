"""From a next-hop URI to a transport address (RFC 3261 section 8.1.2, RFC 3263 section 4).

Sans-I/O: no DNS. A numeric host (IPv4 or IPv6) is final. A hostname is returned as it is,
and the transport adapter resolves it (A/AAAA) before sending; the NAPTR and SRV steps of
RFC 3263 are not done, so a hostname without port gets the default port of its transport.
"""

from __future__ import annotations

from gateway.sip.address import Address
from gateway.sip.errors import SipError
from gateway.sip.headers import NameAddr
from gateway.sip.uri import SipUri, Uri, parse_uri

__all__ = ["DEFAULT_PORTS", "UnroutableUri", "resolve_next_hop"]

#: RFC 3261 section 19.1.2: 5060 for sip over UDP/TCP, 5061 for TLS.
DEFAULT_PORTS: dict[str, int] = {"udp": 5060, "tcp": 5060, "tls": 5061}


class UnroutableUri(SipError, ValueError):
    """A next hop that is not a SIP or SIPS URI (RFC 3261 section 21.4.15: 416).

    Also a :class:`ValueError`, so callers that treat a bad route as a value error catch it.
    """

    status = 416
    reason = "Unsupported URI Scheme"


def resolve_next_hop(uri: Uri | NameAddr | str, default_transport: str = "udp") -> Address:
    """The address to send a request to, from its next-hop URI.

    The next-hop URI is the first Route value, or the Request-URI when there is none
    (:attr:`gateway.sip.dialog.Dialog.next_hop` for in-dialog requests).

    - host: the ``maddr`` parameter if present, else the host part; IPv6 without brackets.
      Hostnames are kept for the transport adapter to resolve (see the module docstring).
    - transport: the ``transport`` parameter, else ``default_transport``; always ``tls``
      for a ``sips:`` URI (RFC 3261 section 26.2.2), and ``transport=tls`` is read as TLS.
      Other values (``sctp``, ``ws``) are returned as written, lower-cased; the adapter
      refuses the ones it cannot send on.
    - port: the explicit port, else 5061 for TLS and 5060 otherwise.

    A tel:, urn: or other non-SIP URI cannot be routed on: :class:`UnroutableUri` (416).
    Text that does not parse raises :class:`~gateway.sip.errors.SipParseError` (400).
    """
    if isinstance(uri, NameAddr):
        uri = uri.uri
    elif isinstance(uri, str):
        uri = parse_uri(uri)
    if not isinstance(uri, SipUri):
        raise UnroutableUri(f"cannot route on {uri}")
    transport = uri.transport or default_transport.lower()
    if uri.scheme == "sips":
        transport = "tls"
    maddr = uri.params.get("maddr")
    host = maddr if maddr else uri.host
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = uri.port if uri.port is not None else DEFAULT_PORTS.get(transport, 5060)
    return Address(transport, host, port)
