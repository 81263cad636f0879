"""Warnings about dialplan rules that meet emergency dial strings (SPEC E-1, E-2, issue 8).

Theory of operation
-------------------
Emergency detection runs before the ordinary outbound rules (SPEC E-1), so no outbound rule
can take a 911 call away from an agent whose country has 911. Rules still meet emergency
dial strings in three ways that an engineer should know about, and ``gateway check`` prints
each as a warning (never an error: the gateway runs such a dialplan safely):

* **as dialled**: a rule that fully matches an emergency dial string (``^\\+?\\d+$``
  matches 911) gets it only when detection did not apply: the string is not an emergency
  number of the agent's country (a GB agent dialling 911), and the rule then sends it to
  its trunk as an ordinary call;
* **produced**: a rule whose rewrite turns a dialled string into an emergency dial string
  (``^9(\\d+)$ -> \\1`` turns 9911 into 911). Such a call is an emergency call of the
  agent's country (SPEC E-1: a string that *becomes* an emergency dial string through the
  dialplan is one), so the rule's trunk never sees it;
* **mangled**: a rule whose rewrite turns an outside-line prefix plus an emergency dial
  string into something that is *not* one (``^9(\\d+)$ -> +1\\1`` turns 9911 into
  +1911), so an agent who dials 9 before 911 by habit reaches the carrier with a number
  that no emergency service answers.

The rules are probed with candidate strings: each emergency dial string of
:data:`~gateway.emergency.numbers.DIAL_STRINGS`, bare and behind common prefixes (every 1-
and 2-digit prefix, ``+``, ``+1``, ``*``, ``9-`` ...). Each rule is probed on its own,
as if it were first: reordering rules must not hide a hazard.

Emergency direct-routing rules (first match wins, SPEC E-2) are probed with every dial
string of every supported country and with the common ``urn:service:sos`` services; a rule
that matches none of them, or whose every match an earlier rule takes first, can never
route a call and is reported too.

A pure function of the dialplan and the emergency configuration: no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from gateway.config.dialplan import Dialplan, EmergencySettings, OutboundRule
from gateway.emergency.numbers import DIAL_STRINGS, Detection, countries_supported, detect
from gateway.emergency.routing import matching_rule
from gateway.sip.errors import SipError
from gateway.sip.uri import parse_uri

__all__ = ["LintWarning", "candidate_strings", "lint_dialplan"]

FieldPath = tuple[str | int, ...]

#: prefixes an agent may put before an emergency dial string: outside-line digits, a
#: trunk access code, an international or national prefix, a star code
_PREFIXES: tuple[str, ...] = (
    "",
    "+",
    "+1",
    "+1-",
    "*",
    "**",
    *(str(digit) for digit in range(10)),
    *(f"{number:02d}" for number in range(100)),
    *(f"+{digit}" for digit in range(10)),
    *(f"{digit}-" for digit in range(10)),
    *(f"*{digit}" for digit in range(10)),
)

#: the prefixes people dial for an outside line (and their written forms)
_OUTSIDE_LINE: frozenset[str] = frozenset({"0", "8", "9", "0-", "8-", "9-"})

#: RFC 5031 section 4.2 services (and the RFC 6881 test service) probed in direct routing
_SERVICES: tuple[str, ...] = (
    "sos",
    "sos.ambulance",
    "sos.animal-control",
    "sos.fire",
    "sos.gas",
    "sos.marine",
    "sos.mountain",
    "sos.physician",
    "sos.poison",
    "sos.police",
    "test.sos",
)

_EXAMPLES = 5


@dataclass(frozen=True, slots=True)
class LintWarning:
    """One warning: ``field`` is the dialplan path of the rule (``("outbound", 1)``), for
    the caller to turn into ``file:line``; ``message`` names the rule and says why."""

    field: FieldPath
    message: str


def candidate_strings() -> list[tuple[str, str]]:
    """``(prefix, candidate)`` pairs: every emergency dial string behind every prefix."""
    digits = sorted({d.digits for strings in DIAL_STRINGS.values() for d in strings})
    return [(prefix, prefix + dial_string) for dial_string in digits for prefix in _PREFIXES]


def _emergency(user: str) -> Detection | None:
    """The dial-string detection of ``user`` for an agent of any supported country."""
    try:
        uri = parse_uri(f"sip:{user}@lint.invalid")
    except (SipError, ValueError):
        return None
    found = detect(uri, None)
    return found if found is not None and found.kind == "dialstring" else None


def _digits(user: str) -> str:
    return "".join(char for char in user if char.isdigit())


def _countries_of(dial_string: str) -> str:
    return ", ".join(
        sorted(
            c
            for c, strings in DIAL_STRINGS.items()
            if any(d.digits == dial_string for d in strings)
        )
    )


def _examples(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_EXAMPLES])
    more = len(items) - _EXAMPLES
    return f"{shown} and {more} more" if more > 0 else shown


@dataclass(slots=True)
class _OutboundMeetings:
    """How one outbound rule meets the candidate strings: emergency strings it matches as
    dialled (-> what it would send, "" when only with a prefix), strings it rewrites into
    emergency strings, and outside-line prefixes it mangles (each "candidate -> result")."""

    as_dialled: dict[str, str] = field(default_factory=dict)
    produced: list[str] = field(default_factory=list)
    mangled: list[str] = field(default_factory=list)


def _mangles_prefix(rule: OutboundRule, prefix: str, candidate: str, result: str) -> bool:
    """An outside-line prefix + emergency string rewritten so the string is lost."""
    return (
        rule.rewrite is not None
        and prefix in _OUTSIDE_LINE
        and result != candidate
        and any(
            _digits(result).endswith(d.digits)
            for strings in DIAL_STRINGS.values()
            for d in strings
            if candidate.endswith(d.digits)
        )
    )


def _meetings(rule: OutboundRule) -> _OutboundMeetings:
    found = _OutboundMeetings()
    for prefix, candidate in candidate_strings():
        result = rule.apply(candidate)
        if result is None:
            continue
        dialled = _emergency(candidate)
        if dialled is not None:
            made = result if candidate == dialled.dialled else ""
            found.as_dialled.setdefault(dialled.dialled, made)
        elif _emergency(result) is not None:
            found.produced.append(f"{candidate} -> {result}")
        elif _mangles_prefix(rule, prefix, candidate, result):
            found.mangled.append(f"{candidate} -> {result}")
    return found


def _lint_outbound(index: int, rule: OutboundRule) -> list[LintWarning]:
    found = _meetings(rule)
    path: FieldPath = ("outbound", index)
    who = f"outbound rule {rule.name!r}"
    messages = []
    if found.as_dialled:
        strings = ", ".join(
            f"{s} ({_countries_of(s)})" + (f" -> {made}" if made and made != s else "")
            for s, made in found.as_dialled.items()
        )
        messages.append(
            f"{who} matches emergency dial strings as dialled: {strings}. An agent whose "
            "country has the string makes an emergency call and never reaches this rule "
            "(SPEC E-1); for any other agent (a GB agent dialling 911) this rule sends it "
            f"to trunk {rule.trunk!r} as an ordinary call"
        )
    if found.produced:
        messages.append(
            f"{who} rewrites dialled strings into emergency dial strings: "
            f"{_examples(found.produced)}. Such calls are treated as emergency calls of the "
            f"agent's country (SPEC E-1), not sent to trunk {rule.trunk!r}; a misdial "
            "reaches emergency services"
        )
    if found.mangled:
        messages.append(
            f"{who} turns an outside-line prefix and an emergency dial string into "
            f"something that is not one: {_examples(found.mangled)}. An agent who dials the "
            f"prefix before the emergency number by habit reaches trunk {rule.trunk!r} "
            "with a number no emergency service answers"
        )
    return [LintWarning(path, message) for message in messages]


def _probes() -> list[tuple[str | None, Detection]]:
    """(agent country, detection) for every emergency call the gateway can detect."""
    probes: list[tuple[str | None, Detection]] = []
    for country in [*sorted(countries_supported()), None]:
        strings = (
            DIAL_STRINGS[country]
            if country is not None
            else tuple({d.digits: d for s in DIAL_STRINGS.values() for d in s}.values())
        )
        for dial_string in strings:
            service = "test.sos" if dial_string.test else "sos"
            probes.append(
                (
                    country,
                    Detection("dialstring", dial_string.digits, service, country, dial_string.test),
                )
            )
        for service in _SERVICES:
            probes.append(
                (
                    country,
                    Detection(
                        "urn",
                        f"urn:service:{service}",
                        service,
                        country,
                        service.startswith("test."),
                    ),
                )
            )
    return probes


def _describe(probes: Iterable[tuple[str | None, Detection]]) -> str:
    items: dict[str, None] = {}
    for country, detection in probes:
        where = country or "an agent of unknown country"
        items[f"{detection.dialled} for {where}"] = None
    return _examples(list(items))


def _lint_direct_routing(config: EmergencySettings) -> list[LintWarning]:
    warnings = []
    probes = _probes()
    rules = config.direct_routing
    for index, rule in enumerate(rules):
        alone = EmergencySettings(direct_routing=(rule,))
        mine = [p for p in probes if matching_rule(p[1], p[0], alone) is not None]
        path: FieldPath = ("emergency", "direct_routing", index)
        who = f"emergency direct_routing rule {rule.name!r}"
        if not mine:
            warnings.append(
                LintWarning(
                    path,
                    f"{who} (match {rule.match!r}) matches no emergency dial string or "
                    "service the gateway detects, so it never routes a call",
                )
            )
            continue
        takers: dict[str, None] = {}
        for country, detection in mine:
            first = matching_rule(detection, country, config)
            if first is None or first.name == rule.name:
                break
            takers[first.name] = None
        else:
            earlier = ", ".join(
                f"{name!r} (emergency.direct_routing[{[r.name for r in rules].index(name)}])"
                for name in takers
            )
            warnings.append(
                LintWarning(
                    path,
                    f"{who} can never match: every emergency call it matches "
                    f"({_describe(mine)}) is taken first by the earlier rule {earlier}",
                )
            )
    return warnings


def lint_dialplan(dialplan: Dialplan, config: EmergencySettings) -> list[LintWarning]:
    """Every outbound and emergency direct-routing rule that meets emergency dial strings
    in a way an engineer should know about (see the module docstring). Warnings only."""
    warnings: list[LintWarning] = []
    for index, rule in enumerate(dialplan.outbound):
        warnings.extend(_lint_outbound(index, rule))
    warnings.extend(_lint_direct_routing(config))
    warnings.extend(_lint_sites(dialplan))
    return warnings


def _lint_sites(dialplan: Dialplan) -> list[LintWarning]:
    """SPEC E-13: an unidentified phone on a network trusted for unauthenticated phones
    places its emergency calls as its site's call; say where that site is missing, or has
    no callback number, because the PSAP could then neither call back nor find the caller."""
    warnings: list[LintWarning] = []
    for index, text in enumerate(dialplan.registrar.unauthenticated_outbound_from):
        network = ipaddress.ip_network(text, strict=False)
        covering = [
            (name, site)
            for name, site in dialplan.sites.items()
            if any(
                net.version == network.version and network.subnet_of(net)  # type: ignore[arg-type]
                for net in site.parsed_networks
            )
        ]
        field = ("registrar", "unauthenticated_outbound_from", index)
        if not covering:
            warnings.append(
                LintWarning(
                    field,
                    f"network {text} is trusted for unauthenticated phones but no site covers "
                    "all of it: an emergency call from a phone there that is no agent's "
                    "registration goes out with no callback number and no location (SPEC "
                    "E-13); add a `sites` entry with its networks, location and "
                    "callback_number",
                )
            )
            continue
        for name, site in covering:
            if site.callback_number is None:
                warnings.append(
                    LintWarning(
                        ("sites", name),
                        f"site {name!r} covers network {text}, trusted for unauthenticated "
                        "phones, but has no callback_number: unidentified emergency calls "
                        "from there cannot be called back (SPEC E-13)",
                    )
                )
    return warnings
