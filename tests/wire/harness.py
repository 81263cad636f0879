"""Helpers for the wire-level tests: free ports, SIPp runs, the gateway as a process.

Theory of operation
    A wire test puts real SIP peers around the system under test, all on loopback:

        SIPp uac  ->  [Kamailio]  ->  gateway  ->  SIPp uas

    ``Sipp`` starts the peers. A uas runs in the background (``Sipp.uas`` returns a
    ``SippProcess`` as soon as its SIP socket is bound); a uac runs to completion
    (``Sipp.uac`` returns a ``SippResult``). Every SIPp run is bounded twice: by ``-m``
    (number of calls) and by ``-timeout``/``-timeout_error``; the uac is also killed if
    it outlives that timeout by ``HARD_TIMEOUT_MARGIN`` seconds. Each run writes its
    statistics (``-trace_stat``), unexpected messages (``-trace_err``), every message
    (``-trace_msg``) and its final screens (``-trace_screen``) into a directory of its
    own, and ``SippResult.describe()`` puts them into the assertion message.

    The pass rule is Kamailio's: count successful and failed calls on *both* sides. A
    ``check_it`` regular expression that fails in a uas marks that call failed on the
    uas only - SIPp goes on with the scenario, so the uac sees a normal call.

    ``start_gateway`` runs ``python -m gateway run --dialplan FILE`` and waits until the
    gateway answers an OPTIONS over UDP with 200.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SCENARIO_DIR = PROJECT_ROOT / "sipp-scenarios"
LOOPBACK = "127.0.0.1"

#: SIPp's built-in scenarios, selected with ``-sn`` instead of ``-sf``.
SIPP_BUILTINS = frozenset(
    {
        "uac",
        "uas",
        "regexp",
        "branchc",
        "branchs",
        "uac_pcap",
        "3pcc-C-A",
        "3pcc-C-B",
        "3pcc-A",
        "3pcc-B",
    }
)

#: Debian/Ubuntu package that provides each external tool.
TOOL_PACKAGES: Mapping[str, str] = {
    "sipp": "sip-tester",
    "kamailio": "kamailio",
}

#: Seconds a uac may outlive its own ``-timeout`` before it is killed.
HARD_TIMEOUT_MARGIN = 10.0

SippTransport = Literal["u1", "un", "ui", "t1", "tn"]
PortKind = Literal["udp", "tcp"]


# --------------------------------------------------------------------------- tools


def require_tool(name: str) -> str:
    """Return the path of the executable ``name``; fail the test when it is missing.

    A missing tool is a broken test environment, not a reason to skip: the test fails
    and the message names the apt package to install.
    """
    path = shutil.which(name)
    if path is None:
        for directory in ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin"):
            candidate = Path(directory) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                path = str(candidate)
                break
    if path is None:
        package = TOOL_PACKAGES.get(name, name)
        pytest.fail(
            f"required tool {name!r} not found on PATH or in /usr/sbin; install the apt "
            f"package {package!r} (apt-get install {package}, or scripts/install-test-deps.sh)",
            pytrace=False,
        )
    return path


# --------------------------------------------------------------------------- ports

_ports_handed_out: set[int] = set()


def _bindable(kind: PortKind, host: str, port: int) -> bool:
    sock_type = socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, sock_type) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(kind: PortKind = "udp", host: str = LOOPBACK) -> int:
    """Return a port on ``host`` that is free for both UDP and TCP.

    The kernel picks a candidate for ``kind`` and the other protocol is then checked on
    the same number, because the gateway listens on both. A port is never handed out
    twice in one test session, so two peers started in a row cannot collide.
    """
    other: PortKind = "tcp" if kind == "udp" else "udp"
    sock_type = socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM
    for _ in range(100):
        with socket.socket(socket.AF_INET, sock_type) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port in _ports_handed_out:
            continue
        if _bindable(other, host, port) and _bindable(kind, host, port):
            _ports_handed_out.add(port)
            return port
    raise RuntimeError(f"no port free for both UDP and TCP on {host} after 100 tries")


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    return inodes


def port_bound_by(pid: int, port: int, kind: PortKind = "udp") -> bool:
    """Tell whether process ``pid`` holds a socket bound to ``port`` (listening, for TCP).

    Reads /proc/net/{udp,tcp}{,6} and matches socket inodes against /proc/PID/fd, so
    a port held by some other process does not count. Linux only.
    """
    inodes = _socket_inodes(pid)
    if not inodes:
        return False
    tables = ("udp", "udp6") if kind == "udp" else ("tcp", "tcp6")
    for table in tables:
        try:
            lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            listening = kind == "udp" or fields[3] == "0A"
            if local_port == port and listening and fields[9] in inodes:
                return True
    return False


# --------------------------------------------------------------------------- SIP probe


def sip_options(
    host: str,
    port: int,
    *,
    timeout: float = 0.5,
    local_host: str = LOOPBACK,
) -> str | None:
    """Send one OPTIONS over UDP to ``host:port``; return the status line or ``None``.

    A minimal RFC 3261 request (Via with rport, Max-Forwards, From tag, To, Call-ID,
    CSeq, Content-Length) from an ephemeral port; ``None`` when nothing answers within
    ``timeout`` seconds or the port is closed (ICMP unreachable).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((local_host, 0))
        sock.settimeout(timeout)
        local_port = sock.getsockname()[1]
        token = secrets.token_hex(8)
        request = (
            f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {local_host}:{local_port};branch=z9hG4bK{token};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:probe@{local_host}>;tag={token[:8]}\r\n"
            f"To: <sip:{host}:{port}>\r\n"
            f"Call-ID: {token}@{local_host}\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Accept: application/sdp\r\n"
            "Content-Length: 0\r\n"
            "\r\n"
        ).encode()
        deadline = time.monotonic() + timeout
        try:
            sock.sendto(request, (host, port))
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                sock.settimeout(remaining)
                data = sock.recv(65535)
                status_line = data.split(b"\r\n", 1)[0].decode("utf-8", "replace")
                # skip provisional answers and stray datagrams; wait for a final one
                if status_line.startswith("SIP/2.0 ") and not status_line.startswith("SIP/2.0 1"):
                    return status_line
        except (TimeoutError, ConnectionRefusedError, OSError):
            return None


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} not written)"
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------- SIPp


