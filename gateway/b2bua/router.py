"""Routing of ordinary calls: the dialplan's ordered outbound rules to a trunk's gateways."""

from __future__ import annotations

from gateway.b2bua.b2bua import RouteRefusal
from gateway.b2bua.call import NextHop
from gateway.config.dialplan import Dialplan
from gateway.sip.message import Request
from gateway.sip.transaction import Address

__all__ = ["DialplanRouter"]


class DialplanRouter:
    """First matching outbound rule wins; its trunk's gateways become the hop list (R-2)."""

    def __init__(self, dialplan: Dialplan):
        self.dialplan = dialplan

    def route(
        self, request: Request, dialled: str, source: Address
    ) -> list[NextHop] | RouteRefusal:
        decision = self.dialplan.route(dialled)
        if decision is None:
            return RouteRefusal(404, "Not Found", f"no outbound rule matches {dialled[:64]}")
        trunk = decision.trunk
        codes = frozenset(trunk.failover_codes)
        return [
            NextHop(
                trunk=decision.trunk_name,
                address=Address(gw.transport, gw.host, gw.port),
                user=decision.user,
                failover_codes=codes,
                provisional_timeout=trunk.provisional_timeout_s,
            )
            for gw in trunk.gateways
        ]
