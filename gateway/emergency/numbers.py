"""Emergency call detection: dial strings per country and service URNs (SPEC E-1, E-12).

Theory of operation
-------------------
An INVITE is an emergency call when its *original* Request-URI (before any dialplan rule
has looked at it) is either

* a ``sip:``, ``sips:`` or ``tel:`` URI whose user part, reduced to its digits, is an
  emergency dial string of the agent's country (:data:`DIAL_STRINGS`), or
* a service URN ``urn:service:sos`` / ``urn:service:sos.<sub-service>`` (RFC 5031
  section 4.2), or the test service ``urn:service:test.sos[.<sub-service>]`` (RFC 6881
  section 15, SPEC E-12).

"Reduced to its digits" follows RFC 3966 and RFC 3261 section 19.1.6: the user part is
%-decoded, everything from the first ``;`` on is dropped (``phone-context``, ``isub``,
``ext``: parameters of a telephone-subscriber never change the dialled digits), visual
separators (``-`` ``.`` ``(`` ``)``, RFC 3966 section 5.1.1) are removed, and one leading
``+`` is ignored (``+911`` is 911). What is left must be exactly the dial string: ``9911``,
``1911`` and ``9111`` are not 911. The ``user=phone`` / ``user=dialstring`` URI parameters
are accepted but not required (softphones omit them).

:func:`detect` is meant to run first on every INVITE from an agent, on the Request-URI as
received, so that no outbound prefix or rewrite rule (an outside-line rule ``9*``) can ever
turn 911 into 11 (SPEC E-1, Kari's Law direct dial).

The country rule
----------------
SPEC E-1 says a dial string counts when it is "an emergency dial string of the agent's
country", and that a dial string outside that country's set is not emergency: a GB agent
dialling 911, or a US agent dialling 112, gets ``None`` and is routed as an ordinary call.

When the agent's country is *unknown* (no location) or *not one we have data for*, there is
no country set to be outside of. Two readings were possible: detect only URNs, or treat
every dial string of every supported country as emergency. :func:`detect` does the
latter, and marks the detection ``any_country=True``:

* life safety is asymmetric: a false positive costs one misrouted call to an emergency
  service, which answers and hangs up; a false negative sends a real 911/999/112 call down
  the ordinary rules, where it may be rewritten, barred or answered 404 -- the outcome
  E-1 and E-3 exist to prevent;
* SPEC E-11 says an agent that lacks a location "still goes out on the best available
  path" and that the shortfall is logged and published -- which requires the call to be
  recognised as an emergency call in the first place. ``any_country`` is what the caller
  logs and publishes;
* the supported dial strings are short codes that no numbering plan we serve uses for
  anything else, so the false-positive risk is small.

Where two countries disagree on whether a string is a test number, the real emergency
reading wins (no such clash exists in today's table).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal
from urllib.parse import unquote

from gateway.config.dialstrings import DIAL_STRINGS, DialString, countries_supported
from gateway.sip.uri import AbsoluteUri, SipUri, TelUri, Uri

__all__ = [
    "DIAL_STRINGS",
    "Detection",
    "DialString",
    "countries_supported",
    "detect",
    "detect_rewritten",
    "dial_strings",
    "normalise_country",
]


#: Every dial string of every country, for agents whose country is unknown (see the
#: module docstring). A string that is real anywhere is real here.
_ANY_COUNTRY: Mapping[str, bool] = MappingProxyType(
    {
        digits: all(d.test for c in DIAL_STRINGS.values() for d in c if d.digits == digits)
        for digits in {d.digits for c in DIAL_STRINGS.values() for d in c}
    }
)

#: RFC 3966 section 5.1.1 visual-separator
_VISUAL_SEPARATORS = str.maketrans("", "", "-.()")
_DIGITS = re.compile(r"[0-9]+\Z")

#: RFC 5031 section 3: top-level "sos", sub-services after dots; RFC 6881 section 15:
#: test calls use the "test" service with "sos" below it. Compared lower-case (RFC 5031
#: section 3: service URNs are case-insensitive). Deliberately lenient after "sos.": a
#: malformed sub-service ("sos.", "sos..fire") is still an emergency call, reduced to its
#: well-formed prefix ("sos"), rather than an ordinary call that no rule will route.
_SOS_URN = re.compile(r"(test\.)?sos(?:\..*)?\Z", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Detection:
    """The fact that an INVITE is an emergency call (SPEC E-1).

    ``kind`` says how it was recognised. ``dialled`` is what routing matches and sends on:
    the dial string as digits (``"911"``, never ``"+911"`` or ``"9-1-1"``) or the service
    URN in lower case (``"urn:service:sos.fire"``). ``service`` is the RFC 5031 service
    (``"sos"``, ``"sos.fire"``, ``"test.sos"``; a dial string maps to ``"sos"``, a test dial
    string to ``"test.sos"``). ``country`` is the agent's country as given (upper case),
    or ``None``. ``test`` marks test calls (SPEC E-12). ``any_country`` is ``True`` when the
    agent's country was unknown or unsupported and the dial string was matched against
    every supported country: an E-11 shortfall the caller must log and publish.
    """

    kind: Literal["dialstring", "urn"]
    dialled: str
    service: str
    country: str | None
    test: bool
    any_country: bool = False
    #: the string the agent dialled when the dialplan's rewriting produced ``dialled``
    #: (``"9911"`` behind an outside-line rule ``^9(\d+)$ -> \1``), else ``None``
    rewritten_from: str | None = None


def normalise_country(country: str | None) -> str | None:
    """``" us "`` -> ``"US"``; empty or ``None`` -> ``None``."""
    if country is None:
        return None
    country = country.strip().upper()
    return country or None


def dial_strings(country: str | None) -> tuple[DialString, ...]:
    """The emergency dial strings of ``country`` (empty for an unsupported country)."""
    code = normalise_country(country)
    return DIAL_STRINGS.get(code, ()) if code is not None else ()


def _dialled_digits(uri: SipUri | TelUri) -> str | None:
    """The digits of a sip:/sips:/tel: user part (RFC 3966 section 5.1), or None."""
    user = uri.user
    if user is None:
        return None
    return _digits_of(unquote(user))


def _digits_of(user: str) -> str | None:
    # Telephone-subscriber parameters (phone-context, isub, ext) follow the first ';'
    # in a SIP user part; a TelUri keeps them in .params already (RFC 3966 section 3).
    number = user.partition(";")[0]
    number = number.translate(_VISUAL_SEPARATORS)
    if number.startswith("+"):
        number = number[1:]
    return number if _DIGITS.match(number) else None


def _detect_urn(uri: AbsoluteUri, country: str | None) -> Detection | None:
    if uri.urn_nid != "service":
        return None
    service = (uri.urn_nss or "").lower()
    matched = _SOS_URN.match(service)
    if matched is None:
        return None
    labels = service.split(".")
    if "" in labels:
        service = ".".join(labels[: labels.index("")])
    return Detection(
        kind="urn",
        dialled=f"urn:service:{service}",
        service=service,
        country=country,
        test=matched.group(1) is not None,
    )


def detect(request_uri: Uri, country: str | None) -> Detection | None:
    """Is this Request-URI an emergency call for an agent in ``country``? (SPEC E-1, E-12)

    Run it on the Request-URI *as received*, before any dialplan rule. Returns ``None``
    for an ordinary call. See the module docstring for the accepted forms and for the rule
    when ``country`` is ``None`` or unsupported (every supported dial string counts,
    ``any_country=True``).
    """
    code = normalise_country(country)
    if isinstance(request_uri, AbsoluteUri):
        return _detect_urn(request_uri, code) if request_uri.scheme == "urn" else None
    if request_uri.scheme not in ("sip", "sips", "tel"):
        return None
    digits = _dialled_digits(request_uri)
    if digits is None:
        return None
    return _detect_digits(digits, code)


def detect_rewritten(user: str, dialled_as: str, country: str | None) -> Detection | None:
    """Is ``user``, what an ordinary dialplan rule made of the dialled ``dialled_as``, an
    emergency dial string for an agent in ``country``? (SPEC E-1: 9 + 911 behind an
    outside-line rule is an emergency call, with the whole treatment.)

    The same digits rule and country rule as :func:`detect`; the detection remembers what
    was dialled (``rewritten_from``).
    """
    digits = _digits_of(user)
    if digits is None:
        return None
    found = _detect_digits(digits, normalise_country(country))
    if found is None:
        return None
    return Detection(
        kind=found.kind,
        dialled=found.dialled,
        service=found.service,
        country=found.country,
        test=found.test,
        any_country=found.any_country,
        rewritten_from=dialled_as,
    )


def _detect_digits(digits: str, code: str | None) -> Detection | None:
    if code in countries_supported():
        for dial_string in DIAL_STRINGS[code]:
            if dial_string.digits == digits:
                return _dial_string_detection(digits, code, dial_string.test, any_country=False)
        return None  # SPEC E-1: another country's dial string is not emergency here
    test = _ANY_COUNTRY.get(digits)
    if test is None:
        return None
    return _dial_string_detection(digits, code, test, any_country=True)


def _dial_string_detection(
    digits: str, country: str | None, test: bool, *, any_country: bool
) -> Detection:
    return Detection(
        kind="dialstring",
        dialled=digits,
        service="test.sos" if test else "sos",
        country=country,
        test=test,
        any_country=any_country,
    )
