"""Sending one notification e-mail over SMTP (aiosmtplib), and building it (SPEC E-6).

Theory of operation
-------------------
:class:`SmtpSender` opens one connection per mail (a notification is rare; one connection
per recipient keeps a refusal or a slow recipient from affecting the others): connect,
STARTTLS or implicit TLS as configured, AUTH when a username is set, ``MAIL FROM``,
``RCPT TO`` for the single recipient, ``DATA``. :meth:`SmtpSender.send` returns as soon as
the server has accepted the message (the ``250`` after the data), so the caller can mark
the mail sent before anything else happens; the polite ``QUIT`` runs afterwards in the
background and its outcome does not matter.

Every failure is raised as :class:`DeliveryError` with ``permanent`` set for a 5xx reply to
the sender, the recipient or the data (RFC 5321 section 4.2.1). A 5xx to the greeting,
EHLO, STARTTLS or AUTH is a server or configuration problem that an operator can fix, so
it stays transient and is retried until the give-up deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime, parseaddr
from typing import Protocol

import aiosmtplib

from gateway.config.settings import Settings
from gateway.stores.ports import OutboxMail

__all__ = ["DeliveryError", "MailSender", "SmtpSender", "build_message", "envelope_sender"]


class DeliveryError(Exception):
    """An attempt to hand a mail to the server failed.

    ``code`` is the SMTP reply code when the server gave one; ``permanent`` says the
    server refused this mail for good (a 5xx to MAIL FROM, RCPT TO or DATA).
    """

    def __init__(self, reason: str, *, code: int | None = None, permanent: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.permanent = permanent


class MailSender(Protocol):
    """Hands one message for one recipient to a mail server."""

    async def send(self, message: EmailMessage, sender: str, recipient: str) -> None:
        """Return once the server has accepted the message; raise :class:`DeliveryError`."""
        ...

    async def aclose(self) -> None:
        """Finish the background work (closing connections)."""
        ...


def envelope_sender(smtp_from: str) -> str:
    """The bare address of the From setting (``Name <addr>`` gives ``addr``)."""
    return parseaddr(smtp_from)[1] or smtp_from


def build_message(mail: OutboxMail, smtp_from: str) -> EmailMessage:
    """The MIME message of ``mail``: text and HTML alternatives, stable headers.

    Every header is derived from the stored row, so a mail sent again after a restart is
    byte-for-byte the same message with the same Message-ID.
    """
    message = EmailMessage(policy=SMTP_POLICY)
    message["From"] = smtp_from
    message["To"] = mail.recipient
    message["Subject"] = mail.subject
    message["Date"] = format_datetime(datetime.fromtimestamp(mail.created_at, UTC))
    message["Message-ID"] = mail.message_id
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies, please
    message["X-Gateway-Call-ID"] = mail.call_id
    if mail.test:
        message["X-Gateway-Test"] = "yes"
    else:
        message["Importance"] = "high"  # RFC 2156
        message["X-Priority"] = "1"
    message.set_content(mail.text_body)
    message.add_alternative(mail.html_body, subtype="html")
    # A boundary from the content instead of a random one: the same row, the same bytes.
    digest = hashlib.sha256(f"{mail.text_body}\0{mail.html_body}".encode()).hexdigest()
    message.set_boundary(f"=_notice_{digest[:32]}")
    return message


def _delivery_error(error: Exception) -> DeliveryError:
    """Classify an aiosmtplib (or socket) error: permanent only for a 5xx to the mail."""
    if isinstance(error, aiosmtplib.SMTPRecipientsRefused) and error.recipients:
        error = error.recipients[0]
    if isinstance(error, aiosmtplib.SMTPRecipientRefused):
        what = "recipient refused"
    elif isinstance(error, aiosmtplib.SMTPSenderRefused):
        what = "sender refused"
    elif isinstance(error, aiosmtplib.SMTPDataError):
        what = "message refused"
    elif isinstance(error, aiosmtplib.SMTPResponseException):
        return DeliveryError(f"server replied {error.code} {error.message}", code=error.code)
    elif isinstance(error, TimeoutError):
        return DeliveryError(f"timed out: {error}")
    else:
        return DeliveryError(f"{type(error).__name__}: {error}")
    return DeliveryError(
        f"{what}: {error.code} {error.message}",
        code=error.code,
        permanent=500 <= error.code < 600,
    )


class SmtpSender:
    """:class:`MailSender` on aiosmtplib, configured from :class:`Settings`."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._local_hostname: str | None = None
        self._closing: set[asyncio.Task[None]] = set()

    def _client(self, local_hostname: str) -> aiosmtplib.SMTP:
        settings = self._settings
        password = settings.smtp_password.get_secret_value()
        return aiosmtplib.SMTP(
            hostname=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username or None,
            password=password if settings.smtp_username else None,
            local_hostname=local_hostname,
            timeout=settings.smtp_timeout_s,
            use_tls=settings.smtp_security == "tls",
            # True: STARTTLS is required, a server that does not offer it is an error;
            # False: never upgrade (plain "none", or already TLS).
            start_tls=settings.smtp_security == "starttls",
        )

    async def send(self, message: EmailMessage, sender: str, recipient: str) -> None:
        """Connect, send ``message`` to ``recipient`` only, return once it is accepted."""
        if self._local_hostname is None:  # the EHLO name, looked up once, off the loop
            self._local_hostname = await asyncio.to_thread(socket.getfqdn) or "localhost"
        client = self._client(self._local_hostname)
        try:
            await client.connect()
            await client.send_message(message, sender=sender, recipients=[recipient])
        except Exception as error:
            client.close()
            raise _delivery_error(error) from error
        except BaseException:
            client.close()
            raise
        task = asyncio.create_task(self._quit(client), name="smtp-quit")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _quit(client: aiosmtplib.SMTP) -> None:
        try:
            await client.quit()
        except Exception:
            client.close()

    async def aclose(self) -> None:
        """Wait briefly for the background QUITs, then drop what is left."""
        tasks = list(self._closing)
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=self._settings.smtp_timeout_s)
        for task in pending:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*pending, return_exceptions=True)
