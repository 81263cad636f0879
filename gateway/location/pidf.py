"""PIDF-LO documents carrying a civic address (RFC 4119, RFC 5139, RFC 5491).

The document built by :func:`pidf_lo` has this shape (prefixes as written)::

    <presence xmlns="urn:ietf:params:xml:ns:pidf" entity="pres:alice@gateway" ...>
      <tuple id="location">
        <status>
          <gp:geopriv>
            <gp:location-info>
              <ca:civicAddress> country, A1, A3, RD, HNO, FLR, PC, BLD, ROOM </ca:civicAddress>
            </gp:location-info>
            <gp:usage-rules>
              <gbp:retransmission-allowed>false</gbp:retransmission-allowed>
              <gbp:retention-expiry>...</gbp:retention-expiry>
            </gp:usage-rules>
            <gp:method>Manual</gp:method>
          </gp:geopriv>
        </status>
        <dm:deviceID>...</dm:deviceID>          (only with device_id)
        <timestamp>...</timestamp>
      </tuple>
    </presence>

Every value from the dialplan goes through :mod:`xml.etree.ElementTree` as element text,
never through string formatting, so ``&``, ``<`` and quotes are escaped by the serialiser.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta

from gateway.config.dialplan import Location

__all__ = [
    "NS_BASIC_POLICY",
    "NS_CIVIC_ADDRESS",
    "NS_DATA_MODEL",
    "NS_GEOPRIV",
    "NS_PIDF",
    "PIDF_CONTENT_TYPE",
    "pidf_lo",
]

PIDF_CONTENT_TYPE = "application/pidf+xml"
"""Media type of a PIDF(-LO) document (RFC 3863 section 7.1)."""

NS_PIDF = "urn:ietf:params:xml:ns:pidf"
NS_GEOPRIV = "urn:ietf:params:xml:ns:pidf:geopriv10"
NS_BASIC_POLICY = "urn:ietf:params:xml:ns:pidf:geopriv10:basicPolicy"
NS_CIVIC_ADDRESS = "urn:ietf:params:xml:ns:pidf:geopriv10:civicAddr"
NS_DATA_MODEL = "urn:ietf:params:xml:ns:pidf:data-model"

#: prefix -> namespace declared on <presence>. The tree is built with these prefixes
#: spelled in the tag names (constants, never user data) rather than ``{uri}name`` tags:
#: ElementTree would otherwise invent ``ns0:`` prefixes or need the process-wide
#: ``ET.register_namespace``, and it cannot put PIDF in the default namespace while the
#: ``entity`` and ``id`` attributes stay unqualified. The output is the conventional
#: RFC 5491 spelling (default PIDF namespace, ``gp:``, ``gbp:``, ``ca:``, ``dm:``).
_NAMESPACES: tuple[tuple[str, str], ...] = (
    ("xmlns", NS_PIDF),
    ("xmlns:gp", NS_GEOPRIV),
    ("xmlns:gbp", NS_BASIC_POLICY),
    ("xmlns:ca", NS_CIVIC_ADDRESS),
    ("xmlns:dm", NS_DATA_MODEL),
)

#: Location field -> RFC 5139 element, in the order of the civicAddress xs:sequence of
#: RFC 5139 section 4 (country, A1..A6, PRM, PRD, RD, ..., HNO, ..., FLR, NAM, PC, BLD,
#: UNIT, ROOM, ...); a schema-validating recipient rejects any other order.
_CIVIC_FIELDS: tuple[tuple[str, str], ...] = (
    ("country", "country"),
    ("state", "A1"),
    ("city", "A3"),
    ("street", "RD"),
    ("house_number", "HNO"),
    ("floor", "FLR"),
    ("postcode", "PC"),
    ("building", "BLD"),
    ("room", "ROOM"),
)

#: the id of the single <tuple> (xs:ID, so an NCName; unique within the document)
_TUPLE_ID = "location"

#: characters XML 1.0 cannot carry at all (section 2.2 Char): C0 controls other than TAB,
#: LF and CR, lone surrogates, U+FFFE and U+FFFF. ElementTree would write them raw and
#: produce a document no parser accepts.
_NOT_XML_CHAR = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
#: the whitespace xs:token collapses (caType is an xs:token, RFC 5139 section 4)
_XML_SPACE = re.compile("[ \t\r\n]+")
#: an absolute URI: scheme ":" something (RFC 3986 section 3.1); entity and deviceID are
#: xs:anyURI
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[^\s<>\"]+")
#: RFC 4119 section 2.2.3 method token (IANA "Method Tokens" registry: GPS, DHCP, Manual...)
_METHOD = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-_ ]{0,63}")

DEFAULT_RETENTION = timedelta(hours=24)
"""How long a recipient may keep the location (``retention-expiry`` = now + this)."""


def pidf_lo(
    location: Location,
    entity: str,
    *,
    now_iso: str,
    method: str = "Manual",
    device_id: str | None = None,
    retention: timedelta = DEFAULT_RETENTION,
) -> bytes:
    """A PIDF-LO document (``application/pidf+xml``, UTF-8) locating ``location``.

    ``entity`` is the presentity URI (``pres:alice@gateway``; RFC 3863 section 4.1.1).
    ``now_iso`` is the time the location is asserted, an RFC 3339 date-time with a UTC
    offset (``2024-05-01T12:00:00Z``): it becomes the tuple's ``<timestamp>`` (RFC 5491
    section 3.4) and, plus ``retention``, the ``<gbp:retention-expiry>``. ``method`` is
    the RFC 4119 section 2.2.3 ``<gp:method>``: ``Manual`` for an address typed into the
    dialplan. ``device_id`` (a URI such as ``urn:uuid:...`` or ``mac:...``) adds a
    ``<dm:deviceID>`` to the tuple (RFC 4479) naming the agent's phone.

    Usage rules (RFC 4119 section 2.2.2): ``retransmission-allowed`` is ``false`` (the
    recipient may not pass the location on; also the value assumed when it is absent).

    Civic fields that are None or blank are left out (every RFC 5139 element is
    optional); runs of whitespace in a value are collapsed to one space, as xs:token
    would. Pure: the same arguments give the same bytes.

    Raises ValueError for an ``entity`` or ``device_id`` that is not a URI, a
    ``now_iso`` without a UTC offset, a malformed ``method``, or a civic value holding a
    character XML 1.0 cannot carry (a control character): such a location should be
    refused when the dialplan is checked, not discovered on an emergency call.
    """
    _check_names(entity, device_id, method)
    now = _parse_timestamp(now_iso)

    presence = ET.Element("presence", dict(_NAMESPACES))
    presence.set("entity", entity)
    tuple_ = ET.SubElement(presence, "tuple", {"id": _TUPLE_ID})
    status = ET.SubElement(tuple_, "status")
    geopriv = ET.SubElement(status, "gp:geopriv")
    # RFC 4119 section 2.2.1 location-info; RFC 5139 section 4 civicAddress
    _add_civic_address(ET.SubElement(geopriv, "gp:location-info"), location)
    # RFC 4119 section 2.2.2 usage-rules, in the basicPolicy namespace
    usage_rules = ET.SubElement(geopriv, "gp:usage-rules")
    ET.SubElement(usage_rules, "gbp:retransmission-allowed").text = "false"
    ET.SubElement(usage_rules, "gbp:retention-expiry").text = _format_timestamp(now + retention)
    ET.SubElement(geopriv, "gp:method").text = method
    if device_id is not None:
        # RFC 4479 data model: a tuple's deviceID names the device the service runs on;
        # PIDF allows extension elements in a tuple after <status> (RFC 3863)
        ET.SubElement(tuple_, "dm:deviceID").text = device_id
    # RFC 5491 section 3.4: the time the location was determined goes in the timestamp
    # of the tuple carrying it
    ET.SubElement(tuple_, "timestamp").text = _format_timestamp(now)
    # no indentation: the INVITE carrying this should stay under the UDP size limit
    # (RFC 3261 section 18.1.1) where it can
    document: bytes = ET.tostring(presence, encoding="utf-8", xml_declaration=True)
    return document


def _check_names(entity: str, device_id: str | None, method: str) -> None:
    """Raise ValueError unless the presentity and device are URIs and the method a token."""
    if not _URI.fullmatch(entity):
        raise ValueError(f"PIDF entity {entity!r} is not a URI (pres:user@host)")
    if device_id is not None and not _URI.fullmatch(device_id):
        raise ValueError(f"device id {device_id!r} is not a URI (urn:uuid:..., mac:...)")
    if not _METHOD.fullmatch(method):
        raise ValueError(f"location method {method!r} is not a method token")


def _add_civic_address(location_info: ET.Element, location: Location) -> None:
    """The RFC 5139 ``<ca:civicAddress>`` of ``location``, its blank fields left out."""
    civic = ET.SubElement(location_info, "ca:civicAddress")
    for field, element in _CIVIC_FIELDS:
        value = _civic_value(field, getattr(location, field))
        if value:
            ET.SubElement(civic, f"ca:{element}").text = value


def _civic_value(field: str, value: str | None) -> str | None:
    if value is None:
        return None
    bad = _NOT_XML_CHAR.search(value)
    if bad is not None:
        raise ValueError(
            f"location {field} contains U+{ord(bad.group()):04X}, which XML cannot carry"
        )
    return _XML_SPACE.sub(" ", value).strip(" ") or None


def _parse_timestamp(text: str) -> datetime:
    """An RFC 3339 date-time with an offset (``Z`` allowed)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"timestamp {text!r} is not an RFC 3339 date-time") from None
    if moment.tzinfo is None or "T" not in text.upper():
        raise ValueError(f"timestamp {text!r} needs a 'T' and a UTC offset (RFC 3339)")
    return moment


def _format_timestamp(moment: datetime) -> str:
    """RFC 3339 / xs:dateTime, ``Z`` for UTC (``2024-05-01T12:00:00Z``)."""
    text = moment.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text
