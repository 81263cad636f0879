"""Processes on loopback: tools, free ports, /proc readings, the gateway as a process.

Theory of operation
    Every peer is a real process on 127.0.0.1. A port is "free" when the kernel hands it
    out and it binds for both UDP and TCP (the gateway listens on both); a port is never
    handed out twice in one process, so peers started in a row cannot collide. A peer is
    ready when /proc shows its socket bound (``port_bound_by``) or, for SIP servers, when
    it answers an OPTIONS (``sip_options``). ``Child`` reaps its process with ``wait4`` so
    the CPU time it used is known once it ended (SIPp's figures in the benchmarks);
    ``cpu_ticks`` reads a running process's CPU time from /proc (the gateway's).

    ``start_gateway`` runs ``python -m gateway run --dialplan FILE`` with its data and
    logs in one directory and returns once the gateway answers OPTIONS with 200; it raises
    ``HarnessError`` (with the log's tail) when the gateway exits or stays silent.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
#: Clock ticks per second of /proc's CPU times.
CLK_TCK = os.sysconf("SC_CLK_TCK")

#: Debian/Ubuntu package that provides each external tool.
TOOL_PACKAGES: Mapping[str, str] = {
    "sipp": "sip-tester",
    "kamailio": "kamailio",
    "mosquitto": "mosquitto",
    "redis-server": "redis-server",
    "fail2ban-regex": "fail2ban",
    "systemd-analyze": "systemd",
}

PortKind = Literal["udp", "tcp"]


class HarnessError(RuntimeError):
    """A peer could not be started or did not get ready: the environment, not the test."""


# --------------------------------------------------------------------------- tools


def find_tool(name: str) -> str | None:
    """The path of the executable ``name`` on PATH or in the usual sbin/bin directories."""
    path = shutil.which(name)
    if path is not None:
        return path
    for directory in ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin"):
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def require_tool(name: str) -> str:
    """The path of ``name``; ``HarnessError`` naming the apt package when it is missing.

    A missing tool is a broken environment, never a reason to skip.
    """
    path = find_tool(name)
    if path is None:
        package = TOOL_PACKAGES.get(name, name)
        raise HarnessError(
            f"required tool {name!r} not found on PATH or in /usr/sbin; install the apt "
            f"package {package!r} (apt-get install {package}, or scripts/install-test-deps.sh)"
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
    twice in one process, so two peers started in a row cannot collide.
    """
    other: PortKind = "tcp" if kind == "udp" else "udp"
    sock_type = socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM
    for _ in range(200):
        with socket.socket(socket.AF_INET, sock_type) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port in _ports_handed_out:
            continue
        if _bindable(other, host, port) and _bindable(kind, host, port):
            _ports_handed_out.add(port)
            return port
    raise HarnessError(f"no port free for both UDP and TCP on {host} after 200 tries")


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


# --------------------------------------------------------------------------- /proc


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of ``pid`` in clock ticks (``CLK_TCK`` a second), None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15
    return int(fields[11]) + int(fields[12])


def busy_ticks() -> int:
    """Clock ticks all CPUs spent not idle since boot (first line of /proc/stat)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0
    values = [int(v) for v in fields[:8]]
    return sum(values) - values[3] - values[4]  # minus idle and iowait


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as /proc/loadavg writes them."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def rss_mb(pid: int) -> float | None:
    """Resident set size of ``pid`` in MiB, None when it is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return None


