"""Store ports (SPEC O-2): the records the gateway keeps and the async interfaces that keep them.

Theory of operation
-------------------
The call layer and the policy code (registrar, presence, emergency) depend only on these
:class:`typing.Protocol` ports; an adapter is chosen once at start-up by
:func:`gateway.stores.open_stores`. Two adapters exist:

* **SQLite** (:mod:`gateway.stores.sqlite`) -- the embedded default, one file under the
  data directory, so a single node needs no other server.
* **Redis** (:mod:`gateway.stores.redis_store`) -- the cluster adapter, so registrations,
  presence and callback reservations are shared by every node.

Every port method is one self-contained operation. No method needs a transaction that spans
several calls, so each can be a single SQL transaction in SQLite or a single ``MULTI``/Lua
script in Redis. Where a decision must be atomic (picking a callback DID, purging expired
bindings) the decision is *inside* the method, never split between a read and a later write.

Time is never read by a store: every method that depends on it takes ``now`` (unix seconds,
``float``) so callers and tests control the clock. A record with ``expires_at <= now`` is
expired; expired records are invisible to every read.

Records are frozen dataclasses named after the fact they hold; use
:func:`dataclasses.replace` to derive a changed copy.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Protocol

__all__ = [
    "Binding",
    "CallDirection",
    "Cdr",
    "CdrStore",
    "ChangeKind",
    "ChangeSubscription",
    "ClusterChange",
    "ClusterFeed",
    "ConfirmedLocation",
    "DidChooser",
    "EmptyPoolError",
    "LocationStore",
    "MailDraft",
    "MemoryLocationStore",
    "OutboxMail",
    "OutboxState",
    "OutboxStore",
    "PresenceRecord",
    "PresenceStore",
    "RegistrationStore",
    "Reservation",
    "ReservationStore",
    "StoreClosedError",
    "StoreError",
    "StoreUnavailableError",
    "Stores",
]

CallDirection = Literal["inbound", "outbound"]
ChangeKind = Literal["registration", "presence"]
OutboxState = Literal["pending", "sent", "failed"]


# --------------------------------------------------------------------------------------------
# Errors: few and public.


class StoreError(Exception):
    """Base class of the errors raised by a store adapter."""


class StoreClosedError(StoreError):
    """A store was used after :meth:`Stores.close`."""


class StoreUnavailableError(StoreError):
    """The backend cannot be reached or did not answer in time (a Redis outage)."""


class EmptyPoolError(StoreError, ValueError):
    """:meth:`ReservationStore.reserve` was given an empty DID pool."""


# --------------------------------------------------------------------------------------------
# Records.


@dataclass(frozen=True, slots=True)
class Binding:
    """A registered contact of an agent (RFC 3261 section 10), keyed by (agent, contact).

    ``source`` is where the REGISTER came from, as ``"transport:host:port"`` (for example
    ``"udp:192.0.2.7:5060"``), so requests can be sent back over the same flow.
    ``instance`` is the ``+sip.instance`` value (RFC 5626), if the UA sent one.
    ``path`` is the REGISTER's Path (RFC 3327), one name-addr per proxy, nearest to the
    gateway first: the route set of requests to this contact, sent to its first hop.
    Through a cluster's front, ``source`` is the phone's own address (the front's
    ``X-Gateway-Source``, for identity, SPEC E-13) and the flow is the Path's first hop.
    """

    agent_id: str
    contact_uri: str
    expires_at: float
    call_id: str
    cseq: int
    source: str
    user_agent: str
    q: float = 1.0
    instance: str | None = None
    path: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.path, tuple):  # a list read back from JSON (Redis)
            object.__setattr__(self, "path", tuple(self.path))


@dataclass(frozen=True, slots=True)
class PresenceRecord:
    """The persisted presence of one agent (SPEC R-4, E-5).

    ``chosen`` is what the agent (or its desktop) asked for; ``effective`` is what the gateway
    shows after deriving Offline, Busy or emergency DND from it. ``saved_before_emergency``
    holds the status to restore when an emergency call ends, so a crash during the call
    cannot leave the agent stuck in DND.
    """

    agent_id: str
    chosen: str
    effective: str
    previous: str | None
    reason: str
    updated_at: float
    saved_before_emergency: str | None = None
    #: the cluster node on which the agent's emergency call is up (issue #12: another node
    #: shows DND while that node lives); kept by the shared store only, None elsewhere
    emergency_node: str | None = None


@dataclass(frozen=True, slots=True)
class Cdr:
    """The call detail record of one ordinary call (SPEC R-5); emergency calls have none."""

    call_id: str
    direction: CallDirection
    caller: str
    callee: str
    queue: str | None
    agent: str | None
    route: str | None
    started_at: float
    answered_at: float | None
    ended_at: float
    result: str
    #: the caller's leg's SIP Call-ID (matches the phone's or carrier's trace)
    a_call_id: str | None = None
    #: the SIP Call-ID of the last B-leg tried, if any
    b_call_id: str | None = None
    #: the final SIP status of the call's setup (200 when answered), if any
    sip_code: int | None = None


@dataclass(frozen=True, slots=True)
class Reservation:
    """A callback DID held by an agent after an emergency call (SPEC E-4)."""

    did: str
    agent_id: str
    reserved_at: float
    expires_at: float
    call_id: str
    test: bool


@dataclass(frozen=True, slots=True)
class ConfirmedLocation:
    """A civic address an agent confirmed from the desktop (SPEC E-10, RAY BAUM'S Act).

    ``civic`` maps the civic field names of the dialplan's location (``street``,
    ``house_number``, ``city``, ``state``, ``postcode``, ``country``, ``building``,
    ``floor``, ``room``) to their values; it was checked before it was stored.
    ``confirmed_at`` is when the gateway accepted it (unix seconds).
    """

    agent_id: str
    civic: dict[str, str]
    confirmed_at: float


@dataclass(frozen=True, slots=True)
class MailDraft:
    """A notification e-mail to write to the outbox (SPEC E-6): one recipient, rendered.

    ``message_id_domain`` is the right-hand side of the Message-ID the sender derives from
    the row id (:attr:`OutboxMail.message_id`); ``give_up_at`` is when retrying stops.
    """

    call_id: str
    agent_id: str
    recipient: str
    subject: str
    text_body: str
    html_body: str
    test: bool
    did: str | None
    route: str | None
    message_id_domain: str
    give_up_at: float


@dataclass(frozen=True, slots=True)
class OutboxMail:
    """One stored notification e-mail and its delivery state (SPEC E-6).

    ``state`` is ``"pending"`` until the mail server accepts it (``"sent"``) or delivery is
    abandoned (``"failed"``). ``attempt_started_at`` is set while an attempt is in flight;
    a pending row that still has it after a restart was being sent when the process died,
    so the server may already hold a copy (the at-least-once window).
    """

    id: int
    call_id: str
    agent_id: str
    recipient: str
    subject: str
    text_body: str
    html_body: str
    test: bool
    did: str | None
    route: str | None
    message_id_domain: str
    created_at: float
    give_up_at: float
    next_attempt_at: float
    attempts: int
    attempt_started_at: float | None
    state: OutboxState
    last_error: str | None
    finished_at: float | None

    @property
    def message_id(self) -> str:
        """The Message-ID header (RFC 5322 section 3.6.4), the same on every attempt.

        Derived from the row id (never reused in one database) and the creation time, so
        a copy sent twice across a restart is recognisable as the same message.
        """
        stamp = int(self.created_at * 1000)
        return f"<emergency-notice.{self.id}.{stamp}@{self.message_id_domain}>"


# --------------------------------------------------------------------------------------------
# Ports.


class RegistrationStore(Protocol):
    """Registered contacts of agents (SPEC R-1), with expiry."""

    async def put(self, binding: Binding) -> None:
        """Insert ``binding``, or replace the one with the same (agent_id, contact_uri)."""
        ...

    async def remove(self, agent_id: str, contact_uri: str) -> None:
        """Remove one binding; removing a binding that does not exist is not an error."""
        ...

    async def remove_all(self, agent_id: str) -> None:
        """Remove every binding of ``agent_id`` (``Contact: *``, RFC 3261 section 10.2.2)."""
        ...

    async def bindings(self, agent_id: str, now: float) -> list[Binding]:
        """The unexpired bindings of ``agent_id``, highest ``q`` first."""
        ...

    async def all_bindings(self, now: float) -> list[Binding]:
        """Every unexpired binding, ordered by agent then highest ``q`` first."""
        ...

    async def purge_expired(self, now: float) -> list[Binding]:
        """Atomically delete the expired bindings and return them (presence goes Offline)."""
        ...


class PresenceStore(Protocol):
    """Persisted agent presence (SPEC R-4, E-5)."""

    async def get(self, agent_id: str) -> PresenceRecord | None:
        """The record of ``agent_id``, or ``None`` if it has never been stored."""
        ...

    async def put(self, record: PresenceRecord) -> None:
        """Insert or replace the record of ``record.agent_id``."""
        ...

    async def all(self) -> list[PresenceRecord]:
        """Every stored record, ordered by agent id."""
        ...


class CdrStore(Protocol):
    """Call history of ordinary calls (SPEC R-5)."""

    async def add(self, *cdrs: Cdr) -> None:
        """Append records, in order, all or none; records are never updated."""
        ...

    async def recent(
        self, limit: int, *, since: float | None = None, until: float | None = None
    ) -> list[Cdr]:
        """Up to ``limit`` records, most recently added first; with ``since``/``until``
        (unix seconds) only calls that ended in ``[since, until)``."""
        ...

    async def purge(self, before: float) -> int:
        """Delete the records of calls that ended before ``before``; how many went."""
        ...


#: The callback-DID policy a reservation store runs atomically: ``(agent_id, pool, held,
#: now) -> (did, taken_over)`` where ``held`` maps the pool's DIDs with a reservation
#: (live or expired) to it (SPEC E-4; gateway.emergency.reservations)
DidChooser = Callable[[str, Sequence[str], Mapping[str, Reservation], float], tuple[str, bool]]


class ReservationStore(Protocol):
    """Callback DID reservations (SPEC E-4), shared by every node of a cluster."""

    async def reserve(
        self,
        agent_id: str,
        pool: Sequence[str],
        now: float,
        ttl: float,
        call_id: str,
        test: bool,
        *,
        choose: DidChooser,
    ) -> tuple[Reservation, bool]:
        """Atomically give ``agent_id`` a callback DID from ``pool`` for ``ttl`` seconds.

        The store reads the reservations of ``pool``'s DIDs (duplicates dropped, order
        kept), calls ``choose(agent_id, pool, held, now)`` -- the policy of SPEC E-4,
        :func:`gateway.emergency.reservations.choose_callback_did` -- and writes the chosen
        DID's reservation (``reserved_at=now``, ``expires_at=now+ttl``, the call id and test
        flag), all in one atomic step. Returns the reservation and the chooser's
        ``taken_over`` flag (the event must say so). Raises :class:`EmptyPoolError` if
        ``pool`` is empty.
        """
        ...

    async def lookup(self, did: str, now: float) -> Reservation | None:
        """The unexpired reservation of ``did``, or ``None`` (routes a callback, SPEC C-1)."""
        ...

    async def live(self, now: float) -> list[Reservation]:
        """Every unexpired reservation, ordered by DID."""
        ...


class LocationStore(Protocol):
    """Desktop-confirmed agent locations (SPEC E-10): one per agent, kept until withdrawn."""

    async def put(self, record: ConfirmedLocation) -> None:
        """Insert or replace the location of ``record.agent_id``."""
        ...

    async def remove(self, agent_id: str) -> None:
        """Withdraw the agent's location; removing one that does not exist is not an error."""
        ...

    async def all(self) -> list[ConfirmedLocation]:
        """Every stored location, ordered by agent id."""
        ...