@dataclass(frozen=True)
class SippFiles:
    """Where one SIPp run writes its traces (all inside ``directory``)."""

    directory: Path

    @property
    def stats(self) -> Path:
        """``-trace_stat`` CSV; its last line holds the final cumulative counters."""
        return self.directory / "stat.csv"

    @property
    def errors(self) -> Path:
        """``-trace_err`` log of unexpected messages and failed checks (absent if none)."""
        return self.directory / "errors.log"

    @property
    def messages(self) -> Path:
        """``-trace_msg`` log of every message sent and received."""
        return self.directory / "messages.log"

    @property
    def screen(self) -> Path:
        """``-trace_screen`` final screens (scenario screen shows where calls failed)."""
        return self.directory / "screen.log"

    @property
    def output(self) -> Path:
        """SIPp's stdout and stderr."""
        return self.directory / "output.log"


@dataclass(frozen=True)
class SippResult:
    """Outcome of one finished SIPp run, read from its exit code and statistics."""

    role: str
    scenario: str
    command: tuple[str, ...]
    returncode: int
    successful_calls: int
    failed_calls: int
    failed_tcp_closed: int
    stats_found: bool
    files: SippFiles
    killed: bool = False

    @property
    def error_log(self) -> Path:
        """Path of the ``-trace_err`` log (may not exist when nothing went wrong)."""
        return self.files.errors

    @property
    def passed(self) -> bool:
        """Exit code 0, statistics present and no failed call."""
        return self.returncode == 0 and self.stats_found and self.failed_calls == 0

    def describe(self, *, log_lines: int = 40) -> str:
        """A multi-line report for assertion messages: counts, command, logs."""
        counts = (
            f"successful={self.successful_calls} failed={self.failed_calls} "
            f"(tcp closed: {self.failed_tcp_closed})"
            if self.stats_found
            else "no statistics written (SIPp did not start?)"
        )
        parts = [
            f"SIPp {self.role} {self.scenario}: exit={self.returncode}"
            f"{' (killed after hard timeout)' if self.killed else ''} {counts}",
            "command: " + " ".join(self.command),
            f"files: {self.files.directory}",
            f"--- {self.files.errors.name} (tail) ---",
            _tail(self.files.errors, log_lines) if self.files.errors.exists() else "(no errors)",
            f"--- {self.files.screen.name} (scenario screen) ---",
            _scenario_screen(self.files.screen),
            f"--- {self.files.output.name} (tail) ---",
            _tail(self.files.output, 8),
        ]
        return "\n".join(parts)

    def assert_calls(self, successful: int) -> None:
        """Assert exit code 0, exactly ``successful`` successful calls and none failed."""
        ok = (
            self.returncode == 0
            and self.stats_found
            and self.successful_calls == successful
            and self.failed_calls == 0
        )
        if not ok:
            raise AssertionError(f"expected {successful} successful calls\n{self.describe()}")


