"""The supervisor wallboard and the agent desktop (SPEC W-1, docs/web.md).

Two static pages that speak the public MQTT contract (docs/mqtt.md) straight to the broker
over WebSockets, behind a login; the gateway serves the files and checks the logins, and
the broker (the embedded Mosquitto, or the deploy/mosquitto pattern) enforces who may read
and write what. Nothing here is on the call path: the app starts it last, as a side task,
and a failure only costs the pages.

* :mod:`gateway.web.users` - the users file, Mosquitto password hashes, the ACL text;
* :mod:`gateway.web.pages` - what each request gets (sans-I/O);
* :mod:`gateway.web.server` - the asyncio HTTP adapter;
* this module - the start-up hooks the app calls.
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
from collections.abc import Iterable

import structlog

from gateway.config.settings import Settings
from gateway.events.embedded import BrokerAccess, EmbeddedBroker
from gateway.metrics import parse_addr
from gateway.web.pages import WebPages
from gateway.web.server import WebServer
from gateway.web.users import (
    GATEWAY_BROKER_USER,
    WebUser,
    WebUsersError,
    acl_text,
    hash_password,
    load_users,
    password_file_text,
)

__all__ = ["WebServer", "broker_access", "start_web", "web_users"]

log = structlog.get_logger("gateway.web")


def web_users(settings: Settings, agents: Iterable[str]) -> tuple[WebUser, ...] | None:
    """The logins of ``GATEWAY_WEB_USERS_FILE``; ``None`` when unset, off or unusable
    (logged: the gateway runs on without the pages)."""
    if settings.web_users_file is None or settings.web_addr.strip().lower() == "off":
        return None
    try:
        return load_users(settings.web_users_file, agents)
    except WebUsersError as exc:
        log.error("web_users_unusable", error=str(exc), detail="no wallboard or desktop pages")
        return None


def broker_access(users: Iterable[WebUser], prefix: str) -> BrokerAccess:
    """The embedded broker's password file and ACL for ``users``, with a fresh random
    password for the gateway's own login."""
    users = tuple(users)
    password = secrets.token_urlsafe(24)
    return BrokerAccess(
        password_file=password_file_text(users, hash_password(password)),
        acl_file=acl_text(users, prefix),
        username=GATEWAY_BROKER_USER,
        password=password,
    )


async def start_web(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    users: tuple[WebUser, ...] | None,
    prefix: str,
    broker: EmbeddedBroker | None,
) -> WebServer | None:
    """Serve the pages on ``GATEWAY_WEB_ADDR`` when there are users and a broker that
    enforces logins; otherwise log why not and return ``None``."""
    if users is None:
        return None
    ws_url = settings.web_mqtt_url
    if not ws_url and broker is not None:
        if not broker.access_enforced or broker.websockets_url is None:
            log.error(
                "web_pages_not_served",
                detail="the embedded broker runs without access control or websockets "
                "(mosquitto missing?); pages would be open to anyone",
            )
            return None
        ws_url = broker.websockets_url
    if not ws_url:
        log.error(
            "web_pages_not_served",
            detail="an external broker is configured: set GATEWAY_WEB_MQTT_URL to its "
            "websockets listener (see deploy/mosquitto)",
        )
        return None
    host, port = parse_addr(settings.web_addr)
    if not settings.web_mqtt_url and not _is_loopback(host):
        log.warning(
            "web_broker_on_loopback_only",
            detail=f"pages on {host}, but the embedded broker's websockets listener is on "
            "loopback: other machines' browsers cannot reach it (use deploy/mosquitto and "
            "GATEWAY_WEB_MQTT_URL)",
        )
    server = WebServer(WebPages(users, prefix=prefix, mqtt_ws_url=ws_url), host, port)
    try:
        await server.start()
    except OSError as exc:  # a side task: the calls go on without the pages
        log.error("web_not_listening", address=settings.web_addr, error=str(exc))
        return None
    stack.push_async_callback(server.close)
    return server


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
