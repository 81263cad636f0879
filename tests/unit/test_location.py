"""Location by value on the emergency leg (gateway.location; SPEC E-10, RFC 6442).

Requests are captures under tests/data/location/*.sip (LF line ends on disk, sent as CRLF,
Content-Length counted for CRLF). The PIDF-LO is parsed back with ElementTree and the
multipart bodies with both our own splitter and Python's ``email`` package.
"""

from __future__ import annotations

import email
import email.policy
import re
import xml.etree.ElementTree as ET
from email.message import Message as EmailMessage
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config.dialplan import Location
from gateway.location import (
    LOCATION_CONTENT_DISPOSITION,
    PIDF_CONTENT_TYPE,
    MultipartError,
    add_location_by_value,
    has_location,
    parse_content_type,
    pidf_lo,
    split_multipart,
)
from gateway.location.multipart import build_multipart, encode_part, unique_boundary
from gateway.sip.message import Request, parse_message

DATA = Path(__file__).resolve().parent.parent / "data" / "location"

NS = {
    "pidf": "urn:ietf:params:xml:ns:pidf",
    "gp": "urn:ietf:params:xml:ns:pidf:geopriv10",
    "gbp": "urn:ietf:params:xml:ns:pidf:geopriv10:basicPolicy",
    "ca": "urn:ietf:params:xml:ns:pidf:geopriv10:civicAddr",
    "dm": "urn:ietf:params:xml:ns:pidf:data-model",
}
CIVIC = "{urn:ietf:params:xml:ns:pidf:geopriv10:civicAddr}"

NOW = "2024-05-01T12:00:00Z"
ENTITY = "pres:agent42@gateway"
RANDOM = "a8f3e2c1"
CID_DOMAIN = "gw.example.com"

DESK = Location(
    street="Congress Ave",
    house_number="100",
    city="Austin",
    state="TX",
    postcode="78701",
    country="US",
    building="North Tower",
    floor="7",
    room="7.14",
)
ZURICH = Location(
    street='Bahnhofstrasse & "Paradeplatz" <Süd>',
    house_number="1",
    city="Zürich",
    state="ZH",
    postcode="8001",
    country="CH",
    building="Haus 'A'",
    floor="3",
    room="Büro 301",
)


def request(name: str, *replace: tuple[str, str]) -> Request:
    """A capture from tests/data/location as it arrives (CRLF), optionally edited.

    An edit of the body is followed by a Content-Length that counts the edited body.
    """
    text = (DATA / f"{name}.sip").read_text(encoding="utf-8")
    for old, new in replace:
        assert old in text, old
        text = text.replace(old, new)
    head, _, body = text.replace("\n", "\r\n").partition("\r\n\r\n")
    length = len(body.encode())
    head = re.sub(r"(?m)^Content-Length: \d+$", f"Content-Length: {length}", head)
    msg = parse_message(f"{head}\r\n\r\n{body}".encode())
    assert isinstance(msg, Request)
    return msg


def add(req: Request, location: Location = DESK, random: str = RANDOM) -> None:
    add_location_by_value(
        req, location, ENTITY, cid_domain=CID_DOMAIN, now_iso=NOW, boundary_random=random
    )


def civic(document: bytes) -> dict[str, str]:
    root = ET.fromstring(document)
    address = root.find("pidf:tuple/pidf:status/gp:geopriv/gp:location-info/ca:civicAddress", NS)
    assert address is not None
    return {child.tag.removeprefix(CIVIC): child.text or "" for child in address}


def email_parts(req: Request) -> list[EmailMessage]:
    """The body parsed by Python's email package, an implementation independent of ours."""
    assert req.content_type is not None
    raw = b"Content-Type: " + req.content_type.encode() + b"\r\n\r\n" + req.body
    parsed = email.message_from_bytes(raw, policy=email.policy.compat32)
    assert parsed.is_multipart()
    parts = parsed.get_payload()
    assert isinstance(parts, list)
    return [part for part in parts if isinstance(part, EmailMessage)]


# -- PIDF-LO (RFC 4119, RFC 5139, RFC 5491) -------------------------------------------------


