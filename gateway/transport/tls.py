"""TLS for SIP with the standard library's ssl module (RFC 3261 section 26.2, RFC 5630).

Theory of operation
-------------------
A TLS listener presents the certificate and key of the settings (``GATEWAY_TLS_CERT_FILE``,
``GATEWAY_TLS_KEY_FILE``) and, with ``GATEWAY_TLS_VERIFY_CLIENTS``, asks clients for a
certificate that chains to ``GATEWAY_TLS_CA_FILE``.

Towards a trunk the gateway is the TLS client. Which context and which name to check are
decided by the address it connects to (:class:`TlsPeers`): every trunk gateway whose
transport is ``tls`` is registered under its own host and port with its trunk's
:class:`~gateway.config.dialplan.TrunkTls`, and an address found for it in DNS is
registered as an alias of it, so the certificate is checked against the name the
operator wrote (RFC 5922 section 4.1: the domain of the URI, not the SRV target) and that
name is sent as SNI. The certificate must chain to the trunk's CA (default: the settings',
else the system store); there is no "accept anything" mode, and a refused certificate is
a transport failure: the call fails over, it is never retried in clear text.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from gateway.config.dialplan import Dialplan, TrunkTls
from gateway.config.settings import Settings
from gateway.sip.address import Address, is_ip_literal

__all__ = [
    "TlsPeer",
    "TlsPeers",
    "client_context",
    "server_context",
    "tls_peers_from",
    "tls_problems",
]


def server_context(
    cert_file: Path | str, key_file: Path | str, client_ca_file: Path | str | None = None
) -> ssl.SSLContext:
    """The listeners' context; with ``client_ca_file``, clients must present a certificate
    that chains to it (mutual TLS). Raises OSError/ssl.SSLError on unusable files."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert_file), str(key_file))
    if client_ca_file is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(str(client_ca_file))
    return context


def client_context(
    ca_file: Path | str | None = None,
    cert_file: Path | str | None = None,
    key_file: Path | str | None = None,
) -> ssl.SSLContext:
    """A context for connecting to a trunk: its certificate verified (chain and host name)
    against ``ca_file`` (the system store when None); ``cert_file``/``key_file``: the
    client certificate for mutual TLS."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file is not None:
        context.load_verify_locations(str(ca_file))
    if cert_file is not None and key_file is not None:
        context.load_cert_chain(str(cert_file), str(key_file))
    return context


@dataclass(frozen=True, slots=True)
class TlsPeer:
    """How to connect to one TLS peer: the context, and the name its certificate must
    carry, also sent as SNI (RFC 6066 section 3; ssl leaves SNI out for an IP address)."""

    context: ssl.SSLContext
    server_name: str


class TlsPeers:
    """The TLS peer to use for an address the gateway connects to (see the module doc).

    ``default`` serves addresses that no trunk names (a registered agent reached over
    TLS, a sips: callback fallback): it checks their certificate against the address's
    own host.
    """

    def __init__(self, default: ssl.SSLContext | None = None):
        self._default = default
        self._peers: dict[tuple[str, int], TlsPeer] = {}

    def add(self, host: str, port: int, peer: TlsPeer) -> None:
        self._peers[(host, port)] = peer

    def alias(self, resolved: Address, original: Address) -> None:
        """``resolved`` (an address DNS gave for ``original``) is the same peer."""
        peer = self._peers.get((original.host, original.port))
        if peer is None and not is_ip_literal(original.host) and self._default is not None:
            peer = TlsPeer(self._default, original.host)
        if peer is not None:
            self._peers[(resolved.host, resolved.port)] = peer

    def peer_for(self, target: Address, reported_as: Address) -> TlsPeer:
        """The peer for a connection to ``target`` (an IP address), known to the
        transaction layer as ``reported_as`` (the same, or the host name it came from)."""
        for key in ((reported_as.host, reported_as.port), (target.host, target.port)):
            peer = self._peers.get(key)
            if peer is not None:
                return peer
        context = self._default if self._default is not None else client_context()
        return TlsPeer(context, reported_as.host)


def _trunk_context(tls: TrunkTls, settings: Settings) -> ssl.SSLContext:
    cert: Path | str | None = tls.client_cert_file
    key: Path | str | None = tls.client_key_file
    if tls.mutual and cert is None:
        cert, key = settings.tls_cert_file, settings.tls_key_file
    return client_context(tls.ca_file or settings.tls_ca_file, cert, key)


def tls_peers_from(dialplan: Dialplan, settings: Settings) -> TlsPeers:
    """Every tls gateway of every trunk, with its trunk's verification settings.

    Raises OSError/ssl.SSLError when a file is unusable (:func:`tls_problems` says which).
    """
    peers = TlsPeers(client_context(settings.tls_ca_file))
    for trunk in dialplan.trunks.values():
        gateways = [gw for gw in trunk.gateways if gw.transport == "tls"]
        if not gateways:
            continue
        context = _trunk_context(trunk.tls, settings)
        for gw in gateways:
            peers.add(gw.host, gw.port, TlsPeer(context, trunk.tls.server_name or gw.host))
    return peers


def tls_problems(dialplan: Dialplan, settings: Settings) -> list[str]:
    """What stops the TLS of this dialplan from working with these settings, one line per
    problem, in words an operator can act on (``gateway check`` and ``gateway run``)."""
    problems: list[str] = []
    listeners = [a for a in dialplan.listen if a.transport == "tls"]
    if listeners and (settings.tls_cert_file is None or settings.tls_key_file is None):
        where = ", ".join(f"{a.host}:{a.port}" for a in listeners)
        problems.append(
            f"listen: a tls listener ({where}) needs a certificate: set GATEWAY_TLS_CERT_FILE "
            "and GATEWAY_TLS_KEY_FILE (PEM files)"
        )
    elif listeners:
        assert settings.tls_cert_file is not None and settings.tls_key_file is not None
        ca = settings.tls_ca_file if settings.tls_verify_clients else None
        if settings.tls_verify_clients and ca is None:
            problems.append(
                "GATEWAY_TLS_VERIFY_CLIENTS is on but GATEWAY_TLS_CA_FILE is not set: "
                "no CA to check client certificates against"
            )
        try:
            server_context(settings.tls_cert_file, settings.tls_key_file, ca)
        except (OSError, ssl.SSLError) as error:
            problems.append(
                f"GATEWAY_TLS_CERT_FILE / GATEWAY_TLS_KEY_FILE ({settings.tls_cert_file}, "
                f"{settings.tls_key_file}): cannot be used as the listeners' certificate: "
                f"{error}"
            )
    for name, trunk in dialplan.trunks.items():
        if not any(gw.transport == "tls" for gw in trunk.gateways):
            continue
        if (
            trunk.tls.mutual
            and trunk.tls.client_cert_file is None
            and (settings.tls_cert_file is None or settings.tls_key_file is None)
        ):
            problems.append(
                f"trunks.{name}.tls.mutual: no client certificate: set client_cert_file and "
                "client_key_file, or GATEWAY_TLS_CERT_FILE and GATEWAY_TLS_KEY_FILE"
            )
            continue
        try:
            _trunk_context(trunk.tls, settings)
        except (OSError, ssl.SSLError) as error:
            problems.append(f"trunks.{name}.tls: cannot load its CA or certificate: {error}")
    return problems