def _scenario_screen(path: Path) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path.name} not written)"
    # the first screen in the file is the scenario screen (messages, retrans, timeouts)
    screens = re.split(r"(?m)^-{5,}.*Screen.*$", text)
    return screens[1].rstrip() if len(screens) > 1 else text[-3000:]


def _read_stats(path: Path) -> tuple[bool, int, int, int]:
    """Final cumulative (found, successful, failed, failed_tcp_closed) from a stat CSV."""
    try:
        with path.open(newline="", errors="replace") as stream:
            rows = [row for row in csv.reader(stream, delimiter=";") if row]
    except OSError:
        return False, 0, 0, 0
    if len(rows) < 2:
        return False, 0, 0, 0
    header, last = rows[0], rows[-1]

    def counter(name: str) -> int:
        try:
            return int(last[header.index(name)])
        except (ValueError, IndexError):
            return 0

    return (
        "SuccessfulCall(C)" in header,
        counter("SuccessfulCall(C)"),
        counter("FailedCall(C)"),
        counter("FailedTcpClosed(C)"),
    )


def _duration(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


class SippProcess:
    """A SIPp process started in the background (a uas, or a uac started on its own)."""

    def __init__(
        self,
        *,
        role: str,
        scenario: str,
        command: Sequence[str],
        files: SippFiles,
        host: str,
        port: int,
        transport: SippTransport,
        timeout: float,
    ) -> None:
        self.role = role
        self.scenario = scenario
        self.command = tuple(command)
        self.files = files
        self.host = host
        self.port = port
        self.transport = transport
        self.timeout = timeout
        self._killed = False
        self._result: SippResult | None = None
        files.directory.mkdir(parents=True, exist_ok=True)
        with files.output.open("wb") as output:
            self.popen = subprocess.Popen(
                self.command,
                cwd=files.directory,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )

    @property
    def address(self) -> str:
        """``host:port`` of the SIP socket, as a SIPp or gateway target."""
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """True while the process has not exited."""
        return self.popen.poll() is None

    def wait_bound(self, timeout: float = 5.0) -> None:
        """Wait until SIPp has bound its SIP port; fail the test if it exits or stalls."""
        kind: PortKind = "tcp" if self.transport.startswith("t") else "udp"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                pytest.fail(
                    f"SIPp {self.role} exited before binding {kind} {self.address}\n"
                    + self.result().describe(),
                    pytrace=False,
                )
            if port_bound_by(self.popen.pid, self.port, kind):
                return
            time.sleep(0.02)
        self.stop()
        pytest.fail(
            f"SIPp {self.role} did not bind {kind} {self.address} within {timeout} s\n"
            + self.result().describe(),
            pytrace=False,
        )

    def wait(self, timeout: float | None = None) -> SippResult:
        """Wait for SIPp to exit by itself (``-m`` reached or ``-timeout``); return its result.

        ``timeout`` defaults to the run's own ``-timeout`` plus ``HARD_TIMEOUT_MARGIN``;
        past it the process is stopped (see ``stop``) and the result marked killed.
        """
        limit = self.timeout + HARD_TIMEOUT_MARGIN if timeout is None else timeout
        try:
            self.popen.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            self._killed = True
            return self.stop()
        return self.result()

    def stop(self, grace: float = 5.0) -> SippResult:
        """Stop SIPp and return its result.

        SIGUSR1 first (SIPp's soft exit: no new calls, running calls - timewait
        included - finish, statistics are written); SIGTERM if it is still running
        ``grace`` seconds later (exits at once, statistics written, calls still running
        count neither successful nor failed); SIGKILL 2 s after that.
        """
        for sig, wait_for in ((signal.SIGUSR1, grace), (signal.SIGTERM, 2.0)):
            if not self.running:
                break
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=wait_for)
            except subprocess.TimeoutExpired:
                continue
        if self.running:
            self._killed = True
            self.popen.kill()
            self.popen.wait(timeout=5.0)
        return self.result()

    def result(self) -> SippResult:
        """The result of the finished run (call only after the process exited)."""
        if self._result is not None:
            return self._result
        returncode = self.popen.poll()
        found, successful, failed, tcp_closed = _read_stats(self.files.stats)
        result = SippResult(
            role=self.role,
            scenario=self.scenario,
            command=self.command,
            returncode=returncode if returncode is not None else -1,
            successful_calls=successful,
            failed_calls=failed,
            failed_tcp_closed=tcp_closed,
            stats_found=found,
            files=self.files,
            killed=self._killed,
        )
        if returncode is not None:
            self._result = result
        return result


