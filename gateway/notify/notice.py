"""The facts of one emergency call that its notification e-mail reports (SPEC E-6)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config.dialplan import Agent, Location

__all__ = ["EmergencyNotice", "notice_for"]


@dataclass(frozen=True, slots=True)
class EmergencyNotice:
    """An agent dialled an emergency number: who to tell, and what.

    ``at``, ``did_expires_at`` are unix seconds; ``route`` is the route or trunk taken
    (``None`` when no path exists, SPEC E-2); ``test`` marks E-12 test calls (933,
    ``urn:service:test.sos*``); ``recipients`` are the agent's emergency contacts as
    configured (invalid ones are skipped, and reported, when the notice is sent).
    """

    call_id: str
    agent_id: str
    agent_name: str
    dialled: str
    callback_did: str | None
    did_expires_at: float | None
    location: Location | None
    route: str | None
    test: bool
    at: float
    recipients: tuple[str, ...]


def notice_for(
    call_id: str,
    agent_id: str,
    agent: Agent,
    *,
    dialled: str,
    callback_did: str | None,
    did_expires_at: float | None,
    route: str | None,
    test: bool,
    at: float,
) -> EmergencyNotice:
    """The notice for a call by ``agent`` (name, location and contacts from the dialplan)."""
    return EmergencyNotice(
        call_id=call_id,
        agent_id=agent_id,
        agent_name=agent.display_name or agent_id,
        dialled=dialled,
        callback_did=callback_did,
        did_expires_at=did_expires_at,
        location=agent.location,
        route=route,
        test=test,
        at=at,
        recipients=tuple(agent.contact_list),
    )
