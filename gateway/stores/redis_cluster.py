"""The cluster feed on Redis (issue #12): how the nodes hear each other's writes.

Every registration and presence write of a running node publishes, inside its own
``MULTI`` (:meth:`gateway.stores.redis_store._Connection.announce`), a JSON message
``{"node": ..., "kind": "registration" | "presence", "agent": ...}`` on the channel
``<prefix>changes``; a node subscribes to it (:meth:`RedisClusterFeed.subscribe`) and
reads what each message names. Redis pub/sub delivers at most once and only to connected
subscribers: a message missed during a reconnect is healed by the periodic full resync
(:class:`gateway.cluster.ClusterSync`). Heartbeats are a hash ``<prefix>nodes``
(node -> unix seconds, the node's clock).
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from redis.exceptions import RedisError

from gateway.stores.ports import ClusterChange, StoreUnavailableError
from gateway.stores.redis_store import _Connection

__all__ = ["RedisClusterFeed"]


class _RedisSubscription:
    """One pub/sub subscription to the change channel (:class:`RedisClusterFeed`)."""

    def __init__(self, pubsub: Any) -> None:
        self._pubsub = pubsub

    async def next(self, timeout: float) -> ClusterChange | None:
        try:
            message = await self._pubsub.get_message(
                ignore_subscribe_messages=True, timeout=timeout
            )
        except (RedisError, OSError) as exc:
            raise StoreUnavailableError(f"redis pub/sub: {exc!r}") from exc
        if message is None or message.get("type") != "message":
            return None
        try:
            data = json.loads(message["data"])
            kind = data["kind"]
            if kind not in ("registration", "presence"):
                return None
            return ClusterChange(str(data["node"]), kind, str(data["agent"]))
        except (ValueError, KeyError, TypeError):
            return None  # not one of ours: another writer on the channel

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._pubsub.aclose()


class RedisClusterFeed:
    """:class:`~gateway.stores.ports.ClusterFeed` on Redis: the announcements are published
    on ``<p>changes`` by the writes themselves (in their ``MULTI``), and the heartbeats are
    a hash ``<p>nodes`` (node -> unix seconds)."""

    def __init__(self, connection: _Connection, node: str) -> None:
        self._conn = connection
        self.node = node
        self._nodes = connection.key("nodes")

    async def subscribe(self) -> _RedisSubscription:
        async with self._conn.guard() as client:
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._conn.channel)
            except BaseException:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
                raise
        return _RedisSubscription(pubsub)

    async def heartbeat(self, now: float) -> None:
        async with self._conn.guard() as client:
            await client.hset(self._nodes, self.node, repr(now))

    async def claim(self, key: str, ttl_s: float) -> bool:
        """``SET <p>claim:<key> <node> NX PX``: the first node wins."""
        async with self._conn.guard() as client:
            won = await client.set(
                self._conn.key("claim:" + key), self.node, nx=True, px=max(1, int(ttl_s * 1000))
            )
        return bool(won)

    async def nodes_seen(self) -> dict[str, float]:
        async with self._conn.guard() as client:
            values = await client.hgetall(self._nodes)
        return {
            (name.decode() if isinstance(name, bytes) else str(name)): float(value)
            for name, value in values.items()
        }
