"""baresip, a real softphone, driven headless for the wire tests (issue 15).

Theory of operation
    ``Baresip`` writes a temporary configuration directory (``config`` and ``accounts``)
    and starts ``baresip -f <dir>`` with no audio device: the source is the ``ausine``
    module (a tone), there is no player module at all, and only the G.711 codecs are
    loaded. It is driven through its ``ctrl_tcp`` module: commands go as netstring-framed
    JSON (``{"command": "dial", "params": "sip:...", "token": "1"}``), and responses and
    events (``REGISTER_OK``, ``CALL_ESTABLISHED``, ``CALL_CLOSED``...) come back the same
    way. Everything listens on loopback ports picked by the test.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from testkit.processes import Child, HarnessError, free_port, require_tool

__all__ = ["Baresip"]

_CONFIG = """\
poll_method\t\tepoll
sip_listen\t\t127.0.0.1:{sip_port}
sip_transports\t\tudp
audio_source\t\tausine,440
ausrc_srate\t\t48000
ausrc_channels\t\t2
module_path\t\t/usr/lib/baresip/modules
module\t\t\tg711.so
module\t\t\tausine.so
module_app\t\taccount.so
module_app\t\tmenu.so
module_app\t\tctrl_tcp.so
ctrl_tcp_listen\t\t127.0.0.1:{ctrl_port}
"""


class Baresip:
    """One baresip process with one account, and its control connection."""

    def __init__(self, workdir: Path, account: str) -> None:
        binary = require_tool("baresip")
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.sip_port = free_port("udp")
        self.ctrl_port = free_port("tcp")
        (workdir / "config").write_text(
            _CONFIG.format(sip_port=self.sip_port, ctrl_port=self.ctrl_port)
        )
        (workdir / "accounts").write_text(account + "\n")
        self.log_path = workdir / "baresip.log"
        self.child = Child([binary, "-f", str(workdir), "-s"], workdir, self.log_path)
        self.events: list[dict[str, Any]] = []
        self._buffer = b""
        self._token = 0
        self._consumed = 0
        self.control = self._connect()

    def _connect(self, timeout: float = 10.0) -> socket.socket:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return socket.create_connection(("127.0.0.1", self.ctrl_port), timeout=1.0)
            except OSError as exc:
                if not self.child.running or time.monotonic() > deadline:
                    raise HarnessError(
                        f"baresip ctrl_tcp never listened on {self.ctrl_port}: {exc}\n"
                        + self.log_tail()
                    ) from exc
                time.sleep(0.05)

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no baresip log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- ctrl_tcp ---------------------------------------------------------------------------

    def command(self, command: str, params: str = "") -> None:
        """Send one command (its response is kept with the events)."""
        self._token += 1
        payload = json.dumps({"command": command, "params": params, "token": str(self._token)})
        data = payload.encode()
        self.control.sendall(b"%d:%s," % (len(data), data))

    def wait_for(
        self, match: Callable[[dict[str, Any]], bool], what: str, timeout: float = 15.0
    ) -> dict[str, Any]:
        """The first event or response since the last one waited for that ``match``
        accepts (earlier ones are never matched again: two calls, two CALL_ESTABLISHED)."""
        deadline = time.monotonic() + timeout
        seen = self._consumed
        while True:
            for index in range(seen, len(self.events)):
                if match(self.events[index]):
                    self._consumed = index + 1
                    return self.events[index]
            seen = len(self.events)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"baresip: no {what} within {timeout} s; got {self.events}\n" + self.log_tail()
                )
            self._read(min(left, 0.5))

    def event(self, kind: str, timeout: float = 15.0) -> dict[str, Any]:
        return self.wait_for(
            lambda m: bool(m.get("event")) and m.get("type") == kind, kind, timeout
        )

    def registered(self, timeout: float = 15.0) -> None:
        """Wait until the account is registered (a ``REGISTER_OK`` event, or ``reginfo``
        saying so: the first REGISTER may be done before the control connection is up)."""
        deadline = time.monotonic() + timeout
        while True:
            self.command("reginfo")
            answer = self.wait_for(_has_token(str(self._token)), "reginfo", timeout)
            if "OK" in str(answer.get("data", "")) or any(
                m.get("type") == "REGISTER_OK" for m in self.events
            ):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"baresip never registered: {answer}\n" + self.log_tail())
            time.sleep(0.2)

    def _read(self, timeout: float) -> None:
        self.control.settimeout(timeout)
        try:
            chunk = self.control.recv(65536)
        except TimeoutError:
            return
        if not chunk:
            raise AssertionError("baresip closed its control connection\n" + self.log_tail())
        self._buffer += chunk
        while True:
            length, colon, rest = self._buffer.partition(b":")
            if not colon or not length.isdigit() or len(rest) < int(length) + 1:
                return
            size = int(length)
            self.events.append(json.loads(rest[:size]))
            self._buffer = rest[size + 1 :]

    def close(self) -> None:
        try:
            self.control.close()
        finally:
            self.child.stop(signal.SIGTERM, grace=2.0)


def _has_token(token: str) -> Callable[[dict[str, Any]], bool]:
    return lambda message: message.get("token") == token