class OutboxStore(Protocol):
    """The durable outbox of notification e-mails (SPEC E-6).

    A mail is written before its first attempt and marked ``sent`` as soon as the server
    accepts it, so a restart resumes exactly the mails still ``pending``. Updates apply
    only to pending rows: a row that is already sent or failed never changes again.
    """

    async def add(self, drafts: Sequence[MailDraft], now: float) -> list[OutboxMail]:
        """Write ``drafts`` in one transaction as pending rows due at ``now``; return them
        (with their ids) in the same order."""
        ...

    async def get(self, mail_id: int) -> OutboxMail | None:
        """The row ``mail_id``, or ``None``."""
        ...

    async def pending(self) -> list[OutboxMail]:
        """Every pending row, earliest ``next_attempt_at`` first, then by id."""
        ...

    async def begin_attempt(self, mail_id: int, now: float) -> bool:
        """Count an attempt and mark it in flight; ``False`` if the row is not pending."""
        ...

    async def retry_at(self, mail_id: int, next_attempt_at: float, error: str) -> None:
        """The attempt failed and will be retried at ``next_attempt_at``."""
        ...

    async def mark_sent(self, mail_id: int, now: float) -> None:
        """The server accepted the mail: it must never be sent again."""
        ...

    async def mark_failed(self, mail_id: int, now: float, error: str) -> None:
        """Delivery was abandoned (permanent refusal, or given up)."""
        ...

    async def purge_finished(self, before: float) -> int:
        """Delete sent and failed rows finished before ``before``; return how many."""
        ...


