"""The field checks of the dialplan schema: shapes, names, hosts, numbers, URIs.

Every dialplan model (:mod:`gateway.config.dialplan`, :mod:`gateway.config.contact_centre`)
builds on :class:`Frozen` and these annotated types; each check raises a
:class:`~pydantic_core.PydanticCustomError` whose type the loader knows (``host``,
``name``, ``e164``, ...) and whose message already quotes the value, so that an error reads
``file:line: field: message`` without more context.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from gateway.config.countries import is_iso_country
from gateway.config.dialstrings import countries_supported
from gateway.sip.errors import SipError
from gateway.sip.routing import resolve_next_hop
from gateway.sip.uri import parse_uri

FieldLoc = tuple[str | int, ...]
"""Where a value sits in a dialplan: ``("outbound", 1, "trunk")``."""

_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_COUNTRY = re.compile(r"[A-Z]{2}")


Transport = Literal["udp", "tcp", "tls"]
"""A SIP transport, RFC 3261 section 18."""

#: the transports this gateway can send and listen on
SUPPORTED_TRANSPORTS: tuple[str, ...] = ("udp", "tcp", "tls")


def check_transport(value: Any) -> Any:
    """Refuse a transport the gateway cannot use (``sctp``, ``ws``) with a clear message."""
    if isinstance(value, str) and value not in SUPPORTED_TRANSPORTS:
        raise problem(
            "transport",
            f"transport {value!r} is not supported: use udp, tcp or tls",
        )
    return value


Port = Annotated[int, Field(ge=1, le=65535)]
PositiveMs = Annotated[int, Field(gt=0)]

# RFC 1123 section 2.1 label: letters, digits, hyphens; no leading/trailing hyphen; <= 63.
_HOSTNAME_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
# Names used as keys in logs and metrics (trunks, rules, the node).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class Frozen(BaseModel):
    """Base for every dialplan model: immutable, unknown fields refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def problem(kind: str, message: str) -> PydanticCustomError:
    # No ctx: the message is already formatted and may contain braces (regexes do).
    return PydanticCustomError(kind, message)


def check_host(value: str) -> str:
    """Accept an IPv4/IPv6 literal (brackets allowed, removed) or an RFC 1123 hostname."""
    host = value.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise problem("host", f"{value!r} is not an IPv6 literal") from None
        return host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return host
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    if (
        not name
        or len(name) > 253
        or not all(_HOSTNAME_LABEL.fullmatch(label) for label in labels)
        # An all-digit last label is a mistyped IPv4 address, never a hostname.
        or labels[-1].isdigit()
    ):
        raise problem("host", f"{value!r} is neither an IP address nor a valid hostname")
    return host


def check_name(value: str, what: str) -> str:
    if not _NAME.fullmatch(value):
        raise problem(
            "name",
            f"{what} {value!r} must be 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit",
        )
    return value


_Item = TypeVar("_Item")


def check_not_empty(value: tuple[_Item, ...]) -> tuple[_Item, ...]:
    # An after-validator rather than min_length: min_length counts only the items that
    # validated, so one bad item would also report a misleading "too short".
    if not value:
        raise problem("empty", "needs at least 1 entry")
    return value


def _check_trunk_name(value: str) -> str:
    return check_name(value, "trunk name")


TrunkName = Annotated[str, AfterValidator(_check_trunk_name)]


class GatewayAddress(Frozen):
    """One SIP peer of a trunk (a carrier SBC or an emergency-service entry point)."""

    host: str
    port: Port = 5060
    transport: Annotated[Transport, BeforeValidator(check_transport)] = "udp"

    @field_validator("host")
    @classmethod
    def _valid_host(cls, value: str) -> str:
        return check_host(value)


def _check_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as error:
        raise problem("regex", f"invalid regular expression '{value}': {error}") from None
    return value


def _check_rule_name(value: str) -> str:
    return check_name(value, "rule name")


