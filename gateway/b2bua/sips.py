"""The ``sips:`` policy (RFC 5630): a SIPS request leaves over TLS or not at all -- unless
it is an emergency call.

Theory of operation
-------------------
A ``sips:`` Request-URI asks that every hop of the request be TLS (RFC 3261 section 26.2.2,
RFC 5630 section 3.1). The gateway is a B2BUA: it keeps that promise on both legs. The
router's decision for a new INVITE passes through :func:`apply_sips_policy`:

=============================  ===================================================
the call                       what happens
=============================  ===================================================
not ``sips:``                  nothing
ordinary, arrived over TLS,    only the TLS hops are tried (the B-leg INVITE gets
some hop is TLS                a ``sips:`` Request-URI there)
ordinary, arrived over plain   480 Temporarily Unavailable with ``Warning: 380
transport or no TLS hop        SIPS Not Allowed`` (RFC 5630 section 3.1.3 and its
                               IANA Warning code): the caller may retry with sip:
emergency (911, sos...)        never refused (SPEC E-3): TLS hops first, then the
                               rest in their order; every non-TLS part logged as an
                               error (``sips_emergency_not_tls``): a call to the
                               PSAP in clear text beats no call at all
=============================  ===================================================

Queued (inbound) calls and callbacks are left alone: they come from trunks towards agents'
phones, whose registered transport is the phone's own choice.
"""

from __future__ import annotations

from gateway.b2bua.core import log
from gateway.b2bua.decisions import Decision, Emergency, Outbound, RouteRefusal
from gateway.sip.address import Address
from gateway.sip.errors import warning_value
from gateway.sip.message import Request

__all__ = ["apply_sips_policy", "is_sips"]

#: RFC 5630 section 6 / the IANA Warning codes: the SIPS scheme cannot be served here
SIPS_NOT_ALLOWED = 380


def is_sips(request: Request) -> bool:
    """The Request-URI's scheme is ``sips`` (any case, RFC 3261 section 19.1.4)."""
    return request.uri_text[:5].lower() == "sips:"


def apply_sips_policy(
    request: Request, source: Address, decision: Decision, host: str = "gateway"
) -> Decision:
    """The decision for a new INVITE, kept, narrowed to TLS hops, or refused (the table in
    this module's docstring). ``source`` is where the INVITE arrived from (its transport is
    the A-leg's); ``host`` names us in a Warning."""
    if not is_sips(request):
        return decision
    arrived_secure = source.transport == "tls"
    if isinstance(decision, Emergency):
        return decision if decision.call.callback else _emergency(decision, arrived_secure)
    if not isinstance(decision, Outbound):
        return decision
    secure = [hop for hop in decision.hops if hop.address.transport == "tls"]
    if arrived_secure and secure:
        return Outbound(secure, decision.agent, decision.caller_id)
    why = (
        "the request arrived over a transport that is not TLS"
        if not arrived_secure
        else "no TLS path to the destination"
    )
    log.warning("sips_refused", source=source.transport, detail=why)
    return RouteRefusal(
        480,
        "Temporarily Unavailable",
        headers=(("Warning", warning_value(f"SIPS Not Allowed: {why}", SIPS_NOT_ALLOWED, host)),),
    )


def _emergency(decision: Emergency, arrived_secure: bool) -> Emergency:
    """SPEC E-3: never refused; TLS hops first, the rest after them, and said loudly."""
    secure = [hop for hop in decision.hops if hop.address.transport == "tls"]
    plain = [hop for hop in decision.hops if hop.address.transport != "tls"]
    if not arrived_secure or plain:
        log.error(
            "sips_emergency_not_tls",
            arrived_over_tls=arrived_secure,
            tls_hops=len(secure),
            other_hops=len(plain),
            detail="a sips: emergency call is placed anyway (never refused); "
            "parts of its path are not TLS",
        )
    if not plain or not secure:
        return decision
    return Emergency(decision.call, secure + plain, decision.warning)
