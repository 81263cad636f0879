"""Overload control thresholds (SPEC O-4): the dialplan's ``overload`` section.

Every limit has a default that leaves a healthy gateway alone; a limit of 0 switches that
signal off. See ``gateway/b2bua/admission.py`` for how the signals decide.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from gateway.config.fields import Frozen

__all__ = ["OverloadSettings"]


class OverloadSettings(Frozen):
    """When new ordinary calls are shed with 503 + Retry-After (SPEC O-4).

    Emergency calls, emergency callbacks and everything inside an admitted call are never
    shed; these limits only decide about new ordinary calls.
    """

    max_calls_in_setup: Annotated[int, Field(ge=0)] = 2000
    """Calls whose B-leg is being placed (INVITE sent, no answer yet) beyond which new
    ordinary calls are shed; 0: no limit."""
    max_loop_lag_ms: Annotated[float, Field(ge=0)] = 250.0
    """Smoothed lateness of the event loop (ms) beyond which new ordinary calls are shed:
    the loop is the gateway's one CPU, and its lag is the first sign it cannot keep up;
    0: not used. The default is well above the start-up and collection pauses of a busy
    shared machine (50 ms shed ordinary calls at start-up in tests), to be tuned per box."""
    target_loop_lag_ms: Annotated[float, Field(ge=0)] = 25.0
    """The loop lag (ms, smoothed) that the admission rate of new ordinary calls is steered
    to: above it (twice in a row, the first time) the rate is cut by a tenth every
    ``adjust_interval_ms``, below three quarters of it raised by a fifth, and lifted once
    nothing has been shed for two seconds (like RFC 7339's loss-based control). Emergency
    set-up time under load is about this lag, so keep it low; 0: no rate control."""
    min_admit_rate: Annotated[float, Field(ge=0)] = 200.0
    """New ordinary calls per second that the rate control always admits (the hard signals
    above still shed): pauses of a busy shared machine never shed a moderate load."""
    adjust_interval_ms: Annotated[float, Field(gt=0)] = 200.0
    """How often the admission rate is adjusted to the loop lag."""
    max_read_backlog: Annotated[float, Field(ge=0, le=1)] = 0.5
    """How full a UDP socket's receive queue may be (a share of its buffer, at two samples
    in a row) before new ordinary calls are shed; a datagram the kernel dropped for a full
    queue sheds too. This is the signal that the gateway is behind (the loop lag stays small
    while uvloop reads a few dozen datagrams per turn): past it the kernel drops INVITEs
    blindly, emergency ones among them. Linux only (SO_MEMINFO); 0: not used."""
    max_read_burst: Annotated[int, Field(ge=0)] = 0
    """Datagrams read in one sampling interval beyond which new ordinary calls are shed
    (the read backlog; machine-specific, so off by default); 0: not used."""
    per_source_rate: Annotated[float, Field(ge=0)] = 30.0
    """Requests per second from one stranger's address (not a trunk, not a registered
    agent's phone, not on a network trusted for unauthenticated phones) past which its
    requests are dropped unanswered (SPEC O-6, like Kamailio's pike); 0: no limit."""
    per_source_burst: Annotated[int, Field(ge=1)] = 60
    """Requests a stranger may send at once before ``per_source_rate`` applies."""
    sample_interval_ms: Annotated[float, Field(gt=0)] = 20.0
    """How often the loop lag and the read burst are sampled."""
    retry_after_s: Annotated[int, Field(ge=1, le=3600)] = 5
    """Retry-After (seconds) on the 503 of a shed call (RFC 3261 section 20.33)."""
