"""Process settings from the environment (``GATEWAY_*``), SPEC O-1.

There is deliberately no module-level settings object: the entry point calls
:func:`load_settings` once and passes what each component needs to its constructor.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from email.utils import parseaddr
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "ENV_PREFIX",
    "LogFormat",
    "LogLevel",
    "Settings",
    "SettingsError",
    "SmtpSecurity",
    "load_settings",
]

ENV_PREFIX = "GATEWAY_"
"""Every setting is read from the environment variable ``GATEWAY_<FIELD>``."""

LogFormat = Literal["auto", "json", "console"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
SmtpSecurity = Literal["starttls", "tls", "none"]


class Settings(BaseSettings):
    """Gateway settings. Each field is read from ``GATEWAY_<FIELD>`` (case-insensitive),
    e.g. ``GATEWAY_LOG_FORMAT=console``; keyword arguments take precedence."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    dialplan: Path = Path("dialplans/example.yaml")
    """Dialplan YAML file to load."""
    data_dir: Path = Path("./data")
    """Directory for the embedded SQLite store and other state."""
    log_format: LogFormat = "auto"
    """``json`` (one object per line, for production), ``console`` (for humans), or
    ``auto``: console on a terminal, JSON otherwise (a journal, a file, a pipe)."""
    log_level: LogLevel = "INFO"
    """Lowest level written; accepts any case (``debug``)."""
    use_uvloop: bool = True
    """Run the asyncio loop on uvloop when it is installed."""
    store: str = "sqlite"
    """``sqlite`` (file in ``data_dir``), ``sqlite:///path``, or ``redis://host:port/db``
    (the cluster store, shared by every node; the mail outbox stays in ``data_dir``)."""
    nonce_secret: SecretStr = SecretStr("")
    """The key of the digest nonces' HMAC (at least 16 characters, never logged). Every node
    of a cluster needs the same one, so that a nonce issued by one node verifies on
    another; empty: a random key per process (a single node)."""
    store_timeout_s: Annotated[float, Field(gt=0, le=0.2)] = 0.2
    """Seconds one Redis connect or command may take before the store counts as down
    (a Redis outage must fail fast: it never holds an emergency call). At most 0.2: the
    emergency call waits 0.25 s at most for its callback DID, and an outage must be seen
    inside that time for the node's outage share to answer."""
    mqtt_url: str = ""
    """Broker ``mqtt://[user:pass@]host:port`` or ``mqtts://...``; empty: start an embedded
    broker on 127.0.0.1 (``mqtt_embedded_port``); ``off``: publish nothing."""
    mqtt_ca_file: Path | None = None
    """CA bundle for ``mqtts://`` (the system store when unset)."""
    mqtt_prefix: str = "gateway"
    """Topic prefix: ``<prefix>/agents/<agent>/presence`` and so on."""
    mqtt_embedded_port: int = 1884
    """Port of the embedded broker (the next free one when taken); 1884 so that a system
    Mosquitto on 1883 is left alone."""
    mqtt_embedded_ws_port: Annotated[int, Field(ge=0, le=65535)] = 1885
    """Port of the embedded broker's MQTT-over-WebSockets listener, opened for the web
    pages (with ``web_users_file``; the next free one when taken); 0: none."""
    mqtt_buffer: int = 10_000
    """Events kept while the broker is unreachable (the oldest dropped beyond)."""
    gc_pacing: bool = True
    """Collect garbage on a timer instead of CPython's automatic full passes, whose pause
    grows with the call rate (see ``gateway/gcpolicy.py``)."""
    gc_full_interval_s: float = 600.0
    """Seconds between full garbage collections when ``gc_pacing`` is on."""
    memory_trim: bool = True
    """Hand freed memory back to the OS (glibc ``malloc_trim``) when the node goes quiet
    after a load, so that its resident size falls back (see ``gateway/gcpolicy.py``)."""
    allocator: Literal["malloc", "pymalloc"] = "malloc"
    """Memory allocator of ``gateway run``: ``malloc`` (the C library's, whose freed pages
    the trim hands back) or ``pymalloc`` (CPython's: 4-7 % less CPU per call, but most of
    a load's memory stays). Applied when the process starts (``gateway/launch.py``); an
    explicit ``PYTHONMALLOC`` wins."""

    # -- e-mail notification of emergency contacts (SPEC E-6, docs/notifications.md) --------
    smtp_host: str = ""
    """Mail server (submission) host; empty: no mail server, so no notification can be sent
    (each emergency call then logs an error and publishes ``notification_failed``)."""
    smtp_port: Annotated[int, Field(ge=1, le=65535)] = 587
    """Mail server port: 587 for submission with STARTTLS, 465 for implicit TLS."""
    smtp_security: SmtpSecurity = "starttls"
    """``starttls`` (required, not opportunistic), ``tls`` (implicit TLS from the first
    byte) or ``none`` (plain text: a local relay only)."""
    smtp_username: str = ""
    """Login name for SMTP AUTH; empty: no authentication."""
    smtp_password: SecretStr = SecretStr("")
    """Password for SMTP AUTH (never logged)."""
    smtp_from: str = "gateway@localhost"
    """From address (``addr`` or ``Name <addr>``); its domain is also the Message-ID's."""
    smtp_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    """Seconds for each SMTP step (connect, each command) before the attempt fails."""
    notify_give_up_s: Annotated[float, Field(gt=0)] = 3600.0
    """Seconds after the call until an undelivered notification is given up
    (``notification_failed`` on MQTT and an error in the log)."""
    notify_retry_base_s: Annotated[float, Field(gt=0)] = 5.0
    """First retry delay; later delays double, jittered, up to ``notify_retry_max_s``."""
    notify_retry_max_s: Annotated[float, Field(gt=0)] = 300.0
    """Longest delay between two attempts."""
    site_timezone: str = "UTC"
    """IANA time zone of the site (``America/Chicago``): notification times are shown in
    UTC and in this zone."""

    # -- TLS (RFC 3261 section 26, RFC 5630) and DNS (RFC 3263) for trunks ---------------------
    tls_cert_file: Path | None = None
    """PEM certificate (chain) the gateway presents on its TLS listeners, and as its client
    certificate to trunks set to ``mutual`` TLS; required when a listener is ``tls``."""
    tls_key_file: Path | None = None
    """PEM private key of ``tls_cert_file``."""
    tls_ca_file: Path | None = None
    """PEM CA bundle that trunk certificates are verified against (the system store when
    unset), and that client certificates must chain to when ``tls_verify_clients`` is on."""
    tls_verify_clients: bool = False
    """Ask every TLS client for a certificate and refuse the connection without a valid one
    (mutual TLS on the listeners)."""
    tls_keepalive_s: Annotated[float, Field(ge=0)] = 30.0
    """Seconds between RFC 5626 CRLF keep-alive pings on connections the gateway opened
    (TCP and TLS); 0: no pings (a peer's pings are always answered)."""
    dns_server: str = ""
    """``host:port`` (``127.0.0.1:5353``, ``[::1]:53``) of the DNS server that trunk names
    are resolved with (RFC 3263: NAPTR, SRV, A/AAAA); empty: the system's resolvers."""
    dns_timeout_s: Annotated[float, Field(gt=0)] = 2.0
    """Longest wait for one DNS lookup; an emergency call never waits longer than this."""
    dns_min_ttl_s: Annotated[float, Field(ge=0)] = 5.0
    """Shortest time a DNS answer is kept before it is refreshed (a TTL of 0 is not a
    reason to query on every call)."""

    drain_s: Annotated[float, Field(ge=0)] = 30.0
    """On SIGTERM, seconds ordinary calls are given to end before both legs get a BYE
    (SPEC O-7); emergency calls and callbacks are never cut by a drain."""
    retry_after_s: Annotated[int, Field(ge=0)] = 30
    """The ``Retry-After`` of the 503 that new ordinary calls get while draining."""
    metrics_addr: str = "127.0.0.1:9464"
    """``host:port`` of the Prometheus ``/metrics`` and the ``/healthz`` endpoint;
    ``off``: none."""
    cdr_retention_days: Annotated[float, Field(ge=0)] = 0.0
    """Call history rows older than this many days (by end time) are purged, at start and
    every hour; 0 keeps every row."""

    # -- the wallboard and agent desktop pages (SPEC W-1, docs/web.md) ---------------------
    web_users_file: Path | None = None
    """YAML file of the pages' logins (name, role desktop/wallboard, mosquitto_passwd hash);
    unset: no pages are served."""
    web_addr: str = "127.0.0.1:8088"
    """``host:port`` the pages are served on (with ``web_users_file``); ``off``: none."""
    web_mqtt_url: str = ""
    """``ws://`` or ``wss://`` URL of the broker's websockets listener that the browsers
    connect to; empty: the embedded broker's (``mqtt_embedded_ws_port``)."""

    @field_validator("web_mqtt_url")
    @classmethod
    def _web_mqtt_url(cls, value: str) -> str:
        value = value.strip()
        if value and not value.lower().startswith(("ws://", "wss://")):
            raise ValueError(f"{value!r} is not a ws:// or wss:// URL")
        return value

    @field_validator("metrics_addr", "web_addr")
    @classmethod
    def _metrics_addr(cls, value: str) -> str:
        value = value.strip()
        if value.lower() != "off":
            host, _, port = value.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{value!r} is not host:port (such as 127.0.0.1:9464) or off")
        return value

    @field_validator("nonce_secret")
    @classmethod
    def _nonce_secret_length(cls, value: SecretStr) -> SecretStr:
        size = len(value.get_secret_value().encode())
        if 0 < size < 16:
            raise ValueError(f"needs at least 16 characters (has {size}), or none")
        return value

    def nonce_secret_bytes(self) -> bytes | None:
        """The shared nonce key, or ``None`` for a random one per process."""
        return self.nonce_secret.get_secret_value().encode() or None

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _format_lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("smtp_security", mode="before")
    @classmethod
    def _security_lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("smtp_host", "smtp_username", "smtp_from", "site_timezone")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()

    @field_validator("smtp_from")
    @classmethod
    def _from_is_an_address(cls, value: str) -> str:
        _name, address = parseaddr(value)
        local, _, domain = address.rpartition("@")
        if not local or not domain or "\r" in value or "\n" in value:
            raise ValueError(f"{value!r} is not an e-mail address (addr or 'Name <addr>')")
        return value

    @field_validator("site_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        if value == "UTC":  # needs no time zone database
            return value
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(
                f"{value!r} is not an IANA time zone (such as UTC or America/Chicago)"
            ) from None
        return value

    @field_validator("dns_server")
    @classmethod
    def _dns_server(cls, value: str) -> str:
        value = value.strip()
        if value:
            host, _, port = value.rpartition(":")
            host = host.removeprefix("[").removesuffix("]")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{value!r} is not host:port (such as 127.0.0.1:53)")
        return value

    @field_validator("notify_retry_max_s")
    @classmethod
    def _retry_bounds(cls, value: float, info: ValidationInfo) -> float:
        base = info.data.get("notify_retry_base_s")  # absent when it was itself invalid
        if base is not None and value < base:
            raise ValueError(
                f"must not be less than {ENV_PREFIX}NOTIFY_RETRY_BASE_S ({base}), "
                "the first retry delay"
            )
        return value


class SettingsError(ValueError):
    """Invalid settings; ``problems`` has one line per bad variable, e.g.
    ``GATEWAY_SMTP_PORT='abc': expected a valid integer ...``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def _env_value(name: str, environ: Mapping[str, str]) -> str | None:
    # pydantic-settings reads variables case-insensitively: find the one it read.
    for key, value in environ.items():
        if key.upper() == name:
            return value
    return None


_SECRET_FIELDS = frozenset({"smtp_password", "nonce_secret"})


def _settings_problems(
    error: ValidationError, overrides: Mapping[str, Any], environ: Mapping[str, str]
) -> list[str]:
    problems = []
    for detail in error.errors():
        field = str(detail["loc"][0]) if detail["loc"] else ""
        message = detail["msg"].removeprefix("Value error, ")
        if message.startswith("Input should be "):
            message = "expected " + message.removeprefix("Input should be ")
        secret = field in _SECRET_FIELDS  # a secret's value is never echoed
        if field in overrides:
            shown = "'**********'" if secret else repr(overrides[field])
            problems.append(f"{field}={shown}: {message}")
            continue
        name = f"{ENV_PREFIX}{field.upper()}" if field else "settings"
        raw = _env_value(name, environ)
        value = raw if raw is not None else detail.get("input")
        problems.append(f"{name}={'**********' if secret else value!r}: {message}")
    return problems


def load_settings(**overrides: Any) -> Settings:
    """Build :class:`Settings` from the environment, with ``overrides`` taking precedence.

    Raises :class:`SettingsError` (one line per bad variable: its name, the value given and
    what is expected) when a value is invalid.
    """
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise SettingsError(_settings_problems(error, overrides, os.environ)) from None
