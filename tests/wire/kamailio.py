"""Kamailio as a record-routing stateful relay in front of the system under test.

``start_kamailio`` renders ``deploy/kamailio/kamailio-relay.cfg.tmpl``, checks it with
``kamailio -c``, runs ``kamailio -DD -E`` in the foreground (its worker processes are
children of the one we start, so stopping that one stops them all) and waits until the
relay answers an OPTIONS. Everything it writes - pid file, runtime directory, log - stays
in the test's temporary directory, so it runs as root without touching /var/run.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest
from harness import (
    LOOPBACK,
    PROJECT_ROOT,
    ListeningProcess,
    port_bound_by,
    require_tool,
    sip_options,
)

RELAY_TEMPLATE = PROJECT_ROOT / "deploy" / "kamailio" / "kamailio-relay.cfg.tmpl"
TLS_RELAY_TEMPLATE = PROJECT_ROOT / "deploy" / "kamailio" / "kamailio-tls-relay.cfg.tmpl"


class KamailioFactory(Protocol):
    """Signature of the ``kamailio_factory`` fixture."""

    def __call__(self, next_hop: str, *, listen_port: int | None = None) -> KamailioProcess: ...


@dataclass
class KamailioProcess(ListeningProcess):
    """A running Kamailio relay (``stop``: the main process stops its children)."""

    next_hop: str
    config_path: Path
    log_path: Path
    workdir: Path

    stop_timeout = 5.0

    def log_text(self) -> str:
        """Everything Kamailio logged (``-E``: stderr) so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def render_relay_config(listen_host: str, listen_port: int, next_hop: str) -> str:
    """The relay configuration for ``listen_host:listen_port`` relaying to ``next_hop``."""
    return RELAY_TEMPLATE.read_text().format(
        listen_host=listen_host, listen_port=listen_port, next_hop=next_hop
    )


@dataclass(frozen=True)
class KamailioTls:
    """The TLS side of a relay (``kamailio-tls-relay.cfg.tmpl``): its port, PEM files,
    whether its TLS clients must present a certificate, and where it relays to
    (``sip:host:port;transport=udp|tls``)."""

    tls_port: int
    next_hop_uri: str
    cert_file: Path
    key_file: Path
    ca_file: Path
    require_client_cert: bool = False


def render_tls_relay_config(listen_host: str, listen_port: int, tls: KamailioTls) -> str:
    """The TLS relay configuration (udp and tls listeners, relaying to ``tls.next_hop_uri``)."""
    return TLS_RELAY_TEMPLATE.read_text().format(
        listen_host=listen_host,
        listen_port=listen_port,
        tls_port=tls.tls_port,
        next_hop_uri=tls.next_hop_uri,
        cert_file=tls.cert_file,
        key_file=tls.key_file,
        ca_file=tls.ca_file,
        require_client_cert=int(tls.require_client_cert),
    )


def start_kamailio(
    tmp_path: Path,
    listen_port: int,
    next_hop: str,
    *,
    listen_host: str = LOOPBACK,
    ready_timeout: float = 10.0,
    tls: KamailioTls | None = None,
) -> KamailioProcess:
    """Start a Kamailio relay on udp ``listen_host:listen_port`` towards ``next_hop``.

    ``next_hop`` is ``host:port``: initial INVITEs are record-routed and relayed there,
    in-dialog requests follow their Route (loose_route). Fails the test when the
    configuration does not check, or when the relay does not answer OPTIONS with 200
    within ``ready_timeout`` seconds (with the log's tail in the message).
    With ``tls``, the TLS relay is run instead (``next_hop`` is then only a label).
    """
    binary = require_tool("kamailio")
    workdir = tmp_path
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "kamailio-relay.cfg"
    if tls is None:
        config_path.write_text(render_relay_config(listen_host, listen_port, next_hop))
    else:
        config_path.write_text(render_tls_relay_config(listen_host, listen_port, tls))
    log_path = workdir / "kamailio.log"

    check = subprocess.run(
        [binary, "-c", "-f", str(config_path)],
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if check.returncode != 0:
        pytest.fail(
            f"kamailio -c rejected {config_path} (exit {check.returncode}):\n"
            f"{check.stdout}{check.stderr}",
            pytrace=False,
        )

    command = [
        binary,
        "-DD",  # no daemon: the process we start stays the main process
        "-E",  # log to stderr
        "-f", str(config_path),
        "-w", str(workdir),
        "-Y", str(workdir),  # runtime directory
        "-P", str(workdir / "kamailio.pid"),
        "-m", "32",  # shared memory, MB
        "-M", "8",  # private memory per process, MB
    ]  # fmt: skip
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            command, cwd=workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    relay = KamailioProcess(
        popen=popen,
        listen_host=listen_host,
        listen_port=listen_port,
        next_hop=next_hop,
        config_path=config_path,
        log_path=log_path,
        workdir=workdir,
    )
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if not relay.running:
            pytest.fail(
                f"kamailio exited with code {popen.returncode} before it listened on "
                f"{relay.address}\n--- log tail ---\n{relay.log_tail()}",
                pytrace=False,
            )
        if port_bound_by(popen.pid, listen_port, "udp"):
            answer = sip_options(listen_host, listen_port, timeout=0.2)
            if answer is not None and answer.startswith("SIP/2.0 200"):
                return relay
        time.sleep(0.05)
    relay.stop()
    pytest.fail(
        f"kamailio did not answer OPTIONS on udp {relay.address} within {ready_timeout} s\n"
        f"--- log tail ---\n{relay.log_tail()}",
        pytrace=False,
    )
