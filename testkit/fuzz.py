"""Mutated SIP messages for the soak (issue 13): a corpus, mutations, and senders.

Theory of operation
    The corpus is every RFC 4475 torture message under ``tests/data/torture`` and every
    message a SIPp scenario under ``sipp-scenarios/`` sends (its CDATA blocks, SIPp's
    keywords filled in with plausible values and ``[last_*:]`` lines with headers of a
    request, so the result parses). The Request-URI user of the scenario messages is
    ``FUZZ_USER``, which the soak's dialplan routes nowhere: a mutated INVITE that still
    parses gets a 404 from the gateway and never rings the SIPp carrier.

    :class:`Mutator` draws one corpus message and applies one to three byte-level
    mutations (flips, truncation, lines deleted, doubled or spliced, random or NUL bytes,
    an oversize header, a wrong Content-Length, bare LF, a garbage start line); one
    message in sixteen goes out unchanged. It is seeded: a run can be replayed.

    :class:`UdpSender` sends datagrams from one socket; :class:`TcpSender` keeps a few
    connections and writes messages to them in turn, reconnecting when the gateway closes
    one (as it may on bad framing). Both read and drop whatever the gateway answers, so
    that its responses never fill a buffer.
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
from collections.abc import Callable

from testkit.processes import LOOPBACK, PROJECT_ROOT

TORTURE_DIR = PROJECT_ROOT / "tests" / "data" / "torture"
SCENARIO_DIRS = (PROJECT_ROOT / "sipp-scenarios", PROJECT_ROOT / "bench" / "scenarios")
#: the Request-URI user of the scenario messages: routed nowhere by the soak's dialplan
FUZZ_USER = "fuzz"
#: the largest datagram sent (IPv4 UDP payload limit, less a margin)
MAX_DATAGRAM = 65000

_KEYWORDS = {
    "local_ip": LOOPBACK,
    "remote_ip": LOOPBACK,
    "media_ip": LOOPBACK,
    "local_ip_type": "4",
    "media_ip_type": "4",
    "transport": "UDP",
    "service": FUZZ_USER,
    "pid": "4242",
    "call_number": "7",
    "call_id": "fuzz-call-7@127.0.0.1",
    "branch": "z9hG4bKfuzz7",
    "media_port": "6000",
    "from_user": "fuzzer",
    "peer_tag_param": ";tag=peer7",
    "last_cseq_number": "1",
    "expires": "3600",
    "routes": "",
    "authentication": "",
    "carrier_user": "fuzzer",
    "carrier_password": "x",
}
_LAST_HEADERS = {
    "via": "Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKfuzzlast",
    "from": "From: <sip:fuzzer@127.0.0.1>;tag=f7",
    "to": "To: <sip:fuzz@127.0.0.1>",
    "call-id": "Call-ID: fuzz-last@127.0.0.1",
    "cseq": "CSeq: 1 INVITE",
    "contact": "Contact: <sip:fuzzer@127.0.0.1:5999>",
}
_CDATA = re.compile(r"<!\[CDATA\[(.*?)\]\]>", re.S)
_KEYWORD = re.compile(r"\[([a-z_]+)(?::[^\]]*)?\]")
_LAST = re.compile(r"\[last_([A-Za-z-]+):?\]")


def _fill(template: str) -> bytes | None:
    """One SIPp CDATA block as a SIP message (None: not a message)."""
    lines = [line.strip() for line in template.strip("\n").splitlines()]
    while lines and not lines[0]:
        lines.pop(0)
    if not lines or not (lines[0].endswith("SIP/2.0") or lines[0].startswith("SIP/2.0")):
        return None
    text = "\n".join(lines)
    text = _LAST.sub(lambda m: _LAST_HEADERS.get(m.group(1).lower(), ""), text)
    text = text.replace("[next_url]", f"sip:{FUZZ_USER}@127.0.0.1:5060")
    text = text.replace("[remote_port]", "5060").replace("[local_port]", "5999")
    head, _, body = text.partition("\n\n")
    body_bytes = body.replace("\n", "\r\n").encode()
    head = head.replace("[len]", str(len(body_bytes)))
    head = _KEYWORD.sub(lambda m: _KEYWORDS.get(m.group(1), "x"), head)
    body_bytes = _KEYWORD.sub(
        lambda m: _KEYWORDS.get(m.group(1), "x"), body_bytes.decode()
    ).encode()
    head_lines = [line for line in head.split("\n") if line.strip()]
    return "\r\n".join(head_lines).encode() + b"\r\n\r\n" + body_bytes


def load_corpus() -> list[bytes]:
    """The RFC 4475 torture messages and the SIPp scenarios' messages (at least 40)."""
    corpus = [path.read_bytes() for path in sorted(TORTURE_DIR.glob("*.sip"))]
    for directory in SCENARIO_DIRS:
        for path in sorted(directory.glob("*.xml")):
            for block in _CDATA.findall(path.read_text(encoding="latin-1")):
                message = _fill(block)
                if message is not None:
                    corpus.append(message)
    return corpus


