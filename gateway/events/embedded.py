"""A private MQTT broker for ``make run`` when no broker URL is configured.

Theory of operation
-------------------
:class:`EmbeddedBroker` runs a broker on ``127.0.0.1`` (loopback only, anonymous clients
allowed, nothing persisted) on port 1884 so it does not collide with a system Mosquitto on
1883; if that port is taken it takes the next free one. ``broker.url`` is what
:class:`~gateway.events.mqtt.MqttSettings` takes. It is meant for a single developer
machine; a production deployment points ``MqttSettings.url`` at a real broker.

Which broker (``backend="auto"``, the default):

1. **Mosquitto**, as a child process with a generated config in a private temporary
   directory, whenever the ``mosquitto`` binary can be found. It routes overlapping
   subscriptions correctly (SPEC M-1: a desktop subscribed to one agent's topic gets that
   agent's messages only, once), so it is the default. Its lifetime is the gateway's: it
   runs in a session of its own, so the Ctrl-C of ``make run`` (SIGINT to the terminal's
   process group) reaches the gateway alone, which then says ``offline`` and stops the
   broker last; and on Linux it gets SIGTERM when the gateway dies (``PR_SET_PDEATHSIG``),
   so a ``kill -9`` leaves no broker behind holding port 1884 (the next ``make run`` would
   move to 1885, and a desktop on 1884 would watch an orphan).
2. **amqtt** in-process, only when there is no ``mosquitto`` binary (or it failed to
   start), so ``make run`` still works on a machine without it. amqtt 0.12 sends a client
   that connects the retained messages of *every* client's subscriptions (a desktop
   subscribed to ``.../agents/alice/presence`` would get bob's presence and the node
   status, and alice's twice, as soon as another client is subscribed to ``<prefix>/#``).
   :class:`_RoutingBroker` works around that by sending retained messages only for the
   filters the session itself subscribed to. If amqtt's internals ever change so that the
   work-around cannot apply, a warning says that its routing of overlapping subscriptions
   is unreliable and to install mosquitto.

For the web pages (``gateway.web``, SPEC W-1) the Mosquitto broker also offers a
``websockets`` listener (``websockets_port``) on the same host, and with ``access`` it
refuses anonymous clients and enforces a password file and an ACL (both given as text,
written to its private directory). amqtt is never used with ``access``: if Mosquitto
cannot start then, the broker falls back to amqtt *without* the websockets listener and
without access control, and ``access_enforced`` is ``False`` (the caller then serves no
pages: they would be open to anyone).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import os
import pwd
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self
from urllib.parse import quote

from gateway.logs import get_logger

__all__ = [
    "DEFAULT_EMBEDDED_PORT",
    "BrokerAccess",
    "EmbeddedBroker",
    "NoBrokerError",
    "find_mosquitto",
    "pick_port",
]

DEFAULT_EMBEDDED_PORT: Final = 1884
_MOSQUITTO_PLACES: Final = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
_START_TIMEOUT: Final = 5.0
_CHATTY_LOGGERS: Final = ("amqtt", "transitions")

Backend = Literal["auto", "amqtt", "mosquitto"]

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class BrokerAccess:
    """Access control for the embedded Mosquitto: its ``password_file`` and ``acl_file``
    contents, and the login the gateway itself uses (which both must grant)."""

    password_file: str
    acl_file: str
    username: str
    password: str


def pick_port(host: str, preferred: int | None, *, tries: int = 10) -> int:
    """The first of ``preferred``, ``preferred + 1``, ... (``tries`` ports) that a TCP
    listener can bind on ``host``; failing that (or with no preference) a free port."""
    if preferred:
        for port in range(preferred, min(preferred + tries, 65536)):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((host, port))
                except OSError:
                    continue
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def find_mosquitto() -> str | None:
    """Path of the ``mosquitto`` binary (``PATH``, then the usual sbin places)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for place in _MOSQUITTO_PLACES:
        if Path(place).is_file():
            return place
    return None


