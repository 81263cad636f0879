"""Lock-down of the agent side while an emergency call is up (SPEC E-8, C-4).

Theory of operation
-------------------
While an agent is on an emergency call (or an emergency callback, SPEC C-4), the agent side
may only *end* the call. The emergency-services side keeps full control: a REFER from it is
honoured (RFC 6881 SP-37/SP-38: the PSAP may transfer the call), as is its hold. Every
request the B2BUA sees from either side of such a call -- and every new request from that
agent -- goes through :func:`agent_request_allowed`, a pure lookup in the table below.

====================  ===============================  =================================
side / dialog         request                          verdict
====================  ===============================  =================================
emergency side        anything                         allowed (RFC 6881 SP-37/38)
agent, in dialog      BYE, CANCEL, ACK, PRACK          allowed: ends or completes the call
agent, in dialog      re-INVITE / UPDATE, not a hold   allowed: session refresh (RFC 4028),
                                                       codec or address change
agent, in dialog      re-INVITE / UPDATE holding       403 + Warning
agent, in dialog      REFER                            403 + Warning (no transfer)
agent, in dialog      INFO, OPTIONS, NOTIFY, others    allowed (DTMF, keep-alives)
agent, new request    INVITE, another emergency call   allowed (SPEC E-8, E-3)
agent, new request    INVITE, anything else            403 + Warning
agent, new request    REFER                            403 + Warning
agent, new request    REGISTER, OPTIONS, SUBSCRIBE...  allowed: the agent must stay
                                                       registered to be called back (C-1)
====================  ===============================  =================================

403 is used for every refusal so that the agent's phone shows the Warning text rather than
treating the answer as "busy" (486) or a media problem (488); a refused re-INVITE leaves the
session as it was (RFC 3261 section 14.1), so the emergency call itself is unaffected.

:func:`is_hold_offer` says whether an SDP offer puts the call on hold: a direction of
``sendonly`` or ``inactive`` (RFC 3264 section 8.4) or the old RFC 2543 connection address
``0.0.0.0``, at session or media level.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Verdict", "agent_request_allowed", "is_hold_offer"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a request may go on; if not, the status and the Warning text to answer with
    (RFC 3261 section 20.43, warn-code 399)."""

    allowed: bool
    status: int | None = None
    warning: str | None = None


ALLOWED = Verdict(True)

_NO_TRANSFER = Verdict(
    False, 403, "transfer is not allowed during an emergency call; only hanging up is"
)
_NO_HOLD = Verdict(False, 403, "hold is not allowed during an emergency call; only hanging up is")
_NO_NEW_CALL = Verdict(
    False,
    403,
    "an emergency call is in progress: new calls are refused, except another emergency call",
)

#: agent side, in the emergency call's dialog: methods refused whatever they carry
_REFUSED_IN_DIALOG: dict[str, Verdict] = {"REFER": _NO_TRANSFER}
#: agent side, in dialog: methods that carry an SDP offer and are refused when it holds
_HOLD_METHODS = frozenset({"INVITE", "UPDATE"})
#: agent side, outside the dialog: new requests that are refused
_REFUSED_NEW: dict[str, Verdict] = {"INVITE": _NO_NEW_CALL, "REFER": _NO_TRANSFER}


def agent_request_allowed(
    method: str,
    *,
    in_dialog: bool,
    is_hold_reinvite: bool = False,
    from_emergency_side: bool = False,
    another_emergency: bool = False,
) -> Verdict:
    """The lock-down verdict for a request during an emergency call (SPEC E-8).

    ``in_dialog``: the request belongs to the emergency call's dialog (otherwise it is a
    new request from the agent who is on that call). ``is_hold_reinvite``: the request (a
    re-INVITE or an UPDATE) carries an SDP offer that puts the call on hold, see
    :func:`is_hold_offer`. ``from_emergency_side``: it comes from the emergency-services
    leg. ``another_emergency``: a new INVITE that is itself an emergency call (detected by
    :func:`gateway.emergency.numbers.detect`).
    """
    if from_emergency_side:
        return ALLOWED
    method = method.upper()
    if in_dialog:
        refused = _REFUSED_IN_DIALOG.get(method)
        if refused is not None:
            return refused
        if method in _HOLD_METHODS and is_hold_reinvite:
            return _NO_HOLD
        return ALLOWED
    if method == "INVITE" and another_emergency:
        return ALLOWED  # SPEC E-3: an emergency call is never refused
    return _REFUSED_NEW.get(method, ALLOWED)


_HOLD_DIRECTIONS = frozenset({"sendonly", "inactive"})
_DIRECTIONS = frozenset({"sendrecv", "sendonly", "recvonly", "inactive"})
#: RFC 2543 hold: the connection address set to "any" (and its IPv6 look-alike)
_NULL_ADDRESSES = frozenset({"0.0.0.0", "::"})


def _connection_address(value: str) -> str | None:
    # c=<nettype> <addrtype> <connection-address>[/ttl][/n]  (RFC 4566 section 5.7)
    parts = value.split()
    return parts[2].split("/")[0] if len(parts) >= 3 else None


def is_hold_offer(sdp: bytes) -> bool:
    """Whether an SDP offer puts the call on hold (RFC 3264 section 8.4, RFC 2543).

    True when any media stream still in use (port not 0) ends up ``sendonly`` or
    ``inactive`` -- its own ``a=`` direction, else the session-level one (RFC 4566
    section 6: media-level attributes override session-level ones) -- or when its connection
    address (media ``c=``, else session ``c=``) is ``0.0.0.0``. With no media line, the
    session-level values decide. ``recvonly`` is not a hold (the offerer still listens).
    An empty or unreadable body is not a hold.
    """
    text = sdp.decode("utf-8", errors="replace")
    session_direction: str | None = None
    session_address: str | None = None
    # one entry per m= line: [port, direction, address]
    media: list[tuple[str, str | None, str | None]] = []
    port = ""
    direction: str | None = None
    address: str | None = None
    in_media = False
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if len(line) < 2 or line[1] != "=":
            continue
        kind, value = line[0], line[2:].strip()
        if kind == "m":
            if in_media:
                media.append((port, direction, address))
            in_media = True
            fields = value.split()
            port = fields[1].split("/")[0] if len(fields) >= 2 else ""
            direction = address = None
        elif kind == "a" and value.lower() in _DIRECTIONS:
            if in_media:
                direction = value.lower()
            else:
                session_direction = value.lower()
        elif kind == "c":
            if in_media:
                address = _connection_address(value)
            else:
                session_address = _connection_address(value)
    if in_media:
        media.append((port, direction, address))
    if not media:
        return session_direction in _HOLD_DIRECTIONS or session_address in _NULL_ADDRESSES
    for stream_port, stream_direction, stream_address in media:
        if stream_port == "0":
            continue  # a rejected or disabled stream (RFC 3264 section 6) holds nothing
        effective_direction = stream_direction or session_direction
        effective_address = stream_address or session_address
        if effective_direction in _HOLD_DIRECTIONS or effective_address in _NULL_ADDRESSES:
            return True
    return False
