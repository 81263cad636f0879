"""Redis adapter of the store ports (SPEC O-2): the state every node of a cluster shares.

Theory of operation
-------------------
Every record is a JSON object of its dataclass's fields, under keys that start with a
prefix (``gateway:`` by default, so several gateways can share one Redis):

==========================  ================  =============================================
key                         type              holds
==========================  ================  =============================================
``<p>reg:<agent>``          hash              contact URI -> binding
``<p>reg:expiry``           sorted set        agent, newline, contact scored by ``expires_at``
``<p>presence``             hash              agent -> presence record
``<p>reservation``          hash              DID -> its latest reservation (live or not)
``<p>location``             hash              agent -> desktop-confirmed location
``<p>cdr``                  list              call detail records, newest first
``<p>nodes``                hash              node -> its last heartbeat (unix seconds)
``<p>changes``              pub/sub channel   ``{"node", "kind", "agent"}`` per registration
                                              or presence write (in the write's ``MULTI``)
==========================  ================  =============================================

Time is the gateway's: records carry ``expires_at`` and every read filters with the ``now``
it is given, exactly as the SQLite store does, so Redis's clock and the gateway's can never
disagree about what is live. Redis TTLs are deliberately not used for expiry: an expired
binding must still be seen once by :meth:`RedisRegistrationStore.purge_expired` (its agent
goes Offline), and an expired reservation is still an input of the DID choice (its last
holder gets it back first, SPEC E-4). Both sets are bounded (one entry per contact, one per
pool DID), and ``purge_expired`` removes the bindings.

Atomic steps: a binding's hash entry and its expiry index change in one ``MULTI``; listing
and purging run as small Lua scripts (one step on the server), and so does a presence
write, which keeps the newer record (``updated_at``) when one is stored already. The
callback DID choice is an optimistic transaction: ``WATCH`` the reservation hash, read the
pool's entries, run the policy (:func:`gateway.emergency.reservations.choose_callback_did`,
passed in by the caller, so the rule exists once), then ``MULTI``/``EXEC`` the write;
``EXEC`` fails if any node wrote a reservation in between, and the step is run again on the
new state. Two nodes can therefore never hand one DID to two agents. Within one node the
choices take turns (an ``asyncio.Lock``), so only another node's write can force a retry.

Failures: every Redis error (refused connection, timeout, a server that went away) becomes
:class:`~gateway.stores.ports.StoreUnavailableError`; the short socket timeouts are the
caller's (``GATEWAY_STORE_TIMEOUT_S``). The e-mail outbox stays on a node-local SQLite
file: a mail belongs to the node that handled the call, and its notifier thread works only
on its own rows (see :func:`open_redis_stores`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, WatchError
from redis.retry import Retry

from gateway.stores.ports import (
    Binding,
    Cdr,
    ChangeKind,
    ClusterFeed,
    ConfirmedLocation,
    DidChooser,
    EmptyPoolError,
    PresenceRecord,
    Reservation,
    StoreClosedError,
    StoreError,
    Stores,
    StoreUnavailableError,
)

__all__ = [
    "DEFAULT_PREFIX",
    "SENTINEL_SCHEME",
    "RedisCdrStore",
    "RedisLocationStore",
    "RedisPresenceStore",
    "RedisRegistrationStore",
    "RedisReservationStore",
    "open_redis_stores",
    "redis_client",
]

DEFAULT_PREFIX = "gateway:"
"""The prefix of every key the gateway writes."""

#: how many times a reservation is chosen again after another node wrote in between; each
#: retry is one round trip, and the emergency service bounds the whole step in time anyway
_MAX_RESERVE_ATTEMPTS = 50

_Record = TypeVar("_Record")

# KEYS[1] the expiry index; ARGV[1] the binding hash prefix, ARGV[2] now.
# The live bindings: members scored above now (exclusive, as expires_at <= now is expired).
_LIVE_BINDINGS = """
local out = {}
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[2], '+inf')) do
  local cut = string.find(member, '\\n', 1, true)
  local value = redis.call('HGET', ARGV[1] .. member:sub(1, cut - 1), member:sub(cut + 1))
  if value then out[#out + 1] = value end
end
return out
"""

# The expired bindings, deleted and returned in one step.
_PURGE_EXPIRED = """
local out = {}
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])) do
  local cut = string.find(member, '\\n', 1, true)
  local key, contact = ARGV[1] .. member:sub(1, cut - 1), member:sub(cut + 1)
  local value = redis.call('HGET', key, contact)
  if value then out[#out + 1] = value end
  redis.call('HDEL', key, contact)
  redis.call('ZREM', KEYS[1], member)
end
return out
"""

# KEYS[1] the presence hash, KEYS[2] the change channel; ARGV[1] the agent, ARGV[2] the
# record, ARGV[3] its updated_at, ARGV[4] the announcement ("" for none).
_PUT_PRESENCE = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then
  local ok, stored = pcall(cjson.decode, current)
  if ok and type(stored) == 'table' and tonumber(stored.updated_at)
      and tonumber(stored.updated_at) > tonumber(ARGV[3]) then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[4] ~= '' then redis.call('PUBLISH', KEYS[2], ARGV[4]) end
return 1
"""

# KEYS[1] the expiry index, KEYS[2] the agent's binding hash; ARGV[1] the agent.
_REMOVE_ALL = """
for _, contact in ipairs(redis.call('HKEYS', KEYS[2])) do
  redis.call('ZREM', KEYS[1], ARGV[1] .. '\\n' .. contact)
end
return redis.call('DEL', KEYS[2])
"""


def _dump(record: object) -> str:
    return json.dumps(dataclasses.asdict(record), separators=(",", ":"))  # type: ignore[call-overload]


def _load(kind: type[_Record], text: str | bytes) -> _Record:
    return kind(**json.loads(text))


def _member(agent_id: str, contact_uri: str) -> str:
    # "agent\ncontact": an agent id has no newline (a dialplan name), and the Lua scripts
    # split at the first one (no JSON here: cjson escapes differently from Python)
    return f"{agent_id}\n{contact_uri}"


def _binding_order(binding: Binding) -> tuple[str, float, str]:
    return (binding.agent_id, -binding.q, binding.contact_uri)


class _Connection:
    """The client and key prefix shared by the stores of one :func:`open_redis_stores`."""

    def __init__(self, client: aioredis.Redis, prefix: str, node: str | None = None) -> None:
        self.client = client
        self.prefix = prefix
        self.closed = False
        #: the writing node's name, announced with each registration and presence write
        #: (issue #12); None (a reader such as the CLI) announces nothing
        self.node = node
        self.channel = prefix + "changes"

    def key(self, name: str) -> str:
        return self.prefix + name

    def announcement(self, kind: ChangeKind, agent_id: str) -> str:
        """The announcement of a write (the writer's node, what, whose); "" for none."""
        if self.node is None:
            return ""
        message = {"node": self.node, "kind": kind, "agent": agent_id}
        return json.dumps(message, separators=(",", ":"))

    def announce(self, pipe: Any, kind: ChangeKind, agent_id: str) -> None:
        """Add to ``pipe`` the announcement of a write."""
        if self.node is not None:
            pipe.publish(self.channel, self.announcement(kind, agent_id))

    @asynccontextmanager
    async def guard(self) -> AsyncIterator[aioredis.Redis]:
        """The client, with every Redis failure turned into a store error."""
        if self.closed:
            raise StoreClosedError("the Redis store is closed")
        try:
            yield self.client
        except WatchError:
            raise
        except RedisError as exc:
            raise StoreUnavailableError(f"redis: {exc.__class__.__name__}: {exc}") from exc

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await self.client.aclose()


class RedisRegistrationStore:
    """:class:`~gateway.stores.ports.RegistrationStore` on Redis."""

    def __init__(self, connection: _Connection) -> None:
        self._conn = connection
        self._index = connection.key("reg:expiry")
        self._agent_prefix = connection.key("reg:")

    async def put(self, binding: Binding) -> None:
        """Insert ``binding``, or replace the one with the same (agent_id, contact_uri)."""
        member = _member(binding.agent_id, binding.contact_uri)
        async with self._conn.guard() as client, client.pipeline(transaction=True) as pipe:
            pipe.hset(self._agent_prefix + binding.agent_id, binding.contact_uri, _dump(binding))
            pipe.zadd(self._index, {member: binding.expires_at})
            self._conn.announce(pipe, "registration", binding.agent_id)
            await pipe.execute()

    async def remove(self, agent_id: str, contact_uri: str) -> None:
        """Remove one binding; removing a binding that does not exist is not an error."""
        async with self._conn.guard() as client, client.pipeline(transaction=True) as pipe:
            pipe.hdel(self._agent_prefix + agent_id, contact_uri)
            pipe.zrem(self._index, _member(agent_id, contact_uri))
            self._conn.announce(pipe, "registration", agent_id)
            await pipe.execute()

    async def remove_all(self, agent_id: str) -> None:
        """Remove every binding of ``agent_id``."""
        async with self._conn.guard() as client:
            keys = [self._index, self._agent_prefix + agent_id]
            await client.eval(_REMOVE_ALL, 2, *keys, agent_id)
            await self._announce({agent_id})

    async def bindings(self, agent_id: str, now: float) -> list[Binding]:
        """The unexpired bindings of ``agent_id``, highest ``q`` first."""
        async with self._conn.guard() as client:
            values = await client.hvals(self._agent_prefix + agent_id)
        found = [_load(Binding, value) for value in values]
        return sorted((b for b in found if b.expires_at > now), key=_binding_order)

    async def all_bindings(self, now: float) -> list[Binding]:
        """Every unexpired binding, ordered by agent then highest ``q`` first."""
        return await self._script(_LIVE_BINDINGS, now)

    async def purge_expired(self, now: float) -> list[Binding]:
        """Atomically delete the expired bindings and return them (one Lua step). Of
        several nodes purging at once, each binding is returned to exactly one: the node
        that acts on its expiry (issue #12: Offline is published once)."""
        purged = await self._script(_PURGE_EXPIRED, now)
        await self._announce({binding.agent_id for binding in purged})
        return purged

    async def _announce(self, agents: set[str]) -> None:
        if agents and self._conn.node is not None:
            async with self._conn.guard() as client, client.pipeline(transaction=False) as pipe:
                for agent_id in sorted(agents):
                    self._conn.announce(pipe, "registration", agent_id)
                await pipe.execute()

    async def _script(self, script: str, now: float) -> list[Binding]:
        async with self._conn.guard() as client:
            values = await client.eval(script, 1, self._index, self._agent_prefix, repr(now))
        return sorted((_load(Binding, v) for v in cast(list[bytes], values)), key=_binding_order)


class RedisPresenceStore:
    """:class:`~gateway.stores.ports.PresenceStore` on Redis (one hash)."""

    def __init__(self, connection: _Connection) -> None:
        self._conn = connection
        self._key = connection.key("presence")

    async def get(self, agent_id: str) -> PresenceRecord | None:
        async with self._conn.guard() as client:
            value = await client.hget(self._key, agent_id)
        return None if value is None else _load(PresenceRecord, value)

    async def put(self, record: PresenceRecord) -> None:
        """Write ``record`` unless the stored one is newer (``updated_at``): a node's write
        replayed after an outage does not undo a later change another node made meanwhile
        (one Lua step, announced when written)."""
        async with self._conn.guard() as client:
            await client.eval(
                _PUT_PRESENCE,
                2,
                self._key,
                self._conn.channel,
                record.agent_id,
                _dump(record),
                repr(record.updated_at),
                self._conn.announcement("presence", record.agent_id),
            )

    async def all(self) -> list[PresenceRecord]:
        async with self._conn.guard() as client:
            values = await client.hvals(self._key)
        return sorted((_load(PresenceRecord, v) for v in values), key=lambda r: r.agent_id)


class RedisCdrStore:
    """:class:`~gateway.stores.ports.CdrStore` on Redis (a list, newest first)."""

    def __init__(self, connection: _Connection) -> None:
        self._conn = connection
        self._key = connection.key("cdr")

    async def add(self, *cdrs: Cdr) -> None:
        if not cdrs:
            return
        async with self._conn.guard() as client:
            # one LPUSH of many values pushes each in turn: the last is the newest
            await client.lpush(self._key, *(_dump(cdr) for cdr in cdrs))

    async def recent(
        self, limit: int, *, since: float | None = None, until: float | None = None
    ) -> list[Cdr]:
        """Up to ``limit`` records, most recently added first, ended in [since, until)."""
        if limit <= 0:
            return []
        window = since is not None or until is not None
        async with self._conn.guard() as client:
            values = await client.lrange(self._key, 0, -1 if window else limit - 1)
        rows = [_load(Cdr, value) for value in values]
        low = float("-inf") if since is None else since
        high = float("inf") if until is None else until
        return [row for row in rows if low <= row.ended_at < high][:limit]

    async def purge(self, before: float) -> int:
        """Delete the records of calls that ended before ``before``; how many went. Every
        node may purge: the list is rewritten in one transaction."""
        async with self._conn.guard() as client:
            while True:  # WATCH: a row another node adds meanwhile makes it start again
                async with client.pipeline(transaction=True) as pipe:
                    await pipe.watch(self._key)
                    values = await pipe.lrange(self._key, 0, -1)
                    keep = [value for value in values if _load(Cdr, value).ended_at >= before]
                    if len(keep) == len(values):
                        return 0
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.delete(self._key)
                    if keep:
                        pipe.rpush(self._key, *keep)
                    try:
                        await pipe.execute()
                    except WatchError:
                        continue
                return len(values) - len(keep)


def _contention_pause(attempt: int) -> float:
    """Seconds to wait after losing a WATCH race: random, up to 0.5, 1, 2, 4, then 4 ms.

    Without it two nodes in lockstep (same round trips, one always writing between the
    other's WATCH and EXEC) starved one of them: measured, 50 lost races in a row and an
    emergency call without a DID. A random pause breaks the lockstep at the cost of a few
    ms, and only for a node that just lost.
    """
    return random.uniform(0.0, 0.0005 * (1 << min(attempt, 3)))


class RedisReservationStore:
    """:class:`~gateway.stores.ports.ReservationStore` on Redis, shared by every node."""

    def __init__(self, connection: _Connection) -> None:
        self._conn = connection
        self._key = connection.key("reservation")
        # One choice at a time from this node: its callers are served in the order they
        # asked (as the SQLite thread does), and only other nodes can make EXEC fail.
        self._turn = asyncio.Lock()

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

        ``WATCH``, read the pool's reservations, ``choose``, ``MULTI``/``EXEC``; run again
        when another writer got in between (the module docstring).
        """
        unique_pool = tuple(dict.fromkeys(pool))
        if not unique_pool:
            raise EmptyPoolError("the callback DID pool is empty")
        if ttl <= 0:
            raise ValueError(f"reservation ttl must be positive, not {ttl!r}")
        async with (
            self._turn,
            self._conn.guard() as client,
            client.pipeline(transaction=True) as pipe,
        ):
            for _attempt in range(_MAX_RESERVE_ATTEMPTS):
                try:
                    await pipe.watch(self._key)
                    values = await pipe.hmget(self._key, unique_pool)
                    held = {
                        did: _load(Reservation, value)
                        for did, value in zip(unique_pool, values, strict=True)
                        if value is not None
                    }
                    did, taken_over = choose(agent_id, unique_pool, held, now)
                    reservation = Reservation(did, agent_id, now, now + ttl, call_id, test)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.hset(self._key, did, _dump(reservation))
                    await pipe.execute()
                    return reservation, taken_over
                except WatchError:
                    await asyncio.sleep(_contention_pause(_attempt))
        raise StoreError(f"no callback DID after {_MAX_RESERVE_ATTEMPTS} contended attempts")

    async def restore(self, reservation: Reservation) -> bool:
        """Write a reservation made elsewhere (during an outage) unless its DID has a newer
        one; ``True`` if it was written. Used to reconcile after a Redis outage."""
        async with self._conn.guard() as client, client.pipeline(transaction=True) as pipe:
            for _attempt in range(_MAX_RESERVE_ATTEMPTS):
                try:
                    await pipe.watch(self._key)
                    value = await pipe.hget(self._key, reservation.did)
                    if value is not None:
                        current = _load(Reservation, value)
                        if current.reserved_at >= reservation.reserved_at:
                            await pipe.unwatch()  # type: ignore[no-untyped-call]
                            return current == reservation
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.hset(self._key, reservation.did, _dump(reservation))
                    await pipe.execute()
                    return True
                except WatchError:
                    continue
        raise StoreError(f"could not restore {reservation.did}: contended")

    async def lookup(self, did: str, now: float) -> Reservation | None:
        async with self._conn.guard() as client:
            value = await client.hget(self._key, did)
        if value is None:
            return None
        reservation = _load(Reservation, value)
        return reservation if reservation.expires_at > now else None

    async def live(self, now: float) -> list[Reservation]:
        async with self._conn.guard() as client:
            values = await client.hvals(self._key)
        found = (_load(Reservation, value) for value in values)
        return sorted((r for r in found if r.expires_at > now), key=lambda r: r.did)


class RedisLocationStore:
    """:class:`~gateway.stores.ports.LocationStore` on Redis (one hash)."""

    def __init__(self, connection: _Connection) -> None:
        self._conn = connection
        self._key = connection.key("location")

    async def put(self, record: ConfirmedLocation) -> None:
        async with self._conn.guard() as client:
            await client.hset(self._key, record.agent_id, _dump(record))

    async def remove(self, agent_id: str) -> None:
        async with self._conn.guard() as client:
            await client.hdel(self._key, agent_id)

    async def all(self) -> list[ConfirmedLocation]:
        async with self._conn.guard() as client:
            values = await client.hvals(self._key)
        return sorted((_load(ConfirmedLocation, v) for v in values), key=lambda r: r.agent_id)


SENTINEL_SCHEME = "redis+sentinel"
"""``redis+sentinel://[:password@]host:port[,host:port...]/service[/db]``: the master that
the Sentinels name ``service`` (Redis high availability)."""


def _sentinel_parts(url: str) -> tuple[list[tuple[str, int]], str, int, str | None]:
    """The Sentinels, service name, database and password of a ``redis+sentinel`` URL."""
    rest = url.split("://", 1)[1]
    credentials, _, rest = rest.rpartition("@")
    password = (credentials.split(":", 1)[-1] or None) if credentials else None
    hosts, _, path = rest.partition("/")
    service, _, db = path.partition("/")
    if not hosts or not service:
        raise ValueError("expected redis+sentinel://host:port[,host:port...]/service[/db]")
    sentinels = []
    for item in hosts.split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{item!r} is not host:port")
        sentinels.append((host.strip("[]"), int(port)))
    if db and not db.isdigit():
        raise ValueError(f"database {db!r} is not a number")
    return sentinels, service, int(db or 0), password


def redis_client(url: str, timeout: float) -> aioredis.Redis:
    """A client for ``url`` whose every connect and command gives up after ``timeout``
    seconds, with no retry: a dead Redis must fail fast, never hold a call. A
    ``redis+sentinel`` URL gives a client of the master the Sentinels name now (asked
    again on each new connection, so a failover is followed)."""
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
    }
    if url.split(":", 1)[0].lower() != SENTINEL_SCHEME:
        return aioredis.Redis.from_url(url, **options)
    sentinels, service, db, password = _sentinel_parts(url)
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        sentinels,
        sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout},
    )
    return cast(aioredis.Redis, sentinel.master_for(service, db=db, password=password, **options))


def _cluster_feed(connection: _Connection) -> ClusterFeed | None:
    from gateway.stores.redis_cluster import RedisClusterFeed

    return None if connection.node is None else RedisClusterFeed(connection, connection.node)


def _safe(url: str) -> str:
    return url.split("@")[-1]


async def open_redis_stores(
    url: str,
    outbox_path: Path | str,
    *,
    timeout: float = 0.25,
    prefix: str = DEFAULT_PREFIX,
    node: str | None = None,
) -> Stores:
    """The stores on the Redis at ``url``; the e-mail outbox on the SQLite file
    ``outbox_path`` (node-local: see the module docstring). A running ``node`` (its name)
    announces its registration and presence writes and gets the cluster feed
    (``stores.cluster``); without one (the CLI) nothing is announced.

    Redis need not be reachable at start-up (a node must come up during an outage); every
    operation that finds it down raises :class:`StoreUnavailableError`.
    """
    from gateway.stores.sqlite_database import SqliteDatabase
    from gateway.stores.sqlite_outbox import SqliteOutboxStore

    try:
        client = redis_client(url, timeout)
    except ValueError as exc:
        raise ValueError(f"bad redis store url {_safe(url)!r}: {exc}") from None
    connection = _Connection(client, prefix, node)
    outbox_db = await SqliteDatabase.open(outbox_path)

    async def close_both() -> None:
        try:
            await outbox_db.close()
        finally:
            await connection.close()

    return Stores(
        registrations=RedisRegistrationStore(connection),
        presence=RedisPresenceStore(connection),
        cdrs=RedisCdrStore(connection),
        reservations=RedisReservationStore(connection),
        outbox=SqliteOutboxStore(outbox_db),
        closer=close_both,
        locations=RedisLocationStore(connection),
        cluster=_cluster_feed(connection),
    )
