"""Agents' dispatchable locations at the edge: desktop commands, the store, MQTT (SPEC E-10).

Theory of operation
-------------------
:class:`AgentLocations` keeps, in memory, the location each agent's desktop confirmed
(loaded from the :class:`~gateway.stores.ports.LocationStore` at start, so it survives a
restart) and the source address of each agent's latest registration. The emergency
service reads :meth:`AgentLocations.desktop` when it builds the emergency leg; nothing on
the call's path waits for the store or the broker.

Commands (``<prefix>/agents/<agent>/location/set``) arrive through
:meth:`command`: checked by :func:`~gateway.location.desktop.check_location_command`;
a refused one is logged and answered on ``.../location/ack`` with the reason, and changes
nothing. An accepted one is in use at once, then written by the one writer task (a
:class:`~gateway.tasks.WriteBehind`, in order); once written, the ack
(``accepted: true``) and the new retained state on ``<prefix>/agents/<agent>/location`` are
published: an accepted ack means the location survives a restart.

The retained state (``agent-location.v1.json``) says which address an emergency call by
the agent carries now (``desktop``, ``network_map``, ``static`` or ``none``; a phone's own
PIDF-LO still wins on the call). It is republished when it changes: a command, or a
registration from another address (:meth:`registered`, called by the registrar). When a
network map exists (dialplan ``sites``) and the agent registers from an address no site
covers while no desktop location is confirmed, the state carries a ``warning`` and the log
says so once, as ``gateway check`` would: the PSAP may be sent to the wrong building.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from pydantic import ValidationError

from gateway.config.dialplan import Dialplan, Location
from gateway.events.ports import Publisher, Topics
from gateway.events.schema import rfc3339
from gateway.location.choice import LocationChoice, choose_location, source_host
from gateway.location.desktop import (
    ClearLocation,
    RefusedCommand,
    SetLocation,
    check_location_command,
)
from gateway.stores.ports import ConfirmedLocation, LocationStore, StoreUnavailableError
from gateway.tasks import WriteBehind

__all__ = ["AgentLocations", "describe_location"]

log = structlog.get_logger("gateway.location")

_CIVIC_FIELDS = (
    "street",
    "house_number",
    "city",
    "state",
    "postcode",
    "country",
    "building",
    "floor",
    "room",
)


def describe_location(location: Location) -> str:
    """A one-line address for logs: ``Main St 100, Springfield, IL, US, floor 2, room 210``."""
    parts = [
        " ".join(p for p in (location.street, location.house_number) if p),
        location.building or "",
        location.city or "",
        location.state or "",
        location.country,
        f"floor {location.floor}" if location.floor else "",
        f"room {location.room}" if location.room else "",
    ]
    return ", ".join(p for p in parts if p)


@dataclass(frozen=True, slots=True)
class _Write:
    agent: str
    record: ConfirmedLocation | None  # None: withdrawn
    request_id: str | None


def _write_failed(write: _Write) -> None:
    log.exception("location_write_failed", agent=write.agent)


class AgentLocations:
    """Desktop-confirmed locations, registration addresses, and the agent location topic."""

    def __init__(
        self,
        dialplan: Dialplan,
        store: LocationStore,
        publisher: Publisher,
        topics: Topics,
        *,
        wall_clock: Callable[[], float] = time.time,
    ):
        self.dialplan = dialplan
        self.store = store
        self.publisher = publisher
        self.topics = topics
        self.wall_clock = wall_clock
        self.confirmed: dict[str, tuple[Location, float]] = {}
        self.registered_from: dict[str, str] = {}
        self._published: dict[str, dict[str, Any]] = {}
        self._warned: dict[str, str | None] = {}
        self._writes: WriteBehind[_Write] = WriteBehind(
            "location-writer", self._write, _write_failed, transient=StoreUnavailableError
        )
        self._started = False

    # -- lifetime ------------------------------------------------------------------------------

    async def start(
        self, registered_from: Mapping[str, str], group: asyncio.TaskGroup | None = None
    ) -> None:
        """Load the confirmed locations, take the restored registrations' sources
        (agent -> ``transport:host:port``), publish every agent's state, start the writer
        (in ``group`` when given)."""
        for record in await self.store.all():
            if record.agent_id not in self.dialplan.agents:
                continue
            try:
                location = Location.model_validate(record.civic)
            except ValidationError as exc:
                log.error("stored_location_unusable", agent=record.agent_id, error=str(exc))
                continue
            self.confirmed[record.agent_id] = (location, record.confirmed_at)
        for agent, source in registered_from.items():
            if agent in self.dialplan.agents:
                self.registered_from[agent] = source_host(source)
        log.info("agent_locations_loaded", confirmed=len(self.confirmed))
        for agent in self.dialplan.agents:
            self._publish_state(agent)
        self._writes.start(group)
        self._started = True

    async def close(self) -> None:
        """Finish the pending writes, stop the writer and await it."""
        await self._writes.close()
        self._started = False

    # -- what the emergency leg reads ----------------------------------------------------------

    def desktop(self, agent: str) -> Location | None:
        """The location the agent's desktop confirmed, if any."""
        found = self.confirmed.get(agent)
        return None if found is None else found[0]

    def current(self, agent: str) -> tuple[LocationChoice, str | None]:
        """What a call by ``agent`` would carry now (without a phone PIDF-LO), and the site
        whose network holds the latest registration's address."""
        host = self.registered_from.get(agent)
        found = self.dialplan.site_for(host) if host is not None else None
        choice = choose_location(
            False,
            self.desktop(agent),
            found[1].location if found is not None else None,
            self.dialplan.agents[agent].location,
        )
        return choice, found[0] if found is not None else None

    # -- inputs --------------------------------------------------------------------------------

    def registered(self, agent: str, source: str) -> None:
        """The registrar accepted a REGISTER of ``agent`` from ``source``
        (``transport:host:port``); republish the state when the address changed."""
        if agent not in self.dialplan.agents:
            return
        host = source_host(source)
        if self.registered_from.get(agent) == host:
            return
        self.registered_from[agent] = host
        if self._started:  # before start, start() publishes everything
            self._publish_state(agent)

    def command(self, agent: str, payload: dict[str, Any] | str) -> None:
        """A location command from ``agent``'s desktop (decoded, or why it is unreadable)."""
        if isinstance(payload, str):
            command: SetLocation | ClearLocation | RefusedCommand = RefusedCommand(payload)
        else:
            command = check_location_command(payload)
        if agent not in self.dialplan.agents:
            command = RefusedCommand(f"no agent {agent!r} in the dialplan", command.request_id)
        elif not self._started:
            command = RefusedCommand("the gateway is starting: send it again", command.request_id)
        if isinstance(command, RefusedCommand):
            log.warning(
                "location_command_refused",
                agent=agent,
                reason=command.reason,
                request_id=command.request_id,
            )
            self._ack(agent, command.request_id, command.reason)
            return
        now = self.wall_clock()
        record: ConfirmedLocation | None = None
        if isinstance(command, SetLocation):
            self.confirmed[agent] = (command.location, now)
            civic = command.location.model_dump(include=set(_CIVIC_FIELDS), exclude_none=True)
            record = ConfirmedLocation(agent, civic, now)
            log.info(
                "location_confirmed", agent=agent, location=describe_location(command.location)
            )
        else:
            self.confirmed.pop(agent, None)
            log.info("location_withdrawn", agent=agent)
        self._writes.put(_Write(agent, record, command.request_id))

    # -- output --------------------------------------------------------------------------------

    async def _write(self, write: _Write) -> None:
        """Store one accepted command, then acknowledge it and publish the new state; a
        store failure is answered too (the location is in use, but not stored)."""
        reason: str | None = None
        try:
            if write.record is not None:
                await self.store.put(write.record)
            else:
                await self.store.remove(write.agent)
        except Exception as exc:
            log.exception("location_store_failed", agent=write.agent)
            reason = f"in use, but not stored ({exc}): it will be lost on a restart"
        self._ack(write.agent, write.request_id, reason, accepted=True)
        self._publish_state(write.agent)

    def _ack(
        self, agent: str, request_id: str | None, reason: str | None, *, accepted: bool = False
    ) -> None:
        payload = {
            "version": 1,
            "agent": agent,
            "id": request_id,
            "accepted": accepted,
            "reason": reason,
            "timestamp": rfc3339(datetime.fromtimestamp(self.wall_clock(), UTC)),
            "node": self.topics.node,
        }
        self.publisher.publish(self.topics.location_ack_suffix(agent), payload, retain=False)

    def _publish_state(self, agent: str) -> None:
        choice, site = self.current(agent)
        host = self.registered_from.get(agent)
        warning = self._warning(agent, choice, host, site)
        if warning != self._warned.get(agent):
            self._warned[agent] = warning
            if warning is not None:
                log.warning("location_unmapped_network", agent=agent, address=host, detail=warning)
        confirmed = self.confirmed.get(agent)
        location = choice.location
        state: dict[str, Any] = {
            "version": 1,
            "agent": agent,
            "source": choice.source,
            "method": choice.method,
            "location": None if location is None else location.model_dump(),
            "confirmed_at": None
            if confirmed is None
            else rfc3339(datetime.fromtimestamp(confirmed[1], UTC)),
            "registered_from": host,
            "site": site,
            "warning": warning,
            "node": self.topics.node,
        }
        if self._published.get(agent) == state:
            return
        self._published[agent] = state
        payload = {**state, "timestamp": rfc3339(datetime.fromtimestamp(self.wall_clock(), UTC))}
        self.publisher.publish(self.topics.location_suffix(agent), payload, retain=True)

    def _warning(
        self, agent: str, choice: LocationChoice, host: str | None, site: str | None
    ) -> str | None:
        """RAY BAUM'S Act: the agent is somewhere the network map does not know, and only
        the dialplan's address (or none) would be sent."""
        if not self.dialplan.sites or host is None or site is not None:
            return None
        if choice.source not in ("static", "none"):
            return None
        carried = (
            f"the static address ({describe_location(choice.location)})"
            if choice.location is not None
            else "no location at all"
        )
        return (
            f"agent {agent} registered from {host}, which no site covers: emergency calls "
            f"will carry {carried}; the PSAP may be sent to the wrong building"
        )