@dataclass
class Sipp:
    """Factory for SIPp runs in one test; ``close()`` stops whatever is still running.

    Scenarios are names of SIPp built-ins (``"uas"``, ``"uac"``: ``-sn``) or XML files
    (``"uac_basic.xml"`` is looked up in ``sipp-scenarios/``; a ``Path`` is used as is).
    Every run binds to ``host`` only (``-i HOST -bind_local``).
    """

    workdir: Path
    binary: str = "sipp"
    host: str = LOOPBACK
    processes: list[SippProcess] = field(default_factory=list, init=False, repr=False)
    _runs: int = field(default=0, init=False, repr=False)

    def _scenario_args(self, scenario: str | Path) -> tuple[str, list[str]]:
        if isinstance(scenario, str) and scenario in SIPP_BUILTINS:
            return scenario, ["-sn", scenario]
        path = Path(scenario)
        if not path.is_absolute() and not path.exists():
            path = SCENARIO_DIR / path
        if not path.is_file():
            raise FileNotFoundError(f"SIPp scenario not found: {scenario} (looked in {path})")
        return path.stem, ["-sf", str(path)]

    def _files(self, role: str, name: str) -> SippFiles:
        self._runs += 1
        return SippFiles(self.workdir / f"{self._runs:02d}-{role}-{name}")

    def _common_args(
        self,
        files: SippFiles,
        *,
        local_port: int,
        transport: SippTransport,
        calls: int,
        timeout: float,
        service: str | None,
        lost: float | None,
        recv_timeout: float | None,
        max_recv_loops: int | None,
        call_length: float | None,
        trace_messages: bool,
    ) -> list[str]:
        # -timeout alone is a soft quit that waits for running calls (a call stuck at a
        # <recv> keeps SIPp alive for ever); with -timeout_error SIPp exits, code 255.
        args = [
            "-i", self.host, "-bind_local", "-p", str(local_port), "-t", transport,
            "-m", str(calls),
            "-nostdin",
            "-timeout", _duration(timeout), "-timeout_error",
            "-trace_stat", "-stf", str(files.stats), "-fd", "1",
            "-trace_err", "-error_file", str(files.errors),
            "-trace_screen", "-screen_file", str(files.screen),
        ]  # fmt: skip
        if trace_messages:
            args += ["-trace_msg", "-message_file", str(files.messages)]
        if service is not None:
            args += ["-s", service]
        if lost is not None:
            args += ["-lost", f"{lost:g}"]
        if recv_timeout is not None:
            args += ["-recv_timeout", _duration(recv_timeout)]
        if max_recv_loops is not None:
            args += ["-max_recv_loops", str(max_recv_loops)]
        if call_length is not None:
            args += ["-d", _duration(call_length)]
        return args

    def uas(
        self,
        scenario: str | Path,
        port: int | None = None,
        *,
        calls: int,
        transport: SippTransport = "u1",
        timeout: float = 60.0,
        call_length: float | None = None,
        service: str | None = None,
        lost: float | None = None,
        recv_timeout: float | None = None,
        max_recv_loops: int | None = None,
        trace_messages: bool = True,
        extra: Iterable[str] = (),
    ) -> SippProcess:
        """Start a SIPp server in the background and wait until its SIP port is bound.

        ``port`` defaults to a free one (``.port``/``.address`` tell which). The run
        ends by itself after ``calls`` calls (``-m``) or fails after ``timeout``
        seconds; ``call_length`` (seconds) is ``-d``, the length of ``<pause/>``.
        Collect the outcome with ``.wait()`` (or ``.stop()`` to end it early).
        """
        name, scenario_args = self._scenario_args(scenario)
        port = free_port() if port is None else port
        files = self._files("uas", name)
        command = [
            self.binary,
            *scenario_args,
            *self._common_args(
                files,
                local_port=port,
                transport=transport,
                calls=calls,
                timeout=timeout,
                service=service,
                lost=lost,
                recv_timeout=recv_timeout,
                max_recv_loops=max_recv_loops,
                call_length=call_length,
                trace_messages=trace_messages,
            ),
            *extra,
        ]
        process = SippProcess(
            role="uas",
            scenario=name,
            command=command,
            files=files,
            host=self.host,
            port=port,
            transport=transport,
            timeout=timeout,
        )
        self.processes.append(process)
        process.wait_bound()
        return process

    def start_uac(
        self,
        scenario: str | Path,
        target: str,
        calls: int = 1,
        rate: float = 10.0,
        *,
        transport: SippTransport = "u1",
        timeout: float = 30.0,
        call_length: float | None = None,
        service: str | None = None,
        local_port: int | None = None,
        remote_sending_address: str | None = None,
        lost: float | None = None,
        recv_timeout: float | None = None,
        max_recv_loops: int | None = None,
        trace_messages: bool = True,
        extra: Iterable[str] = (),
    ) -> SippProcess:
        """Start a SIPp client in the background (for tests that act during calls).

        Same arguments as ``uac``; collect the outcome with ``.wait()``.
        """
        name, scenario_args = self._scenario_args(scenario)
        port = free_port() if local_port is None else local_port
        files = self._files("uac", name)
        command = [
            self.binary,
            target,
            *scenario_args,
            *self._common_args(
                files,
                local_port=port,
                transport=transport,
                calls=calls,
                timeout=timeout,
                service=service,
                lost=lost,
                recv_timeout=recv_timeout,
                max_recv_loops=max_recv_loops,
                call_length=call_length,
                trace_messages=trace_messages,
            ),
            "-r", f"{rate:g}", "-rp", "1000",
        ]  # fmt: skip
        if remote_sending_address is not None:
            command += ["-rsa", remote_sending_address]
        command += list(extra)
        process = SippProcess(
            role="uac",
            scenario=name,
            command=command,
            files=files,
            host=self.host,
            port=port,
            transport=transport,
            timeout=timeout,
        )
        self.processes.append(process)
        return process

    def uac(
        self,
        scenario: str | Path,
        target: str,
        calls: int = 1,
        rate: float = 10.0,
        *,
        transport: SippTransport = "u1",
        timeout: float = 30.0,
        call_length: float | None = None,
        service: str | None = None,
        local_port: int | None = None,
        remote_sending_address: str | None = None,
        lost: float | None = None,
        recv_timeout: float | None = None,
        max_recv_loops: int | None = None,
        trace_messages: bool = True,
        extra: Iterable[str] = (),
    ) -> SippResult:
        """Run a SIPp client against ``target`` (``host:port``) to completion.

        ``calls`` calls (``-m``) at ``rate`` calls per second; ``service`` is the
        Request-URI user (``-s``); ``remote_sending_address`` is ``-rsa host:port``;
        ``lost`` is ``-lost`` (percent of messages dropped); ``recv_timeout`` (seconds)
        is ``-recv_timeout``; ``call_length`` (seconds) is ``-d``; ``extra`` is appended
        as is. The run fails itself after ``timeout`` seconds and is killed
        ``HARD_TIMEOUT_MARGIN`` seconds later.
        """
        process = self.start_uac(
            scenario,
            target,
            calls,
            rate,
            transport=transport,
            timeout=timeout,
            call_length=call_length,
            service=service,
            local_port=local_port,
            remote_sending_address=remote_sending_address,
            lost=lost,
            recv_timeout=recv_timeout,
            max_recv_loops=max_recv_loops,
            trace_messages=trace_messages,
            extra=extra,
        )
        return process.wait()

    def close(self) -> None:
        """Stop every process this factory started that is still running."""
        for process in self.processes:
            if process.running:
                process.stop(grace=2.0)