class Mutator:
    """Seeded mutations of corpus messages (the operators in this module's docstring)."""

    def __init__(self, corpus: list[bytes], seed: int = 4475):
        if not corpus:
            raise ValueError("an empty corpus")
        self.corpus = corpus
        self.rng = random.Random(seed)
        self.operators: list[Callable[[bytes], bytes]] = [
            self._flip,
            self._truncate,
            self._delete_line,
            self._double_line,
            self._splice,
            self._insert_bytes,
            self._oversize_header,
            self._content_length,
            self._bare_lf,
            self._start_line,
        ]

    def next(self) -> bytes:
        rng = self.rng
        message = rng.choice(self.corpus)
        if rng.random() < 1 / 16:
            return message
        for _ in range(rng.randint(1, 3)):
            message = rng.choice(self.operators)(message)
        return message[:MAX_DATAGRAM]

    def _flip(self, data: bytes) -> bytes:
        out = bytearray(data)
        for _ in range(self.rng.randint(1, 8)):
            if out:
                out[self.rng.randrange(len(out))] = self.rng.randrange(256)
        return bytes(out)

    def _truncate(self, data: bytes) -> bytes:
        return data[: self.rng.randrange(len(data) + 1)]

    def _lines(self, data: bytes) -> list[bytes]:
        return data.split(b"\r\n") or [data]

    def _delete_line(self, data: bytes) -> bytes:
        lines = self._lines(data)
        del lines[self.rng.randrange(len(lines))]
        return b"\r\n".join(lines)

    def _double_line(self, data: bytes) -> bytes:
        lines = self._lines(data)
        at = self.rng.randrange(len(lines))
        lines[at:at] = [lines[at]] * self.rng.randint(1, 40)
        return b"\r\n".join(lines)

    def _splice(self, data: bytes) -> bytes:
        other = self.rng.choice(self.corpus)
        return (
            data[: self.rng.randrange(len(data) + 1)] + other[self.rng.randrange(len(other) + 1) :]
        )

    def _insert_bytes(self, data: bytes) -> bytes:
        at = self.rng.randrange(len(data) + 1)
        kind = self.rng.randrange(4)
        if kind == 0:
            blob = b"\x00" * self.rng.randint(1, 64)
        elif kind == 1:
            blob = bytes(self.rng.randrange(256) for _ in range(self.rng.randint(1, 64)))
        elif kind == 2:
            blob = b";" * self.rng.randint(1, 2000)
        else:
            blob = "é☃\ufffd".encode() * self.rng.randint(1, 50)
        return data[:at] + blob + data[at:]

    def _oversize_header(self, data: bytes) -> bytes:
        size = self.rng.choice((1000, 8000, 30000, 64000))
        name = self.rng.choice((b"Via", b"To", b"X-Big", b"Contact", b"Call-ID"))
        header = name + b": " + b"A" * size
        head, sep, body = data.partition(b"\r\n\r\n")
        return head + b"\r\n" + header + (sep or b"\r\n\r\n") + body

    def _content_length(self, data: bytes) -> bytes:
        value = self.rng.choice((b"-1", b"99999999", b"0", b"12x", b"", b"4294967296", b"3"))
        replaced = re.sub(rb"(?im)^(content-length|l)\s*:.*$", b"Content-Length: " + value, data)
        return replaced if replaced != data else data + b"\r\nContent-Length: " + value

    def _bare_lf(self, data: bytes) -> bytes:
        return data.replace(b"\r\n", b"\n") if self.rng.random() < 0.5 else data.replace(b"\r", b"")

    def _start_line(self, data: bytes) -> bytes:
        _, sep, rest = data.partition(b"\r\n")
        line = self.rng.choice(
            (
                b"INVITE sip:" + b"9" * self.rng.randint(1, 300) + b"@127.0.0.1 SIP/2.0",
                b"OPTIONS * SIP/2.0",
                b"SIP/2.0 999999 Hello",
                b"FOO sip:x SIP/3.0",
                b"REGISTER sip:127.0.0.1 SIP/2.0",
                b"BYE sips:" + FUZZ_USER.encode() + b"@127.0.0.1 SIP/2.0",
                b"ACK <sip:x> SIP/2.0",
                b"",
            )
        )
        return line + (sep or b"\r\n") + rest


class UdpSender:
    """Datagrams to the gateway from one socket; its answers are read and dropped."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.setblocking(False)
        self.sent = 0
        self.errors = 0

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendto(data, self.target)
            self.sent += 1
        except OSError:  # buffer full, or the ICMP of an earlier datagram
            self.errors += 1
        self.drain()

    def drain(self) -> None:
        for _ in range(64):
            try:
                self.sock.recv(65535)
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()


class TcpSender:
    """Messages over a few TCP connections in turn; reconnects when one is closed."""

    def __init__(self, host: str, port: int, connections: int = 4):
        self.address = (host, port)
        self.socks: list[socket.socket | None] = [None] * connections
        self.turn = 0
        self.sent = 0
        self.reconnects = 0
        self.errors = 0

    def _connection(self, index: int) -> socket.socket:
        sock = self.socks[index]
        if sock is None:
            sock = socket.create_connection(self.address, timeout=2.0)
            sock.settimeout(2.0)
            self.socks[index] = sock
            self.reconnects += 1
        return sock

    def send(self, data: bytes) -> None:
        index = self.turn = (self.turn + 1) % len(self.socks)
        try:
            sock = self._connection(index)
            sock.sendall(data)
        except OSError:
            self.errors += 1
            self._drop(index)
            return
        self.sent += 1
        try:
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while sock.recv(65536):
                    pass
            sock.settimeout(2.0)
        except OSError:  # the gateway closed it after this message: a new one next time
            self._drop(index)

    def _drop(self, index: int) -> None:
        sock = self.socks[index]
        self.socks[index] = None
        if sock is not None:
            sock.close()

    def close(self) -> None:
        for index in range(len(self.socks)):
            self._drop(index)
