"""The registrar at the edge: REGISTER handling with bindings cached, persisted and expired.

The sans-I/O :class:`~gateway.registrar.registrar.Registrar` decides; this service keeps
every agent's bindings in memory (the queue dispatcher reads them on every offer), writes
each change to the registration store through one ordered writer task (so the event loop
never waits on disk), loads them back at start (registrations survive a restart, SPEC
O-2), expires them on time, and tells presence when an agent goes Offline or comes back
(SPEC R-4).

In a cluster (issue #12, ``claim_expiry``) the other nodes' registrations reach the cache
through :meth:`RegistrarService.apply_remote` (the agent's bindings as the shared store
has them: cache and identity index replaced, presence told silently), and the expiry of a
binding is acted on by the one node whose purge of the shared store removed it: that node
publishes Offline, the others apply it silently. While the shared store is down each node
acts on its own clock.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import structlog

from gateway.config.dialplan import Dialplan
from gateway.fronts import Fronts
from gateway.presence.service import PresenceService
from gateway.registrar.digest import Credentials, NonceManager, parse_authorization
from gateway.registrar.registrar import BindingView, Registrar
from gateway.sip.address import Address, address_text
from gateway.sip.message import Request, Response
from gateway.sip.transaction import RequestReceived, TransactionLayer
from gateway.stores.ports import Binding, RegistrationStore, StoreUnavailableError
from gateway.tasks import WriteBehind, start_task, stop_task

__all__ = ["AuthRefusal", "RegistrarService", "credentials_from_dialplan", "log_auth_failed"]

log = structlog.get_logger("gateway.registrar")


def log_auth_failed(request: Request, source: Address, header: str, reason: str = "") -> None:
    """A request carried digest credentials that did not verify: a warning with the source
    address, the claimed user and the method (what fail2ban needs: deploy/fail2ban/).

    A request without credentials (the first, challenged attempt) and a stale nonce (the
    hash was right) are not failures and must not be passed here."""
    user = ""
    value = request.get(header)
    if value is not None:
        try:
            user = parse_authorization(value).get("username", "")
        except ValueError:
            user = ""
    log.warning(
        "auth_failed",
        source_ip=source.host,
        source=address_text(source),
        user=user[:64],
        method=request.method,
        reason=reason or "credentials do not verify",
    )


def credentials_from_dialplan(
    dialplan: Dialplan,
) -> Callable[[str, str], tuple[Credentials, str] | None]:
    """(username, realm) -> (credentials, agent id) for every agent of the dialplan."""
    realm = dialplan.registrar.realm
    table: dict[str, tuple[Credentials, str]] = {}
    for agent_id, agent in dialplan.agents.items():
        username = agent.username or agent_id
        if agent.password is not None:
            creds = Credentials.from_password(username, realm, agent.password)
        else:
            creds = Credentials(username, realm, agent.ha1_md5, agent.ha1_sha256)
        if agent.digest_algorithms is not None:  # the agent's own list (issue 15 hole 7)
            creds = replace(creds, offered=agent.digest_algorithms)
        table[username] = (creds, agent_id)

    def lookup(username: str, asked_realm: str) -> tuple[Credentials, str] | None:
        if asked_realm != realm:
            return None
        return table.get(username)

    return lookup


@dataclass(frozen=True, slots=True)
class AuthRefusal:
    """Why a request is not an agent's: the answer to send (407 with its challenge
    ``headers``, 401/403 with an optional Warning text)."""

    status: int
    reason: str
    warning: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class _Write:
    agent_id: str
    put: Binding | None = None
    remove: tuple[str, str] | None = None


def _write_failed(write: _Write) -> None:
    log.exception("registration_store_failed")


class RegistrarService:
    """REGISTER requests in, bindings out (cache + store), presence told."""

    def __init__(
        self,
        dialplan: Dialplan,
        layer: TransactionLayer,
        store: RegistrationStore,
        presence: PresenceService,
        *,
        loop_clock: Callable[[], float],
        wall_clock: Callable[[], float] = time.time,
        secret: bytes | None = None,
        on_registered: Callable[[str, str], None] | None = None,
        fronts: Fronts | None = None,
        claim_expiry: bool = False,
    ):
        settings = dialplan.registrar
        #: the cluster's fronts: a REGISTER through one is bound to the source it names
        #: (``X-Gateway-Source``: the phone, for identity, SPEC E-13), not to the front
        self.fronts = fronts if fronts is not None else Fronts(dialplan.node.fronts)
        self.layer = layer
        self.store = store
        self.presence = presence
        self.loop_clock = loop_clock
        self.wall_clock = wall_clock
        self.registrar = Registrar(
            settings.realm,
            credentials_from_dialplan(dialplan),
            NonceManager(secret or secrets.token_bytes(32), settings.nonce_ttl_s),
            min_expires=settings.min_expires_s,
            max_expires=settings.max_expires_s,
            default_expires=settings.default_expires_s,
            algorithms=settings.algorithms,
        )
        self.agent_of_username = {
            (agent.username or agent_id): agent_id for agent_id, agent in dialplan.agents.items()
        }
        self.bindings: dict[str, dict[str, Binding]] = {agent: {} for agent in dialplan.agents}
        #: "transport:host:port" of a live registration -> its agent; None where two
        #: agents registered from the same source (one phone, two lines: ambiguous)
        self._agent_by_source: dict[str, str | None] = {}
        #: ``on_registered(agent, "transport:host:port")`` after each accepted REGISTER that
        #: adds or refreshes a binding (SPEC E-10: the network map looks at that address)
        self.on_registered = on_registered
        self._writes: WriteBehind[_Write] = WriteBehind(
            "registrar-writer", self._write, _write_failed, transient=StoreUnavailableError
        )
        self._expiry: asyncio.Task[None] | None = None
        #: a shared store: expiry is acted on by the node whose purge removed the binding
        self.claim_expiry = claim_expiry
        self._last_purge = 0.0
        #: per agent: local changes made, and writes not yet done (see apply_remote)
        self._generation: dict[str, int] = {}
        self._pending: dict[str, int] = {}

    async def start(self, group: asyncio.TaskGroup | None = None) -> None:
        """Load live bindings from the store and start the writer and the expiry clock (in
        ``group`` when given)."""
        now = self.wall_clock()
        for binding in await self.store.all_bindings(now):
            agent = self.bindings.get(binding.agent_id)
            if agent is not None:
                agent[binding.contact_uri] = binding
        for agent_id, contacts in self.bindings.items():
            if contacts:
                self.presence.restore_registered(agent_id)
        self._reindex()
        log.info("registrations_loaded", bindings=sum(len(b) for b in self.bindings.values()))
        self._writes.start(group)
        if self._expiry is None:
            self._expiry = start_task(self._expiry_loop(), "registrar-expiry", group)

    async def close(self) -> None:
        """Write what is queued, then stop the writer and the expiry clock."""
        await self._writes.close()
        expiry, self._expiry = self._expiry, None
        await stop_task(expiry)

    # -- lookups -------------------------------------------------------------------------------

    def contacts(self, agent_id: str) -> list[Binding]:
        """The agent's live bindings."""
        now = self.wall_clock()
        return [b for b in self.bindings.get(agent_id, {}).values() if b.expires_at > now]

    def agent_at(self, source: Address) -> str | None:
        """The agent whose live registration came from ``source`` (same transport, address
        and port; for TCP the same connection), or None (SPEC E-13: a request is tied to an
        agent by where it comes from, never by its From header)."""
        agent = self._agent_by_source.get(address_text(source))
        if agent is None:
            return None
        binding_live = any(b.source == address_text(source) for b in self.contacts(agent))
        return agent if binding_live else None

    def reindex(self) -> None:
        """Rebuild the identity index (source -> agent) from the cache."""
        self._reindex()

    def _reindex(self) -> None:
        index: dict[str, str | None] = {}
        for agent_id, contacts in self.bindings.items():
            for binding in contacts.values():
                known = index.get(binding.source, agent_id)
                index[binding.source] = agent_id if known == agent_id else None
        self._agent_by_source = index

    def authenticate(self, request: Request) -> str | AuthRefusal:
        """The agent id of an authenticated request, or the 407 challenge to send."""
        result = self.registrar.authenticate_request(request, self.wall_clock())
        if isinstance(result, Response):
            if result.status == 407:
                headers = tuple(
                    ("Proxy-Authenticate", v) for v in result.get_all("Proxy-Authenticate")
                )
                return AuthRefusal(407, result.reason, None, headers)
            return AuthRefusal(result.status, result.reason)
        if result.agent_id is None:
            return AuthRefusal(403, "Forbidden", "not an agent")
        return result.agent_id

    # -- REGISTER ------------------------------------------------------------------------------

    def handle(self, event: RequestReceived) -> None:
        request = event.request
        source = self.fronts.origin_of(request, event.source)
        source_text = address_text(source)
        username = ""
        try:
            uri = request.to.uri
            username = getattr(uri, "user_unescaped", None) or ""
        except Exception:
            username = ""
        agent_id = self.agent_of_username.get(username)
        current = self.bindings.get(agent_id, {}) if agent_id is not None else {}
        views = [
            BindingView(b.contact_uri, b.expires_at, b.call_id, b.cseq) for b in current.values()
        ]
        outcome = self.registrar.handle_register(
            request,
            source_text,
            self.wall_clock(),
            views,
            path_allowed=self.fronts.is_front(event.source),  # only a front adds Path
        )
        self.layer.send_response(event.transaction, outcome.response, self.loop_clock())
        if outcome.response.status != 200 or outcome.agent_id is None:
            auth = outcome.auth
            if outcome.response.status not in (401, 407):
                log.info(
                    "register_refused",
                    username=username,
                    source=source_text,
                    status=outcome.response.status,
                    reason=outcome.reason,
                )
            elif request.get("authorization") is not None and auth is not None and not auth.stale:
                log_auth_failed(request, source, "authorization", outcome.reason)
            return
        agent = outcome.agent_id
        if outcome.path_ignored:
            log.warning(
                "register_path_ignored",
                agent=agent,
                source=source_text,
                detail="Path is kept only from a configured front (node.fronts)",
            )
        contacts = self.bindings.setdefault(agent, {})
        for removed in outcome.removed:
            if contacts.pop(removed.contact_uri, None) is not None:
                self._queue(_Write(agent, remove=(agent, removed.contact_uri)))
        for added in outcome.added:
            contacts[added.contact_uri] = added
            self._queue(_Write(agent, put=added))
        self._reindex()
        log.info("registered", agent=agent, contacts=len(contacts), source=source_text)
        if outcome.added and self.on_registered is not None:
            try:
                self.on_registered(agent, source_text)
            except Exception:
                log.exception("on_registered_failed", agent=agent)
        # an accepted REGISTER that leaves no binding is the phone's own un-REGISTER
        self.presence.set_registered(agent, bool(self.contacts(agent)), removed=True)

    # -- the other nodes of a cluster (issue #12) ----------------------------------------------

    def mark(self, agent_id: str) -> int:
        """Take before reading the agent's bindings from the shared store; hand the value
        to :meth:`apply_remote`."""
        return self._generation.get(agent_id, 0)

    def apply_remote(
        self, agent_id: str, bindings: list[Binding], mark: int, *, batch: bool = False
    ) -> bool:
        """The agent's bindings as the shared store has them (another node's change):
        they replace the cache and the identity index (E-13), and presence is told
        silently (the node that took the REGISTER published it). Not applied (``False``)
        when this node changed the agent's bindings since ``mark`` or still has a write
        of them on its way: the store's copy predates them. ``batch``: one of many (a full
        resync), not logged one by one; the caller calls :meth:`reindex` once after."""
        contacts = self.bindings.get(agent_id)
        if contacts is None:
            return False
        if self._generation.get(agent_id, 0) != mark or self._pending.get(agent_id):
            return False
        now = self.wall_clock()
        fresh = {
            b.contact_uri: b for b in bindings if b.agent_id == agent_id and b.expires_at > now
        }
        # a binding that expired here stays for the expiry step, which decides who publishes
        # Offline (the store lists only live ones)
        for uri, cached in contacts.items():
            if cached.expires_at <= now and uri not in fresh:
                fresh[uri] = cached
        if fresh != contacts:
            contacts.clear()
            contacts.update(fresh)
            if not batch:
                self._reindex()
                log.info("registrations_synced", agent=agent_id, contacts=len(contacts))
        self.presence.set_registered(agent_id, bool(contacts), silent=True)
        return True

    # -- background ----------------------------------------------------------------------------

    def _queue(self, write: _Write) -> None:
        agent_id = write.agent_id
        self._generation[agent_id] = self._generation.get(agent_id, 0) + 1
        self._pending[agent_id] = self._pending.get(agent_id, 0) + 1
        self._writes.put(write)

    async def _write(self, write: _Write) -> None:
        try:
            if write.put is not None:
                await self.store.put(write.put)
            elif write.remove is not None:
                await self.store.remove(*write.remove)
        finally:
            left = self._pending.get(write.agent_id, 1) - 1
            if left > 0:
                self._pending[write.agent_id] = left
            else:
                self._pending.pop(write.agent_id, None)

    async def _expiry_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            await self.expire(self.wall_clock())

    async def expire(self, now: float) -> None:
        """Drop the bindings expired at ``now``; an agent left with none goes Offline.

        One node: its own clock decides, and the store is purged every 30 s. A cluster
        (``claim_expiry``): the shared store is purged first, every second, and an agent
        whose last binding expired is published Offline only by the node whose purge
        removed it (the purge is one atomic step: each binding is returned to one node);
        the others apply it silently. While the shared store is down, every node acts.
        """
        claimed: set[str] | None = None
        if self.claim_expiry:
            try:
                claimed = {b.agent_id for b in await self.store.purge_expired(now)}
            except Exception as exc:  # the store is down: act on this node's clock
                log.debug("registration_purge_failed", error=repr(exc))
        for agent_id, contacts in self.bindings.items():
            expired = [uri for uri, b in contacts.items() if b.expires_at <= now]
            for uri in expired:
                del contacts[uri]
            if expired:
                self._reindex()
                log.info("registration_expired", agent=agent_id, contacts=len(contacts))
            mine = claimed is None or agent_id in claimed
            if (expired or (claimed and agent_id in claimed)) and not contacts:
                self.presence.set_registered(agent_id, False, silent=not mine)
        if not self.claim_expiry and now - self._last_purge >= 30.0:
            self._last_purge = now
            try:
                await self.store.purge_expired(now)
            except Exception:
                log.exception("registration_purge_failed")