def test_pidf_lo_carries_every_field_where_rfc_5139_puts_it() -> None:
    document = pidf_lo(DESK, ENTITY, now_iso=NOW)
    assert document.startswith(b"<?xml version='1.0' encoding='utf-8'?>")
    root = ET.fromstring(document)
    assert root.tag == "{urn:ietf:params:xml:ns:pidf}presence"
    assert root.get("entity") == ENTITY
    tuples = root.findall("pidf:tuple", NS)
    assert len(tuples) == 1 and tuples[0].get("id")
    # order of the RFC 5139 civicAddress sequence, every Location field mapped
    assert list(civic(document).items()) == [
        ("country", "US"),
        ("A1", "TX"),
        ("A3", "Austin"),
        ("RD", "Congress Ave"),
        ("HNO", "100"),
        ("FLR", "7"),
        ("PC", "78701"),
        ("BLD", "North Tower"),
        ("ROOM", "7.14"),
    ]
    geopriv = tuples[0].find("pidf:status/gp:geopriv", NS)
    assert geopriv is not None
    assert [child.tag.split("}")[1] for child in geopriv] == [
        "location-info",
        "usage-rules",
        "method",
    ]
    rules = geopriv.find("gp:usage-rules", NS)
    assert rules is not None
    assert rules.findtext("gbp:retransmission-allowed", namespaces=NS) == "false"
    assert rules.findtext("gbp:retention-expiry", namespaces=NS) == "2024-05-02T12:00:00Z"
    assert geopriv.findtext("gp:method", namespaces=NS) == "Manual"
    # RFC 5491 section 3.4: the timestamp of the tuple; no deviceID unless asked for
    assert tuples[0].findtext("pidf:timestamp", namespaces=NS) == NOW
    assert tuples[0].find("dm:deviceID", NS) is None
    assert [child.tag.split("}")[1] for child in tuples[0]] == ["status", "timestamp"]


def test_pidf_lo_method_and_device_id() -> None:
    document = pidf_lo(
        DESK, ENTITY, now_iso=NOW, method="DHCP", device_id="urn:uuid:6ba7b810-9dad-11d1"
    )
    root = ET.fromstring(document)
    assert root.findtext(".//gp:method", namespaces=NS) == "DHCP"
    tuple_ = root.find("pidf:tuple", NS)
    assert tuple_ is not None
    assert [child.tag.split("}")[1] for child in tuple_] == ["status", "deviceID", "timestamp"]
    assert tuple_.findtext("dm:deviceID", namespaces=NS) == "urn:uuid:6ba7b810-9dad-11d1"


def test_pidf_lo_escapes_markup_quotes_and_keeps_non_ascii() -> None:
    document = pidf_lo(ZURICH, "pres:o'brien&co@gateway", now_iso=NOW)
    document.decode("utf-8")  # UTF-8 as declared
    assert "Zürich".encode() in document
    assert b"&amp;" in document and b"&lt;S" in document
    assert b"<S\xc3\xbcd>" not in document  # the address cannot open an element
    fields = civic(document)
    assert fields["RD"] == 'Bahnhofstrasse & "Paradeplatz" <Süd>'
    assert fields["A3"] == "Zürich"
    assert fields["BLD"] == "Haus 'A'"
    assert fields["ROOM"] == "Büro 301"
    assert b'entity="pres:o\'brien&amp;co@gateway"' in document
    assert ET.fromstring(document).get("entity") == "pres:o'brien&co@gateway"


def test_pidf_lo_user_data_cannot_inject_elements() -> None:
    sneaky = DESK.model_copy(update={"street": "</ca:RD><ca:RD>Elsewhere St"})
    document = pidf_lo(sneaky, ENTITY, now_iso=NOW)
    fields = civic(document)
    assert fields["RD"] == "</ca:RD><ca:RD>Elsewhere St"
    assert list(fields).count("RD") == 1


def test_pidf_lo_matches_the_sample_document() -> None:
    expected = (DATA / "pidf_lo_zurich.xml").read_bytes()
    assert pidf_lo(ZURICH, ENTITY, now_iso=NOW, device_id="mac:00-11-22-33-44-55") == expected


