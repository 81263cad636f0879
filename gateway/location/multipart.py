"""MIME multipart bodies as SIP carries them (RFC 2046 section 5.1, RFC 5621).

Only what location conveyance needs: split a multipart body into parts
(:func:`split_multipart`), build one (:func:`build_multipart`) with a boundary that occurs
in none of its parts (:func:`unique_boundary`), and read a Content-Type value
(:func:`parse_content_type`). Parts keep their content byte for byte: the CRLF before each
delimiter line belongs to the delimiter (RFC 2046 section 5.1.1), never to the content.

Parsing is tolerant where senders are known to be sloppy (bare LF line ends, whitespace
after a delimiter, folded part headers) and strict where the structure would be
ambiguous (no boundary, no opening or closing delimiter, a header line without a colon):
those raise :class:`MultipartError`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

__all__ = [
    "MultipartError",
    "Part",
    "build_multipart",
    "encode_part",
    "insert_before_close",
    "parse_content_type",
    "split_multipart",
    "unique_boundary",
]

Part = tuple[dict[str, str], bytes]
"""One body part: its headers (lower-case names, first occurrence wins) and its content."""

#: RFC 2046 section 5.1.1: a boundary is 1 to 70 characters
MAX_BOUNDARY_LENGTH = 70

#: parameters of a Content-Type value: ``; name=token`` or ``; name="quoted string"``
_PARAMETER = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
#: bchars of RFC 2046 section 5.1.1 (space allowed, but not last)
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
#: the empty line ending a part's headers (CRLF, or a tolerated bare LF)
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_LEADING_LINE_END = re.compile(rb"\A\r?\n")
_LINE_END = re.compile(r"\r?\n")
_LINE_END_BYTES = re.compile(rb"\r?\n")


class MultipartError(ValueError):
    """A body that is not a well-formed multipart body."""


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """``type/subtype`` (lower case) and the parameters (lower-case names, unquoted values).

    ``multipart/mixed; Boundary="a b"`` gives ``("multipart/mixed", {"boundary": "a b"})``
    (RFC 2045 section 5.1: type, subtype and parameter names are case-insensitive).
    """
    media, _, rest = value.partition(";")
    parameters: dict[str, str] = {}
    for match in _PARAMETER.finditer(";" + rest):
        name, raw = match.group(1).lower(), match.group(2).strip()
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        parameters.setdefault(name, raw)
    return media.strip().lower(), parameters


def _delimiter(boundary: str) -> re.Pattern[bytes]:
    """A delimiter line: at the start of the body or after a line end (RFC 2046 5.1.1).

    Group 1 is ``--`` on the close delimiter. Whitespace after the boundary is allowed
    (transport padding); anything else means the line only starts like a delimiter.
    """
    try:
        raw = boundary.encode("ascii")
    except UnicodeEncodeError:
        raise MultipartError(f"boundary {boundary!r} is not ASCII") from None
    # the line end after the delimiter is looked at, not taken: an empty part with no
    # headers ("--b CRLF --b--") shares it with the next delimiter
    return re.compile(rb"(?:\A|\r?\n)--" + re.escape(raw) + rb"(--)?[ \t]*(?=\r?\n|\Z)")


def split_multipart(body: bytes, content_type: str) -> list[Part]:
    """The parts of a multipart ``body`` whose Content-Type value is ``content_type``.

    Each part is ``(headers, content)``: header names in lower case (the first of a
    repeated name wins, folded lines are unfolded), values stripped; ``content`` exactly
    the bytes between the part's empty line and the line end before the next delimiter.
    The preamble and the epilogue are dropped. Nested multiparts are returned as one
    part; call again with that part's Content-Type to go down.

    Raises :class:`MultipartError` when ``content_type`` is not ``multipart/*``, has no
    boundary, or the body lacks the opening or the closing delimiter.
    """
    media, parameters = parse_content_type(content_type)
    if not media.startswith("multipart/"):
        raise MultipartError(f"{media or 'no media type'} is not multipart")
    boundary = parameters.get("boundary")
    if not boundary:
        raise MultipartError(f"{content_type!r} has no boundary parameter")
    delimiters = list(_delimiter(boundary).finditer(body))
    closing = next((i for i, m in enumerate(delimiters) if m.group(1)), None)
    if closing is None:
        raise MultipartError(f"no closing delimiter --{boundary}--")
    if closing == 0:
        raise MultipartError(f"no opening delimiter --{boundary}")
    parts: list[Part] = []
    for index in range(closing):
        start, end = delimiters[index].end(), delimiters[index + 1].start()
        line_end = _LINE_END_BYTES.match(body, start)
        if line_end is not None:
            start = min(line_end.end(), end)
        parts.append(_split_part(body[start:end], index))
    return parts


def _split_part(raw: bytes, index: int) -> Part:
    """RFC 2046 section 5.1.1: body-part := MIME-part-headers [CRLF *OCTET]."""
    leading = _LEADING_LINE_END.match(raw)
    if leading is not None:  # no headers at all: the content follows the empty line
        return {}, raw[leading.end() :]
    blank = _BLANK_LINE.search(raw)
    if blank is None:  # headers only, no content
        head, content = raw, b""
    else:
        head, content = raw[: blank.start()], raw[blank.end() :]
    return _part_headers(head.decode("utf-8", "replace"), index), content


def _part_headers(text: str, index: int) -> dict[str, str]:
    lines: list[str] = []
    for line in _LINE_END.split(text):
        if line[:1] in (" ", "\t") and lines:  # folded continuation (RFC 5322 2.2.3)
            lines[-1] = f"{lines[-1]} {line.strip()}"
        elif line:
            lines.append(line)
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not name:
            raise MultipartError(f"part {index + 1}: malformed header line {line[:60]!r}")
        headers.setdefault(name.lower(), value.strip())
    return headers


def encode_part(headers: Iterable[tuple[str, str]], content: bytes) -> bytes:
    """One body part as written between delimiters: header lines, empty line, content."""
    lines = []
    for name, value in headers:
        if "\r" in name or "\n" in name or "\r" in value or "\n" in value or ":" in name:
            raise ValueError(f"body part header {name!r}: {value!r} would break framing")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("utf-8") + b"\r\n" + content


def unique_boundary(base: str, parts: Iterable[bytes]) -> str:
    """``base``, or ``base.1``, ``base.2``, ... : the first that no part contains.

    RFC 2046 section 5.1.1 only forbids the delimiter line inside a part; refusing the
    bare boundary string anywhere is stricter and as cheap. Finite parts contain finitely
    many candidates, so the search ends.
    """
    contents = list(parts)
    candidate, suffix = base, 0
    while any(candidate.encode("ascii") in content for content in contents):
        suffix += 1
        candidate = f"{base}.{suffix}"
    if not _BOUNDARY.fullmatch(candidate):
        raise ValueError(f"boundary {candidate!r} breaks RFC 2046 section 5.1.1")
    return candidate


def build_multipart(parts: Sequence[bytes], boundary: str) -> bytes:
    """A multipart body from parts encoded by :func:`encode_part` (CRLF line ends).

    The caller picks ``boundary`` with :func:`unique_boundary` over the same parts.
    """
    if not _BOUNDARY.fullmatch(boundary):
        raise ValueError(f"boundary {boundary!r} breaks RFC 2046 section 5.1.1")
    delimiter = b"--" + boundary.encode("ascii")
    out = bytearray()
    for part in parts:
        out += delimiter + b"\r\n" + part + b"\r\n"
    out += delimiter + b"--\r\n"
    return bytes(out)


def insert_before_close(body: bytes, content_type: str, part: bytes) -> bytes | None:
    """``body`` with ``part`` added as its last part, or None when that cannot be done.

    The existing bytes are kept as they are, up to the line end before the closing
    delimiter; the new part goes there. None when the body does not parse or the new part
    contains the existing boundary.
    """
    try:
        split_multipart(body, content_type)
    except MultipartError:
        return None
    boundary = parse_content_type(content_type)[1]["boundary"]
    raw = boundary.encode("ascii")
    if raw in part:
        return None
    close = next(m for m in _delimiter(boundary).finditer(body) if m.group(1))
    at = close.start()
    return body[:at] + b"\r\n--" + raw + b"\r\n" + part + body[at:]
