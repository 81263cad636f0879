"""Emergency-contact addresses: what the gateway will send to (SPEC E-6).

An agent's ``emergency_contacts`` is a ``;``-separated list of plain addresses
(``local@domain``, RFC 5321 section 4.1.2 / RFC 5322 section 3.4.1 ``dot-atom``). The check
is deliberately strict and ASCII-only, because the address goes straight into
``RCPT TO``: no display names, no comments, no quoted local parts, no SMTPUTF8. A
domain is a hostname (a single label such as ``localhost`` is allowed for a local relay)
or an address literal such as ``[192.0.2.1]``.

:func:`split_recipients` is used at run time (bad entries skipped, not fatal);
:func:`check_contacts` reports the same problems for ``gateway check``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from gateway.config.dialplan import Agent

__all__ = ["address_problem", "check_contacts", "split_recipients"]

# RFC 5322 section 3.2.3 atext, as a dot-atom.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")
# RFC 1123 section 2.1 label.
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")

_MAX_LOCAL = 64  # RFC 5321 section 4.5.3.1.1
_MAX_DOMAIN = 255  # RFC 5321 section 4.5.3.1.2
_MAX_PATH = 254  # RFC 5321 section 4.5.3.1.3: 256 octets of path, less the angle brackets


def _domain_problem(domain: str) -> str | None:
    if domain.startswith("[") and domain.endswith("]"):
        literal = domain[1:-1]
        if literal[:5].lower() == "ipv6:":
            literal = literal[5:]
            version = 6
        else:
            version = 4
        try:
            address = ipaddress.ip_address(literal)
        except ValueError:
            return f"domain literal {domain} is not an IP address"
        if address.version != version:
            return f"domain literal {domain} must be [IPv4] or [IPv6:...]"
        return None
    if len(domain) > _MAX_DOMAIN:
        return "domain is longer than 255 characters"
    labels = domain.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        return f"domain {domain!r} is not a valid hostname"
    if labels[-1].isdigit():
        return f"domain {domain!r} looks like an IP address: write it as [{domain}]"
    return None


def address_problem(address: str) -> str | None:
    """Why ``address`` cannot be used as a recipient, or ``None`` if it can."""
    if not address.isascii():
        return "non-ASCII addresses are not supported"
    if any(ch.isspace() for ch in address) or any(ord(ch) < 32 or ord(ch) == 127 for ch in address):
        return "contains white space or control characters"
    if "," in address:
        return "separate addresses with ';', not ','"
    if "<" in address or ">" in address:
        return "write the bare address, without a display name or angle brackets"
    if len(address) > _MAX_PATH:
        return f"longer than {_MAX_PATH} characters"
    local, at, domain = address.rpartition("@")
    if not at or not local:
        return "needs the form local-part@domain"
    if not domain:
        return "has no domain after '@'"
    if len(local) > _MAX_LOCAL:
        return f"local part is longer than {_MAX_LOCAL} characters"
    if not _DOT_ATOM.fullmatch(local):
        return f"local part {local!r} is not valid (letters, digits, .!#$%&'*+/=?^_`{{|}}~-)"
    return _domain_problem(domain)


def split_recipients(addresses: Iterable[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Split ``addresses`` into usable recipients and ``(address, problem)`` pairs.

    Entries are stripped; empty ones are ignored; an address listed twice (compared
    case-insensitively) is kept once, so nobody gets the same notice twice.
    """
    valid: list[str] = []
    invalid: list[tuple[str, str]] = []
    seen: set[str] = set()
    for raw in addresses:
        address = raw.strip()
        if not address:
            continue
        problem = address_problem(address)
        if problem is not None:
            invalid.append((address, problem))
            continue
        key = address.lower()
        if key not in seen:
            seen.add(key)
            valid.append(address)
    return valid, invalid


def check_contacts(agent_id: str, agent: Agent) -> list[str]:
    """Problems with ``agent``'s emergency contacts, in words an engineer can act on.

    Each invalid address, and each address listed more than once, gives one line; an
    empty list means every contact can be mailed (or the agent has none).
    """
    problems: list[str] = []
    seen: set[str] = set()
    for address in agent.contact_list:
        problem = address_problem(address)
        if problem is not None:
            problems.append(
                f"agent {agent_id!r}: emergency contact {address!r} is not a usable e-mail "
                f"address ({problem}); it will be skipped when notifying"
            )
            continue
        key = address.lower()
        if key in seen:
            problems.append(
                f"agent {agent_id!r}: emergency contact {address!r} is listed more than once; "
                "it is mailed once"
            )
        seen.add(key)
    return problems
