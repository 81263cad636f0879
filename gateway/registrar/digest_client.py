"""HTTP Digest for SIP, the client side (RFC 3261 sections 22.2 and 22.3, RFC 7616).

:func:`make_authorization` and :func:`authorization_for_challenge` build the
``Authorization``/``Proxy-Authorization`` value a UAC sends: our tests, and later UAC
authentication towards trunks. The server side is :mod:`gateway.registrar.digest`.
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

__all__ = ["authorization_for_challenge", "make_authorization"]


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
