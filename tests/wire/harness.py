"""Helpers for the wire-level tests: free ports, SIPp runs, the gateway as a process.

Theory of operation
    A wire test puts real SIP peers around the system under test, all on loopback:

        SIPp uac  ->  [Kamailio]  ->  gateway  ->  SIPp uas

    The pieces live in ``testkit`` (at the project root), shared with the benchmarks:
    ``testkit.sipp`` runs SIPp (``Sipp``: a uas in the background, a uac to completion,
    each bounded by ``-m`` and ``-timeout``, its traces in a directory of its own that
    ``SippResult.describe()`` puts into the assertion message); ``testkit.processes``
    finds tools, picks free ports and starts the gateway as a process. This module
    re-exports them under the names the tests import, and adds what is the tests' own:
    ``start_gateway`` without MQTT unless a test names a broker, and the signature of
    the ``gateway_factory`` fixture. A peer that cannot start raises ``HarnessError``,
    which tests/wire/conftest.py turns into a failed test naming the cause (never a
    skip).

    The pass rule is Kamailio's: count successful and failed calls on *both* sides. A
    ``check_it`` regular expression that fails in a uas marks that call failed on the
    uas only - SIPp goes on with the scenario, so the uac sees a normal call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from testkit import processes
from testkit.processes import (
    LOOPBACK,
    PROJECT_ROOT,
    TOOL_PACKAGES,
    GatewayProcess,
    HarnessError,
    ListeningProcess,
    PortKind,
    free_port,
    port_bound_by,
    require_tool,
    sip_options,
)
from testkit.sipp import (
    HARD_TIMEOUT_MARGIN,
    SCENARIO_DIR,
    SIPP_BUILTINS,
    Sipp,
    SippFiles,
    SippProcess,
    SippResult,
    SippTransport,
)

__all__ = [
    "HARD_TIMEOUT_MARGIN",
    "LOOPBACK",
    "PROJECT_ROOT",
    "SCENARIO_DIR",
    "SIPP_BUILTINS",
    "TOOL_PACKAGES",
    "GatewayFactory",
    "GatewayProcess",
    "HarnessError",
    "ListeningProcess",
    "PortKind",
    "Sipp",
    "SippFiles",
    "SippProcess",
    "SippResult",
    "SippTransport",
    "free_port",
    "port_bound_by",
    "require_tool",
    "sip_options",
    "start_gateway",
]


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

    ``testkit.processes.start_gateway`` with ``GATEWAY_MQTT_URL=off`` unless ``env``
    names a broker (the test's own Mosquitto): readiness is an OPTIONS over UDP to
    ``listen_host:listen_port`` answered with 200 within ``ready_timeout`` seconds.
    """
    return processes.start_gateway(
        dialplan_text,
        tmp_path,
        listen_port=listen_port,
        listen_host=listen_host,
        ready_timeout=ready_timeout,
        # no MQTT unless the test names a broker (its own Mosquitto)
        env={"GATEWAY_MQTT_URL": "off", **(env or {})},
        args=args,
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
