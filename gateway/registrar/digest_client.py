"""HTTP Digest for SIP, the client side (RFC 3261 sections 22.2 and 22.3, RFC 7616).

:func:`make_authorization` and :func:`authorization_for_challenge` build the
``Authorization``/``Proxy-Authorization`` value a UAC sends (our tests);
:func:`authorized_retry` turns a request and the 401/407 it got into the same request with
credentials (the B-leg INVITE, a BYE or re-INVITE, a REGISTER towards a trunk). The server
side is :mod:`gateway.registrar.digest`.
"""

from __future__ import annotations

from gateway.registrar.digest import (
    DigestParseError,
    canonical_algorithm,
    compute_ha1,
    compute_response,
    parse_challenge,
    quote_param,
)
from gateway.sip.message import Request, Response

__all__ = [
    "authorization_for_challenge",
    "authorized_retry",
    "chosen_challenge",
    "make_authorization",
]

#: RFC 8760 section 2.4: of several challenges, answer the strongest we support
_PREFERENCE = ("SHA-256", "MD5")


def make_authorization(
    *,
    method: str,
    uri: str,
    username: str,
    realm: str,
    nonce: str,
    cnonce: str,
    password: str | None = None,
    ha1: str | None = None,
    nc: int = 1,
    algorithm: str = "SHA-256",
    qop: str | None = "auth",
    opaque: str | None = None,
) -> str:
    """The ``Authorization``/``Proxy-Authorization`` value a UAC sends (RFC 3261 22.2, 22.3).

    Give ``password`` or a precomputed ``ha1`` (of the algorithm's hash function).
    ``qop=None`` builds the RFC 2069 form (for a challenge without qop).
    """
    canonical = canonical_algorithm(algorithm)
    if canonical is None:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    if ha1 is None:
        if password is None:
            raise ValueError("make_authorization needs password or ha1")
        ha1 = compute_ha1(canonical, username, realm, password)
    nc_text = f"{nc:08x}"
    response = compute_response(
        algorithm=canonical,
        ha1=ha1,
        method=method,
        uri=uri,
        nonce=nonce,
        nc=nc_text if qop else None,
        cnonce=cnonce if qop else None,
        qop=qop,
    )
    parts = [
        f"username={quote_param(username)}",
        f"realm={quote_param(realm)}",
        f"nonce={quote_param(nonce)}",
        f"uri={quote_param(uri)}",
        f'response="{response}"',
        f"algorithm={canonical}",
    ]
    if qop:
        parts += [f"cnonce={quote_param(cnonce)}", f"qop={qop}", f"nc={nc_text}"]
    if opaque is not None:
        parts.append(f"opaque={quote_param(opaque)}")
    return "Digest " + ", ".join(parts)


def authorization_for_challenge(
    challenge_value: str,
    *,
    method: str,
    uri: str,
    username: str,
    password: str,
    cnonce: str,
    nc: int = 1,
) -> str:
    """Answer one ``WWW-Authenticate``/``Proxy-Authenticate`` value (UAC side).

    Uses the challenge's realm, nonce, opaque and algorithm (MD5 when absent), and
    ``qop=auth`` when offered. Raises :class:`DigestParseError` for a malformed challenge
    and ValueError for an algorithm or qop we cannot answer.
    """
    params = parse_challenge(challenge_value)
    realm = params.get("realm")
    nonce = params.get("nonce")
    if realm is None or nonce is None:
        raise DigestParseError("challenge without realm or nonce")
    qop: str | None = None
    if "qop" in params:
        offered = {item.strip().lower() for item in params["qop"].split(",")}
        if "auth" not in offered:
            raise ValueError(f"cannot answer qop {params['qop']!r}")
        qop = "auth"
    return make_authorization(
        method=method,
        uri=uri,
        username=username,
        realm=realm,
        nonce=nonce,
        cnonce=cnonce,
        password=password,
        nc=nc,
        algorithm=params.get("algorithm", "MD5"),
        qop=qop,
        opaque=params.get("opaque"),
    )


def chosen_challenge(response: Response, realm: str | None = None) -> str | None:
    """The challenge of a 401 (``WWW-Authenticate``) or 407 (``Proxy-Authenticate``) to
    answer: SHA-256 before MD5 (RFC 8760 section 2.4), of ``realm`` when one is given
    (None: any realm). None: no challenge we can answer (unknown algorithm, ``auth-int``
    only, other realm, malformed)."""
    name = "WWW-Authenticate" if response.status == 401 else "Proxy-Authenticate"
    usable: dict[str, str] = {}
    for value in response.get_all(name):
        if not value.lstrip().lower().startswith("digest"):
            continue
        try:
            params = parse_challenge(value)
        except DigestParseError:
            continue
        algorithm = canonical_algorithm(params.get("algorithm", "MD5"))
        qops = {item.strip().lower() for item in params.get("qop", "auth").split(",")}
        if algorithm not in _PREFERENCE or "auth" not in qops or "nonce" not in params:
            continue
        if realm is not None and params.get("realm") != realm:
            continue
        usable.setdefault(algorithm, value)
    return next((usable[a] for a in _PREFERENCE if a in usable), None)


def authorized_retry(
    request: Request,
    response: Response,
    *,
    username: str,
    password: str,
    realm: str | None,
    cnonce: str,
    cseq: int,
) -> Request | None:
    """``request`` again, answering the 401/407 ``response`` (RFC 3261 sections 8.1.3.5, 22).

    Same Call-ID, From (tag included), To and body; CSeq ``cseq`` (one more than the
    challenged request's, the caller's dialog or leg keeps count); no Via (the sender adds
    one with a new branch); an ``Authorization`` (401) or ``Proxy-Authorization`` (407)
    with qop=auth, nc=00000001 and ``cnonce`` when the challenge offers qop. None when no
    challenge can be answered (see :func:`chosen_challenge`).
    """
    value = chosen_challenge(response, realm)
    if value is None:
        return None
    uri = request.uri_text
    try:
        credentials = authorization_for_challenge(
            value,
            method=request.method,
            uri=uri,
            username=username,
            password=password,
            cnonce=cnonce,
        )
    except ValueError:  # DigestParseError included
        return None
    header = "Authorization" if response.status == 401 else "Proxy-Authorization"
    retry = Request(request.method, uri, request.copy_headers(), request.body)
    retry.remove("Via")
    retry.remove(header)
    retry.set("CSeq", f"{cseq} {request.method}")
    retry.add(header, credentials)
    return retry