# --------------------------------------------------------------------------- gateway


@dataclass
class ListeningProcess:
    """A peer process listening on ``listen_host:listen_port`` (the gateway, Kamailio).

    Subclasses say where their log is (``log_text``) and how long a clean stop may take
    (``stop_timeout``).
    """

    popen: subprocess.Popen[bytes]
    listen_host: str
    listen_port: int

    #: seconds ``stop`` waits after SIGTERM before SIGKILL
    stop_timeout = 10.0

    @property
    def address(self) -> str:
        """``host:port`` of the SIP listener, as a SIPp target."""
        return f"{self.listen_host}:{self.listen_port}"

    @property
    def running(self) -> bool:
        """True while the process has not exited."""
        return self.popen.poll() is None

    def stop(self, timeout: float | None = None) -> int:
        """SIGTERM, wait for a clean shutdown, then SIGKILL; return the exit code."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.popen.terminate()
            try:
                self.popen.wait(timeout=self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5.0)
        return int(self.popen.returncode)

    def log_text(self) -> str:
        raise NotImplementedError

    def log_tail(self, lines: int = 50) -> str:
        """The last ``lines`` lines of ``log_text()``."""
        return "\n".join(self.log_text().splitlines()[-lines:])


@dataclass
class GatewayProcess(ListeningProcess):
    """The gateway running as ``python -m gateway run --dialplan FILE``."""

    workdir: Path
    dialplan_path: Path
    data_dir: Path
    stdout_path: Path
    stderr_path: Path

    def kill9(self) -> int:
        """SIGKILL at once (a crash, for restart tests); return the exit code."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.popen.kill()
            self.popen.wait(timeout=5.0)
        return int(self.popen.returncode)

    def log_text(self) -> str:
        """Everything the gateway wrote so far: stdout, then stderr."""
        parts = []
        for path in (self.stdout_path, self.stderr_path):
            with contextlib.suppress(OSError):
                parts.append(path.read_text(errors="replace"))
        return "".join(parts)