def _check_network(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise problem(
            "network", f"{value!r} is not an IP address or network (e.g. 127.0.0.0/8)"
        ) from None
    return value


Regex = Annotated[str, AfterValidator(_check_regex)]
RuleName = Annotated[str, AfterValidator(_check_rule_name)]
Network = Annotated[str, AfterValidator(_check_network)]


def check_e164(value: str | None) -> str | None:
    if value is not None and not _E164.fullmatch(value):
        raise problem("e164", f"{value!r} is not an E.164 number (+ and 2 to 15 digits)")
    return value


def check_e164_required(value: str) -> str:
    if not _E164.fullmatch(value):
        raise problem("e164", f"{value!r} is not an E.164 number (+ and 2 to 15 digits)")
    return value


def _check_agent_name(value: str) -> str:
    return check_name(value, "agent id")


def _check_queue_name(value: str) -> str:
    return check_name(value, "queue name")


AgentName = Annotated[str, AfterValidator(_check_agent_name)]
QueueName = Annotated[str, AfterValidator(_check_queue_name)]


def _check_country(value: str) -> str:
    """An assigned ISO 3166 alpha-2 code in upper case (``US``, ``GB``)."""
    if is_iso_country(value):
        return value
    if is_iso_country(value.strip().upper()):
        hint = f" (codes are upper case: {value.strip().upper()!r})"
    elif _COUNTRY.fullmatch(value):
        hint = " (not an assigned code)"
    else:
        hint = ""
    raise problem("country", f"{value!r} is not an ISO 3166 alpha-2 code such as US or GB{hint}")


def _check_emergency_country(value: str) -> str:
    """A country with emergency dial strings in this gateway (SPEC E-1)."""
    _check_country(value)
    if value not in countries_supported():
        supported = ", ".join(sorted(countries_supported()))
        raise problem(
            "country",
            f"{value!r} has no emergency dial strings in this gateway (supported: "
            f"{supported}), so a rule limited to it could never match",
        )
    return value


def _check_next_hop(value: str | None) -> str | None:
    """A SIP URI the gateway can send a request to (``sip:security@192.0.2.10:5060``)."""
    if value is None:
        return value
    try:
        address = resolve_next_hop(value)
    except (SipError, ValueError) as error:
        raise problem(
            "uri",
            f"{value!r} is not a SIP URI the gateway can send to "
            f"(e.g. sip:security@192.0.2.10:5060): {error}",
        ) from None
    if address.transport not in SUPPORTED_TRANSPORTS:
        raise problem(
            "uri",
            f"{value!r}: transport {address.transport!r} is not supported: use udp, tcp or tls",
        )
    check_host(address.host)
    return value


def check_request_uri(value: str) -> str:
    try:
        parse_uri(value)
    except (SipError, ValueError) as error:
        raise problem("uri", f"{value!r} is not a URI (e.g. urn:service:sos): {error}") from None
    return value


Country = Annotated[str, AfterValidator(_check_country)]
EmergencyCountry = Annotated[str, AfterValidator(_check_emergency_country)]
NextHopUri = Annotated[str | None, AfterValidator(_check_next_hop)]


def _check_site_name(value: str) -> str:
    return check_name(value, "site name")


SiteName = Annotated[str, AfterValidator(_check_site_name)]


def field_error(kind: str, message: str, loc: FieldLoc, value: str) -> InitErrorDetails:
    return InitErrorDetails(type=problem(kind, message), loc=loc, input=value)


def duplicate_rule_name(name: str, first: str, loc: FieldLoc) -> InitErrorDetails:
    return field_error("duplicate", f"duplicate rule name {name!r} (also {first})", loc, name)


def check_caller_id(value: str) -> str:
    """An outbound rule's ``caller_id``: ``agent``, ``site``, ``none`` or ``queue:<name>``."""
    kind, colon, name = value.partition(":")
    if value in ("agent", "site", "none") or (kind == "queue" and colon and name):
        return value
    raise problem("caller_id", "caller_id must be agent, site, none or queue:<name>")