def test_pidf_lo_leaves_out_missing_fields_and_collapses_whitespace() -> None:
    sparse = Location(country="GB", city="  London\r\n ", street="", room=" Suite\t 4 ")
    assert civic(pidf_lo(sparse, ENTITY, now_iso=NOW)) == {
        "country": "GB",
        "A3": "London",
        "ROOM": "Suite 4",
    }


def test_pidf_lo_keeps_the_offset_of_now() -> None:
    root = ET.fromstring(pidf_lo(DESK, ENTITY, now_iso="2024-05-01T14:00:00.250+02:00"))
    assert root.findtext(".//pidf:timestamp", namespaces=NS) == "2024-05-01T14:00:00.250000+02:00"
    assert root.findtext(".//gbp:retention-expiry", namespaces=NS) == (
        "2024-05-02T14:00:00.250000+02:00"
    )


@pytest.mark.parametrize(
    ("location", "entity", "now_iso", "method", "device_id"),
    [
        (DESK.model_copy(update={"street": "Main\x00St"}), ENTITY, NOW, "Manual", None),
        (DESK.model_copy(update={"room": "bell\x07"}), ENTITY, NOW, "Manual", None),
        (DESK, "agent42@gateway", NOW, "Manual", None),
        (DESK, ENTITY, "2024-05-01T12:00:00", "Manual", None),  # no offset
        (DESK, ENTITY, "2024-05-01 12:00:00Z", "Manual", None),  # no T
        (DESK, ENTITY, "yesterday", "Manual", None),
        (DESK, ENTITY, NOW, "<Manual>", None),
        (DESK, ENTITY, NOW, "Manual", "the desk phone"),
    ],
)
def test_pidf_lo_refuses_what_it_cannot_write(
    location: Location, entity: str, now_iso: str, method: str, device_id: str | None
) -> None:
    with pytest.raises(ValueError):
        pidf_lo(location, entity, now_iso=now_iso, method=method, device_id=device_id)


# -- adding the location (RFC 6442 section 3.1) ----------------------------------------------


def test_adds_multipart_with_sdp_first_and_pidf_last() -> None:
    req = request("invite_sdp")
    sdp = req.body
    add(req)

    assert req.content_type == f"multipart/mixed;boundary=gw-{RANDOM}"
    parts = split_multipart(req.body, req.content_type)
    assert len(parts) == 2
    (sdp_headers, sdp_content), (pidf_headers, pidf_content) = parts
    assert sdp_headers == {"content-type": "application/sdp"}
    assert sdp_content == sdp
    assert pidf_headers == {
        "content-type": "application/pidf+xml",
        "content-id": f"<{RANDOM}@{CID_DOMAIN}>",
        "content-disposition": "by-reference;handling=optional",
    }
    assert pidf_content == pidf_lo(DESK, ENTITY, now_iso=NOW)
    # the exact framing: delimiter, part headers, empty line, content, CRLF before the next
    boundary = f"--gw-{RANDOM}".encode()
    assert req.body.startswith(boundary + b"\r\nContent-Type: application/sdp\r\n\r\n" + sdp)
    assert req.body.endswith(pidf_content + b"\r\n" + boundary + b"--\r\n")
    assert req.body.count(boundary) == 3


def test_multipart_reads_the_same_with_the_email_package() -> None:
    req = request("invite_sdp")
    sdp = req.body
    add(req, ZURICH)
    first, second = email_parts(req)
    assert first.get_content_type() == "application/sdp"
    assert first.get_payload(decode=True) == sdp
    assert second.get_content_type() == PIDF_CONTENT_TYPE
    assert second["Content-ID"] == f"<{RANDOM}@{CID_DOMAIN}>"
    assert second["Content-Disposition"] == LOCATION_CONTENT_DISPOSITION
    assert second.get_content_disposition() == "by-reference"
    assert second.get_param("handling", header="content-disposition") == "optional"
    payload = second.get_payload(decode=True)
    assert isinstance(payload, bytes)
    assert civic(payload)["A3"] == "Zürich"