def start_gateway(
    dialplan_text: str,
    tmp_path: Path,
    *,
    listen_port: int,
    listen_host: str = LOOPBACK,
    ready_timeout: float = 10.0,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
) -> GatewayProcess:
    """Write the dialplan into ``tmp_path`` and start the gateway on it.

    Runs ``[sys.executable, -m, gateway, run, --dialplan, PATH, *args]`` with
    ``GATEWAY_DATA_DIR=tmp_path/data`` and ``GATEWAY_LOG_FORMAT=json`` (plus ``env``),
    stdout and stderr going to files in ``tmp_path``. The dialplan must make the gateway
    listen on ``listen_host:listen_port``: readiness is an OPTIONS over UDP to that
    address answered with 200, within ``ready_timeout`` seconds. Otherwise the process
    is stopped and the test fails with the last 50 log lines.
    """
    tmp_path.mkdir(parents=True, exist_ok=True)
    dialplan_path = tmp_path / "dialplan.yaml"
    dialplan_path.write_text(dialplan_text)
    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    stdout_path = tmp_path / "gateway.stdout.log"
    stderr_path = tmp_path / "gateway.stderr.log"
    process_env = {
        **os.environ,
        "GATEWAY_DATA_DIR": str(data_dir),
        "GATEWAY_LOG_FORMAT": "json",
        # no MQTT unless the test names a broker (its own Mosquitto)
        "GATEWAY_MQTT_URL": "off",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    command = [sys.executable, "-m", "gateway", "run", "--dialplan", str(dialplan_path), *args]
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        popen = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=process_env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )
    gateway = GatewayProcess(
        popen=popen,
        listen_host=listen_host,
        listen_port=listen_port,
        workdir=tmp_path,
        dialplan_path=dialplan_path,
        data_dir=data_dir,
        stdout_path=stdout_path,
        stderr_path=stderr_path,
    )
    deadline = time.monotonic() + ready_timeout
    last_answer: str | None = None
    while time.monotonic() < deadline:
        if not gateway.running:
            pytest.fail(
                f"gateway exited with code {popen.returncode} before answering OPTIONS on "
                f"{gateway.address}\ncommand: {' '.join(command)}\n--- last 50 log lines ---\n"
                + gateway.log_tail(50),
                pytrace=False,
            )
        last_answer = sip_options(listen_host, listen_port, timeout=0.2)
        if last_answer is not None and last_answer.startswith("SIP/2.0 200"):
            return gateway
        if last_answer is None:
            time.sleep(0.05)
        else:
            time.sleep(0.2)
    gateway.stop()
    pytest.fail(
        f"gateway did not answer OPTIONS with 200 on udp {gateway.address} within "
        f"{ready_timeout} s (last answer: {last_answer or 'none'})\n"
        f"command: {' '.join(command)}\n--- last 50 log lines ---\n" + gateway.log_tail(50),
        pytrace=False,
    )


class GatewayFactory(Protocol):
    """Signature of the ``gateway_factory`` fixture."""

    def __call__(
        self,
        dialplan_text: str,
        *,
        listen_port: int | None = None,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        ready_timeout: float = 10.0,
    ) -> GatewayProcess: ...