@dataclass(frozen=True, slots=True)
class ClusterChange:
    """One node wrote an agent's bindings or presence to the shared store (issue #12)."""

    node: str
    kind: ChangeKind
    agent_id: str


class ChangeSubscription(Protocol):
    """The other nodes' changes as they are written (a subscription: close it)."""

    async def next(self, timeout: float) -> ClusterChange | None:
        """The next change, or ``None`` when none came within ``timeout`` seconds; raises
        :class:`StoreUnavailableError` when the subscription is lost."""
        ...

    async def close(self) -> None: ...


class ClusterFeed(Protocol):
    """What the nodes of a cluster tell each other through the shared store (issue #12):
    every registration and presence write is announced with the writing node's name, and
    each node says it is alive. Only a shared store has one."""

    node: str

    async def subscribe(self) -> ChangeSubscription:
        """Start hearing the changes written from now on (every node's, this one's too)."""
        ...

    async def heartbeat(self, now: float) -> None:
        """This node is alive at ``now``."""
        ...

    async def nodes_seen(self) -> dict[str, float]:
        """Every node's last heartbeat (unix seconds)."""
        ...

    async def claim(self, key: str, ttl_s: float) -> bool:
        """``True`` for the one node that claims ``key`` first within ``ttl_s`` seconds."""
        ...


