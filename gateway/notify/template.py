"""The notification e-mail, rendered from editable Jinja2 templates (SPEC E-6).

Theory of operation
-------------------
Two files in the templates directory (``dialplans/templates/`` in the example set-up) make
the mail:

* ``emergency_notification.txt.j2`` -- the plain-text part. Its first line is the mail's
  subject, written ``Subject: ...``; the body starts after it.
* ``emergency_notification.html.j2`` -- the HTML part, autoescaped (an agent's display
  name cannot inject markup).

Both render with :class:`jinja2.StrictUndefined` (a misspelt variable is an error, not an
empty string) in a sandboxed environment, and are re-read when the file changes, so an
edit takes effect on the next call without a restart. :func:`check_template` renders them
against sample calls for ``gateway check``; at run time a template that fails falls back to
:func:`render_fallback`, a fixed text, so a broken edit never loses a notification.

Variables (see ``docs/notifications.md``): ``test``, ``call_id``, ``agent_id``,
``agent_name``, ``dialled``, ``time_utc``, ``time_local``, ``site_timezone``, ``at_utc``,
``at_local`` (datetimes), ``callback_did``, ``did_expires_utc``, ``did_expires_local``,
``location`` (the dialplan's civic address, or ``None``), ``location_lines`` (that address
as display lines), ``route``. Optional values are ``None`` when unknown.
"""

from __future__ import annotations

import html
import traceback
from datetime import UTC, datetime, tzinfo
from functools import lru_cache
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from gateway.config.dialplan import Location
from gateway.notify.notice import EmergencyNotice

__all__ = [
    "HTML_TEMPLATE",
    "TEXT_TEMPLATE",
    "TemplateFormatError",
    "check_template",
    "location_lines",
    "render",
    "render_fallback",
    "template_context",
]

TEXT_TEMPLATE: Final = "emergency_notification.txt.j2"
HTML_TEMPLATE: Final = "emergency_notification.html.j2"
_SUBJECT_PREFIX: Final = "subject:"
_MAX_SUBJECT: Final = 200


class TemplateFormatError(ValueError):
    """A template rendered, but its output breaks a rule (no ``Subject:`` first line)."""


def _zone(name: str) -> tzinfo:
    return UTC if name == "UTC" else ZoneInfo(name)


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z")


def location_lines(location: Location | None) -> list[str]:
    """A civic address as display lines: building/floor/room, street, city, country."""
    if location is None:
        return []
    where = [
        f"{label} {value}"
        for label, value in (
            ("Building", location.building),
            ("Floor", location.floor),
            ("Room", location.room),
        )
        if value
    ]
    street = " ".join(part for part in (location.house_number, location.street) if part)
    region = " ".join(part for part in (location.state, location.postcode) if part)
    town = ", ".join(part for part in (location.city, region) if part)
    lines = [", ".join(where), street, town, location.country]
    return [line for line in lines if line]


def template_context(notice: EmergencyNotice, site_timezone: str) -> dict[str, Any]:
    """The variables the templates see (documented in the module docstring)."""
    zone = _zone(site_timezone)
    at_utc = datetime.fromtimestamp(notice.at, UTC)
    at_local = at_utc.astimezone(zone)
    expires_utc: str | None = None
    expires_local: str | None = None
    if notice.did_expires_at is not None:
        expires = datetime.fromtimestamp(notice.did_expires_at, UTC)
        expires_utc = _stamp(expires)
        expires_local = _stamp(expires.astimezone(zone))
    return {
        "test": notice.test,
        "call_id": notice.call_id,
        "agent_id": notice.agent_id,
        "agent_name": notice.agent_name,
        "dialled": notice.dialled,
        "time_utc": _stamp(at_utc),
        "time_local": _stamp(at_local),
        "site_timezone": site_timezone,
        "at_utc": at_utc,
        "at_local": at_local,
        "callback_did": notice.callback_did,
        "did_expires_utc": expires_utc,
        "did_expires_local": expires_local,
        "location": notice.location,
        "location_lines": location_lines(notice.location),
        "route": notice.route,
    }


