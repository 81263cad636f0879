"""The SIPp scenarios and the wire harness, proved without the gateway.

Each uac/uas pair in sipp-scenarios/ runs SIPp-to-SIPp, then through the Kamailio relay
(Record-Route in the path, so in-dialog requests must follow the route set). Pass rule:
every call successful on both sides. When one of these fails, the scenario or the
harness is broken, not the gateway.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from dataclasses import dataclass

import pytest
from harness import LOOPBACK, SCENARIO_DIR, Sipp, free_port, port_bound_by, sip_options
from kamailio import KamailioFactory

CALLS = 3
RATE = 20.0
SERVICE = "112"


@dataclass(frozen=True)
class ScenarioPair:
    """A caller scenario and the callee scenario it is written against."""

    uac: str
    uas: str
    uac_call_length: float | None = None
    uas_call_length: float | None = None


PAIRS = {
    "basic": ScenarioPair("uac_basic.xml", "uas_basic.xml"),
    "cancel": ScenarioPair("uac_cancel.xml", "uas_ring_cancel.xml", uac_call_length=0.05),
    "callee_hangup": ScenarioPair("uac_callee_hangup.xml", "uas_hangup.xml", uas_call_length=0.1),
    "reinvite": ScenarioPair("uac_reinvite.xml", "uas_reinvite.xml", uac_call_length=0.05),
    "update": ScenarioPair("uac_update.xml", "uas_update.xml", uac_call_length=0.05),
}


def run_pair(sipp: Sipp, pair: ScenarioPair) -> None:
    """Run ``pair`` SIPp-to-SIPp for ``CALLS`` calls; every call must succeed on both sides."""
    uas = sipp.uas(pair.uas, calls=CALLS, timeout=20, call_length=pair.uas_call_length)
    uac = sipp.uac(
        pair.uac,
        uas.address,
        CALLS,
        RATE,
        service=SERVICE,
        timeout=15,
        recv_timeout=5,
        call_length=pair.uac_call_length,
    )
    uac.assert_calls(CALLS)
    uas.wait(timeout=15).assert_calls(CALLS)


@pytest.mark.parametrize("name", list(PAIRS))
def test_pair_sipp_to_sipp(sipp: Sipp, name: str) -> None:
    run_pair(sipp, PAIRS[name])


@pytest.mark.parametrize("name", ["basic", "callee_hangup"])
def test_pair_over_tcp(sipp: Sipp, name: str) -> None:
    pair = PAIRS[name]
    uas = sipp.uas(
        pair.uas, calls=CALLS, transport="t1", timeout=20, call_length=pair.uas_call_length
    )
    uac = sipp.uac(pair.uac, uas.address, CALLS, RATE, transport="t1", service=SERVICE, timeout=15)
    uac.assert_calls(CALLS)
    result = uas.wait(timeout=15)
    # SIPp quirk: when the uac exits it closes the connection, and a uas call still in
    # its <timewait> is counted failed (FailedTcpClosed); the exit code is then 0 or 1.
    # With the gateway in the middle the gateway holds the connection instead.
    assert result.stats_found and result.returncode in (0, 1), result.describe()
    assert result.successful_calls + result.failed_tcp_closed == CALLS, result.describe()
    assert result.failed_calls == result.failed_tcp_closed <= 1, result.describe()


@pytest.mark.parametrize("name", ["cancel", "callee_hangup", "reinvite"])
def test_pair_through_kamailio(sipp: Sipp, kamailio_factory: KamailioFactory, name: str) -> None:
    pair = PAIRS[name]
    uas = sipp.uas(pair.uas, calls=CALLS, timeout=20, call_length=pair.uas_call_length)
    relay = kamailio_factory(uas.address)
    uac = sipp.uac(
        pair.uac,
        relay.address,
        CALLS,
        RATE,
        service=SERVICE,
        timeout=15,
        recv_timeout=5,
        call_length=pair.uac_call_length,
    )
    uac.assert_calls(CALLS)
    uas.wait(timeout=15).assert_calls(CALLS)
    assert "without our Route" not in relay.log_text(), relay.log_tail()


def test_kamailio_relay_record_routes_ten_calls(
    sipp: Sipp, kamailio_factory: KamailioFactory
) -> None:
    """uac -> Kamailio -> uas_basic: ACK and BYE follow the route set through Kamailio."""
    calls = 10
    uas = sipp.uas("uas_basic.xml", calls=calls, timeout=20)
    relay = kamailio_factory(uas.address)
    uac = sipp.uac(
        "uac_basic.xml", relay.address, calls, 50, service=SERVICE, timeout=15, recv_timeout=5
    )
    uac.assert_calls(calls)
    uas.wait(timeout=15).assert_calls(calls)

    route = f"Route: <sip:{relay.address};lr>"
    sent = uac.files.messages.read_text()
    for method in ("ACK", "BYE"):
        requests = [m for m in sent.split("\n\n") if m.lstrip().startswith(f"{method} sip:")]
        assert len(requests) == calls, f"{method}: {len(requests)} sent\n{uac.describe()}"
        assert all(route in m for m in requests), f"{method} without {route}:\n{requests[0]}"
    received = uas.result().files.messages.read_text()
    assert received.count(f"Record-Route: <sip:{relay.address};lr>") >= calls
    log = relay.log_text()
    for method in ("ACK", "BYE"):
        assert log.count(f"in-dialog {method} relayed by loose_route") == calls, relay.log_tail()


def test_uas_basic_refuses_an_invite_without_audio(sipp: Sipp) -> None:
    """The uas's own SDP check fails the call on its side only (SIPp goes on)."""
    no_audio = sipp.workdir / "uac_no_audio.xml"
    no_audio.parent.mkdir(parents=True, exist_ok=True)
    text = (SCENARIO_DIR / "uac_basic.xml").read_text()
    no_audio.write_text(text.replace("m=audio [media_port]", "m=video [media_port]"))
    uas = sipp.uas("uas_basic.xml", calls=1, timeout=10)
    uac = sipp.uac(no_audio, uas.address, 1, 10, service=SERVICE, timeout=10)
    uac.assert_calls(1)
    result = uas.wait(timeout=10)
    assert result.returncode == 1 and result.failed_calls == 1, result.describe()
    assert "Failed regexp match" in result.error_log.read_text(), result.describe()