class EmbeddedBroker:
    """``async with EmbeddedBroker() as broker: ... broker.url ...``.

    ``port`` is the preferred port (``None`` or ``0``: any free one). ``backend`` forces
    ``"mosquitto"`` or ``"amqtt"``; ``"auto"`` runs Mosquitto when its binary is found and
    amqtt otherwise (see the module docstring for why).
    """

    def __init__(
        self,
        port: int | None = DEFAULT_EMBEDDED_PORT,
        *,
        host: str = "127.0.0.1",
        backend: Backend = "auto",
        websockets_port: int | None = None,
        access: BrokerAccess | None = None,
    ) -> None:
        self._preferred_port = port
        self._preferred_ws_port = websockets_port
        self.websockets_port: int | None = None
        """The websockets listener's port (Mosquitto only, when asked for)."""
        self._access = access
        self.access_enforced = False
        """Whether clients must log in and the ACL applies (Mosquitto with ``access``)."""
        self.host = host
        self.port = 0
        self._backend_choice: Backend = backend
        self.backend: Literal["amqtt", "mosquitto"] | None = None
        """The broker actually running (set on entry)."""
        self._amqtt: Any = None
        self._process: asyncio.subprocess.Process | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def address(self) -> str:
        """``mqtt://host:port`` of the running broker, without the gateway's login."""
        if self.backend is None:
            raise RuntimeError("the embedded broker is not running")
        return f"mqtt://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """``mqtt://[user:password@]host:port``: what the gateway connects with (its own
        login when access control is enforced)."""
        if self.backend is None:
            raise RuntimeError("the embedded broker is not running")
        if self.access_enforced and self._access is not None:
            login = (
                f"{quote(self._access.username, safe='')}:{quote(self._access.password, safe='')}"
            )
            return f"mqtt://{login}@{self.host}:{self.port}"
        return f"mqtt://{self.host}:{self.port}"

    @property
    def websockets_url(self) -> str | None:
        """``ws://host:port`` of the websockets listener, when there is one."""
        if self.backend != "mosquitto" or self.websockets_port is None:
            return None
        return f"ws://{self.host}:{self.websockets_port}"

    async def __aenter__(self) -> Self:
        """Start the broker and wait until it accepts connections."""
        self.port = pick_port(self.host, self._preferred_port)
        if self.port != self._preferred_port and self._preferred_port:
            log.info("embedded_mqtt_port_taken", wanted=self._preferred_port, using=self.port)
        choice = self._backend_choice
        if choice == "mosquitto" or (choice == "auto" and find_mosquitto() is not None):
            try:
                await self._start_mosquitto()
            except Exception as exc:
                if choice == "mosquitto":
                    raise
                self.websockets_port = None
                self.access_enforced = False
                log.warning(
                    "embedded_mqtt_mosquitto_failed_trying_amqtt",
                    error=f"{type(exc).__name__}: {exc}",
                )
            else:
                self.backend = "mosquitto"
        if self.backend is None:
            if choice == "auto":
                log.warning(
                    "embedded_mqtt_using_amqtt",
                    detail="no usable 'mosquitto' binary; install the mosquitto package for "
                    "the development broker the tests use",
                )
            try:
                await self._start_amqtt()
            except BaseException:
                await self._stop_amqtt()
                raise
            self.backend = "amqtt"
        log.info(
            "embedded_mqtt_broker_started",
            backend=self.backend,
            url=self.address,
            websockets=self.websockets_url,
            access_control=self.access_enforced,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the broker."""
        await self._stop_amqtt()
        await self._stop_mosquitto()
        log.info("embedded_mqtt_broker_stopped", backend=self.backend)
        self.backend = None

    # -- amqtt (no mosquitto binary) ---------------------------------------------------------

    async def _start_amqtt(self) -> None:
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            },
        }
        _quiet(*_CHATTY_LOGGERS)
        broker_class, routing_fixed = _amqtt_broker_class()
        if not routing_fixed:
            log.warning(
                "embedded_mqtt_amqtt_routing_unreliable",
                detail="this amqtt version may send a client retained messages of other "
                "clients' subscriptions (overlapping subscriptions are routed unreliably); "
                "install mosquitto or set a broker URL",
            )
        self._amqtt = broker_class(config)
        await self._amqtt.start()  # returns once the listener is bound

    async def _stop_amqtt(self) -> None:
        broker, self._amqtt = self._amqtt, None
        if broker is not None:
            with contextlib.suppress(Exception):
                await broker.shutdown()

    # -- mosquitto (the default) -------------------------------------------------------------

    async def _start_mosquitto(self) -> None:
        binary = find_mosquitto()
        if binary is None:
            raise RuntimeError(
                "the 'mosquitto' binary was not found (install the mosquitto package or set "
                "a broker URL)"
            )
        self._workdir = tempfile.TemporaryDirectory(prefix="gateway-mqtt-")
        conf = Path(self._workdir.name) / "mosquitto.conf"
        conf.write_text(self._mosquitto_conf(Path(self._workdir.name)), encoding="utf-8")
        log.info("embedded_mqtt_using_mosquitto", binary=binary, port=self.port)
        self._process = await asyncio.create_subprocess_exec(
            binary,
            "-c",
            str(conf),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent(),
        )
        try:
            await _wait_listening(self.host, self.port)
        except BaseException:
            await self._stop_mosquitto()
            raise

    def _mosquitto_conf(self, workdir: Path) -> str:
        """The config: the TCP listener, the websockets one, and access control if asked."""
        # the gateway's own user: started as root, Mosquitto would switch to the
        # 'mosquitto' user, which cannot read the gateway's private directory, and a
        # change of credentials clears the parent-death signal (prctl(2))
        lines = [f"user {pwd.getpwuid(os.geteuid()).pw_name}", f"listener {self.port} {self.host}"]
        if self._preferred_ws_port is not None:
            self.websockets_port = pick_port(self.host, self._preferred_ws_port or None)
            if self.websockets_port == self.port:  # neither is bound yet: keep them apart
                self.websockets_port = pick_port(self.host, self.port + 1)
            lines += [f"listener {self.websockets_port} {self.host}", "protocol websockets"]
        if self._access is None:
            lines.append("allow_anonymous true")
        else:
            passwords, acl = workdir / "passwords", workdir / "acl"
            passwords.write_text(self._access.password_file, encoding="utf-8")
            acl.write_text(self._access.acl_file, encoding="utf-8")
            passwords.chmod(0o600)
            acl.chmod(0o600)
            lines += [
                "allow_anonymous false",
                f"password_file {passwords}",
                f"acl_file {acl}",
            ]
            self.access_enforced = True
        lines.append("persistence false")
        return "\n".join(lines) + "\n"

    async def _stop_mosquitto(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout=_START_TIMEOUT)
            except TimeoutError:
                process.kill()
                await process.wait()
        workdir, self._workdir = self._workdir, None
        if workdir is not None:
            workdir.cleanup()


def _die_with_parent() -> Callable[[], None] | None:
    """For the child, between fork and exec: SIGTERM when its parent dies (Linux
    ``prctl(PR_SET_PDEATHSIG)``); None where that does not exist. libc is looked up here,
    in the parent: the child only calls it."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (AttributeError, OSError):
        return None
    return functools.partial(prctl, _PR_SET_PDEATHSIG, int(signal.SIGTERM))


_PR_SET_PDEATHSIG: Final = 1
_BROKER_CLASS: list[tuple[type[Any], bool]] = []


class NoBrokerError(RuntimeError):
    """No broker can be embedded here (no mosquitto binary, amqtt not installed)."""


def _amqtt_broker_class() -> tuple[type[Any], bool]:
    """amqtt's ``Broker`` with the retained-message routing work-around, and whether the
    work-around applies to the installed amqtt (its private hooks are where expected)."""
    if _BROKER_CLASS:
        return _BROKER_CLASS[0]
    try:
        from amqtt.broker import Broker  # type: ignore[import-untyped,unused-ignore]  # no types
    except ImportError:  # a development broker, not a runtime dependency (pip install .[dev])
        raise NoBrokerError(
            "no MQTT broker: set GATEWAY_MQTT_URL (or 'off'), install mosquitto, or "
            "pip install 'gateway[dev]' for the in-process development broker"
        ) from None

    hook = "_publish_retained_messages_for_subscription"
    if not callable(getattr(Broker, hook, None)):
        _BROKER_CLASS.append((Broker, False))
        return _BROKER_CLASS[0]

    class _RoutingBroker(Broker):  # type: ignore[misc,valid-type,unused-ignore]
        """On connect amqtt 0.12 replays the retained messages of every filter any client
        subscribed to; send them only for the filters this session subscribed to."""

        async def _publish_retained_messages_for_subscription(
            self, subscription: tuple[str, int], session: Any
        ) -> None:
            subscribers = getattr(self, "_subscriptions", {}).get(subscription[0], ())
            if any(owner.client_id == session.client_id for owner, _qos in subscribers):
                await super()._publish_retained_messages_for_subscription(subscription, session)

    _BROKER_CLASS.append((_RoutingBroker, True))
    return _BROKER_CLASS[0]


def _quiet(*names: str) -> None:
    """Raise amqtt's INFO-per-connection chatter to WARNING unless a level was chosen."""
    for name in names:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


async def _wait_listening(host: str, port: int) -> None:
    """Return once ``host:port`` accepts a TCP connection (within a few seconds)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _START_TIMEOUT
    while True:
        try:
            _reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            if loop.time() > deadline:
                raise TimeoutError(f"MQTT broker did not listen on {host}:{port}") from None
            await asyncio.sleep(0.05)
        else:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