def test_geolocation_header_is_last_and_points_at_the_pidf_part() -> None:
    req = request("invite_sdp")
    add(req)
    assert req.headers[-1][1:] == ("Geolocation", f"<cid:{RANDOM}@{CID_DOMAIN}>")
    assert req.get("Geolocation-Routing") == "yes"
    # on the wire only Content-Length, which the serialiser always writes last, follows
    head = req.to_bytes().split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    assert head[-2] == f"Geolocation: <cid:{RANDOM}@{CID_DOMAIN}>".encode()
    assert head[-1].startswith(b"Content-Length: ")
    # RFC 2392: cid:X names the part whose Content-ID is <X>
    geolocation = req.get("Geolocation")
    assert geolocation is not None
    cid = geolocation.removeprefix("<cid:").removesuffix(">")
    assert req.content_type is not None
    content_ids = [h.get("content-id") for h, _ in split_multipart(req.body, req.content_type)]
    assert content_ids.count(f"<{cid}>") == 1


def test_other_headers_keep_their_order_and_values() -> None:
    req = request("invite_sdp")
    before = [h for h in req.headers if h[0] != "content-type"]
    position = [h[0] for h in req.headers].index("content-type")
    add(req)
    assert req.headers[: len(before) + 1] == [
        *before[:position],
        ("content-type", "Content-Type", f"multipart/mixed;boundary=gw-{RANDOM}"),
        *before[position:],
    ]
    assert [h[0] for h in req.headers[len(before) + 1 :]] == [
        "geolocation-routing",
        "geolocation",
    ]


def test_boundary_never_occurs_in_a_part() -> None:
    taken = f"a=x-note:gw-{RANDOM} gw-{RANDOM}.1 gw-{RANDOM}.2\r\n"
    req = request("invite_sdp", ("a=sendrecv\n", "a=sendrecv\n" + taken.replace("\r\n", "\n")))
    sdp = req.body
    add(req)
    assert req.content_type == f"multipart/mixed;boundary=gw-{RANDOM}.3"
    (_, sdp_content), (_, pidf_content) = split_multipart(req.body, req.content_type)
    assert sdp_content == sdp
    assert b"gw-" + RANDOM.encode() + b".3" not in sdp_content + pidf_content
    assert email_parts(req)[0].get_payload(decode=True) == sdp


def test_boundary_is_checked_against_the_location_too() -> None:
    tricky = DESK.model_copy(update={"room": f"--gw-{RANDOM}--"})
    req = request("invite_sdp")
    add(req, tricky)
    assert req.content_type == f"multipart/mixed;boundary=gw-{RANDOM}.1"
    parts = split_multipart(req.body, req.content_type)
    assert civic(parts[1][1])["ROOM"] == f"--gw-{RANDOM}--"


def test_delayed_offer_gets_the_pidf_part_alone() -> None:
    req = request("invite_delayed_offer")
    assert req.body == b"" and not req.has("Content-Type")
    add(req)
    assert req.content_type == f"multipart/mixed;boundary=gw-{RANDOM}"
    parts = split_multipart(req.body, req.content_type)
    assert [h["content-type"] for h, _ in parts] == [PIDF_CONTENT_TYPE]
    assert parts[0][1] == pidf_lo(DESK, ENTITY, now_iso=NOW)
    assert [p.get_content_type() for p in email_parts(req)] == [PIDF_CONTENT_TYPE]
    assert req.headers[-1][0] == "geolocation"


def test_round_trip_through_the_parser_keeps_the_body_byte_exact() -> None:
    req = request("invite_sdp")
    add(req, ZURICH)
    wire = req.to_bytes()
    again = parse_message(wire)
    assert isinstance(again, Request)
    assert again.body == req.body
    assert [h for h in again.headers if h[0] != "content-length"] == [
        h for h in req.headers if h[0] != "content-length"
    ]
    assert again.get("Geolocation") == f"<cid:{RANDOM}@{CID_DOMAIN}>"
    assert again.content_type == req.content_type
    assert again.to_bytes() == wire
    assert again.content_type is not None
    assert split_multipart(again.body, again.content_type) == split_multipart(
        req.body, f"multipart/mixed;boundary=gw-{RANDOM}"
    )
    assert has_location(again)