def code_revision() -> str:
    """The commit of the code measured, plus "+dirty" if gateway/ has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "gateway"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


# --------------------------------------------------------------------------- Child


class Child:
    """A child process reaped with ``wait4``, so that its CPU time (rusage) is known.

    Every ``Child`` is remembered in ``started_children`` so that a program can stop
    whatever is still running when it is interrupted.
    """

    started_children: ClassVar[list[Child]] = []

    def __init__(
        self,
        command: Sequence[str],
        cwd: Path,
        output: Path,
        env: Mapping[str, str] | None = None,
        stderr: Path | None = None,
    ) -> None:
        self.command = tuple(command)
        out = output.open("wb")
        err = stderr.open("wb") if stderr is not None else None
        try:
            self.popen = subprocess.Popen(
                self.command,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err if err is not None else subprocess.STDOUT,
            )
        finally:
            out.close()
            if err is not None:
                err.close()
        self.pid = self.popen.pid
        Child.started_children.append(self)
        self.started = time.monotonic()
        self.ended: float | None = None
        self.returncode: int | None = None
        #: user + system CPU seconds, known once the process has been reaped
        self.cpu_s: float | None = None
        #: True once a signal past the soft one (SIGTERM, SIGKILL) had to be sent
        self.killed = False

    @property
    def running(self) -> bool:
        """True while the process has not exited."""
        return self.poll() is None

    def poll(self) -> int | None:
        """Reap the process if it exited; its exit code, or None while it runs."""
        if self.returncode is None:
            try:
                pid, status, usage = os.wait4(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = -1
                self.ended = time.monotonic()
                return self.returncode
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                self.popen.returncode = self.returncode
                self.cpu_s = usage.ru_utime + usage.ru_stime
                self.ended = time.monotonic()
        return self.returncode

    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for the exit; the exit code or None."""
        deadline = time.monotonic() + timeout
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.returncode

    def send(self, sig: int) -> None:
        """Send ``sig`` if the process still runs."""
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def stop(self, soft: int = signal.SIGUSR1, grace: float = 3.0) -> int:
        """``soft`` signal, then SIGTERM, then SIGKILL, each given time to work."""
        for sig, wait_for in ((soft, grace), (signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
            if self.poll() is not None:
                break
            if sig != soft:
                self.killed = True
            self.send(sig)
            self.wait(wait_for)
        return self.returncode if self.returncode is not None else -1

    @property
    def elapsed(self) -> float:
        """Seconds from the start to the exit (or to now, while it runs)."""
        return (self.ended or time.monotonic()) - self.started


# --------------------------------------------------------------------------- listeners


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
    def pid(self) -> int:
        """The process id (for /proc readings such as ``cpu_ticks``)."""
        return self.popen.pid

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
        """Everything the process logged so far."""
        raise NotImplementedError

    def log_lines(self) -> list[str]:
        """``log_text()`` as lines."""
        return self.log_text().splitlines()

    def log_tail(self, lines: int = 50) -> str:
        """The last ``lines`` lines of ``log_text()``."""
        return "\n".join(self.log_lines()[-lines:])


@dataclass
class GatewayProcess(ListeningProcess):
    """The gateway running as ``python -m gateway run --dialplan FILE``."""

    workdir: Path
    dialplan_path: Path
    data_dir: Path
    stdout_path: Path
    stderr_path: Path
    #: the GATEWAY_* settings it was started with
    env: dict[str, str] = field(default_factory=dict)

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
    workdir: Path,
    *,
    listen_port: int,
    listen_host: str = LOOPBACK,
    ready_timeout: float = 10.0,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    inherit_gateway_env: bool = True,
    wrapper: Sequence[str] = (),
    cwd: Path = PROJECT_ROOT,
) -> GatewayProcess:
    """Write the dialplan into ``workdir`` and start the gateway on it.

    Runs ``[*wrapper, sys.executable, -m, gateway, run, --dialplan, PATH, *args]`` from
    ``cwd`` (the project root; another tree runs that tree's code; ``wrapper``: e.g.
    valgrind) with ``GATEWAY_DATA_DIR=workdir/data``, ``GATEWAY_LOG_FORMAT=json``,
    ``GATEWAY_METRICS_ADDR=off`` and unbuffered output, then ``env`` on top; with
    ``inherit_gateway_env=False`` the ``GATEWAY_*`` variables of this process are not
    passed on. stdout and stderr go to
    files in ``workdir``. The dialplan must make the gateway listen on
    ``listen_host:listen_port``: readiness is an OPTIONS over UDP to that address
    answered with 200 within ``ready_timeout`` seconds. Otherwise the process is stopped
    and ``HarnessError`` carries the last 50 log lines.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    dialplan_path = workdir / "dialplan.yaml"
    dialplan_path.write_text(dialplan_text)
    data_dir = workdir / "data"
    data_dir.mkdir(exist_ok=True)
    stdout_path = workdir / "gateway.stdout.log"
    stderr_path = workdir / "gateway.stderr.log"
    inherited = {
        key: value
        for key, value in os.environ.items()
        if inherit_gateway_env or not key.startswith("GATEWAY_")
    }
    process_env = {
        **inherited,
        "GATEWAY_DATA_DIR": str(data_dir),
        "GATEWAY_LOG_FORMAT": "json",
        "GATEWAY_METRICS_ADDR": "off",  # a test that scrapes gives its own free port
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    command = [
        *wrapper, sys.executable, "-m", "gateway", "run", "--dialplan", str(dialplan_path), *args
    ]  # fmt: skip
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        popen = subprocess.Popen(
            command,
            cwd=cwd,
            env=process_env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )
    gateway = GatewayProcess(
        popen=popen,
        listen_host=listen_host,
        listen_port=listen_port,
        workdir=workdir,
        dialplan_path=dialplan_path,
        data_dir=data_dir,
        stdout_path=stdout_path,
        stderr_path=stderr_path,
        env={k: v for k, v in process_env.items() if k.startswith("GATEWAY_")},
    )
    deadline = time.monotonic() + ready_timeout
    last_answer: str | None = None
    while time.monotonic() < deadline:
        if not gateway.running:
            raise HarnessError(
                f"gateway exited with code {popen.returncode} before answering OPTIONS on "
                f"{gateway.address}\ncommand: {' '.join(command)}\n--- last 50 log lines ---\n"
                + gateway.log_tail(50)
            )
        last_answer = sip_options(listen_host, listen_port, timeout=0.2)
        if last_answer is not None and last_answer.startswith("SIP/2.0 200"):
            return gateway
        time.sleep(0.05 if last_answer is None else 0.2)
    gateway.stop()
    raise HarnessError(
        f"gateway did not answer OPTIONS with 200 on udp {gateway.address} within "
        f"{ready_timeout} s (last answer: {last_answer or 'none'})\n"
        f"command: {' '.join(command)}\n--- last 50 log lines ---\n" + gateway.log_tail(50)
    )