class ReorderingCallee:
    """A loopback UDP callee whose 180 Ringing arrives after its 200 OK.

    This is what a proxy with several UDP workers in the path (Kamailio as the cluster
    front) can do to a callee that sends 180 and 200 a few microseconds apart: a caller
    scenario must take the late 180 as RFC 3261 section 17.1.1.2 has a UAC take it
    (ignored), not abort the call. Answers BYE with 200; stops after ``calls`` BYEs.
    """

    SDP = "v=0\r\no=callee 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    SDP += "m=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"

    def __init__(self, calls: int) -> None:
        self.calls = calls
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.settimeout(15)
        self.address = f"{LOOPBACK}:{self.sock.getsockname()[1]}"
        self.byes = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @staticmethod
    def _echoed(request: str, to_tag: str | None) -> list[str]:
        lines = [h for h in request.split("\r\n") if re.match(r"(Via|From|To|Call-ID|CSeq):", h)]
        return [f"{h};tag={to_tag}" if to_tag and h.startswith("To:") else h for h in lines]

    def _run(self) -> None:
        with self.sock:
            while self.byes < self.calls:
                data, peer = self.sock.recvfrom(65535)
                request = data.decode()
                if request.startswith("INVITE "):
                    head = self._echoed(request, "callee1")
                    ok = ["SIP/2.0 200 OK", *head, f"Contact: <sip:callee@{self.address}>"]
                    ok += ["Content-Type: application/sdp", f"Content-Length: {len(self.SDP)}"]
                    ringing = ["SIP/2.0 180 Ringing", *head, "Content-Length: 0"]
                    self.sock.sendto(("\r\n".join(ok) + "\r\n\r\n" + self.SDP).encode(), peer)
                    self.sock.sendto(("\r\n".join(ringing) + "\r\n\r\n").encode(), peer)
                elif request.startswith("BYE "):
                    ok = ["SIP/2.0 200 OK", *self._echoed(request, None), "Content-Length: 0"]
                    self.sock.sendto(("\r\n".join(ok) + "\r\n\r\n").encode(), peer)
                    self.byes += 1


