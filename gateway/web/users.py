"""Who may open the wallboard and the agent desktop, and what each may do on MQTT (SPEC W-1).

Theory of operation
-------------------
The users are data: a YAML file (``GATEWAY_WEB_USERS_FILE``) with one entry per login::

    users:
      - { name: alice, role: desktop, password_hash: "$7$101$..." }
      - { name: sup,   role: wallboard, password_hash: "$7$101$..." }

A ``desktop`` user's name *is* its agent id (the name the dialplan's ``agents`` section
and the topics use), so that a Mosquitto ACL ``pattern`` with ``%u`` says the same thing
as the explicit ACL made here. A ``wallboard`` user only reads.

The password hashes are Mosquitto's own (``mosquitto_passwd``: ``$7$<iterations>$<salt>
$<hash>``, PBKDF2-HMAC-SHA512, base64), so one file of hashes serves both the gateway's
login page and the broker's ``password_file``: nobody keeps plain passwords anywhere.

Everything here is pure: :func:`verify_password`, :func:`hash_password`,
:func:`password_file_text` and :func:`acl_text` take data and return data; the embedded
broker writes the two texts to its private directory (``gateway.events.embedded``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final

import yaml

__all__ = [
    "GATEWAY_BROKER_USER",
    "Role",
    "WebUser",
    "WebUsersError",
    "acl_text",
    "hash_password",
    "load_users",
    "password_file_text",
    "verify_password",
]

#: the gateway's own login to the embedded broker (a web user may not take this name)
GATEWAY_BROKER_USER: Final = "gateway"
#: mosquitto_passwd's default for ``$7$`` hashes
_ITERATIONS: Final = 101
_SALT_BYTES: Final = 12
_FORBIDDEN_IN_NAME: Final = frozenset("/+#:\x00 \t\r\n")


class Role(StrEnum):
    """What a login may do: a desktop acts for its own agent, a wallboard only reads."""

    DESKTOP = "desktop"
    WALLBOARD = "wallboard"


@dataclass(frozen=True, slots=True)
class WebUser:
    """One login of the pages (and of the broker's websockets listener)."""

    name: str
    role: Role
    password_hash: str

    @property
    def agent(self) -> str | None:
        """The agent a desktop user acts for (its name); ``None`` for a wallboard."""
        return self.name if self.role is Role.DESKTOP else None


class WebUsersError(ValueError):
    """The users file is unusable; the message names the file, the entry and the field."""


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """A Mosquitto ``$7$`` hash of ``password`` (what ``mosquitto_passwd`` writes)."""
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _ITERATIONS)
    return f"$7${_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, password_hash: str) -> bool:
    """Whether ``password`` matches a Mosquitto ``$7$`` hash (in constant time)."""
    parts = password_hash.split("$")
    if len(parts) != 5 or parts[0] or parts[1] != "7" or not parts[2].isdigit():
        return False
    try:
        salt = base64.b64decode(parts[3], validate=True)
        expected = base64.b64decode(parts[4], validate=True)
    except ValueError:
        return False
    iterations = int(parts[2])
    if not 0 < iterations <= 1_000_000:
        return False
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return hmac.compare_digest(digest, expected)


def _is_hash(value: object) -> bool:
    parts = value.split("$") if isinstance(value, str) else []
    return len(parts) == 5 and not parts[0] and parts[1] == "7" and parts[2].isdigit()


def _user(entry: object, where: str, agents: Iterable[str] | None) -> WebUser:
    if not isinstance(entry, dict):
        raise WebUsersError(f"{where}: expected a mapping with name, role, password_hash")
    unknown = set(entry) - {"name", "role", "password_hash"}
    if unknown:
        raise WebUsersError(f"{where}: unknown field {sorted(unknown)[0]!r}")
    name, role, password_hash = entry.get("name"), entry.get("role"), entry.get("password_hash")
    if not isinstance(name, str) or not name or _FORBIDDEN_IN_NAME & set(name):
        raise WebUsersError(f"{where}.name: a non-empty name without / + # : or spaces")
    if name == GATEWAY_BROKER_USER:
        raise WebUsersError(f"{where}.name: {name!r} is the gateway's own broker login")
    if role not in {r.value for r in Role}:
        raise WebUsersError(f"{where}.role: expected desktop or wallboard, not {role!r}")
    if not isinstance(password_hash, str) or not _is_hash(password_hash):
        raise WebUsersError(
            f"{where}.password_hash: expected a mosquitto_passwd hash such as $7$101$<salt>$<hash>"
        )
    known = set(agents) if agents is not None else None
    if known is not None and role == Role.DESKTOP and name not in known:
        raise WebUsersError(f"{where}.name: desktop user {name!r} is not an agent of the dialplan")
    if known is not None and role == Role.WALLBOARD and name in known:
        raise WebUsersError(f"{where}.name: wallboard user {name!r} is also an agent's name")
    return WebUser(name, Role(role), password_hash)


def load_users(path: Path, agents: Iterable[str] | None = None) -> tuple[WebUser, ...]:
    """The users of ``path``; :class:`WebUsersError` names the file, entry and field that
    are wrong. With ``agents``, a desktop user must be one of them and a wallboard must not."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise WebUsersError(f"{path}: {exc}") from None
    entries = document.get("users") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise WebUsersError(f"{path}: expected 'users:' with a list of logins")
    known = list(agents) if agents is not None else None
    users = [_user(entry, f"{path}: users.{i}", known) for i, entry in enumerate(entries)]
    names = [user.name for user in users]
    if len(set(names)) != len(names):
        twice = next(name for name in names if names.count(name) > 1)
        raise WebUsersError(f"{path}: user {twice!r} is listed twice")
    return tuple(users)


def password_file_text(users: Sequence[WebUser], gateway_hash: str) -> str:
    """Mosquitto's ``password_file``: the gateway's own login, then every web user."""
    lines = [f"{GATEWAY_BROKER_USER}:{gateway_hash}"]
    lines += [f"{user.name}:{user.password_hash}" for user in users]
    return "\n".join(lines) + "\n"


def acl_text(users: Sequence[WebUser], prefix: str) -> str:
    """Mosquitto's ``acl_file`` for ``users`` under ``prefix`` (see deploy/mosquitto/acl):
    the gateway reads and writes everything under the prefix; a wallboard reads it all; a
    desktop reads its own agent's topics and the node status, and writes only its agent's
    presence and location commands. What is not granted is refused (silently dropped for
    MQTT 3.1.1 publishers, not delivered to subscribers)."""
    prefix = prefix.strip("/")
    lines = [
        "# generated by the gateway (gateway/web/users.py); see deploy/mosquitto/acl",
        f"user {GATEWAY_BROKER_USER}",
        f"topic readwrite {prefix}/#",
    ]
    for user in users:
        lines += ["", f"user {user.name}"]
        if user.role is Role.WALLBOARD:
            lines.append(f"topic read {prefix}/#")
            continue
        agent = f"{prefix}/agents/{user.name}"
        lines += [
            f"topic read {agent}/#",
            f"topic read {prefix}/nodes/+/status",
            f"topic write {agent}/presence/set",
            f"topic write {agent}/location/set",
        ]
    return "\n".join(lines) + "\n"
