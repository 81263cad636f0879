"""RFC 3261 section 12 dialogs, sans-I/O.

API CONTRACT (stub: implementation in progress).

    d = Dialog.as_uac(invite, response)      # from our INVITE and a 1xx-with-tag / 2xx
    d = Dialog.as_uas(invite, local_tag, local_contact)   # from a received INVITE
    req = d.create_request("BYE", ids)       # in-dialog request: CSeq+1, Route set, R-URI
    ack = d.create_ack(invite_2xx, ids)      # ACK for a 2xx (section 13.2.2.4), CSeq of INVITE
    d.check_request(req)                     # remote CSeq order; raises DialogError(500)
    d.update_target(msg)                     # target refresh (re-INVITE/UPDATE and their 2xx)
    d.next_hop                               # SIP URI to send the next request to
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.sip.errors import SipError
from gateway.sip.headers import NameAddr
from gateway.sip.message import Request, Response

__all__ = ["Dialog", "DialogError", "DialogId"]


class DialogError(SipError):
    """An in-dialog request that the dialog refuses (500 for CSeq out of order, 481 unknown)."""

    status = 500
    reason = "Server Internal Error"


@dataclass(frozen=True, slots=True)
class DialogId:
    call_id: str
    local_tag: str
    remote_tag: str


@dataclass(slots=True)
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: NameAddr
    remote_uri: NameAddr
    remote_target: str
    route_set: list[NameAddr] = field(default_factory=list)
    local_cseq: int = 0
    remote_cseq: int | None = None
    secure: bool = False
    local_contact: str = ""
    state: str = "early"  # early | confirmed | terminated

    @classmethod
    def as_uac(cls, invite: Request, response: Response) -> Dialog: ...

    @classmethod
    def as_uas(cls, invite: Request, local_tag: str, local_contact: str) -> Dialog: ...
