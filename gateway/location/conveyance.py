"""Location conveyed by value in a SIP request (RFC 6442 sections 3 and 4; SPEC E-10).

Theory of operation
-------------------
On the emergency leg the gateway either passes on the location the caller sent or, when
there is none, adds the agent's dispatchable address:

* :func:`has_location` says whether a request already conveys a location: a
  ``Geolocation`` header (by value or by reference, RFC 6442 section 4.1) or an
  ``application/pidf+xml`` body, alone or as a part of a (nested) multipart body.
* :func:`add_location_by_value` does nothing when :func:`has_location` is true (the
  location a request carries is passed on unchanged, byte for byte). Otherwise it adds a
  PIDF-LO part (RFC 6442 section 3.1)::

      Content-Type: multipart/mixed;boundary=gw-RANDOM      (replaces application/sdp)
      Geolocation-Routing: yes
      Geolocation: <cid:RANDOM@cid_domain>                    (last header)

      --gw-RANDOM
      Content-Type: application/sdp
                                                              (the SDP, byte for byte)
      --gw-RANDOM
      Content-Type: application/pidf+xml
      Content-ID: <RANDOM@cid_domain>
      Content-Disposition: by-reference;handling=optional
                                                              (the PIDF-LO document)
      --gw-RANDOM--

  A request without a body (delayed offer) gets a multipart with the PIDF-LO part only;
  a body that already is ``multipart/mixed`` gets the PIDF-LO as its new last part,
  the existing bytes untouched.

Everything except the final mutation of the request is a pure function of the arguments:
time (``now_iso``) and randomness (``boundary_random``) come from the caller.
"""

from __future__ import annotations

import re

from gateway.config.dialplan import Location
from gateway.location.multipart import (
    MultipartError,
    build_multipart,
    encode_part,
    insert_before_close,
    parse_content_type,
    split_multipart,
    unique_boundary,
)
from gateway.location.pidf import PIDF_CONTENT_TYPE, pidf_lo
from gateway.sip.message import Message, Request

__all__ = [
    "LOCATION_CONTENT_DISPOSITION",
    "add_location_by_value",
    "has_location",
]

LOCATION_CONTENT_DISPOSITION = "by-reference;handling=optional"
"""Content-Disposition of the PIDF-LO part: it is referenced from the Geolocation header
by its Content-ID (the by-reference disposition of RFC 5621); ``handling=optional`` lets a
recipient that cannot read it still accept the session (RFC 3261 section 20.11)."""

