"""Emergency callbacks: who rings, and which priority headers survive (SPEC C-1, C-2).

Theory of operation
-------------------
An emergency service calls back the DID the agent presented (SPEC E-4). For an inbound
INVITE the B2BUA looks the Request-URI user up in the reservation store
(``ReservationStore.lookup(did, now)``) and hands the answer to :func:`is_callback`, which
decides -- from facts only, ``now`` given -- whether the call is a callback:

=====================================  ==========================================
facts                                  decision
=====================================  ==========================================
no reservation for the DID             ordinary inbound call
reservation expired (``now >= expires``)  ordinary inbound call (C-1 "after the window")
not from a trunk                       ordinary (callbacks come from the PSTN side)
from an untrusted trunk                ordinary (O-4: the bypass cannot be forged)
from a trusted trunk, inside window    callback: ring the reserving agent ahead of
                                       every queue, bypassing rules, capacity and
                                       presence, DND included (C-1)
=====================================  ==========================================

RFC 7090 ``Priority: psap-callback`` and RFC 7135 ``Resource-Priority: esnet.*`` are
honoured only from trusted trunks (SPEC C-2, RFC 7090 section 5.3: a proxy must not let
untrusted parties claim PSAP-callback treatment). The decision above never depends on them:
the reservation and the trunk's trust are what make a callback, so a forged header can
neither create nor prevent one. :func:`strip_untrusted_priority` removes them from requests
that do not come from a trusted trunk; it is the only function of this package that
mutates its argument.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from gateway.sip.message import Request
from gateway.stores.ports import Reservation

__all__ = [
    "CallbackDecision",
    "is_callback",
    "priority_headers_allowed",
    "strip_untrusted_priority",
]


@dataclass(frozen=True, slots=True)
class CallbackDecision:
    """Whether an inbound call is an emergency callback (SPEC C-1), and why.

    When ``callback`` is true, ring ``agent_id`` first, bypassing queues, routing rules,
    capacity and presence (DND included), even if the agent is on another call; treat the
    call as an emergency call for E-5, E-7, E-8 and E-9 (SPEC C-4); on no answer or no
    registration, go to the agent's ``callback_fallback`` (C-3). ``reason`` is for the log.
    """

    callback: bool
    reason: str
    agent_id: str | None = None
    reservation: Reservation | None = None
    test: bool = False


def _number(text: str) -> str:
    # Compare DIDs by their digits: "+1 (555) 010-0001" is "+15550100001" (RFC 3966
    # section 5.1.1 visual separators), and the phone-context or other parameters in a SIP
    # user part do not change the number.
    return unquote(text).partition(";")[0].translate(str.maketrans("", "", "-.() ")).lstrip("+")


def is_callback(
    request_uri_user: str | None,
    source_trunk: str | None,
    trusted: bool,
    reservation: Reservation | None,
    now: float,
) -> CallbackDecision:
    """Decide whether an inbound INVITE is an emergency callback (SPEC C-1).

    ``request_uri_user`` is the user part of the Request-URI as received; ``source_trunk``
    the trunk the INVITE came from (``None``: not from a trunk); ``trusted`` that trunk's
    trust; ``reservation`` what the store holds for the DID (``None`` when nothing);
    ``now`` in the store's clock (unix seconds). A reservation is live while
    ``now < expires_at``, as in the store.
    """
    if reservation is None:
        return CallbackDecision(False, "no callback reservation for this number")
    if request_uri_user is None or _number(request_uri_user) != _number(reservation.did):
        return CallbackDecision(
            False, f"reservation is for {reservation.did}, not {request_uri_user}"
        )
    if now >= reservation.expires_at:
        return CallbackDecision(
            False,
            f"callback window of {reservation.did} closed "
            f"{now - reservation.expires_at:.0f} s ago: ordinary inbound call",
        )
    if source_trunk is None:
        return CallbackDecision(False, "not from a trunk: callbacks come from a trunk")
    if not trusted:
        return CallbackDecision(
            False,
            f"trunk {source_trunk!r} is not trusted: routed as an ordinary call; mark the "
            "trunk that carries emergency callbacks trusted: true",
        )
    return CallbackDecision(
        True,
        f"callback to {reservation.did} reserved by agent {reservation.agent_id!r}",
        agent_id=reservation.agent_id,
        reservation=reservation,
        test=reservation.test,
    )


def priority_headers_allowed(trusted: bool) -> bool:
    """Whether ``Priority: psap-callback`` / ``Resource-Priority: esnet.*`` may be kept
    (SPEC C-2, RFC 7090 section 5.3, RFC 7135 section 2): only from trusted trunks."""
    return trusted


def _is_psap_callback(value: str) -> bool:
    # RFC 3261 section 20.26: Priority is a single token, compared case-insensitively
    return value.strip().lower() == "psap-callback"


def _is_esnet(value: str) -> bool:
    # RFC 4412 section 3.1: r-value = namespace "." r-priority; RFC 7135: namespace esnet
    return value.strip().lower().startswith("esnet.")


def strip_untrusted_priority(request: Request) -> list[str]:
    """Remove emergency priority markers from a request that is not from a trusted trunk.

    Removes every ``Priority: psap-callback`` (RFC 7090 section 5.3) and every ``esnet.*``
    value of ``Resource-Priority`` (RFC 7135; other namespaces stay, and the header goes
    only when no value is left). Returns the removed items as header lines
    (``"Resource-Priority: esnet.1"``), empty when nothing was removed.

    Not pure: this **mutates** ``request``. Call it only when
    :func:`priority_headers_allowed` is false (SPEC C-2).
    """
    removed: list[str] = []
    priorities = request.get_all("Priority")
    if any(_is_psap_callback(value) for value in priorities):
        kept = [value for value in priorities if not _is_psap_callback(value)]
        removed.extend(
            f"Priority: {value.strip()}" for value in priorities if _is_psap_callback(value)
        )
        request.remove("Priority")
        for value in kept:
            request.add("Priority", value)
    resource = request.get_all("Resource-Priority")  # list header: split into r-values
    if any(_is_esnet(value) for value in resource):
        removed.extend(
            f"Resource-Priority: {value.strip()}" for value in resource if _is_esnet(value)
        )
        request.set_list("Resource-Priority", [value for value in resource if not _is_esnet(value)])
    return removed
