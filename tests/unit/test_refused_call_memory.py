"""A refused INVITE leaves no reference cycle (found by the soak, issue 13).

Under the paced GC (gateway/gcpolicy.py) cyclic garbage waits for the 10-minute full
collection; a flood of INVITEs to unrouted users grew the gateway ~16 MB per 100,000.
"""

from __future__ import annotations

import gc

from b2bua_peers import CALLER, FixedRouter, Net

from gateway.b2bua.call import Call
from gateway.b2bua.decisions import RouteRefusal


def test_a_refused_invite_is_freed_by_reference_counting_alone() -> None:
    net = Net(FixedRouter(RouteRefusal(404, "Not Found")))
    caller = net.peer(CALLER)
    caller.invite()
    assert caller.final().status == 404
    gc.collect()
    gc.disable()
    try:
        net.advance(40.0)  # Timer H/J: the server transaction goes
        calls = [o for o in gc.get_objects() if isinstance(o, Call)]
        assert calls == [], "a refused call outlived its transaction (a reference cycle)"
    finally:
        gc.enable()