def test_body_headers_of_the_sdp_move_into_its_part() -> None:
    req = request(
        "invite_sdp",
        ("Content-Type:", "Content-Disposition: session;handling=required\nContent-Type:"),
    )
    add(req)
    assert req.get("Content-Disposition") is None
    assert req.content_type is not None
    (sdp_headers, _), _ = split_multipart(req.body, req.content_type)
    assert sdp_headers == {
        "content-type": "application/sdp",
        "content-disposition": "session;handling=required",
    }


def test_existing_multipart_mixed_gets_the_pidf_part_appended() -> None:
    req = request("invite_sdp_provider_info")
    original, content_type = req.body, req.content_type
    assert content_type is not None
    old_parts = split_multipart(original, content_type)
    add(req)
    assert req.content_type == content_type  # same boundary, same spelling
    close = original.rindex(b"\r\n--info-42--")
    assert req.body[:close] == original[:close]
    assert req.body.endswith(original[close:])
    parts = split_multipart(req.body, content_type)
    assert parts[:2] == old_parts
    assert parts[2][0]["content-id"] == f"<{RANDOM}@{CID_DOMAIN}>"
    assert [p.get_content_type() for p in email_parts(req)] == [
        "application/sdp",
        "application/emergencycalldata.providerinfo+xml",
        PIDF_CONTENT_TYPE,
    ]
    assert req.get("Call-Info") is not None and req.headers[-1][0] == "geolocation"


def test_existing_geolocation_routing_is_kept() -> None:
    req = request("invite_sdp", ("Contact:", "Geolocation-Routing: no\nContact:"))
    add(req)
    assert req.get_all("Geolocation-Routing") == ["no"]
    assert req.headers[-1][0] == "geolocation"


# -- pass-through (RFC 6442 section 3; SPEC E-10) --------------------------------------------


@pytest.mark.parametrize(
    ("name", "replace"),
    [
        ("invite_geolocation_uri", ()),
        ("invite_pidf_without_header", ()),
        # a location URI without any body (delayed offer)
        (
            "invite_delayed_offer",
            (("Contact:", "Geolocation: <sip:loc17@lis.example.net>\nContact:"),),
        ),
        # a Geolocation header whose part got lost on the way: still the sender's business
        ("invite_sdp", (("Contact:", "Geolocation: <cid:gone@pbx.example.com>\nContact:"),)),
    ],
)
def test_a_request_that_conveys_a_location_passes_unchanged(
    name: str, replace: tuple[tuple[str, str], ...]
) -> None:
    req = request(name, *replace)
    before = req.to_bytes()
    assert has_location(req)
    add(req)
    assert req.to_bytes() == before


def test_single_pidf_body_passes_unchanged() -> None:
    pidf = pidf_lo(DESK, "pres:phone@pbx.example.com", now_iso=NOW)
    req = request("invite_delayed_offer")
    req.set_body(pidf, "Application/PIDF+XML")
    before = req.to_bytes()
    add(req)
    assert req.to_bytes() == before


def test_pidf_nested_in_an_inner_multipart_is_found() -> None:
    pidf_part = encode_part([("Content-Type", PIDF_CONTENT_TYPE)], b"<presence/>")
    inner = build_multipart([pidf_part], "inner")
    outer = build_multipart(
        [
            encode_part([("Content-Type", "application/sdp")], b"v=0\r\n"),
            encode_part([("Content-Type", 'multipart/mixed; boundary="inner"')], inner),
        ],
        "outer",
    )
    req = request("invite_delayed_offer")
    req.set_body(outer, "multipart/mixed;boundary=outer")
    assert has_location(req)


def test_has_location_false_for_plain_requests() -> None:
    assert not has_location(request("invite_sdp"))
    assert not has_location(request("invite_delayed_offer"))
    assert not has_location(request("invite_sdp_provider_info"))


def test_unparseable_multipart_mentioning_pidf_counts_as_located() -> None:
    req = request("invite_delayed_offer")
    req.set_body(
        b"--x\r\nContent-Type: application/pidf+xml\r\n\r\n<presence/>",
        "multipart/mixed;boundary=x",
    )
    assert has_location(req)
    before = req.to_bytes()
    add(req)
    assert req.to_bytes() == before


