"""The emergency-contact notifier: a durable outbox drained by one worker (SPEC E-6).

Theory of operation
-------------------
The call layer calls :meth:`Notifier.notify` once the emergency INVITE is on its way.
``notify`` only appends the :class:`EmergencyNotice` to an in-memory intake and wakes the
worker, so it costs microseconds and cannot block or fail the call. Everything else
happens in the worker task (``notify-outbox``) and in one task per attempt:

1. **Write.** The worker drops invalid contacts (logged, and reported as
   ``notification_failed``), renders the templates (falling back to a built-in text if
   they fail) and writes one outbox row per recipient in one transaction. From here on
   the mail survives a restart.
2. **Attempt.** Due rows are sent, at most :data:`MAX_PARALLEL_SENDS` at a time, one
   SMTP connection and one recipient per mail, so one refused or slow address cannot
   hold up the others. Before the attempt the row is marked in flight.
3. **Outcome.** Accepted by the server: the row is marked ``sent`` *immediately*, then
   ``notification_sent`` is published. A transient failure (server down, timeout, 4xx) is
   retried with jittered exponential backoff (:mod:`gateway.notify.retry`), and each
   such failure publishes ``notification_retrying`` (attempts so far, ``next_try_at``,
   ``reason``, ``will_retry: true``) so that a dashboard sees the trouble at the first
   failed attempt, not an hour later; a 5xx for the recipient or the message fails the
   row at once; at the give-up deadline (``notify_give_up_s`` after the call) the row
   fails. A failed row logs an error and publishes ``notification_failed``
   (``will_retry: false``): the one final event, like ``notification_sent``.

Delivery guarantee: at least once, and exactly once unless the process dies inside one
narrow window -- after the server has accepted the message and before the ``sent`` mark
is committed (one SQLite autocommit, about a millisecond). A row caught there is still
pending (with its in-flight mark) and is sent again after the restart, with the same
Message-ID (derived from the row id), which the restart logs as a possible duplicate.
A notice accepted by ``notify`` but not yet written (a fraction of a millisecond on an
idle loop) is lost if the process dies at that moment; :meth:`Notifier.close` writes
such notices before it returns, so an orderly shutdown loses nothing.

On :meth:`Notifier.start` the pending rows are resumed at their stored retry time.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import random
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import structlog

from gateway.config.settings import Settings
from gateway.events.ports import Publisher, Topics
from gateway.events.schema import emergency_payload, rfc3339
from gateway.notify.addresses import split_recipients
from gateway.notify.notice import EmergencyNotice, notice_for
from gateway.notify.retry import Retry, after_failure
from gateway.notify.smtp import (
    DeliveryError,
    MailSender,
    SmtpSender,
    build_message,
    envelope_sender,
)
from gateway.notify.template import render, render_fallback
from gateway.stores.ports import MailDraft, OutboxMail, OutboxStore, StoreUnavailableError
from gateway.tasks import stop_task

__all__ = [
    "MAX_PARALLEL_SENDS",
    "NO_MAIL_SERVER",
    "EmergencyNotice",
    "Notifier",
    "notice_for",
]

log = structlog.get_logger("gateway.notify")

MAX_PARALLEL_SENDS: Final = 4
"""Mails handed to the server at the same time."""
NO_MAIL_SERVER: Final = "no mail server configured"
"""The ``reason`` of ``notification_failed`` when ``smtp_host`` is empty."""
FINISHED_RETENTION_S: Final = 7 * 86400.0
"""Sent and failed rows are kept this long (for troubleshooting), then purged."""
_PURGE_INTERVAL_S: Final = 3600.0
_MAX_IDLE_WAIT_S: Final = 60.0
_REMEMBERED_CALLS: Final = 4096


class Notifier:
    """E-mails an agent's emergency contacts when the agent dials (SPEC E-6).

    ``clock`` is the wall clock (unix seconds: the outbox stores absolute times),
    ``rand`` jitters retry delays, ``smtp_factory`` builds the :class:`MailSender` from
    the settings (default :class:`SmtpSender`; tests pass fakes). Use :meth:`start` and
    :meth:`close` (or ``async with``); close the notifier before the stores.
    """

    def __init__(
        self,
        settings: Settings,
        outbox: OutboxStore,
        publisher: Publisher,
        topics: Topics,
        templates_dir: Path,
        *,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        smtp_factory: Callable[[Settings], MailSender] | None = None,
        max_parallel: int = MAX_PARALLEL_SENDS,
    ) -> None:
        self.settings = settings
        self.outbox = outbox
        self.publisher = publisher
        self.topics = topics
        self.templates_dir = templates_dir
        self._clock = clock
        self._rand = rand
        self._sender = (smtp_factory or SmtpSender)(settings)
        self._envelope_from = envelope_sender(settings.smtp_from)
        self._domain = self._envelope_from.rpartition("@")[2] or "gateway.invalid"
        self._slots = asyncio.Semaphore(max_parallel)
        self._intake: deque[EmergencyNotice] = deque()
        self._wake = asyncio.Event()
        self._due: list[tuple[float, int]] = []  # heap of (attempt time, mail id)
        self._scheduled: dict[int, tuple[float, OutboxMail]] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._sending: set[int] = set()
        self._calls_seen: OrderedDict[str, None] = OrderedDict()
        self._worker: asyncio.Task[None] | None = None
        self._last_purge = 0.0
        self._closed = False

    @property
    def configured(self) -> bool:
        """Whether a mail server is configured (``smtp_host`` is set)."""
        return bool(self.settings.smtp_host)

    # -- lifetime --------------------------------------------------------------------------

    async def start(self) -> None:
        """Resume the pending rows of the outbox and start the worker. Never raises for a
        store problem (it is logged): new notices are still accepted."""
        if self._worker is not None or self._closed:
            return
        try:
            await self._resume()
        except Exception as error:
            log.error("notification_outbox_resume_failed", error=repr(error))
        self._worker = asyncio.create_task(self._run(), name="notify-outbox")

    async def _resume(self) -> None:
        pending = await self.outbox.pending()
        if not self.configured:
            if pending:
                log.warning(
                    "notification_outbox_left_pending",
                    pending=len(pending),
                    detail="no mail server configured (GATEWAY_SMTP_HOST); they are sent "
                    "once one is, unless their give-up time has passed by then",
                )
            return
        for mail in pending:
            if mail.attempt_started_at is not None:
                log.warning(
                    "notification_possible_duplicate",
                    call_id=mail.call_id,
                    mail_id=mail.id,
                    message_id=mail.message_id,
                    recipient=mail.recipient,
                    detail="an attempt was in flight when the gateway stopped; the recipient "
                    "may get this mail twice, with the same Message-ID",
                )
            self._schedule(mail, mail.next_attempt_at)
        await self._purge(self._clock())
        log.info("notification_outbox_resumed", pending=len(pending))

    async def close(self, grace_s: float | None = None) -> None:
        """Stop: write the notices not yet stored, let attempts in flight finish (up to
        ``grace_s``, default ``smtp_timeout_s``), drop the rest (they stay pending)."""
        if self._closed:
            return
        self._closed = True
        await stop_task(self._worker)
        try:
            await self._drain_intake(schedule=False)
        except Exception as error:
            log.error("notification_outbox_write_failed", error=repr(error))
        waiting = [task for mail_id, task in self._tasks.items() if mail_id not in self._sending]
        for task in waiting:
            task.cancel()
        in_flight = [task for mail_id, task in self._tasks.items() if mail_id in self._sending]
        if in_flight:
            grace = self.settings.smtp_timeout_s if grace_s is None else grace_s
            _done, late = await asyncio.wait(in_flight, timeout=grace)
            for task in late:
                log.warning("notification_attempt_abandoned_at_shutdown", task=task.get_name())
                task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        await self._sender.aclose()

    async def __aenter__(self) -> Notifier:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- the entry point -------------------------------------------------------------------

    def notify(self, notice: EmergencyNotice) -> None:
        """Mail ``notice`` to its recipients, in the background.

        Synchronous, non-blocking, never raises; call it from the event loop once the
        emergency INVITE has been sent. A second notice for the same call id is ignored.
        """
        try:
            self._accept(notice)
        except Exception as error:  # never let notification trouble reach the call
            call_id = getattr(notice, "call_id", None)
            log.error("notification_not_queued", call_id=call_id, error=repr(error))

    def _accept(self, notice: EmergencyNotice) -> None:
        if notice.call_id in self._calls_seen:
            log.warning("notification_duplicate_ignored", call_id=notice.call_id)
            return
        self._calls_seen[notice.call_id] = None
        if len(self._calls_seen) > _REMEMBERED_CALLS:
            self._calls_seen.popitem(last=False)
        if not notice.recipients:
            log.info("notification_skipped", call_id=notice.call_id, reason="no contacts")
            return
        if not self.configured or self._closed:
            reason = NO_MAIL_SERVER if not self.configured else "gateway shutting down"
            log.error(
                "notification_failed",
                call_id=notice.call_id,
                agent=notice.agent_id,
                reason=reason,
                recipients=list(notice.recipients),
            )
            self._publish_failed(notice, reason=reason, recipients=len(notice.recipients))
            return
        self._intake.append(notice)
        self._wake.set()

    # -- the worker ------------------------------------------------------------------------

    async def _run(self) -> None:
        # ``while not self._closed`` and ``asyncio.timeout`` (not ``wait_for``): on Python
        # 3.11 ``wait_for`` can swallow a cancel that arrives as the event is set, and the
        # worker then idled for a minute while close() waited for it.
        while not self._closed:
            self._wake.clear()
            try:
                await self._drain_intake(schedule=True)
                self._launch_due()
                if self._clock() - self._last_purge >= _PURGE_INTERVAL_S:
                    await self._purge(self._clock())
            except asyncio.CancelledError:
                raise
            except StoreUnavailableError as error:  # the notice waits in memory, in order
                log.error("notification_outbox_unavailable", error=repr(error), retry_in_s=2)
                await asyncio.sleep(2.0)
            except Exception as error:  # keep the worker alive whatever happens
                log.error("notification_worker_error", error=repr(error))
            if self._intake:
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._idle_wait()):
                    await self._wake.wait()

    def _idle_wait(self) -> float:
        if not self._due:
            return _MAX_IDLE_WAIT_S
        return min(_MAX_IDLE_WAIT_S, max(0.0, self._due[0][0] - self._clock()))

    async def _purge(self, now: float) -> None:
        self._last_purge = now
        try:
            purged = await self.outbox.purge_finished(now - FINISHED_RETENTION_S)
        except Exception as error:
            log.warning("notification_outbox_purge_failed", error=repr(error))
            return
        if purged:
            log.info("notification_outbox_purged", rows=purged)

    async def _drain_intake(self, *, schedule: bool) -> None:
        while self._intake:
            await self._write(self._intake.popleft(), schedule=schedule)

    async def _write(self, notice: EmergencyNotice, *, schedule: bool) -> None:
        """Validate, render and store ``notice``: one pending row per valid recipient."""
        recipients = self._valid_recipients(notice)
        if not recipients:
            return
        now = self._clock()
        drafts = self._drafts(notice, recipients, now)
        try:
            mails = await self.outbox.add(drafts, now)
        except StoreUnavailableError:  # a passing failure (locked, full): the worker waits
            self._intake.appendleft(notice)
            raise
        except Exception as error:
            log.error(
                "notification_failed",
                call_id=notice.call_id,
                agent=notice.agent_id,
                reason="outbox write failed",
                error=repr(error),
                recipients=recipients,
            )
            for recipient in recipients:
                self._publish_failed(notice, recipient=recipient, reason="outbox write failed")
            return
        log.info(
            "notification_stored",
            call_id=notice.call_id,
            agent=notice.agent_id,
            test=notice.test,
            mail_ids=[mail.id for mail in mails],
        )
        if schedule:
            for mail in mails:
                self._schedule(mail, mail.next_attempt_at)

    def _valid_recipients(self, notice: EmergencyNotice) -> list[str]:
        """The recipients that are mail addresses; each other one is logged and published."""
        recipients, invalid = split_recipients(notice.recipients)
        for address, problem in invalid:
            log.error(
                "notification_contact_invalid",
                call_id=notice.call_id,
                agent=notice.agent_id,
                contact=address,
                problem=problem,
            )
            self._publish_failed(
                notice, recipient=address, reason=f"invalid address: {problem}", permanent=True
            )
        return recipients

    def _drafts(
        self, notice: EmergencyNotice, recipients: list[str], now: float
    ) -> list[MailDraft]:
        """One mail per recipient, rendered from the templates (the built-in text on error)."""
        site_timezone = self.settings.site_timezone
        try:
            subject, text, html = render(notice, self.templates_dir, site_timezone)
        except Exception as error:
            log.error(
                "notification_template_failed",
                call_id=notice.call_id,
                templates_dir=str(self.templates_dir),
                error=f"{type(error).__name__}: {error}",
                detail="sending the built-in text instead; run 'gateway check'",
            )
            subject, text, html = render_fallback(notice, site_timezone)
        give_up_at = min(notice.at, now) + self.settings.notify_give_up_s
        return [
            MailDraft(
                call_id=notice.call_id,
                agent_id=notice.agent_id,
                recipient=recipient,
                subject=subject,
                text_body=text,
                html_body=html,
                test=notice.test,
                did=notice.callback_did,
                route=notice.route,
                message_id_domain=self._domain,
                give_up_at=give_up_at,
            )
            for recipient in recipients
        ]

    def _schedule(self, mail: OutboxMail, at: float) -> None:
        self._scheduled[mail.id] = (at, mail)
        heapq.heappush(self._due, (at, mail.id))

    def _launch_due(self) -> None:
        now = self._clock()
        while self._due and self._due[0][0] <= now:
            at, mail_id = heapq.heappop(self._due)
            entry = self._scheduled.get(mail_id)
            if entry is None or entry[0] != at:
                continue  # superseded by a later schedule
            if mail_id in self._tasks:
                continue  # its last attempt is still finishing: _forget puts it back
            del self._scheduled[mail_id]
            task = asyncio.create_task(self._attempt(entry[1]), name=f"notify-mail-{mail_id}")
            self._tasks[mail_id] = task
            task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        for mail_id, known in list(self._tasks.items()):
            if known is task:
                del self._tasks[mail_id]
                entry = self._scheduled.get(mail_id)
                if entry is not None and not self._closed:
                    # a retry that fell due while this attempt was still finishing
                    heapq.heappush(self._due, (entry[0], mail_id))
                    self._wake.set()

    # -- one attempt -----------------------------------------------------------------------

    async def _attempt(self, mail: OutboxMail) -> None:
        async with self._slots:
            if self._closed:
                return
            self._sending.add(mail.id)
            try:
                await self._deliver(mail)
            except Exception as error:  # a bug here must not kill the other attempts
                log.error("notification_attempt_error", mail_id=mail.id, error=repr(error))
            finally:
                self._sending.discard(mail.id)

    async def _deliver(self, mail: OutboxMail) -> None:
        now = self._clock()
        try:
            claimed = await self.outbox.begin_attempt(mail.id, now)
        except Exception as error:  # only the in-flight mark is lost: send anyway
            log.error("notification_outbox_update_failed", mail_id=mail.id, error=repr(error))
            claimed = True
        if not claimed:
            log.info("notification_already_finished", mail_id=mail.id)
            return
        attempts = mail.attempts + 1
        try:
            message = build_message(mail, self.settings.smtp_from)
            await self._sender.send(message, self._envelope_from, mail.recipient)
        except DeliveryError as error:
            await self._failed(mail, attempts, error)
            return
        except Exception as error:
            await self._failed(mail, attempts, DeliveryError(f"{type(error).__name__}: {error}"))
            return
        # Accepted. Record it before anything else: this is the at-least-once window.
        try:
            await self.outbox.mark_sent(mail.id, self._clock())
        except Exception as error:
            log.error(
                "notification_outbox_update_failed",
                mail_id=mail.id,
                error=repr(error),
                detail="the mail was delivered but is not marked sent: a restart may resend it",
            )
        log.info(
            "notification_sent",
            call_id=mail.call_id,
            agent=mail.agent_id,
            recipient=mail.recipient,
            message_id=mail.message_id,
            attempts=attempts,
            test=mail.test,
        )
        self._publish_mail("notification_sent", mail, message_id=mail.message_id, attempts=attempts)

    async def _failed(self, mail: OutboxMail, attempts: int, error: DeliveryError) -> None:
        now = self._clock()
        decision = after_failure(
            attempts=attempts,
            permanent=error.permanent,
            now=now,
            give_up_at=mail.give_up_at,
            rand=self._rand(),
            base=self.settings.notify_retry_base_s,
            cap=self.settings.notify_retry_max_s,
        )
        if not isinstance(decision, Retry):
            await self._give_up(
                mail, error.reason, attempts, code=error.code, permanent=decision.permanent
            )
            return
        log.warning(
            "notification_retry",
            call_id=mail.call_id,
            mail_id=mail.id,
            recipient=mail.recipient,
            attempts=attempts,
            error=error.reason,
            code=error.code,
            retry_in_s=round(decision.at - now, 3),
        )
        try:
            await self.outbox.retry_at(mail.id, decision.at, error.reason)
        except Exception as store_error:
            log.error("notification_outbox_update_failed", mail_id=mail.id, error=repr(store_error))
        self._publish_mail(
            "notification_retrying",
            mail,
            message_id=mail.message_id,
            reason=error.reason,
            code=error.code,
            attempts=attempts,
            next_try_at=rfc3339(datetime.fromtimestamp(decision.at, UTC)),
            will_retry=True,
        )
        if not self._closed:
            retried = replace(
                mail,
                attempts=attempts,
                next_attempt_at=decision.at,
                attempt_started_at=None,
                last_error=error.reason,
            )
            self._schedule(retried, decision.at)
            self._wake.set()

    async def _give_up(
        self,
        mail: OutboxMail,
        reason: str,
        attempts: int,
        *,
        code: int | None = None,
        permanent: bool = False,
    ) -> None:
        try:
            await self.outbox.mark_failed(mail.id, self._clock(), reason)
        except Exception as error:
            log.error("notification_outbox_update_failed", mail_id=mail.id, error=repr(error))
        log.error(
            "notification_failed",
            call_id=mail.call_id,
            agent=mail.agent_id,
            recipient=mail.recipient,
            message_id=mail.message_id,
            reason=reason,
            code=code,
            permanent=permanent,
            attempts=attempts,
        )
        self._publish_mail(
            "notification_failed",
            mail,
            reason=reason if permanent else f"gave up: {reason}",
            code=code,
            permanent=permanent,
            attempts=attempts,
            will_retry=False,
        )

    # -- events ----------------------------------------------------------------------------

    def _publish_mail(self, event: str, mail: OutboxMail, **extra: Any) -> None:
        """An event about one outbox mail (its call, agent, DID, route and recipient)."""
        self._publish(
            event,
            call_id=mail.call_id,
            agent=mail.agent_id,
            did=mail.did,
            route=mail.route,
            test=mail.test,
            recipient=mail.recipient,
            **extra,
        )

    def _publish_failed(self, notice: EmergencyNotice, **extra: Any) -> None:
        self._publish(
            "notification_failed",
            call_id=notice.call_id,
            agent=notice.agent_id,
            did=notice.callback_did,
            route=notice.route,
            test=notice.test,
            will_retry=False,
            **extra,
        )

    def _publish(
        self,
        event: str,
        *,
        call_id: str,
        agent: str,
        did: str | None,
        route: str | None,
        test: bool,
        **extra: Any,
    ) -> None:
        try:
            payload = emergency_payload(
                call=call_id,
                event=event,
                timestamp=datetime.fromtimestamp(self._clock(), UTC),
                agent=agent,
                did=did,
                route=route,
                test=test,
                extra={key: value for key, value in extra.items() if value is not None},
            )
            self.publisher.publish(self.topics.emergency_suffix(call_id), payload, retain=False)
        except Exception as error:
            log.error("notification_event_not_published", call_id=call_id, error=repr(error))
