"""E-mail notification of an agent's emergency contacts (SPEC E-6).

``service`` (:class:`Notifier`, the durable outbox worker, and :class:`EmergencyNotice`),
``template`` (Jinja2 rendering and ``gateway check`` of the templates), ``addresses``
(contact validation), ``retry`` (the pure backoff and give-up rules), ``smtp`` (the
aiosmtplib sender). ``docs/notifications.md`` is the operator's guide.
"""

from gateway.notify.addresses import check_contacts
from gateway.notify.service import EmergencyNotice, Notifier, notice_for
from gateway.notify.template import check_template, render

__all__ = [
    "EmergencyNotice",
    "Notifier",
    "check_contacts",
    "check_template",
    "notice_for",
    "render",
]