@pytest.mark.parametrize(
    ("cid_domain", "random"),
    [
        ("gw example.com", RANDOM),
        ("gw.example.com>", RANDOM),
        ("[2001:db8::1]", RANDOM),
        (CID_DOMAIN, ""),
        (CID_DOMAIN, "a@b"),
        (CID_DOMAIN, "a..b"),
        (CID_DOMAIN, "x" * 57),
    ],
)
def test_bad_content_id_parts_are_refused_and_leave_the_request(
    cid_domain: str, random: str
) -> None:
    req = request("invite_sdp")
    before = req.to_bytes()
    with pytest.raises(ValueError):
        add_location_by_value(
            req, DESK, ENTITY, cid_domain=cid_domain, now_iso=NOW, boundary_random=random
        )
    assert req.to_bytes() == before


def test_bad_location_leaves_the_request_unchanged() -> None:
    req = request("invite_sdp", ("Contact:", "Content-Disposition: session\nContact:"))
    before = req.to_bytes()
    with pytest.raises(ValueError):
        add(req, DESK.model_copy(update={"street": "\x1b[31m"}))
    assert req.to_bytes() == before


# -- split_multipart (RFC 2046 section 5.1) -------------------------------------------------


def test_split_multipart_skips_preamble_and_epilogue_and_unfolds() -> None:
    body = (
        b"This is the preamble.\r\n"
        b"--b1  \r\n"  # transport padding after the boundary
        b"Content-Type: text/plain\r\n"
        b"X-Long: first\r\n second\r\n"
        b"X-Long: ignored repeat\r\n"
        b"\r\n"
        b"--b1x is not a delimiter\r\n"
        b"--b1\r\n"
        b"\r\n"
        b"no headers\r\n"
        b"--b1--\r\n"
        b"epilogue --b1\r\n"
    )
    assert split_multipart(body, 'Multipart/Mixed; charset=x; Boundary="b1"') == [
        ({"content-type": "text/plain", "x-long": "first second"}, b"--b1x is not a delimiter"),
        ({}, b"no headers"),
    ]


def test_split_multipart_tolerates_bare_lf() -> None:
    body = b"--b\nContent-Type: application/sdp\n\nv=0\n--b--"
    assert split_multipart(body, "multipart/mixed;boundary=b") == [
        ({"content-type": "application/sdp"}, b"v=0")
    ]


def test_split_multipart_empty_parts() -> None:
    body = b"--b\r\nContent-Type: a/b\r\n--b\r\n\r\n--b--"
    assert split_multipart(body, "multipart/mixed;boundary=b") == [
        ({"content-type": "a/b"}, b""),
        ({}, b""),
    ]


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"--b\r\n\r\nx\r\n--b--", "application/sdp"),
        (b"--b\r\n\r\nx\r\n--b--", "multipart/mixed"),
        (b"--b\r\n\r\nx\r\n--b", "multipart/mixed;boundary=b"),  # no close delimiter
        (b"--b--\r\n", "multipart/mixed;boundary=b"),  # no opening delimiter
        (b"--b\r\nno colon here\r\n\r\nx\r\n--b--", "multipart/mixed;boundary=b"),
        (b"--b\r\n\r\nx\r\n--b--", "multipart/mixed;boundary=b\u00e4"),
    ],
)
def test_split_multipart_refuses_malformed_bodies(body: bytes, content_type: str) -> None:
    with pytest.raises(MultipartError):
        split_multipart(body, content_type)


def test_parse_content_type() -> None:
    assert parse_content_type('multipart/mixed; boundary="a \\"b\\""; X=1') == (
        "multipart/mixed",
        {"boundary": 'a "b"', "x": "1"},
    )
    assert parse_content_type(" APPLICATION/SDP ") == ("application/sdp", {})


@given(
    contents=st.lists(st.binary(max_size=200), min_size=1, max_size=5),
    base=st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True),
)
def test_build_and_split_round_trip(contents: list[bytes], base: str) -> None:
    parts = [encode_part([("Content-Type", "application/octet-stream")], c) for c in contents]
    boundary = unique_boundary(base, parts)
    assert all(boundary.encode() not in part for part in parts)
    body = build_multipart(parts, boundary)
    assert split_multipart(body, f"multipart/mixed;boundary={boundary}") == [
        ({"content-type": "application/octet-stream"}, c) for c in contents
    ]
