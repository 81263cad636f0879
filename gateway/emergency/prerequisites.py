"""Emergency-calling prerequisites of agents and of the configuration (SPEC E-11).

Theory of operation
-------------------
``gateway check`` calls :func:`check_agent` for every agent and :func:`check_config` once,
and prints each problem as one line. Each problem names the agent and the dialplan field to
change, and says what to put there, so an engineer can act on it without reading code.

An agent may place emergency calls when it has (SPEC E-11):

* an outbound identity (a caller identity, ``agents.<id>.identity``);
* a location (``agents.<id>.location``) with enough of a civic address to dispatch to
  (street, city, postcode: RAY BAUM'S Act "dispatchable location"), in a country whose
  dial strings the gateway knows (:func:`gateway.emergency.numbers.countries_supported`);
* a path for every emergency dial string of that country: a direct-routing rule whose
  trunk exists, or the direct-offer path. This is the same :func:`choose_route` the calls
  use, with every trunk up, so check and run time cannot disagree;
* if it has emergency contacts, a mail server to send the notification with (SPEC E-6);
* a callback fallback (SPEC C-3), so that an unanswered callback reaches a person.

These are reports, not gates: at run time a call from an agent that falls short still goes
out on the best available path (SPEC E-3, E-11).
"""

from __future__ import annotations

from gateway.config.dialplan import Agent, Dialplan, EmergencySettings
from gateway.emergency.numbers import Detection, countries_supported, dial_strings
from gateway.emergency.routing import choose_route

__all__ = ["check_agent", "check_config"]


def _supported() -> str:
    return ", ".join(sorted(countries_supported()))


def check_agent(
    agent_id: str,
    agent: Agent,
    config: EmergencySettings,
    dialplan: Dialplan,
    *,
    mail_configured: bool,
) -> list[str]:
    """Every reason ``agent`` falls short of the emergency prerequisites (SPEC E-11).

    Returns one sentence per problem, empty when the agent is ready.
    """
    problems: list[str] = []
    who = f"agent {agent_id!r}"
    where = f"agents.{agent_id}"
    if agent.identity is None:
        problems.append(
            f"{who} has no outbound identity: set {where}.identity to its E.164 caller "
            "number (e.g. +15551230001)"
        )
    problems.extend(_location_problems(agent_id, agent, config, dialplan))
    if agent.contact_list and not mail_configured:
        problems.append(
            f"{who} has emergency contacts ({'; '.join(agent.contact_list)}) but no mail "
            "server is configured: set the SMTP settings, or the notification (SPEC E-6) "
            "cannot be sent"
        )
    if agent.callback_fallback is None:
        problems.append(
            f"{who} has no callback fallback: set {where}.callback_fallback to a supervisor "
            "or security desk, so an unanswered emergency callback reaches a person (SPEC C-3)"
        )
    return problems


def _location_problems(
    agent_id: str, agent: Agent, config: EmergencySettings, dialplan: Dialplan
) -> list[str]:
    """The agent's location: present, dispatchable, in a supported country with a path."""
    who, where = f"agent {agent_id!r}", f"agents.{agent_id}"
    location = agent.location
    if location is None:
        return [
            f"{who} has no location: set {where}.location to the civic address where the "
            "agent sits (street, house_number, city, state, postcode, country, building, "
            "floor, room) so emergency services can be dispatched there"
        ]
    problems: list[str] = []
    missing = [name for name in ("street", "city", "postcode") if not getattr(location, name)]
    if missing:
        problems.append(
            f"{who} has a location that is not dispatchable: set "
            + ", ".join(f"{where}.location.{name}" for name in missing)
        )
    country = location.country
    if country not in countries_supported():
        problems.append(
            f"{who} is in {country}, a country without emergency dial strings in this "
            f"gateway (supported: {_supported()}); its calls to any supported "
            "emergency number are still treated as emergency calls"
        )
    else:
        problems.extend(_path_problems(who, country, config, dialplan))
    return problems


def _path_problems(
    who: str, country: str, config: EmergencySettings, dialplan: Dialplan
) -> list[str]:
    """Each real emergency dial string of ``country`` that has no path (test strings may)."""
    problems: list[str] = []
    for dial_string in dial_strings(country):
        if dial_string.test:
            continue
        probe = Detection(
            kind="dialstring",
            dialled=dial_string.digits,
            service="sos",
            country=country,
            test=False,
        )
        if choose_route(probe, country, config, dialplan.trunks).empty:
            problems.append(
                f"{who} in {country} has no emergency path for {dial_string.digits}: "
                f"add an emergency direct_routing rule (match '^{dial_string.digits}$', "
                f"countries [{country}]) naming a defined trunk, or enable direct_offer"
            )
    return problems


def check_config(config: EmergencySettings, dialplan: Dialplan) -> list[str]:
    """Problems of the emergency configuration itself, independent of agents (SPEC E-2, E-4).

    Reports rules naming undefined trunks, service URN calls (``urn:service:sos``) with no
    path, an enabled direct offer without gateways, and an empty callback pool.
    """
    problems: list[str] = []
    trunk_names = ", ".join(sorted(dialplan.trunks)) or "none defined"
    for rule in config.direct_routing:
        if rule.trunk not in dialplan.trunks:
            problems.append(
                f"emergency direct_routing rule {rule.name!r} names trunk {rule.trunk!r}, "
                f"which is not defined (known: {trunk_names})"
            )
    offer = config.direct_offer
    if offer is not None and offer.enabled and not offer.gateways:
        problems.append("emergency direct_offer is enabled but lists no gateways: add one")
    urn_probe = Detection(
        kind="urn", dialled="urn:service:sos", service="sos", country=None, test=False
    )
    if choose_route(urn_probe, None, config, dialplan.trunks).empty:
        problems.append(
            "calls to urn:service:sos have no path: add an emergency direct_routing rule "
            "with match '^sos' naming a defined trunk, or enable direct_offer"
        )
    if not config.callback.dids:
        problems.append(
            "the emergency callback pool is empty: list callback DIDs under "
            "emergency.callback.dids (SPEC E-4), or emergency services cannot call back"
        )
    return problems
