"""A finished transaction keeps only what its absorbing state resends (issue 10).

While a transaction waits out Timer D, H, I, J, K, L or M it must not hold the parsed
request and response: at a few hundred calls/s those waiting transactions are most of the
gateway's memory. Each test checks that the layer let the message go (no reference left
but the test's own) and that the wire behaviour of the absorbing state is unchanged: a
retransmitted request gets the same response bytes, a retransmitted final response the
same ACK bytes (RFC 3261 17.1.1.2, 17.2.1, 17.2.2; RFC 6026 Accepted).
"""

from __future__ import annotations

import sys

import pytest
from test_transaction import (
    CARRIER,
    CARRIER_TCP,
    UDP_PEER,
    advance,
    events,
    load,
    new_layer,
    our_request,
    outgoing,
    peer_response,
)

from gateway.sip.message import Request, make_response
from gateway.sip.transaction import (
    MessageReleased,
    RequestReceived,
    ResponseReceived,
    ServerTransaction,
    TransactionLayer,
)


def only_the_test_holds(message: object) -> bool:
    """True when no object but the caller's variable refers to ``message``."""
    # getrefcount counts its own argument and this function's parameter
    return sys.getrefcount(message) <= 3


def received(layer: TransactionLayer, request: Request) -> tuple[ServerTransaction, Request]:
    layer.receive(request, UDP_PEER, 0.0)
    (ev,) = events(layer)
    assert isinstance(ev, RequestReceived)
    outgoing(layer)
    return ev.transaction, ev.request


@pytest.mark.parametrize("status", [200, 486])
def test_a_server_invite_lets_its_messages_go_and_still_resends_its_final_response(
    status: int,
) -> None:
    layer = new_layer()
    tx, request = received(layer, load("tx_invite"))
    response = make_response(request, status, to_tag="gwtag")
    layer.send_response(tx, response, 0.0)
    (first,) = outgoing(layer)
    # the TU may still read the request until it has pulled every event
    assert tx.request is request and tx.last_response is response
    assert events(layer) == []
    with pytest.raises(MessageReleased):
        _ = tx.request
    assert tx.last_response is None
    del response
    assert only_the_test_holds(request)
    assert tx.method == "INVITE" and "INVITE" in repr(tx)
    # a retransmitted INVITE gets the same bytes, with no event (17.2.1, RFC 6026 7.1)
    layer.receive(load("tx_invite"), UDP_PEER, 0.1)
    (again,) = outgoing(layer)
    assert again == first
    assert events(layer) == []


def test_a_server_bye_lets_its_messages_go_and_still_resends_its_200() -> None:
    layer = new_layer()
    tx, request = received(layer, load("tx_bye", method="BYE"))
    layer.send_response(tx, make_response(request, 200, to_tag="gwtag"), 0.0)
    (first,) = outgoing(layer)
    events(layer)
    assert only_the_test_holds(request)
    assert tx.state == "completed" and tx.method == "BYE"
    layer.receive(load("tx_bye", method="BYE"), UDP_PEER, 1.0)  # Timer J still runs
    assert outgoing(layer) == [first]
    advance(layer, 40.0)
    assert layer.server_count == 0


def test_a_provisional_response_keeps_the_request_for_the_final_one() -> None:
    layer = new_layer()
    tx, request = received(layer, load("tx_invite"))
    layer.send_response(tx, make_response(request, 180, to_tag="gwtag"), 0.0)
    outgoing(layer)
    events(layer)
    assert tx.request is request  # the TU still answers it


def test_a_client_bye_lets_its_messages_go_once_answered() -> None:
    layer = new_layer()
    request = our_request("tx_bye", method="BYE")
    tx = layer.send_request(request, CARRIER, 0.0)
    (sent,) = outgoing(layer)
    layer.receive(peer_response(sent.data, 200), CARRIER, 0.1)
    ev = layer.next_event()  # the TU handles the event: the request is still there
    assert isinstance(ev, ResponseReceived) and ev.transaction.request is request
    response = ev.response
    del ev
    assert layer.next_event() is None
    with pytest.raises(MessageReleased):
        _ = tx.request
    assert only_the_test_holds(request) and only_the_test_holds(response)
    # a retransmitted 200 is absorbed (Completed, Timer K)
    layer.receive(peer_response(sent.data, 200), CARRIER, 0.2)
    assert events(layer) == [] and outgoing(layer) == []