#: headers that describe the message body (RFC 3261 sections 20.11-20.13). When the body
#: becomes the first part of a multipart they describe that part, so they move into it.
_BODY_HEADERS = (
    ("content-disposition", "Content-Disposition"),
    ("content-encoding", "Content-Encoding"),
    ("content-language", "Content-Language"),
)
#: the random part of the Content-ID: a dot-atom (RFC 5322 section 3.2.3) whose characters
#: need no escaping in a cid: URL (RFC 2392 section 2); short enough for the boundary limit
_RANDOM = re.compile(r"(?=.{1,56}\Z)[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
#: the Content-ID's domain: a host name or IPv4 address (RFC 1123 labels)
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*")
#: how deep has_location looks into multiparts nested in multiparts
_MAX_NESTING = 8


def has_location(message: Message) -> bool:
    """Whether ``message`` already conveys a location (RFC 6442 sections 3 and 4.1).

    True for a ``Geolocation`` header of any value, or for a body that is, or contains
    as a part at any nesting depth, ``application/pidf+xml``. A multipart body that does
    not parse counts as carrying a location when the text ``application/pidf+xml``
    appears in it: when in doubt the request is passed on unchanged rather than given a
    second, possibly contradicting, location.
    """
    if message.get("geolocation") is not None:
        return True
    content_type = message.content_type
    if not message.body or content_type is None:
        return False
    return _carries_pidf(message.body, content_type, 0)


def _carries_pidf(body: bytes, content_type: str, depth: int) -> bool:
    media = parse_content_type(content_type)[0]
    if media == PIDF_CONTENT_TYPE:
        return True
    if not media.startswith("multipart/"):
        return False
    if depth >= _MAX_NESTING:
        return PIDF_CONTENT_TYPE.encode() in body.lower()
    try:
        parts = split_multipart(body, content_type)
    except MultipartError:
        return PIDF_CONTENT_TYPE.encode() in body.lower()
    return any(
        _carries_pidf(content, headers.get("content-type", "text/plain"), depth + 1)
        for headers, content in parts
    )


def add_location_by_value(
    request: Request,
    location: Location,
    entity: str,
    *,
    cid_domain: str,
    now_iso: str,
    boundary_random: str,
    method: str = "Manual",
    device_id: str | None = None,
) -> None:
    """Add ``location`` to ``request`` by value, unless it conveys a location already.

    **Mutates** ``request`` (the one impure function of :mod:`gateway.location`): its
    body, its Content-Type, and two new headers. Nothing at all changes when
    :func:`has_location` is true: RFC 6442 section 3 leaves the location a request
    carries to its sender, and SPEC E-10 passes it on unchanged.

    Otherwise (RFC 6442 section 3.1, location by value):

    * the PIDF-LO built by :func:`~gateway.location.pidf.pidf_lo` (``location``,
      ``entity``, ``now_iso``, ``method``, ``device_id``) becomes the last body part,
      with ``Content-Type: application/pidf+xml``, ``Content-ID:
      <boundary_random@cid_domain>`` and ``Content-Disposition``
      :data:`LOCATION_CONTENT_DISPOSITION`;
    * the original body, byte for byte, is the first part, under its own Content-Type
      (and the Content-Disposition, -Encoding and -Language that described it, moved
      from the request into the part); an empty body (delayed offer) gives no first
      part; a ``multipart/mixed`` body keeps its boundary and its parts and gets the
      PIDF-LO part appended;
    * the request's Content-Type becomes ``multipart/mixed;boundary=gw-<boundary_random>``
      (a suffix ``.N`` is added if that string occurs in a part); Content-Length is left
      to the serialiser;
    * ``Geolocation-Routing: yes`` is added unless the request has that header already
      (RFC 6442 section 4.2: the location may be used to route the call, which is what
      an emergency call needs), then ``Geolocation: <cid:boundary_random@cid_domain>``
      as the last header (RFC 6442 section 4.1; SPEC E-10 "placed last").

    ``boundary_random`` (letters, digits, ``-``, ``_`` and single dots, 1 to 56
    characters) must be fresh for each request: it makes the Content-ID globally unique
    (RFC 2392). ``cid_domain`` is a host name or IPv4 address of the gateway. Raises
    ValueError for a bad ``boundary_random`` or ``cid_domain`` and for the data errors
    :func:`~gateway.location.pidf.pidf_lo` refuses; the request is then unchanged.
    """
    if has_location(request):
        return
    content_id = _content_id(boundary_random, cid_domain)
    document = pidf_lo(location, entity, now_iso=now_iso, method=method, device_id=device_id)
    # everything is computed before the request is touched: an error leaves it as it was
    new_body, new_content_type, moved = _body_with_location(
        request, _pidf_part(document, content_id), boundary_random
    )
    for name in moved:
        request.remove(name)
    request.set_body(new_body, new_content_type)
    if request.get("geolocation-routing") is None:
        request.add("Geolocation-Routing", "yes")
    request.add("Geolocation", f"<cid:{content_id}>")


def _content_id(boundary_random: str, cid_domain: str) -> str:
    """``boundary_random@cid_domain`` (RFC 2392), once both are checked."""
    if not _RANDOM.fullmatch(boundary_random):
        raise ValueError(f"boundary_random {boundary_random!r} is not 1-56 token characters")
    if not _DOMAIN.fullmatch(cid_domain):
        raise ValueError(f"cid_domain {cid_domain!r} is not a host name or IPv4 address")
    return f"{boundary_random}@{cid_domain}"


def _pidf_part(document: bytes, content_id: str) -> bytes:
    """The PIDF-LO as a body part, named by ``content_id`` (RFC 6442 section 3.1)."""
    return encode_part(
        (
            ("Content-Type", PIDF_CONTENT_TYPE),
            ("Content-ID", f"<{content_id}>"),
            ("Content-Disposition", LOCATION_CONTENT_DISPOSITION),
        ),
        document,
    )


def _body_with_location(
    request: Request, pidf_part: bytes, boundary_random: str
) -> tuple[bytes, str, list[str]]:
    """The request's new body and Content-Type with ``pidf_part`` added, and the headers
    that described the old body and move into its part (to remove from the request)."""
    body, content_type = request.body, request.content_type
    if (
        body
        and content_type is not None
        and parse_content_type(content_type)[0] == "multipart/mixed"
    ):
        merged = insert_before_close(body, content_type, pidf_part)
        if merged is not None:
            return merged, content_type, []
    parts: list[bytes] = []
    if body:
        part_headers = [] if content_type is None else [("Content-Type", content_type)]
        for name, spelling in _BODY_HEADERS:
            value = request.get(name)
            if value is not None:
                part_headers.append((spelling, value))
        parts.append(encode_part(part_headers, body))
    parts.append(pidf_part)
    boundary = unique_boundary(f"gw-{boundary_random}", parts)
    # they described the old body (now a part, or nothing): not the multipart
    moved = [name for name, _ in _BODY_HEADERS if request.get(name) is not None]
    return build_multipart(parts, boundary), f"multipart/mixed;boundary={boundary}", moved
