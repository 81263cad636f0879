"""Configuration: dialplan files (schema, loader, routing) and environment settings.

Typical use::

    from gateway.config import load_dialplan, load_settings

    settings = load_settings()
    dialplan = load_dialplan(settings.dialplan)  # raises DialplanError: file:line: field: ...
    decision = dialplan.route("5551234567")  # RouteDecision | None
"""

from gateway.config.dialplan import (
    DIALPLAN_FORMAT_VERSION,
    Dialplan,
    GatewayAddress,
    ListenAddress,
    NodeConfig,
    OutboundRule,
    RouteDecision,
    SipSettings,
    Transport,
    Trunk,
)
from gateway.config.loader import DialplanError, Problem, load_dialplan, load_dialplan_text
from gateway.config.settings import LogFormat, LogLevel, Settings, load_settings

__all__ = [
    "DIALPLAN_FORMAT_VERSION",
    "Dialplan",
    "DialplanError",
    "GatewayAddress",
    "ListenAddress",
    "LogFormat",
    "LogLevel",
    "NodeConfig",
    "OutboundRule",
    "Problem",
    "RouteDecision",
    "Settings",
    "SipSettings",
    "Transport",
    "Trunk",
    "load_dialplan",
    "load_dialplan_text",
    "load_settings",
]
