"""What the web server answers (sans-I/O): the pages, their static files and the login.

Theory of operation
-------------------
:class:`WebPages` maps one HTTP request (method, path, body) to one :class:`Reply`. The
pages carry no data: they are static files read once at start-up. Everything a person
sees comes from the broker, over MQTT over WebSockets, after a login (SPEC W-1):

1. The page asks for a name and a password and POSTs them to ``/login``.
2. The gateway checks them against the users file (:mod:`gateway.web.users`) and answers
   with the role, the agent (desktops), the topic prefix and the broker's WebSocket URL;
   a wrong pair gets 401 and nothing else.
3. The page connects to the broker with the *same* name and password; the broker checks
   them again against the same hashes and enforces the ACL. The gateway never hands out a
   broker credential of its own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from gateway.web.users import WebUser, verify_password

__all__ = ["STATIC_DIR", "Reply", "WebPages"]

STATIC_DIR: Final = Path(__file__).resolve().parent / "static"
#: the longest login body accepted
MAX_BODY: Final = 4096
_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}
_PAGES: Final = {"/": "index.html", "/wallboard": "wallboard.html", "/desktop": "desktop.html"}


@dataclass(frozen=True, slots=True)
class Reply:
    """One HTTP response."""

    status: int
    reason: str
    content_type: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


def _text(status: int, reason: str, text: str) -> Reply:
    return Reply(status, reason, "text/plain; charset=utf-8", f"{text}\n".encode())


def _json(status: int, reason: str, value: object) -> Reply:
    body = json.dumps(value).encode()
    return Reply(status, reason, "application/json", body, {"Cache-Control": "no-store"})


class WebPages:
    """The wallboard, the desktop, their files and ``POST /login``."""

    def __init__(
        self,
        users: Sequence[WebUser],
        *,
        prefix: str,
        mqtt_ws_url: str,
        static_dir: Path = STATIC_DIR,
    ) -> None:
        self._users = {user.name: user for user in users}
        self._prefix = prefix.strip("/")
        self._mqtt_ws_url = mqtt_ws_url
        self._files = {
            path.name: path.read_bytes()
            for path in sorted(static_dir.iterdir())
            if path.is_file() and path.suffix in _TYPES
        }
        ws = urlsplit(mqtt_ws_url)
        self._security = {
            "Content-Security-Policy": (
                "default-src 'self'; img-src 'self' data:; "
                f"connect-src 'self' {ws.scheme}://{ws.netloc}; frame-ancestors 'none'"
            ),
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        }

    def answer(self, method: str, target: str, body: bytes) -> Reply:
        """The reply to ``method target`` with ``body`` (security headers included)."""
        reply = self._route(method, target.split("?", 1)[0], body)
        return Reply(
            reply.status,
            reply.reason,
            reply.content_type,
            reply.body,
            {**self._security, **reply.headers},
        )

    def _route(self, method: str, path: str, body: bytes) -> Reply:
        if path == "/login":
            if method != "POST":
                return _text(405, "Method Not Allowed", "POST /login")
            return self.login(body)
        if method not in ("GET", "HEAD"):
            return _text(405, "Method Not Allowed", "GET a page, or POST /login")
        name = _PAGES.get(path)
        if name is None and path.startswith("/static/"):
            name = path.removeprefix("/static/")
        content = self._files.get(name or "")
        if name is None or content is None or "/" in name:
            return _text(404, "Not Found", "no such page: see /")
        return Reply(200, "OK", _TYPES[Path(name).suffix], content)

    def login(self, body: bytes) -> Reply:
        """Check a name and password (JSON ``{"user", "password"}``); 401 when wrong."""
        try:
            form = json.loads(body) if len(body) <= MAX_BODY else None
        except ValueError:
            form = None
        if not isinstance(form, dict) or not all(
            isinstance(form.get(key), str) for key in ("user", "password")
        ):
            return _json(400, "Bad Request", {"error": "expected {user, password}"})
        user = self._users.get(form["user"])
        if user is None or not verify_password(form["password"], user.password_hash):
            return _json(401, "Unauthorized", {"error": "wrong user name or password"})
        return _json(
            200,
            "OK",
            {
                "user": user.name,
                "role": user.role.value,
                "agent": user.agent,
                "prefix": self._prefix,
                "mqtt_url": self._mqtt_ws_url,
            },
        )
