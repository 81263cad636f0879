"""Unit tests of gateway.notify (SPEC E-6): templates, addresses, backoff, message building,
error classification, settings, and the Notifier against a fake mail sender.

The Notifier tests use an in-memory SQLite outbox and a fake sender, with real time but
millisecond retry delays; the real SMTP server is in tests/loopback/test_notify_smtp.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import jsonschema
import pydantic
import pytest
from structlog.testing import capture_logs

from gateway.config.dialplan import Agent, Location
from gateway.config.settings import Settings
from gateway.events.ports import Topics
from gateway.notify import (
    EmergencyNotice,
    Notifier,
    check_contacts,
    check_template,
    notice_for,
    render,
)
from gateway.notify.addresses import address_problem, split_recipients
from gateway.notify.retry import GiveUp, Retry, after_failure, retry_delay
from gateway.notify.service import NO_MAIL_SERVER
from gateway.notify.smtp import DeliveryError, _delivery_error, build_message, envelope_sender
from gateway.notify.template import HTML_TEMPLATE, TEXT_TEMPLATE, location_lines
from gateway.stores import MailDraft, OutboxMail, Stores, open_stores

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "dialplans" / "templates"
SCHEMA = json.loads((ROOT / "docs" / "schemas" / "emergency-event.v1.json").read_text("utf-8"))
AT = datetime(2025, 1, 31, 12, 0, 0, tzinfo=UTC).timestamp()
LOCATION = Location(
    street="Main Street",
    house_number="100",
    city="Springfield",
    state="IL",
    postcode="62701",
    country="US",
    building="A",
    floor="3",
    room="301",
)


def _notice(**changes: Any) -> EmergencyNotice:
    fields: dict[str, Any] = {
        "call_id": "call-1",
        "agent_id": "alice",
        "agent_name": "Alice Example",
        "dialled": "911",
        "callback_did": "+15555550190",
        "did_expires_at": AT + 3600,
        "location": LOCATION,
        "route": "carrier-sbc",
        "test": False,
        "at": AT,
        "recipients": ("supervisor@example.com",),
    }
    fields.update(changes)
    return EmergencyNotice(**fields)


# -- templates ---------------------------------------------------------------------------------


def test_the_mail_carries_every_fact_of_the_call() -> None:
    subject, text, html = render(_notice(), TEMPLATES, "America/Chicago")
    assert subject == "EMERGENCY: call by Alice Example (alice) to 911"
    for part in (text, html):
        assert "Alice Example" in part and "alice" in part
        assert "911" in part
        assert "2025-01-31 12:00:00 UTC" in part  # the time in UTC ...
        assert "2025-01-31 06:00:00 CST" in part  # ... and in the site's zone
        assert "America/Chicago" in part
        assert "+15555550190" in part  # callback DID and its expiry
        assert "2025-01-31 13:00:00 UTC" in part and "2025-01-31 07:00:00 CST" in part
        assert "carrier-sbc" in part  # the route taken
        for line in ("Building A, Floor 3, Room 301", "100 Main Street", "Springfield, IL 62701"):
            assert line in part
        assert "TEST" not in part
    assert "TEST" not in subject


def test_unknown_facts_are_said_plainly() -> None:
    notice = _notice(callback_did=None, did_expires_at=None, location=None, route=None)
    _subject, text, html = render(notice, TEMPLATES, "UTC")
    for part in (text, html):
        assert "none assigned" in part
        assert "no route available" in part
        assert "no dispatchable location configured" in part
        assert "None" not in part


def test_a_test_call_is_marked_test_everywhere() -> None:
    subject, text, html = render(_notice(dialled="933", test=True), TEMPLATES, "UTC")
    assert subject.startswith("[TEST]")
    assert "TEST CALL - NOT AN EMERGENCY" in text
    assert "TEST CALL" in html
    assert "EMERGENCY CALL." not in html


def test_html_escapes_a_hostile_agent_name_and_the_subject_stays_one_line() -> None:
    hostile = '<script>alert("x")</script> & <b>Co</b>\r\nBcc: victim@example.com'
    subject, text, html = render(_notice(agent_name=hostile), TEMPLATES, "UTC")
    assert "<script>" not in html and "<b>Co</b>" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &lt;b&gt;Co&lt;/b&gt;" in html
    assert "\r" not in subject and "\n" not in subject
    assert '<script>alert("x")</script>' in text  # plain text is not HTML: shown as typed
    message = build_message(_row(subject=subject, text_body=text, html_body=html), "gw@x.example")
    assert "victim@example.com" not in (message.get_all("Bcc") or [])


def test_location_lines() -> None:
    assert location_lines(None) == []
    assert location_lines(Location(country="GB", city="London")) == ["London", "GB"]
    assert location_lines(LOCATION) == [
        "Building A, Floor 3, Room 301",
        "100 Main Street",
        "Springfield, IL 62701",
        "US",
    ]


def test_the_shipped_templates_pass_the_check() -> None:
    assert check_template(TEMPLATES, "UTC") == []
    assert check_template(TEMPLATES, "Europe/Copenhagen") == []


def _copy_templates(tmp_path: Path) -> Path:
    target = tmp_path / "templates"
    shutil.copytree(TEMPLATES, target)
    return target


def _edit(path: Path, old: str, new: str) -> None:
    content = path.read_text("utf-8")
    assert old in content
    path.write_text(content.replace(old, new, 1), "utf-8")


def test_check_names_file_and_line_of_an_undefined_variable(tmp_path: Path) -> None:
    templates = _copy_templates(tmp_path)
    text = templates / TEXT_TEMPLATE
    line = next(
        number
        for number, content in enumerate(text.read_text("utf-8").splitlines(), 1)
        if content.startswith("Route taken:")
    )
    _edit(text, "{{ route or", "{{ rout or")
    errors = check_template(templates, "UTC")
    assert len(errors) == 1
    assert errors[0].startswith(f"{text}:{line}: UndefinedError: 'rout' is undefined")


def test_check_names_file_and_line_of_a_syntax_error(tmp_path: Path) -> None:
    templates = _copy_templates(tmp_path)
    html = templates / HTML_TEMPLATE
    _edit(html, "{% endif %}</td></tr>", "{% endfi %}</td></tr>")
    errors = check_template(templates, "UTC")
    assert errors and all(error.startswith(f"{html}:") for error in errors)
    assert any("endfi" in error for error in errors)


def test_check_finds_a_missing_subject_and_a_missing_test_marker(tmp_path: Path) -> None:
    templates = _copy_templates(tmp_path)
    _edit(templates / TEXT_TEMPLATE, "\nSubject: ", "\nTopic: ")
    html = templates / HTML_TEMPLATE
    html.write_text(html.read_text("utf-8").replace("TEST", "trial"), "utf-8")
    errors = check_template(templates, "UTC")
    assert any("first line must be the subject" in error for error in errors)
    assert any(str(templates / HTML_TEMPLATE) in e and "must say TEST" in e for e in errors)


def test_check_reports_missing_templates_and_a_bad_zone(tmp_path: Path) -> None:
    errors = check_template(tmp_path, "UTC")
    assert errors == [
        f"{tmp_path / TEXT_TEMPLATE}: template not found",
        f"{tmp_path / HTML_TEMPLATE}: template not found",
    ]
    assert check_template(TEMPLATES, "Mars/Olympus") == [
        "site time zone 'Mars/Olympus' is not an IANA time zone"
    ]


def test_an_edited_template_is_used_without_a_restart(tmp_path: Path) -> None:
    templates = _copy_templates(tmp_path)
    assert render(_notice(), templates, "UTC")[0].startswith("EMERGENCY:")
    text = templates / TEXT_TEMPLATE
    _edit(text, "\nSubject: ", "\nSubject: [Site 7] ")
    later = time.time() + 5
    os.utime(text, (later, later))
    assert render(_notice(), templates, "UTC")[0].startswith("[Site 7] EMERGENCY:")


# -- addresses ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "supervisor@example.com",
        "first.last+e911@sub.example.co.uk",
        "o'brien@example.com",
        "root@localhost",
        "ops@[192.0.2.1]",
        "ops@[IPv6:2001:db8::1]",
    ],
)
def test_usable_addresses(address: str) -> None:
    assert address_problem(address) is None


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("supervisor", "local-part@domain"),
        ("@example.com", "local-part@domain"),
        ("someone@", "no domain"),
        ("two words@example.com", "white space"),
        ("a@b.com,c@d.com", "separate addresses with ';'"),
        ("Boss <boss@example.com>", "white space"),
        ("<boss@example.com>", "bare address"),
        ("dot..dot@example.com", "local part"),
        (".lead@example.com", "local part"),
        ("a@-bad-.example.com", "not a valid hostname"),
        ("a@192.0.2.1", "write it as [192.0.2.1]"),
        ("a@[300.1.1.1]", "not an IP address"),
        ("jürgen@example.de", "non-ASCII"),
        ("x" * 65 + "@example.com", "local part is longer"),
        ("a@" + "b" * 260 + ".com", "longer than 254"),
    ],
)
def test_unusable_addresses_say_why(address: str, problem: str) -> None:
    reason = address_problem(address)
    assert reason is not None and problem in reason


def test_split_recipients_skips_bad_ones_and_duplicates() -> None:
    valid, invalid = split_recipients(
        [" a@example.com", "", "not an address", "A@Example.com", "b@example.com"]
    )
    assert valid == ["a@example.com", "b@example.com"]
    assert [address for address, _ in invalid] == ["not an address"]


def _agent(contacts: str) -> Agent:
    return Agent(password="secret", display_name="Alice", emergency_contacts=contacts)


def test_check_contacts_reports_each_bad_address_for_gateway_check() -> None:
    assert check_contacts("alice", _agent("")) == []
    assert check_contacts("alice", _agent("a@example.com; b@example.com")) == []
    problems = check_contacts("alice", _agent("a@example.com; oops; b@ex ample.com; A@example.com"))
    assert len(problems) == 3
    assert problems[0].startswith("agent 'alice': emergency contact 'oops' is not a usable")
    assert "'b@ex ample.com'" in problems[1] and "white space" in problems[1]
    assert "listed more than once" in problems[2]


def test_notice_for_takes_name_location_and_contacts_from_the_dialplan() -> None:
    agent = Agent(
        password="x",
        display_name="Alice Example",
        location=LOCATION,
        emergency_contacts="a@example.com; b@example.com",
    )
    notice = notice_for(
        "c1",
        "alice",
        agent,
        dialled="911",
        callback_did=None,
        did_expires_at=None,
        route=None,
        test=False,
        at=AT,
    )
    assert notice.agent_name == "Alice Example"
    assert notice.location == LOCATION
    assert notice.recipients == ("a@example.com", "b@example.com")
    nameless = notice_for(
        "c2",
        "bob",
        Agent(password="x"),
        dialled="911",
        callback_did=None,
        did_expires_at=None,
        route=None,
        test=False,
        at=AT,
    )
    assert nameless.agent_name == "bob" and nameless.recipients == ()


# -- retry policy ------------------------------------------------------------------------------


def test_retry_delays_grow_jittered_between_base_and_cap() -> None:
    lows = [retry_delay(n, 0.0, base=5, cap=300) for n in range(10)]
    highs = [retry_delay(n, 0.999999, base=5, cap=300) for n in range(10)]
    assert lows[:4] == [5, 10, 20, 40]
    assert [round(h) for h in highs[:4]] == [10, 20, 40, 80]
    assert lows[-1] == 150 and round(highs[-1]) == 300  # capped: in [cap/2, cap]
    assert all(5 <= low <= high <= 300 for low, high in zip(lows, highs, strict=True))
    assert retry_delay(3, 0.5, base=2, cap=2) == 2  # base == cap: no growth
    with pytest.raises(ValueError):
        retry_delay(0, 0.5, base=10, cap=5)


def test_after_failure() -> None:
    common: dict[str, Any] = {"rand": 0.0, "base": 5.0, "cap": 300.0}
    assert after_failure(
        attempts=1, permanent=False, now=100.0, give_up_at=1000.0, **common
    ) == Retry(105.0)
    assert after_failure(
        attempts=3, permanent=False, now=100.0, give_up_at=1000.0, **common
    ) == Retry(120.0)
    # 5xx: failed at once, whatever the deadline
    assert after_failure(
        attempts=1, permanent=True, now=100.0, give_up_at=1000.0, **common
    ) == GiveUp(permanent=True)
    # a retry past the deadline moves onto it; at the deadline: give up
    assert after_failure(
        attempts=9, permanent=False, now=990.0, give_up_at=1000.0, **common
    ) == Retry(1000.0)
    assert after_failure(
        attempts=10, permanent=False, now=1000.0, give_up_at=1000.0, **common
    ) == GiveUp(permanent=False)


# -- the message and the SMTP errors -----------------------------------------------------------


def _row(**changes: Any) -> OutboxMail:
    fields: dict[str, Any] = {
        "id": 42,
        "call_id": "call-1",
        "agent_id": "alice",
        "recipient": "supervisor@example.com",
        "subject": "EMERGENCY: call by Alice",
        "text_body": "text part\n",
        "html_body": "<p>html part</p>\n",
        "test": False,
        "did": "+15555550190",
        "route": "carrier-sbc",
        "message_id_domain": "gw.example",
        "created_at": AT,
        "give_up_at": AT + 3600,
        "next_attempt_at": AT,
        "attempts": 0,
        "attempt_started_at": None,
        "state": "pending",
        "last_error": None,
        "finished_at": None,
    }
    fields.update(changes)
    return OutboxMail(**fields)


def test_the_message_is_derived_from_the_row_alone() -> None:
    first = build_message(_row(), "Gateway <gw@gw.example>")
    again = build_message(_row(attempts=3, last_error="451"), "Gateway <gw@gw.example>")
    assert first.as_bytes().split(b"\r\n\r\n")[0] == again.as_bytes().split(b"\r\n\r\n")[0]
    assert first["Message-ID"] == f"<emergency-notice.42.{int(AT * 1000)}@gw.example>"
    assert first["Date"] == "Fri, 31 Jan 2025 12:00:00 +0000"
    assert first["To"] == "supervisor@example.com"
    assert first["Auto-Submitted"] == "auto-generated"
    assert first["Importance"] == "high" and first["X-Gateway-Test"] is None
    assert first.get_content_type() == "multipart/alternative"
    parts = [part.get_content_type() for part in first.iter_parts()]
    assert parts == ["text/plain", "text/html"]
    test = build_message(_row(test=True), "gw@gw.example")
    assert test["X-Gateway-Test"] == "yes" and test["Importance"] is None
    assert envelope_sender("Gateway <gw@gw.example>") == "gw@gw.example"


@pytest.mark.parametrize(
    ("error", "permanent", "code"),
    [
        (
            aiosmtplib.SMTPRecipientsRefused(
                [aiosmtplib.SMTPRecipientRefused(550, "no such user", "x@example.com")]
            ),
            True,
            550,
        ),
        (aiosmtplib.SMTPRecipientRefused(450, "mailbox busy", "x@example.com"), False, 450),
        (aiosmtplib.SMTPDataError(554, "rejected as spam"), True, 554),
        (aiosmtplib.SMTPDataError(451, "try again later"), False, 451),
        (aiosmtplib.SMTPSenderRefused(553, "not allowed", "gw@x"), True, 553),
        (aiosmtplib.SMTPAuthenticationError(535, "bad credentials"), False, 535),
        (aiosmtplib.SMTPConnectError("connection refused"), False, None),
        (aiosmtplib.SMTPReadTimeoutError("timed out"), False, None),
        (ConnectionRefusedError(111, "refused"), False, None),
    ],
)
def test_only_a_5xx_to_the_mail_is_permanent(
    error: Exception, permanent: bool, code: int | None
) -> None:
    delivery = _delivery_error(error)
    assert (delivery.permanent, delivery.code) == (permanent, code)
    assert delivery.reason


# -- settings ----------------------------------------------------------------------------------


def test_mail_settings_defaults_and_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith(("GATEWAY_SMTP", "GATEWAY_NOTIFY", "GATEWAY_SITE")):
            monkeypatch.delenv(name)
    settings = Settings()
    assert (settings.smtp_host, settings.smtp_port, settings.smtp_security) == ("", 587, "starttls")
    assert settings.smtp_from == "gateway@localhost" and settings.site_timezone == "UTC"
    assert (settings.notify_give_up_s, settings.notify_retry_base_s) == (3600, 5)
    assert settings.notify_retry_max_s == 300 and settings.smtp_timeout_s == 10
    monkeypatch.setenv("GATEWAY_SMTP_PASSWORD", "hunter2")
    monkeypatch.setenv("GATEWAY_SMTP_SECURITY", "TLS")
    settings = Settings()
    assert settings.smtp_security == "tls"
    assert "hunter2" not in repr(settings)
    assert settings.smtp_password.get_secret_value() == "hunter2"
    for bad in (
        {"smtp_security": "ssl"},
        {"site_timezone": "Mars/Olympus"},
        {"smtp_from": "not-an-address"},
        {"notify_retry_base_s": 10, "notify_retry_max_s": 5},
        {"smtp_port": 0},
        {"notify_give_up_s": 0},
    ):
        with pytest.raises(pydantic.ValidationError):
            Settings(**bad)


# -- the Notifier, with a fake sender -----------------------------------------------------------


class FakeSender:
    """A :class:`MailSender` that records, or fails recipients with queued errors."""

    def __init__(self, settings: Settings) -> None:
        self.sent: list[tuple[str, EmailMessage]] = []
        self.failures: dict[str, list[DeliveryError]] = {}
        self.closed = False

    async def send(self, message: EmailMessage, sender: str, recipient: str) -> None:
        queued = self.failures.get(recipient)
        if queued:
            raise queued.pop(0)
        self.sent.append((recipient, message))

    async def aclose(self) -> None:
        self.closed = True


class FakePublisher:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def publish(self, topic_suffix: str, payload: dict[str, Any], *, retain: bool) -> None:
        jsonschema.validate(payload, SCHEMA)
        assert not retain
        self.events.append((topic_suffix, payload))

    def named(self, event: str) -> list[dict[str, Any]]:
        return [payload for _, payload in self.events if payload["event"] == event]


FAST = {
    "smtp_host": "mail.invalid",
    "notify_retry_base_s": 0.01,
    "notify_retry_max_s": 0.02,
    "notify_give_up_s": 30.0,
}


@pytest.fixture
async def stores() -> AsyncIterator[Stores]:
    async with await open_stores("sqlite://:memory:", Path(".")) as opened:
        yield opened


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


def _notifier(
    stores: Stores, publisher: FakePublisher, templates: Path = TEMPLATES, **settings: Any
) -> tuple[Notifier, FakeSender]:
    senders: list[FakeSender] = []

    def factory(config: Settings) -> FakeSender:
        senders.append(FakeSender(config))
        return senders[-1]

    notifier = Notifier(
        Settings(**{**FAST, **settings}),
        stores.outbox,
        publisher,
        Topics("gw", "node1"),
        templates,
        smtp_factory=factory,
    )
    return notifier, senders[0]


def _now_notice(**changes: Any) -> EmergencyNotice:
    return _notice(at=time.time(), did_expires_at=time.time() + 3600, **changes)


async def test_without_a_mail_server_each_call_reports_once(stores: Stores) -> None:
    publisher = FakePublisher()
    notifier, sender = _notifier(stores, publisher, smtp_host="")
    await notifier.start()
    with capture_logs() as logs:
        notifier.notify(_now_notice(recipients=("a@example.com", "b@example.com")))
        notifier.notify(_now_notice(recipients=("a@example.com", "b@example.com")))
        notifier.notify(_now_notice(call_id="call-2", recipients=()))  # no contacts: nothing to do
    await asyncio.sleep(0.05)
    await notifier.close()
    [failed] = publisher.named("notification_failed")
    assert failed["reason"] == NO_MAIL_SERVER and failed["recipients"] == 2
    assert failed["call"] == "call-1" and failed["agent"] == "alice"
    assert any(
        entry["log_level"] == "error" and entry.get("reason") == NO_MAIL_SERVER for entry in logs
    )
    assert await stores.outbox.pending() == [] and sender.sent == []


async def test_one_mail_per_valid_contact_and_events(stores: Stores) -> None:
    publisher = FakePublisher()
    notifier, sender = _notifier(stores, publisher)
    async with notifier:
        notifier.notify(_now_notice(recipients=("a@example.com", "no good", "b@example.com")))
        await _until(lambda: len(sender.sent) == 2)
        await _until(lambda: len(publisher.named("notification_sent")) == 2)
    assert [recipient for recipient, _ in sender.sent] == ["a@example.com", "b@example.com"]
    sent = publisher.named("notification_sent")
    assert [event["recipient"] for event in sent] == ["a@example.com", "b@example.com"]
    assert all(event["did"] == "+15555550190" and event["route"] == "carrier-sbc" for event in sent)
    [invalid] = publisher.named("notification_failed")
    assert invalid["recipient"] == "no good" and invalid["permanent"] is True
    assert await stores.outbox.pending() == []
    row = await stores.outbox.get(1)
    assert row is not None and row.state == "sent" and row.attempts == 1
    assert sender.closed


async def test_a_broken_template_falls_back_to_the_built_in_text(
    stores: Stores, tmp_path: Path
) -> None:
    publisher = FakePublisher()
    notifier, sender = _notifier(stores, publisher, templates=tmp_path / "missing")
    async with notifier:
        with capture_logs() as logs:
            notifier.notify(_now_notice(test=True, dialled="933"))
            await _until(lambda: len(sender.sent) == 1)
    message = sender.sent[0][1]
    assert message["Subject"] == "[TEST] Emergency call by Alice Example (alice) to 933"
    body = message.get_body(("plain",))
    assert body is not None and "THIS WAS A TEST CALL" in body.get_content()
    assert any(entry["event"] == "notification_template_failed" for entry in logs)


async def test_4xx_is_retried_and_5xx_fails_that_recipient_only(stores: Stores) -> None:
    publisher = FakePublisher()
    notifier, sender = _notifier(stores, publisher)
    sender.failures["busy@example.com"] = [
        DeliveryError("451 later", code=451),
        DeliveryError("connection refused"),
    ]
    sender.failures["gone@example.com"] = [DeliveryError("550 no", code=550, permanent=True)]
    async with notifier:
        notifier.notify(_now_notice(recipients=("busy@example.com", "gone@example.com")))
        await _until(lambda: len(publisher.events) == 4)
    [sent] = publisher.named("notification_sent")
    assert sent["recipient"] == "busy@example.com" and sent["attempts"] == 3
    [failed] = publisher.named("notification_failed")
    assert failed["recipient"] == "gone@example.com"
    assert (failed["code"], failed["permanent"], failed["attempts"]) == (550, True, 1)
    assert failed["will_retry"] is False
    # each failed attempt of the busy one said so, with the retry schedule, before the send
    busy = [e for e in publisher.events if e[1].get("recipient") == "busy@example.com"]
    assert [e[1]["event"] for e in busy] == ["notification_retrying"] * 2 + ["notification_sent"]
    retries = publisher.named("notification_retrying")
    assert [(e["attempts"], e["reason"], e.get("code")) for e in retries] == [
        (1, "451 later", 451),
        (2, "connection refused", None),
    ]
    for retry in retries:
        assert retry["will_retry"] is True and retry["message_id"] == sent["message_id"]
        # a retry time (the event's own timestamp is read later, after the outbox write,
        # and may pass a short test back-off on a loaded machine: no order asserted)
        datetime.fromisoformat(str(retry["next_try_at"]).replace("Z", "+00:00"))
    rows = {row.recipient: row for row in [await stores.outbox.get(i) for i in (1, 2)] if row}
    assert rows["gone@example.com"].state == "failed"
    assert rows["gone@example.com"].last_error == "550 no"


def _draft(recipient: str, give_up_at: float) -> MailDraft:
    return MailDraft(
        call_id="old",
        agent_id="alice",
        recipient=recipient,
        subject="s",
        text_body="t",
        html_body="h",
        test=False,
        did=None,
        route=None,
        message_id_domain="localhost",
        give_up_at=give_up_at,
    )


async def test_a_row_past_its_deadline_at_start_gets_one_last_attempt(stores: Stores) -> None:
    # The gateway was down past the give-up time: one attempt still, then no retry.
    past = time.time() - 1
    rows = await stores.outbox.add(
        [_draft("ok@example.com", past), _draft("down@example.com", past)], past - 10
    )
    for row in rows:
        await stores.outbox.retry_at(row.id, past - 5, "connection refused")
    publisher = FakePublisher()
    notifier, sender = _notifier(stores, publisher)
    sender.failures["down@example.com"] = [DeliveryError("connection refused")] * 5
    async with notifier:
        await _until(lambda: len(publisher.events) == 2)
    [sent] = publisher.named("notification_sent")
    assert sent["recipient"] == "ok@example.com"
    [failed] = publisher.named("notification_failed")
    assert failed["recipient"] == "down@example.com"
    assert failed["reason"] == "gave up: connection refused" and failed["permanent"] is False
    assert failed["will_retry"] is False and publisher.named("notification_retrying") == []
    assert len(sender.failures["down@example.com"]) == 4  # exactly one attempt


async def test_notify_never_raises(stores: Stores) -> None:
    publisher = FakePublisher()
    notifier, sender = _notifier(stores, publisher)
    async with notifier:
        # a call id that cannot be an MQTT topic level: the mail still goes, the event is
        # logged as unpublishable
        with capture_logs() as logs:
            notifier.notify(_now_notice(call_id="a/b"))
            notifier.notify(None)  # type: ignore[arg-type]
            await _until(lambda: len(sender.sent) == 1)
            await asyncio.sleep(0.02)
    events = {entry["event"] for entry in logs}
    assert "notification_event_not_published" in events
    assert "notification_not_queued" in events
    await notifier.close()  # closing twice is harmless
    notifier.notify(_now_notice(call_id="late"))  # after close: reported, not raised
    [failed] = publisher.named("notification_failed")
    assert failed["call"] == "late"


async def test_close_right_after_a_notice_does_not_wait_for_the_idle_timer(
    stores: Stores,
) -> None:
    # A notice sets the worker's wake-up event; a close in the same loop turn cancels the
    # worker. On Python 3.11, asyncio.wait_for returned the event's result and dropped that
    # cancel, so close() waited for the worker's one-minute idle timer (a CI run timed out
    # on it). The notice is still stored: close() writes what the worker did not.
    publisher = FakePublisher()
    notifier, _sender = _notifier(stores, publisher)
    await notifier.start()
    await asyncio.sleep(0.05)  # the worker is idle, waiting on its wake-up event
    notifier.notify(_now_notice(call_id="closing"))
    closing = asyncio.create_task(notifier.close())
    done, _ = await asyncio.wait({closing}, timeout=3.0)  # not the 60-second idle timer
    assert done, "close() is stuck behind the worker's idle wait"
    assert {mail.call_id for mail in await stores.outbox.pending()} <= {"closing"}