@lru_cache(maxsize=8)
def _environment(templates_dir: str) -> SandboxedEnvironment:
    return SandboxedEnvironment(
        loader=jinja2.FileSystemLoader(templates_dir),
        undefined=jinja2.StrictUndefined,
        autoescape=jinja2.select_autoescape(
            enabled_extensions=("html", "html.j2"), default_for_string=False, default=False
        ),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        auto_reload=True,  # an edited template is used from the next call on
    )


def _split_subject(rendered: str) -> tuple[str, str]:
    first, _, body = rendered.lstrip("\n").partition("\n")
    if not first.lower().startswith(_SUBJECT_PREFIX):
        raise TemplateFormatError(
            f"{TEXT_TEMPLATE}: the first line must be the subject, written 'Subject: ...'"
        )
    # One line, whatever the template did: a header cannot carry CR/LF (RFC 5322 2.2).
    subject = " ".join(first[len(_SUBJECT_PREFIX) :].split())[:_MAX_SUBJECT]
    if not subject:
        raise TemplateFormatError(f"{TEXT_TEMPLATE}: the subject line renders empty")
    return subject, body.lstrip("\n")


def render(
    notice: EmergencyNotice, templates_dir: Path, site_timezone: str
) -> tuple[str, str, str]:
    """Render ``notice`` with the templates in ``templates_dir``: (subject, text, html).

    Raises :class:`jinja2.TemplateError` (missing file, syntax, undefined variable),
    :class:`TemplateFormatError`, or :class:`ValueError` / :class:`KeyError` for an
    unknown ``site_timezone``.
    """
    environment = _environment(str(templates_dir))
    context = template_context(notice, site_timezone)
    subject, text = _split_subject(environment.get_template(TEXT_TEMPLATE).render(context))
    html_part = environment.get_template(HTML_TEMPLATE).render(context)
    return subject, text, html_part


def render_fallback(notice: EmergencyNotice, site_timezone: str) -> tuple[str, str, str]:
    """A fixed rendering, used when the templates fail: the facts, plainly."""
    try:
        context = template_context(notice, site_timezone)
    except Exception:  # an unusable zone: UTC only
        context = template_context(notice, "UTC")
    marker = "[TEST] " if notice.test else ""
    subject = " ".join(
        f"{marker}Emergency call by {notice.agent_name} ({notice.agent_id}) to "
        f"{notice.dialled}".split()
    )[:_MAX_SUBJECT]
    lines = [
        "THIS WAS A TEST CALL. No emergency services were involved."
        if notice.test
        else "An agent has placed an EMERGENCY call.",
        "",
        f"Agent:        {notice.agent_name} ({notice.agent_id})",
        f"Dialled:      {notice.dialled}",
        f"Time:         {context['time_utc']} / {context['time_local']}",
        f"Callback DID: {notice.callback_did or 'none'}"
        + (f" (until {context['did_expires_utc']})" if context["did_expires_utc"] else ""),
        f"Route:        {notice.route or 'none'}",
        "Location:     " + ("; ".join(context["location_lines"]) or "unknown"),
        f"Call id:      {notice.call_id}",
        "",
        "(The notification template failed to render; this is the gateway's built-in text.)",
    ]
    text = "\n".join(lines) + "\n"
    return subject, text, f"<html><body><pre>{html.escape(text)}</pre></body></html>\n"


# --------------------------------------------------------------------------------------------
# gateway check


