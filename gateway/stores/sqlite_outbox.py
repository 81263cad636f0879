"""The e-mail outbox (SPEC E-6) on SQLite, in a database file of its own.

Its own file and worker thread: mail traffic (a slow SMTP server means many outbox writes
in flight) never queues in front of a callback DID reservation on an emergency call's path.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any, cast

from gateway.stores.ports import MailDraft, OutboxMail, OutboxState
from gateway.stores.sqlite_database import SqliteDatabase, immediate_transaction

__all__ = ["SqliteOutboxStore"]

_OUTBOX_COLUMNS = (
    "id, call_id, agent_id, recipient, subject, text_body, html_body, test, did, route, "
    "message_id_domain, created_at, give_up_at, next_attempt_at, attempts, "
    "attempt_started_at, state, last_error, finished_at"
)


def _outbox_mail(row: tuple[Any, ...]) -> OutboxMail:
    return OutboxMail(
        id=int(row[0]),
        call_id=row[1],
        agent_id=row[2],
        recipient=row[3],
        subject=row[4],
        text_body=row[5],
        html_body=row[6],
        test=bool(row[7]),
        did=row[8],
        route=row[9],
        message_id_domain=row[10],
        created_at=float(row[11]),
        give_up_at=float(row[12]),
        next_attempt_at=float(row[13]),
        attempts=int(row[14]),
        attempt_started_at=None if row[15] is None else float(row[15]),
        state=cast(OutboxState, row[16]),
        last_error=row[17],
        finished_at=None if row[18] is None else float(row[18]),
    )


class SqliteOutboxStore:
    """:class:`~gateway.stores.ports.OutboxStore` on SQLite.

    Every state change is one autocommitted statement, so it is on disk (WAL) when the
    awaiting coroutine resumes: :meth:`mark_sent` returning means a restart will not send
    the mail again.
    """

    def __init__(self, database: SqliteDatabase) -> None:
        self._db = database

    async def add(self, drafts: Sequence[MailDraft], now: float) -> list[OutboxMail]:
        """Write ``drafts`` in one transaction as pending rows due at ``now``."""
        drafts = list(drafts)
        if not drafts:
            return []

        def operation(conn: sqlite3.Connection) -> list[OutboxMail]:
            ids: list[int] = []
            with immediate_transaction(conn):
                for draft in drafts:
                    cursor = conn.execute(
                        "INSERT INTO outbox (call_id, agent_id, recipient, subject, text_body, "
                        "html_body, test, did, route, message_id_domain, created_at, "
                        "give_up_at, next_attempt_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            draft.call_id,
                            draft.agent_id,
                            draft.recipient,
                            draft.subject,
                            draft.text_body,
                            draft.html_body,
                            int(draft.test),
                            draft.did,
                            draft.route,
                            draft.message_id_domain,
                            now,
                            draft.give_up_at,
                            now,
                        ),
                    )
                    assert cursor.lastrowid is not None
                    ids.append(cursor.lastrowid)
            return [
                OutboxMail(
                    id=mail_id,
                    call_id=draft.call_id,
                    agent_id=draft.agent_id,
                    recipient=draft.recipient,
                    subject=draft.subject,
                    text_body=draft.text_body,
                    html_body=draft.html_body,
                    test=draft.test,
                    did=draft.did,
                    route=draft.route,
                    message_id_domain=draft.message_id_domain,
                    created_at=now,
                    give_up_at=draft.give_up_at,
                    next_attempt_at=now,
                    attempts=0,
                    attempt_started_at=None,
                    state="pending",
                    last_error=None,
                    finished_at=None,
                )
                for mail_id, draft in zip(ids, drafts, strict=True)
            ]

        return await self._db.run(operation)

    async def get(self, mail_id: int) -> OutboxMail | None:
        """The row ``mail_id``, or ``None``."""

        def operation(conn: sqlite3.Connection) -> OutboxMail | None:
            row = conn.execute(
                f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE id = ?", (mail_id,)
            ).fetchone()
            return None if row is None else _outbox_mail(row)

        return await self._db.run(operation)

    async def pending(self) -> list[OutboxMail]:
        """Every pending row, earliest ``next_attempt_at`` first, then by id."""

        def operation(conn: sqlite3.Connection) -> list[OutboxMail]:
            rows = conn.execute(
                f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE state = 'pending' "
                "ORDER BY next_attempt_at, id"
            ).fetchall()
            return [_outbox_mail(row) for row in rows]

        return await self._db.run(operation)

    async def begin_attempt(self, mail_id: int, now: float) -> bool:
        """Count an attempt and mark it in flight; ``False`` if the row is not pending."""

        def operation(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, attempt_started_at = ? "
                "WHERE id = ? AND state = 'pending'",
                (now, mail_id),
            )
            return cursor.rowcount == 1

        return await self._db.run(operation)

    async def retry_at(self, mail_id: int, next_attempt_at: float, error: str) -> None:
        """The attempt failed and will be retried at ``next_attempt_at``."""

        def operation(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE outbox SET next_attempt_at = ?, last_error = ?, "
                "attempt_started_at = NULL WHERE id = ? AND state = 'pending'",
                (next_attempt_at, error, mail_id),
            )

        await self._db.run(operation)

    async def mark_sent(self, mail_id: int, now: float) -> None:
        """The server accepted the mail: it must never be sent again."""
        await self._finish(mail_id, "sent", now, None)

    async def mark_failed(self, mail_id: int, now: float, error: str) -> None:
        """Delivery was abandoned (permanent refusal, or given up)."""
        await self._finish(mail_id, "failed", now, error)

    async def _finish(
        self, mail_id: int, state: OutboxState, now: float, error: str | None
    ) -> None:
        def operation(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE outbox SET state = ?, finished_at = ?, attempt_started_at = NULL, "
                "last_error = coalesce(?, last_error) WHERE id = ? AND state = 'pending'",
                (state, now, error, mail_id),
            )

        await self._db.run(operation)

    async def purge_finished(self, before: float) -> int:
        """Delete sent and failed rows finished before ``before``; return how many."""

        def operation(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "DELETE FROM outbox WHERE state != 'pending' AND finished_at < ?", (before,)
            )
            return cursor.rowcount

        return await self._db.run(operation)
