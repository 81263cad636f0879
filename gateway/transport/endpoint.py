"""The asyncio adapter around the sans-I/O SIP core: UDP, TCP and TLS on IPv4 and IPv6.

Theory of operation
-------------------
The adapter only moves bytes and time (aioquic style). Bytes from a socket are parsed and
fed to the :class:`TransactionLayer`; after every input (a datagram, a stream chunk, a timer,
a call from the transaction user) ``pump()`` drains what the layer wants sent, hands its
events to the transaction user, and re-arms a single ``loop.call_at`` for the layer's
earliest timer. Nothing here interprets SIP beyond answering a malformed request with 400
(RFC 3261 section 21.4.1) and the framing of stream transports (section 18.3).

UDP responses leave from the socket of the request's address family; TCP ones and in-dialog
requests to a peer that connected to us reuse its connection (RFC 3581 in spirit).

TLS (RFC 3261 section 26.2) is the TCP code with an ssl context (the server's, or what
:class:`TlsPeers` gives for a peer). A ``tls`` destination is only ever reached over TLS: a
failed handshake is logged (``tls_handshake_failed``) and reported as a transport failure,
so the call fails over; it is never sent in clear text instead.

Keep-alive (RFC 5626 section 3.5.1): a double CRLF "ping" on a stream gets a CRLF "pong";
connections the gateway opened are pinged every ``keepalive_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import sys
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Protocol, cast

import structlog

from gateway.logs import LineBudget
from gateway.sip.address import Address, address_text, is_ip_literal, udp_source
from gateway.sip.errors import SipParseError, warning_value
from gateway.sip.headers import Via
from gateway.sip.message import Request, StreamFramer, make_response, parse_message
from gateway.sip.transaction import TransactionLayer
from gateway.transport.intake import UNCLASSIFIED, UdpIntake
from gateway.transport.listen import ListenerChoice, ListenSpec, family_of
from gateway.transport.load import size_receive_buffer
from gateway.transport.tls import TlsPeers

__all__ = ["ListenSpec", "SipEndpoint"]

log = structlog.get_logger("gateway.transport")

EventHandler = Callable[[Any], None]


class TransactionUser(Protocol):
    """A sans-I/O transaction user (the B2BUA): events and timers with the time they come."""

    def handle(self, event: Any, now: float) -> None: ...

    def get_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...


# ICMP errors on an unconnected UDP socket (RFC 3261 section 18.4: unreachable and parameter
# problem mean "the send failed"; source quench and time exceeded are ignored). Linux reports
# them only with IP_RECVERR / IPV6_RECVERR (ip(7)): each waits in the error queue, where
# recvmsg(MSG_ERRQUEUE) returns a sock_extended_err named by the destination that failed. It
# fails the next read (the loop's or the intake's); error_received drains the queue. Other
# systems do not report them: there the transactions' timers are the only failure detection.
_ICMP_ERRORS = sys.platform.startswith("linux")
_IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
_IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
_SO_EE_ORIGIN_ICMP = 2
_SO_EE_ORIGIN_ICMP6 = 3
_SOCK_EXTENDED_ERR = struct.Struct("=IBBBBII")  # ee_errno, origin, type, code, pad, info, data
#: (origin, ICMP type) -> what it means; codes matter only for "port unreachable"
_ICMP_FAILURES = {
    (_SO_EE_ORIGIN_ICMP, 3): "ICMP destination unreachable",
    (_SO_EE_ORIGIN_ICMP, 12): "ICMP parameter problem",
    (_SO_EE_ORIGIN_ICMP6, 1): "ICMPv6 destination unreachable",
    (_SO_EE_ORIGIN_ICMP6, 4): "ICMPv6 parameter problem",
}
_PORT_UNREACHABLE = {(_SO_EE_ORIGIN_ICMP, 3, 3), (_SO_EE_ORIGIN_ICMP6, 1, 4)}


def _udp_socket(spec: ListenSpec) -> socket.socket:
    """A bound, non-blocking UDP socket for ``spec`` that reports ICMP errors (Linux)."""
    sock = socket.socket(spec.family, socket.SOCK_DGRAM)
    try:
        if _ICMP_ERRORS:
            with contextlib.suppress(OSError):
                if spec.family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
                else:
                    sock.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
        size_receive_buffer(sock)  # room for a burst while overload control sheds
        sock.setblocking(False)
        sock.bind((spec.host, spec.port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"bind udp:{spec.host}:{spec.port}: {exc.strerror}") from None
    return sock


def icmp_errors(sock: socket.socket, limit: int = 64) -> Iterator[tuple[Address, str, bool]]:
    """Drain ``sock``'s error queue: ``(destination, detail, refused)`` per send failure.

    ``refused`` is a port unreachable (nothing listens there). Errors RFC 3261 section
    18.4 says to ignore (source quench, time exceeded, packet too big) are skipped.
    """
    for _ in range(limit):
        try:
            _, ancillary, _, address = sock.recvmsg(64, 512, socket.MSG_ERRQUEUE)
        except OSError:  # BlockingIOError: the queue is empty
            return
        for _level, _kind, data in ancillary:
            if len(data) < _SOCK_EXTENDED_ERR.size or not isinstance(address, tuple):
                continue
            _errno, origin, icmp_type, code, *_ = _SOCK_EXTENDED_ERR.unpack_from(data)
            what = _ICMP_FAILURES.get((origin, icmp_type))
            if what is None:
                continue
            refused = (origin, icmp_type, code) in _PORT_UNREACHABLE
            detail = "ICMP port unreachable" if refused else f"{what} (code {code})"
            yield Address("udp", str(address[0]), int(address[1])), detail, refused


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, endpoint: SipEndpoint, spec: ListenSpec, sock: socket.socket):
        self.endpoint = endpoint
        self.spec = spec
        self.sock = sock
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass the asyncio ABCs: no isinstance check here
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.endpoint.intake.on_datagram(data, udp_source(addr), self)

    def error_received(self, exc: Exception) -> None:
        # an ICMP error (see _ICMP_ERRORS): the error queue says which destination failed;
        # handled next turn (a send from inside uvloop's callback segfaulted at shutdown)
        failures = list(icmp_errors(self.sock)) if _ICMP_ERRORS else []
        if not failures:
            log.debug("udp_error", error=str(exc))
        for destination, detail, refused in failures:
            self.endpoint.loop.call_soon(self.endpoint.unreachable, destination, detail, refused)


CRLF_PING, CRLF_PONG = b"\r\n\r\n", b"\r\n"  # RFC 5626 s. 3.5.1: a stream's ping and pong


class _TcpConnection(asyncio.Protocol):
    def __init__(self, endpoint: SipEndpoint, transport_name: str = "tcp", outbound: bool = False):
        self.endpoint = endpoint
        self.transport_name = transport_name
        #: opened by the gateway (it sends the keep-alive pings on it)
        self.outbound = outbound
        self.framer = StreamFramer(endpoint.max_message_bytes)
        self.transport: asyncio.Transport | None = None
        self.peer: Address | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = Address(self.transport_name, peer[0], peer[1])
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.endpoint.connection_opened(self.peer, self)

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None
        if self.framer.pending == 0 and data.startswith(CRLF_PING):
            self.write(CRLF_PONG)  # RFC 5626 section 3.5.1: pong; the framer skips the CRLFs
        try:
            messages = self.framer.feed(data)
        except SipParseError as exc:
            log.warning("stream_framing_error", peer=str(self.peer), error=exc.detail)
            if self.transport is not None:
                self.transport.close()
            return
        for message in messages:
            self.endpoint.on_bytes(message, self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None:
            self.endpoint.connection_closed(self.peer, self)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


class SipEndpoint:
    """Sockets + one timer around a :class:`TransactionLayer`.

    ``on_event`` is the transaction user: it receives every event of the layer and may call
    the layer (send_request, send_response, ...) from inside the callback; ``pump()`` runs
    until nothing is left to send or dispatch. A sans-I/O ``user`` (the B2BUA), when set,
    gets the events instead, with the time, and its timers share the one loop timer.
    """

    def __init__(
        self,
        layer: TransactionLayer,
        listeners: list[ListenSpec],
        *,
        max_message_bytes: int = 65535,
        loop: asyncio.AbstractEventLoop | None = None,
        tls_server: ssl.SSLContext | None = None,
        tls_peers: TlsPeers | None = None,
        keepalive_interval: float = 0.0,
        resolve_timeout: float = 5.0,
    ):
        self.layer = layer
        #: the listeners' TLS context (required by a tls listener)
        self.tls_server = tls_server
        #: context and expected name of each TLS peer we connect to
        self.tls_peers = tls_peers or TlsPeers()
        #: seconds between CRLF pings on connections we opened; 0: none
        self.keepalive_interval = keepalive_interval
        #: longest wait for the system resolver on a host name not resolved beforehand
        self.resolve_timeout = resolve_timeout
        self.listeners = listeners
        self._listener_for = ListenerChoice(listeners)
        self.max_message_bytes = max_message_bytes
        self.loop = loop or asyncio.get_event_loop()
        self.on_event: EventHandler = lambda event: None
        self.user: TransactionUser | None = None
        #: sees each message before parsing (overload gate): None, b"" (drop) or a response
        self.gate: Callable[[bytes, Address, float, int], bytes | None] | None = None
        self._udp: dict[int, _UdpProtocol] = {}
        self._tcp_servers: list[asyncio.AbstractServer] = []
        self._connections: dict[Address, _TcpConnection] = {}
        self._connecting: dict[Address, list[bytes]] = {}
        self._resolved: dict[str, str] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._pumping = False
        self.parse_errors = 0
        self._malformed_lines = LineBudget(lines=10, interval_s=60.0)  # O-6: no log flood
        self.received = 0  # messages read (the read burst of overload control, SPEC O-4)
        #: UDP datagrams read ahead of the work, served emergency first (transport/intake.py)
        self.intake = UdpIntake(self.loop, self.on_bytes, max_message_bytes)
        #: name resolutions and TCP connects under way: owned here, awaited on close
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Open every listening socket; raises OSError when an address is unusable."""
        for spec in self.listeners:
            if spec.transport == "udp":
                sock = _udp_socket(spec)
                # a large send queue only: a 4 MB receive queue held 911 INVITEs for a second
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
                _, protocol = await self.loop.create_datagram_endpoint(
                    lambda spec=spec, sock=sock: _UdpProtocol(self, spec, sock),  # type: ignore[misc]
                    sock=sock,
                )
                self._udp.setdefault(spec.family, protocol)
            elif spec.transport == "tcp":
                server = await self.loop.create_server(
                    lambda: _TcpConnection(self, "tcp"),
                    host=spec.host,
                    port=spec.port,
                    family=spec.family,
                    reuse_address=True,
                )
                self._tcp_servers.append(server)
            elif spec.transport == "tls":
                if self.tls_server is None:
                    raise ValueError(
                        f"the tls listener {spec.sent_by} has no certificate "
                        "(GATEWAY_TLS_CERT_FILE, GATEWAY_TLS_KEY_FILE)"
                    )
                server = await self.loop.create_server(
                    lambda: _TcpConnection(self, "tls"),
                    host=spec.host,
                    port=spec.port,
                    family=spec.family,
                    reuse_address=True,
                    ssl=self.tls_server,
                )
                self._tcp_servers.append(server)
            else:
                raise ValueError(f"transport {spec.transport!r} is not supported yet")
            log.info("listening", transport=spec.transport, host=spec.host, port=spec.port)
        if self.keepalive_interval > 0:
            self._spawn(self._keepalive(), "sip-keepalive")

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.intake.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for server in self._tcp_servers:
            server.close()
        for conn in list(self._connections.values()):
            if conn.transport is not None:
                conn.transport.close()
        for proto in self._udp.values():
            if proto.transport is not None:
                proto.transport.close()
        for server in self._tcp_servers:
            await server.wait_closed()

    # -- addresses for Via and Contact -------------------------------------------------

    def udp_sockets(self) -> list[socket.socket]:
        """The listening UDP sockets (their read backlog is an overload signal)."""
        return [proto.sock for proto in self._udp.values()]

    def listener_for(self, destination: Address) -> ListenSpec:
        """The listener whose address we present to ``destination`` (same transport/family)."""
        return self._listener_for(destination)

    def via_for(self, destination: Address, branch: str) -> Via:
        """A Via naming the listener used towards ``destination`` (rport asked, RFC 3581)."""
        spec = self.listener_for(destination)
        host = f"[{spec.host}]" if ":" in spec.host else spec.host
        return Via(
            destination.transport.upper(), host, spec.port, {"branch": branch, "rport": None}
        )

    def contact_for(self, destination: Address, user: str = "gw") -> str:
        """A Contact value for dialogs with ``destination``."""
        spec = self.listener_for(destination)
        transport = "" if spec.transport == "udp" else f";transport={spec.transport}"
        return f"<sip:{user}@{spec.sent_by}{transport}>"

    # -- input -------------------------------------------------------------------------

    def on_bytes(self, data: bytes, source: Address, lane: int = UNCLASSIFIED) -> None:
        """One datagram (with its inbox lane) or framed stream message from ``source``."""
        self.received += 1
        if len(data) <= 4 and not data.strip():
            return  # keep-alive (RFC 5626 CRLF ping on UDP)
        reply = None if self.gate is None else self.gate(data, source, self.loop.time(), lane)
        if reply is not None:
            if reply:  # else dropped
                self._send(reply, source)
            return
        try:
            message = parse_message(data, max_size=self.max_message_bytes)
        except SipParseError as exc:
            self._reject_malformed(exc, source)
            return
        try:
            self.layer.receive(message, source, self.loop.time())
        except SipParseError as exc:
            self._reject_malformed(exc, source)
        except Exception:  # never let a bug escape into the transport callback
            log.exception("receive_failed", source=str(source))
        self.pump()

    def _reject_malformed(self, exc: SipParseError, source: Address) -> None:
        self.parse_errors += 1
        partial = getattr(exc, "partial", None)
        dropped = self._malformed_lines.allow(self.loop.time())
        if dropped is not None:
            log.info(
                "malformed_message",
                source=address_text(source),
                status=exc.status,
                error=exc.detail,
                not_logged_before=dropped,
            )
        if not isinstance(partial, Request) or partial.method == "ACK":
            return
        try:
            response = make_response(partial, exc.status, exc.reason)
            response.add("Warning", warning_value(exc.detail))
            destination = source
            data = response.to_bytes()
        except Exception:
            return  # the headers needed to answer were unusable: drop (RFC 3261 section 16.3)
        self._send(data, destination)

    # -- pumping -----------------------------------------------------------------------

    def pump(self) -> None:
        """Send what the layer queued, dispatch its events, re-arm the timer."""
        if self._pumping:
            return
        self._pumping = True
        layer = self.layer
        try:
            while True:
                out = layer.next_outgoing()
                if out is not None:
                    self._send(out.data, out.destination)
                    continue
                event = layer.next_event()
                if event is None:
                    break
                try:
                    if self.user is not None:
                        self.user.handle(event, self.loop.time())
                    else:
                        self.on_event(event)
                except Exception:
                    log.exception("event_handler_failed", event_type=type(event).__name__)
        finally:
            self._pumping = False
        self._arm_timer()

    def _arm_timer(self) -> None:
        deadline = self.layer.get_timer()
        if self.user is not None:
            user_deadline = self.user.get_timer()
            if user_deadline is not None and (deadline is None or user_deadline < deadline):
                deadline = user_deadline
        if deadline is None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
                self._timer_at = None
            return
        if self._timer is not None and self._timer_at == deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        now = self.loop.time()
        try:
            self.layer.handle_timer(now)
        except Exception:
            log.exception("timer_failed")
        if self.user is not None:
            try:
                self.user.handle_timer(now)
            except Exception:
                log.exception("user_timer_failed")
        self.pump()

    # -- output ------------------------------------------------------------------------

    def _send(self, data: bytes, destination: Address) -> None:
        """Send to ``destination``; failures are reported against it as given."""
        if is_ip_literal(destination.host):
            self._send_to(data, destination, destination)
            return
        resolved = self._resolved.get(destination.host)
        if resolved is None:
            name = f"sip-resolve-{address_text(destination)}"
            self._spawn(self._resolve_and_send(data, destination), name)
            return
        self._send_to(data, Address(destination.transport, resolved, destination.port), destination)

    def _send_to(self, data: bytes, target: Address, reported_as: Address) -> None:
        if target.transport == "udp":
            proto = self._udp.get(family_of(target.host))
            if proto is None or proto.transport is None:
                self._fail(reported_as, "no UDP socket for this address family")
                return
            try:
                proto.transport.sendto(data, (target.host, target.port))
            except OSError as exc:
                self._fail(reported_as, str(exc))
            return
        conn = self._connections.get(target)
        if conn is not None:
            conn.write(data)
            return
        pending = self._connecting.get(target)
        if pending is not None:
            pending.append(data)
            return
        self._connecting[target] = [data]
        self._spawn(self._connect(target, reported_as), f"sip-connect-{address_text(target)}")

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``work`` as a named task this endpoint keeps until it ends (close awaits it)."""
        task = self.loop.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve_and_send(self, data: bytes, destination: Address) -> None:
        try:
            async with asyncio.timeout(self.resolve_timeout):  # keeps a cancel, unlike wait_for
                infos = await self.loop.getaddrinfo(destination.host, destination.port)
        except (OSError, TimeoutError) as exc:
            self._fail(destination, f"cannot resolve {destination.host}: {exc}")
            self.pump()
            return
        resolved = str(infos[0][4][0])
        self._resolved[destination.host] = resolved
        self._send_to(data, Address(destination.transport, resolved, destination.port), destination)
        self.pump()

    async def _connect(self, target: Address, reported_as: Address) -> None:
        context: ssl.SSLContext | None = None
        server_name: str | None = None
        if target.transport == "tls":
            peer = self.tls_peers.peer_for(target, reported_as)
            context, server_name = peer.context, peer.server_name
        try:
            await self.loop.create_connection(
                lambda: _TcpConnection(self, target.transport, outbound=True),
                target.host,
                target.port,
                ssl=context,
                server_hostname=server_name,
            )
        except ssl.SSLError as exc:
            # a refused certificate is a transport failure: fail over, never go plain
            self._connecting.pop(target, None)
            log.warning(
                "tls_handshake_failed",
                destination=address_text(reported_as),
                server_name=server_name,
                reason=getattr(exc, "verify_message", None) or exc.reason or str(exc),
                detail=str(exc),
            )
            self._fail(reported_as, f"TLS handshake with {server_name} failed: {exc}")
            self.pump()
        except OSError as exc:
            self._connecting.pop(target, None)
            self._fail(reported_as, str(exc), refused=isinstance(exc, ConnectionRefusedError))
            self.pump()

    async def _keepalive(self) -> None:
        """RFC 5626 section 3.5.1: a CRLF ping on each connection we opened, periodically."""
        while True:
            await asyncio.sleep(self.keepalive_interval)
            for conn in list(self._connections.values()):
                if conn.outbound:
                    conn.write(CRLF_PING)

    def connection_opened(self, peer: Address, conn: _TcpConnection) -> None:
        self._connections[peer] = conn
        for data in self._connecting.pop(peer, []):
            conn.write(data)

    def connection_closed(self, peer: Address, conn: _TcpConnection) -> None:
        if self._connections.get(peer) is conn:
            del self._connections[peer]

    def _fail(self, destination: Address, why: str, *, refused: bool = False) -> None:
        log.info("transport_error", destination=str(destination), error=why, refused=refused)
        self.layer.transport_error(destination, self.loop.time(), why, refused=refused)
        # pump() is called by whoever triggered the send

    def unreachable(self, destination: Address, detail: str, refused: bool) -> None:
        """An ICMP error for a datagram we sent to ``destination`` (an IP literal)."""
        self._fail(destination, detail, refused=refused)
        for name, resolved in list(self._resolved.items()):
            if resolved == destination.host:  # transactions that know the peer by name
                self._fail(Address("udp", name, destination.port), detail, refused=refused)
        self.pump()