# --------------------------------------------------------------------------------------------
# The bundle handed to the application.


@dataclass(slots=True)
class Stores:
    """The stores of one backend, closed together.

    Use as an async context manager (``async with await open_stores(...) as stores:``) or
    call :meth:`close` explicitly; closing twice is harmless.
    """

    registrations: RegistrationStore
    presence: PresenceStore
    cdrs: CdrStore
    reservations: ReservationStore
    outbox: OutboxStore
    closer: Callable[[], Awaitable[None]] = field(repr=False)
    #: desktop-confirmed agent locations (SPEC E-10)
    locations: LocationStore = field(default_factory=lambda: MemoryLocationStore())
    #: the cluster's change announcements (a shared store only; None for the embedded one)
    cluster: ClusterFeed | None = None

    async def close(self) -> None:
        """Release the backend (flush and close the database, stop its thread)."""
        await self.closer()

    async def __aenter__(self) -> Stores:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class MemoryLocationStore:
    """:class:`LocationStore` in memory: for a backend that has none yet; nothing persists."""

    def __init__(self) -> None:
        self._records: dict[str, ConfirmedLocation] = {}

    async def put(self, record: ConfirmedLocation) -> None:
        self._records[record.agent_id] = record

    async def remove(self, agent_id: str) -> None:
        self._records.pop(agent_id, None)

    async def all(self) -> list[ConfirmedLocation]:
        return [self._records[agent] for agent in sorted(self._records)]
