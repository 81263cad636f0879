"""SIPp runs, each bounded in time, with their trace files; readers for what SIPp wrote.

Theory of operation
    ``Sipp`` starts the peers. A uas runs in the background (``Sipp.uas`` returns a
    ``SippProcess`` as soon as its SIP socket is bound); a uac runs to completion
    (``Sipp.uac`` returns a ``SippResult``) or in the background (``Sipp.start_uac``).
    Every SIPp run is bounded twice: by ``-m`` (number of calls) and by
    ``-timeout``/``-timeout_error``; a run that outlives that timeout by
    ``HARD_TIMEOUT_MARGIN`` seconds is stopped. Each run writes its statistics
    (``-trace_stat``), unexpected messages (``-trace_err``), optionally every message
    (``-trace_msg``) and its final screens (``-trace_screen``) into a directory of its own
    (``SippFiles``), and ``SippResult.describe()`` puts them into an assertion message.
    The process is a ``Child``, so once it ended its CPU time is known (``cpu_s``).

    The pass rule is Kamailio's: count successful and failed calls on *both* sides. A
    ``check_it`` regular expression that fails in a uas marks that call failed on the
    uas only - SIPp goes on with the scenario, so the uac sees a normal call.
"""

from __future__ import annotations

import contextlib
import csv
import math
import re
import signal
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from testkit.processes import (
    LOOPBACK,
    PROJECT_ROOT,
    Child,
    HarnessError,
    PortKind,
    free_port,
    port_bound_by,
)

SCENARIO_DIR = PROJECT_ROOT / "sipp-scenarios"

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

#: Seconds a uac may outlive its own ``-timeout`` before it is killed.
HARD_TIMEOUT_MARGIN = 10.0

SippTransport = Literal["u1", "un", "ui", "t1", "tn"]


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} not written)"
    return "\n".join(text.splitlines()[-lines:])


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
            scenario_screen(self.files.screen),
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


# --------------------------------------------------------------------------- SIPp's files


def read_stats(path: Path) -> dict[str, str]:
    """The last row of a SIPp ``-trace_stat`` CSV as {column: value}; {} when absent."""
    try:
        with path.open(newline="", errors="replace") as stream:
            rows = [row for row in csv.reader(stream, delimiter=";") if row]
    except OSError:
        return {}
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1], strict=False))


def stat_int(stats: dict[str, str], name: str) -> int:
    """A cumulative counter of ``read_stats``; 0 when missing or unreadable."""
    try:
        return int(stats.get(name, "0"))
    except ValueError:
        return 0


def read_rtt(directory: Path) -> list[tuple[float, float]]:
    """(date_ms, response_time_ms) of every response time 1 sample (``-trace_rtt``
    CSVs in ``directory``), in time order."""
    samples: list[tuple[float, float]] = []
    for path in directory.glob("*_rtt.csv"):
        with path.open(newline="", errors="replace") as stream:
            reader = csv.reader(stream, delimiter=";")
            next(reader, None)
            for row in reader:
                if len(row) >= 3 and row[2].strip() == "1":
                    with contextlib.suppress(ValueError):
                        samples.append((float(row[0]), float(row[1])))
    samples.sort()
    return samples


def percentile(sorted_values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile of an ascending list; None when it is empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def scenario_screen(path: Path) -> str:
    """The scenario screen (messages, retransmissions, timeouts per message) of a run:
    the first screen of its ``-trace_screen`` file."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path.name} not written)"
    screens = re.split(r"(?m)^-{5,}.*Screen.*$", text)
    return screens[1].rstrip() if len(screens) > 1 else text[-3000:]


def head_lines(path: Path, count: int) -> list[str]:
    """The first ``count`` lines of a file ([] when absent)."""
    try:
        with path.open(errors="replace") as stream:
            return [line.rstrip("\n") for _, line in zip(range(count), stream, strict=False)]
    except OSError:
        return []


def _duration(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


# --------------------------------------------------------------------------- SIPp runs


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
        self.child = Child(self.command, files.directory, files.output)

    @property
    def address(self) -> str:
        """``host:port`` of the SIP socket, as a SIPp or gateway target."""
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """True while the process has not exited."""
        return self.child.running

    @property
    def killed(self) -> bool:
        """True when the run had to be stopped after its time was up, or SIGKILLed."""
        return self._killed

    @property
    def cpu_s(self) -> float | None:
        """CPU seconds (user + system) the process used; known once it has exited."""
        return self.child.cpu_s

    @property
    def elapsed(self) -> float:
        """Wall seconds from the start to the exit (or to now)."""
        return self.child.elapsed

    def wait_bound(self, timeout: float = 5.0) -> None:
        """Wait until SIPp has bound its SIP port; ``HarnessError`` if it exits or stalls."""
        kind: PortKind = "tcp" if self.transport.startswith("t") else "udp"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise HarnessError(
                    f"SIPp {self.role} exited before binding {kind} {self.address}\n"
                    + self.result().describe()
                )
            if port_bound_by(self.child.pid, self.port, kind):
                return
            time.sleep(0.02)
        self.stop()
        raise HarnessError(
            f"SIPp {self.role} did not bind {kind} {self.address} within {timeout} s\n"
            + self.result().describe()
        )

    def wait(self, timeout: float | None = None) -> SippResult:
        """Wait for SIPp to exit by itself (``-m`` reached or ``-timeout``); return its result.

        ``timeout`` defaults to the run's own ``-timeout`` plus ``HARD_TIMEOUT_MARGIN``;
        past it the process is stopped (see ``stop``) and the result marked killed.
        """
        limit = self.timeout + HARD_TIMEOUT_MARGIN if timeout is None else timeout
        if self.child.wait(limit) is None:
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
            self.child.send(sig)
            self.child.wait(wait_for)
        if self.running:
            self._killed = True
            self.child.send(signal.SIGKILL)
            self.child.wait(5.0)
        return self.result()

    def result(self) -> SippResult:
        """The result of the finished run (call only after the process exited)."""
        if self._result is not None:
            return self._result
        returncode = self.child.poll()
        stats = read_stats(self.files.stats)
        result = SippResult(
            role=self.role,
            scenario=self.scenario,
            command=self.command,
            returncode=returncode if returncode is not None else -1,
            successful_calls=stat_int(stats, "SuccessfulCall(C)"),
            failed_calls=stat_int(stats, "FailedCall(C)"),
            failed_tcp_closed=stat_int(stats, "FailedTcpClosed(C)"),
            stats_found="SuccessfulCall(C)" in stats,
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
