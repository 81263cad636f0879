"""Stores (SPEC O-2): typed ports, the embedded SQLite default, and :func:`open_stores`.

Store URLs:

* ``"sqlite"`` (the default) -- ``<data_dir>/gateway.sqlite3``;
* ``"sqlite:///abs/path.sqlite3"`` -- that file; ``"sqlite://rel/path.sqlite3"`` -- a path
  relative to ``data_dir``; ``"sqlite://:memory:"`` -- a private in-memory database (tests);
* ``"redis://[user:pass@]host:port/db"`` / ``"rediss://..."`` / ``"unix:///path.sock"``, or
  ``"redis+sentinel://host:port[,host:port...]/service[/db]"`` (the master the Sentinels
  name) -- the cluster adapter (:mod:`gateway.stores.redis_store`); the e-mail outbox stays on a
  node-local SQLite file, ``<data_dir>/gateway-outbox.sqlite3``.
"""

from __future__ import annotations

from pathlib import Path

from gateway.stores.ports import (
    Binding,
    CallDirection,
    Cdr,
    CdrStore,
    DidChooser,
    EmptyPoolError,
    MailDraft,
    OutboxMail,
    OutboxState,
    OutboxStore,
    PresenceRecord,
    PresenceStore,
    RegistrationStore,
    Reservation,
    ReservationStore,
    StoreClosedError,
    StoreError,
    Stores,
    StoreUnavailableError,
)

__all__ = [
    "DEFAULT_SQLITE_FILE",
    "Binding",
    "CallDirection",
    "Cdr",
    "CdrStore",
    "DidChooser",
    "EmptyPoolError",
    "MailDraft",
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
    "open_stores",
    "sqlite_path",
]

DEFAULT_SQLITE_FILE = "gateway.sqlite3"
"""File name of the embedded database inside the data directory."""


def sqlite_path(url: str, data_dir: Path) -> Path | str:
    """The database path a ``sqlite`` store URL names (see the module docstring).

    Raises :class:`ValueError` if ``url`` is not a sqlite URL.
    """
    if url == "sqlite":
        return data_dir / DEFAULT_SQLITE_FILE
    prefix = "sqlite://"
    if not url.startswith(prefix) or url == prefix:
        raise ValueError(f"not a sqlite store url: {url!r} (expected 'sqlite' or 'sqlite://PATH')")
    rest = url[len(prefix) :]
    if rest == ":memory:":
        return rest
    path = Path(rest)
    return path if path.is_absolute() else data_dir / path


async def open_stores(
    url: str,
    data_dir: Path,
    *,
    timeout: float = 0.25,
    exclusive: bool = False,
    node: str | None = None,
) -> Stores:
    """Open the stores named by ``url``; the SQLite file lives under ``data_dir`` by default.

    The returned :class:`Stores` must be closed (``await stores.close()`` or
    ``async with``). ``timeout`` bounds every Redis connect and command (a Redis outage
    fails fast with :class:`StoreUnavailableError`). Raises :class:`ValueError` for an
    unknown URL, and :class:`StoreError` for a database this gateway cannot use.
    ``exclusive`` (a running node): an SQLite file is this process's alone (see
    :func:`~gateway.stores.sqlite.open_sqlite_stores`); no effect on a shared store.
    ``node`` (a running node's name): a shared store announces this node's writes to the
    other nodes and has a cluster feed (issue #12); no effect on SQLite.
    """
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("redis", "rediss", "unix", "redis+sentinel"):
        from gateway.stores.redis_store import open_redis_stores

        data_dir.mkdir(parents=True, exist_ok=True)
        outbox = data_dir / DEFAULT_SQLITE_FILE.replace(".", "-outbox.", 1)
        return await open_redis_stores(url, outbox, timeout=timeout, node=node)
    if scheme != "sqlite":
        raise ValueError(f"unknown store url {url!r}: expected 'sqlite', 'sqlite://PATH' or redis")
    from gateway.stores.sqlite import open_sqlite_stores

    return await open_sqlite_stores(sqlite_path(url, data_dir), exclusive=exclusive)