def _sample_notices() -> list[EmergencyNotice]:
    at = datetime(2025, 1, 31, 12, 0, tzinfo=UTC).timestamp()
    full = EmergencyNotice(
        call_id="check-1",
        agent_id="alice",
        agent_name="Alice Example",
        dialled="911",
        callback_did="+15555550190",
        did_expires_at=at + 3600,
        location=Location(
            street="Main Street",
            house_number="100",
            city="Springfield",
            state="IL",
            postcode="62701",
            country="US",
            building="A",
            floor="3",
            room="301",
        ),
        route="carrier-sbc",
        test=False,
        at=at,
        recipients=("supervisor@example.com",),
    )
    bare = EmergencyNotice(
        call_id="check-2",
        agent_id="bob",
        agent_name="bob",
        dialled="urn:service:sos",
        callback_did=None,
        did_expires_at=None,
        location=None,
        route=None,
        test=False,
        at=at,
        recipients=("supervisor@example.com",),
    )
    test = EmergencyNotice(
        call_id="check-3",
        agent_id="alice",
        agent_name="Alice Example",
        dialled="933",
        callback_did="+15555550190",
        did_expires_at=at + 3600,
        location=full.location,
        route="carrier-sbc",
        test=True,
        at=at,
        recipients=("supervisor@example.com",),
    )
    return [full, bare, test]


def _where(error: BaseException, templates_dir: Path, name: str) -> str:
    """``file:line`` of the template frame that raised ``error`` (Jinja maps them)."""
    if isinstance(error, jinja2.TemplateSyntaxError):
        return f"{error.filename or templates_dir / name}:{error.lineno}"
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        if frame.filename.endswith(".j2"):
            return f"{frame.filename}:{frame.lineno}"
    return str(templates_dir / name)


def check_template(templates_dir: Path, site_timezone: str) -> list[str]:
    """Render the templates against sample calls; return the errors (empty: all good).

    Each error names the file and, when Jinja gives it, the line. Also checked: the
    ``Subject:`` first line, and that a test call is marked ``TEST`` in the subject, the
    text and the HTML (SPEC E-12).
    """
    try:
        _zone(site_timezone)
    except Exception:
        return [f"site time zone {site_timezone!r} is not an IANA time zone"]
    environment = _environment(str(templates_dir))
    errors: list[str] = []
    reported: set[str] = set()
    for notice in _sample_notices():
        context = template_context(notice, site_timezone)
        rendered: dict[str, str] = {}
        for name in (TEXT_TEMPLATE, HTML_TEMPLATE):
            try:
                rendered[name] = environment.get_template(name).render(context)
            except jinja2.TemplateNotFound:
                errors.append(f"{templates_dir / name}: template not found")
            except jinja2.TemplateSyntaxError as error:
                errors.append(f"{_where(error, templates_dir, name)}: {error.message}")
            except Exception as error:
                problem = f"{_where(error, templates_dir, name)}: {type(error).__name__}: {error}"
                if problem not in reported:  # the same fault shows with every sample
                    reported.add(problem)
                    errors.append(
                        f"{problem} (with the sample call {notice.call_id}: dialled "
                        f"{notice.dialled}{'' if notice.location else ', no location'})"
                    )
        subject: str | None = None
        if TEXT_TEMPLATE in rendered:
            try:
                subject, rendered[TEXT_TEMPLATE] = _split_subject(rendered[TEXT_TEMPLATE])
            except TemplateFormatError as error:
                errors.append(f"{templates_dir / TEXT_TEMPLATE}: {str(error).split(': ', 1)[1]}")
                del rendered[TEXT_TEMPLATE]
        if notice.test:
            parts = (
                ("subject", TEXT_TEMPLATE, subject),
                ("text", TEXT_TEMPLATE, rendered.get(TEXT_TEMPLATE)),
                ("HTML", HTML_TEMPLATE, rendered.get(HTML_TEMPLATE)),
            )
            for part, name, content in parts:
                if content is not None and "TEST" not in content:
                    errors.append(
                        f"{templates_dir / name}: the {part} of a test call (933) must say "
                        "TEST (SPEC E-12)"
                    )
    return list(dict.fromkeys(errors))