@pytest.mark.parametrize(
    "scenario",
    ["uac_basic.xml", "uac_psap_callback.xml", "uac_queued.xml", "uac_admitted_or_shed.xml"],
)
def test_caller_scenarios_ignore_a_180_after_the_200(sipp: Sipp, scenario: str) -> None:
    """A 180 reordered after the 200 is a late provisional, not an aborted call."""
    callee = ReorderingCallee(CALLS)
    uac = sipp.uac(
        scenario, callee.address, CALLS, RATE, service=SERVICE, timeout=15, call_length=0.2
    )
    uac.assert_calls(CALLS)
    callee.thread.join(timeout=5)
    assert callee.byes == CALLS


def _call_with_bye_before_ack(address: str, number: int) -> list[str]:
    """One call to ``address`` as a caller whose BYE overtakes its ACK on the way (what a
    proxy with several UDP workers can do); the first lines of what came back."""
    host, port = address.rsplit(":", 1)
    sdp = ReorderingCallee.SDP
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        sock.settimeout(5)
        here = f"{LOOPBACK}:{sock.getsockname()[1]}"
        dialog = [
            f"From: <sip:caller@{here}>;tag=c{number}",
            f"Call-ID: reorder-{number}@{here}",
        ]

        def send(first: str, cseq: str, to: str, branch: str, body: str = "") -> None:
            lines = [first, f"Via: SIP/2.0/UDP {here};branch=z9hG4bK-{branch}", *dialog]
            lines += [to, f"CSeq: {cseq}", f"Contact: <sip:caller@{here}>", "Max-Forwards: 70"]
            if body:
                lines.append("Content-Type: application/sdp")
            lines.append(f"Content-Length: {len(body)}")
            sock.sendto(("\r\n".join(lines) + "\r\n\r\n" + body).encode(), (host, int(port)))

        target = f"sip:{SERVICE}@{address}"
        send(f"INVITE {target} SIP/2.0", "1 INVITE", f"To: <{target}>", f"i{number}", sdp)
        seen: list[str] = []
        to = ""
        while not to:
            reply = sock.recvfrom(65535)[0].decode()
            seen.append(reply.split("\r\n", 1)[0])
            if reply.startswith("SIP/2.0 200"):
                to = next(h for h in reply.split("\r\n") if h.startswith("To:"))
        send(f"BYE {target} SIP/2.0", "2 BYE", to, f"b{number}")  # BYE first...
        send(f"ACK {target} SIP/2.0", "1 ACK", to, f"a{number}")  # ...then the ACK
        while "CSeq: 2 BYE" not in (reply := sock.recvfrom(65535)[0].decode()):
            pass  # 200 (INVITE) retransmissions sent before the ACK got there
        seen.append(reply.split("\r\n", 1)[0])
        return seen


def test_callee_scenario_takes_a_bye_that_overtakes_the_ack(sipp: Sipp) -> None:
    """uas_basic answers a BYE that arrives before the ACK, and still waits for the ACK."""
    uas = sipp.uas("uas_basic.xml", calls=CALLS, timeout=20)
    for number in range(CALLS):
        seen = _call_with_bye_before_ack(uas.address, number)
        assert seen[-1] == "SIP/2.0 200 OK", seen
    uas.wait(timeout=15).assert_calls(CALLS)


def test_harness_ports_and_probe() -> None:
    """free_port is free on UDP and TCP; port_bound_by sees our socket; silence is None."""
    port = free_port()
    assert port != free_port("tcp")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.bind((LOOPBACK, port))
        tcp.listen()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((LOOPBACK, port))
            assert port_bound_by(os.getpid(), port, "udp")
            assert port_bound_by(os.getpid(), port, "tcp")
            assert sip_options(LOOPBACK, port, timeout=0.2) is None
    assert not port_bound_by(os.getpid(), port, "udp")
