"""OPTIONS keep-alives to trunk gateways (SPEC O-3), as data in the dialplan.

Modelled on Kamailio's dispatcher probing (``ds_ping_interval``, ``ds_probing_threshold``,
``ds_inactive_threshold``): every gateway of a trunk that has a ``keepalive`` block gets an
OPTIONS request every ``interval_s``; ``down_after`` probes in a row without an answer
(or answered with one of the trunk's failover codes) mark it down, ``up_after`` answered
probes in a row mark it up again. A trunk without ``keepalive`` is never probed and its
gateways always count as up (the default: probing a peer is opt-in, as in Kamailio).
"""

from __future__ import annotations

from typing import Annotated, Protocol

from pydantic import Field, model_validator

from gateway.config.fields import Frozen, problem

__all__ = ["Keepalive", "gateway_key"]


class Keepalive(Frozen):
    """How a trunk's gateways are probed with OPTIONS (SPEC O-3).

    ``timeout_s`` is how long a probe waits for a final response before it counts as
    failed; it must be shorter than ``interval_s`` so probes never overlap.
    """

    interval_s: Annotated[float, Field(gt=0)] = 30.0
    timeout_s: Annotated[float, Field(gt=0)] = 5.0
    down_after: Annotated[int, Field(ge=1, le=100)] = 3
    up_after: Annotated[int, Field(ge=1, le=100)] = 2

    @model_validator(mode="after")
    def _timeout_below_interval(self) -> Keepalive:
        if self.timeout_s >= self.interval_s:
            raise problem(
                "keepalive",
                f"timeout_s ({self.timeout_s:g}) must be shorter than interval_s "
                f"({self.interval_s:g})",
            )
        return self


class _GatewayLike(Protocol):
    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def transport(self) -> str: ...


def gateway_key(gateway: _GatewayLike) -> str:
    """``transport:host:port``: how health maps, logs, metrics and topics name a gateway
    (the same text as a B2BUA hop's ``gateway``)."""
    return f"{gateway.transport}:{gateway.host}:{gateway.port}"
