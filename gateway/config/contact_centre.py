"""The contact-centre part of a dialplan: agents, queues, inbound rules, the registrar
(SPEC R-1, R-3, R-4), and the checks of the queue names and usernames they refer to.

:class:`gateway.config.dialplan.Dialplan` holds these models and runs the ``*_errors``
checks below; ``gateway.config.dialplan`` re-exports the models.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from functools import cached_property
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import InitErrorDetails

from gateway.config.fields import (
    Country,
    FieldLoc,
    Frozen,
    Network,
    NextHopUri,
    QueueName,
    Regex,
    RuleName,
    check_e164,
    duplicate_rule_name,
    field_error,
    problem,
)

_HEX32 = re.compile(r"[0-9a-fA-F]{32}")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


class Location(Frozen):
    """A dispatchable civic address (RFC 5139 / RAY BAUM'S Act): where the agent sits."""

    street: str | None = None
    house_number: str | None = None
    city: str | None = None
    state: str | None = None
    postcode: str | None = None
    #: any assigned code; one without emergency dial strings is an E-11 shortfall that
    #: ``gateway check`` reports, not an error
    country: Country
    building: str | None = None
    floor: str | None = None
    room: str | None = None


class Agent(Frozen):
    """A contact-centre agent: a SIP account with presence, capacity and queues.

    Give ``password`` or one or both digest hashes (``ha1_md5``: MD5(user:realm:password),
    ``ha1_sha256``: SHA-256 of the same), so that passwords need not sit in the file.
    """

    username: str | None = None
    password: str | None = None
    ha1_md5: str | None = None
    ha1_sha256: str | None = None
    display_name: str | None = None
    identity: str | None = None
    capacity: Annotated[int, Field(ge=1, le=100)] = 1
    queues: tuple[QueueName, ...] = ()
    location: Location | None = None
    emergency_contacts: str = ""
    callback_fallback: NextHopUri = None
    #: digest algorithms challenged for and accepted for this agent, most preferred first;
    #: None: the registrar's ``algorithms``. [MD5] keeps a phone that answers only the
    #: first challenge and has no SHA-256 (baresip 1.0) working (issue 15 hole 7)
    digest_algorithms: tuple[Literal["SHA-256", "MD5"], ...] | None = None

    @field_validator("identity")
    @classmethod
    def _identity_is_e164(cls, value: str | None) -> str | None:
        return check_e164(value)

    @field_validator("digest_algorithms")
    @classmethod
    def _some_digest_algorithm(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and not value:
            raise problem("empty", "needs at least 1 algorithm")
        return value

    @field_validator("ha1_md5")
    @classmethod
    def _md5_hex(cls, value: str | None) -> str | None:
        if value is not None and not _HEX32.fullmatch(value):
            raise problem("ha1", "ha1_md5 must be 32 hexadecimal digits")
        return value

    @field_validator("ha1_sha256")
    @classmethod
    def _sha256_hex(cls, value: str | None) -> str | None:
        if value is not None and not _HEX64.fullmatch(value):
            raise problem("ha1", "ha1_sha256 must be 64 hexadecimal digits")
        return value

    @model_validator(mode="after")
    def _has_a_secret(self) -> Agent:
        if self.password is None and self.ha1_md5 is None and self.ha1_sha256 is None:
            raise problem("secret", "an agent needs password, ha1_md5 or ha1_sha256")
        return self

    @property
    def contact_list(self) -> list[str]:
        """The emergency contacts, split on ';' (empty entries dropped)."""
        return [item.strip() for item in self.emergency_contacts.split(";") if item.strip()]


class Overflow(Frozen):
    """Where a call goes when it has waited ``max_wait_s``: exactly one of the three."""

    queue: QueueName | None = None
    destination: NextHopUri = None
    status: Annotated[int, Field(ge=400, le=699)] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Overflow:
        given = [
            name for name in ("queue", "destination", "status") if getattr(self, name) is not None
        ]
        if len(given) != 1:
            raise problem("overflow", "overflow needs exactly one of queue, destination, status")
        return self


class Queue(Frozen):
    """A queue of inbound calls offered to its agents, longest idle first (SPEC R-3)."""

    ring_timeout_s: Annotated[float, Field(gt=0)] = 15.0
    max_wait_s: Annotated[float, Field(gt=0)] = 120.0
    overflow: Overflow = Overflow(status=480)
    #: how long an agent who refused a call (486, 603...) is not offered it again
    refused_rest_s: Annotated[float, Field(ge=0)] = 30.0
    #: the queue's E.164 number, presented by outbound rules with ``caller_id: queue:<name>``
    identity: str | None = None

    @field_validator("identity")
    @classmethod
    def _identity_is_e164(cls, value: str | None) -> str | None:
        return check_e164(value)


class InboundRule(Frozen):
    """An inbound rule: a call from a trunk whose Request-URI user (the DID) fully matches
    ``match`` waits in ``queue``; ``priority`` orders it there (higher first)."""

    name: RuleName
    match: Regex
    queue: QueueName
    priority: int = 0

    @cached_property
    def pattern(self) -> re.Pattern[str]:
        return re.compile(self.match)


class RegistrarSettings(Frozen):
    """Registrar (SPEC R-1): digest realm, nonce lifetime, allowed Expires range."""

    realm: Annotated[str, Field(min_length=1)] = "gateway"
    nonce_ttl_s: Annotated[int, Field(gt=0)] = 300
    min_expires_s: Annotated[int, Field(ge=1)] = 60
    max_expires_s: Annotated[int, Field(ge=1)] = 3600
    default_expires_s: Annotated[int, Field(ge=1)] = 3600
    #: networks (CIDR) whose unauthenticated INVITEs may use the outbound rules, e.g. a
    #: lab's loopback; empty in production: every INVITE not from a trunk is authenticated
    unauthenticated_outbound_from: tuple[Network, ...] = ()
    #: digest algorithms offered, most preferred first (RFC 8760 section 2.4). Phones that
    #: answer the first challenge and cannot do SHA-256 (SIPp 3.6 among them) need [MD5]
    algorithms: tuple[Literal["SHA-256", "MD5"], ...] = ("SHA-256", "MD5")

    @field_validator("algorithms")
    @classmethod
    def _some_algorithm(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise problem("empty", "needs at least 1 algorithm")
        return value

    @model_validator(mode="after")
    def _expires_order(self) -> RegistrarSettings:
        if not self.min_expires_s <= self.default_expires_s <= self.max_expires_s:
            raise problem("expires", "need min_expires_s <= default_expires_s <= max_expires_s")
        return self


def _unknown_queue(name: str, loc: FieldLoc, queues: Collection[str]) -> InitErrorDetails:
    known = ", ".join(sorted(queues)) or "none defined"
    return field_error("unknown_queue", f"unknown queue {name!r} (known: {known})", loc, name)


def agent_errors(agents: Mapping[str, Agent], queues: Collection[str]) -> list[InitErrorDetails]:
    """Each agent's queues exist, and no two agents share a SIP username."""
    errors: list[InitErrorDetails] = []
    usernames: dict[str, str] = {}
    for agent_id, agent in agents.items():
        errors.extend(
            _unknown_queue(queue_name, ("agents", agent_id, "queues", index), queues)
            for index, queue_name in enumerate(agent.queues)
            if queue_name not in queues
        )
        username = agent.username or agent_id
        if username in usernames:
            message = f"SIP username {username!r} is also used by agent {usernames[username]!r}"
            errors.append(
                field_error("duplicate", message, ("agents", agent_id, "username"), username)
            )
        usernames.setdefault(username, agent_id)
    return errors


def overflow_errors(queues: Mapping[str, Queue]) -> list[InitErrorDetails]:
    """A queue overflowing to another queue names one that exists."""
    return [
        _unknown_queue(target, ("queues", name, "overflow", "queue"), queues)
        for name, queue_config in queues.items()
        if (target := queue_config.overflow.queue) is not None and target not in queues
    ]


def inbound_errors(rules: Sequence[InboundRule], queues: Collection[str]) -> list[InitErrorDetails]:
    """Inbound rules name existing queues and have unique names."""
    errors: list[InitErrorDetails] = []
    names: dict[str, int] = {}
    for index, rule in enumerate(rules):
        if rule.queue not in queues:
            errors.append(_unknown_queue(rule.queue, ("inbound", index, "queue"), queues))
        if rule.name in names:
            first = f"inbound[{names[rule.name]}]"
            errors.append(duplicate_rule_name(rule.name, first, ("inbound", index, "name")))
        names.setdefault(rule.name, index)
    return errors


def caller_id_errors(
    caller_ids: Sequence[tuple[int, str]], queues: Mapping[str, Queue]
) -> list[InitErrorDetails]:
    """Outbound rules' ``caller_id: queue:<name>`` name a queue that has an identity."""
    errors: list[InitErrorDetails] = []
    for index, caller_id in caller_ids:
        kind, _, name = caller_id.partition(":")
        if kind != "queue":
            continue
        loc: FieldLoc = ("outbound", index, "caller_id")
        if name not in queues:
            errors.append(_unknown_queue(name, loc, queues))
        elif queues[name].identity is None:
            message = f"queue {name!r} has no identity (an E.164 number) to present"
            errors.append(field_error("no_identity", message, loc, caller_id))
    return errors