def test_a_client_invite_rejected_still_resends_the_same_ack() -> None:
    layer = new_layer()
    request = our_request()
    tx = layer.send_request(request, CARRIER, 0.0)
    (sent,) = outgoing(layer)
    layer.receive(peer_response(sent.data, 486), CARRIER, 0.1)
    (ack,) = outgoing(layer)
    events(layer)
    assert only_the_test_holds(request)
    layer.receive(peer_response(sent.data, 486), CARRIER, 0.5)  # Timer D runs
    assert outgoing(layer) == [ack]
    assert events(layer) == []
    assert tx.state == "completed"


def test_a_client_invite_answered_2xx_keeps_its_request_until_the_tu_releases_it() -> None:
    layer = new_layer()
    request = our_request()
    tx = layer.send_request(request, CARRIER, 0.0)
    (sent,) = outgoing(layer)
    tx.owner = "the call"
    layer.receive(peer_response(sent.data, 200), CARRIER, 0.1)
    events(layer)
    # a 2xx from another fork reaches the TU, which builds its ACK from the request
    assert tx.request is request and tx.last_response is None
    layer.release(tx)
    assert tx.owner is None
    assert tx.request is request  # released on the next drained queue, not in the middle
    assert events(layer) == []
    assert only_the_test_holds(request)
    # a 2xx retransmission still goes to the TU (no ACK remembered), without the request
    layer.receive(peer_response(sent.data, 200), CARRIER, 0.6)
    (ev,) = events(layer)
    assert isinstance(ev, ResponseReceived) and ev.transaction is tx


def test_an_acked_2xx_is_let_go_and_a_late_invite_copy_still_gets_nothing() -> None:
    layer = new_layer()
    tx, request = received(layer, load("tx_invite"))
    layer.send_response(tx, make_response(request, 200, to_tag="gwtag"), 0.0)
    outgoing(layer)
    layer.receive(load("tx_ack", to_params=";tag=gwtag"), UDP_PEER, 0.1)
    (ack,) = events(layer)
    assert ack.transaction is tx and tx.state == "accepted"
    assert tx._data == b""  # RFC 6026 7.1: the 2xx is never resent once ACKed
    layer.receive(load("tx_invite"), UDP_PEER, 0.2)  # absorbed, as before
    assert outgoing(layer) == [] and events(layer) == []
    assert advance(layer, 40.0) == [] and layer.server_count == 0


def test_compact_right_sizes_the_tables_after_a_load_and_keeps_what_lives() -> None:
    layer = new_layer()
    for n in range(2000):  # a load: 2,000 BYEs answered, lingering in Timer J
        tx, request = received(
            layer, load("tx_bye", method="BYE", via_params=f";branch=z9hG4bK{n}")
        )
        layer.send_response(tx, make_response(request, 200, to_tag="gwtag"), 0.0)
    outgoing(layer)
    events(layer)
    live, live_request = received(layer, load("tx_invite", via_params=";branch=z9hG4bKlive"))
    layer.send_response(live, make_response(live_request, 486, to_tag="gwtag"), 0.0)
    (final,) = outgoing(layer)
    events(layer)
    advance(layer, 33.0)  # Timer J ends the BYEs, Timer H the INVITE
    layer.receive(load("tx_invite", via_params=";branch=z9hG4bKlate"), UDP_PEER, 33.0)
    events(layer)
    outgoing(layer)
    assert layer.server_count == 1
    grown = sys.getsizeof(layer._servers)
    layer.compact()
    assert sys.getsizeof(layer._servers) < grown / 10
    # what lives is still found: a retransmission gets its 100 Trying again
    layer.receive(load("tx_invite", via_params=";branch=z9hG4bKlate"), UDP_PEER, 33.1)
    (again,) = outgoing(layer)
    assert again.data.startswith(b"SIP/2.0 100") and final.data.startswith(b"SIP/2.0 486")
    assert layer.get_timer() is None  # no timer for a 100-only server INVITE


def test_a_client_invite_rejected_over_tcp_ends_at_once_and_lets_its_request_go() -> None:
    layer = new_layer()
    request = our_request(transport="TCP")
    tx = layer.send_request(request, CARRIER_TCP, 0.0)
    (sent,) = outgoing(layer)
    layer.receive(peer_response(sent.data, 486), CARRIER_TCP, 0.1)
    events(layer)
    assert tx.state == "terminated"  # Timer D is 0 on a reliable transport (17.1.1.2)
    assert only_the_test_holds(request)
