"""Overload control: may a new ordinary call start now? (SPEC O-4)

Theory of operation
-------------------
:class:`Admission` is sans-I/O: the adapter feeds it cheap signals with the time
(:meth:`Admission.observe`: the event loop's lag and the datagrams read since the last
sample, from ``gateway/transport/load.py``), and it counts the calls in set-up itself, as a
:class:`~gateway.b2bua.decisions.CallObserver` (a B-leg INVITE tried and not yet answered,
failed or ended). The B2BUA asks :meth:`Admission.shed` after the router has decided and
only for a new *ordinary* call (``Outbound`` or ``Queued``); the answer is the 503 to send.

Order of service under load (SPEC O-4):

========================================  ==============================================
traffic                                   under overload
========================================  ==============================================
responses, ACK/BYE/CANCEL/re-INVITE of    never consulted: served as always (an admitted
admitted calls                            call is never lost to overload)
emergency calls and callbacks             never consulted: the router's ``Emergency``
                                          decision, which keys on identity that cannot be
                                          forged (verified credentials, a registration
                                          from the source, a site's trusted network, a
                                          trusted trunk), never on what the request says
new ordinary calls                        503 + Retry-After while any signal is over its
                                          limit; admitted again as soon as none is
========================================  ==============================================

=====================  =====================================================================
signal                 over its limit when
=====================  =====================================================================
calls in set-up        ``max_calls_in_setup`` B-legs are ringing or trying (exact count)
loop lag               the smoothed lateness of the adapter's sampling timer exceeds
                       ``max_loop_lag_ms``: the one CPU is behind
read burst             more than ``max_read_burst`` datagrams were read in one sample
=====================  =====================================================================

A shed call costs one 503 from the server transaction that took the INVITE, which also
absorbs the caller's retransmissions (RFC 3261 section 17.2.1): no B-leg, no dialog, no
per-call log line; a count (:attr:`Admission.shed_calls`) and one log line when shedding
starts and when it stops.
"""

from __future__ import annotations

import structlog

from gateway.b2bua.call import Call, LegFailure, NextHop
from gateway.b2bua.decisions import CallObserverBase
from gateway.config.overload import OverloadSettings

__all__ = ["Admission", "OverloadSignal"]

log = structlog.get_logger("gateway.overload")

#: weight of the newest lag sample in the smoothed lag (the rest is the history)
LAG_SMOOTHING = 0.3


class OverloadSignal:
    """The names of the signals, as they appear in the log."""

    CALLS_IN_SETUP = "calls_in_setup"
    LOOP_LAG = "loop_lag"
    READ_BURST = "read_burst"


class Admission(CallObserverBase):
    """Decides whether a new ordinary call is admitted or shed (see the tables above)."""

    def __init__(self, settings: OverloadSettings | None = None) -> None:
        self.settings = settings or OverloadSettings()
        #: the Retry-After header of every shed call, built once
        self.retry_after = (("Retry-After", str(self.settings.retry_after_s)),)
        #: calls with a B-leg INVITE out and no answer yet
        self.in_setup: set[str] = set()
        #: smoothed loop lag, seconds
        self.loop_lag = 0.0
        #: datagrams read in the last sample
        self.read_burst = 0
        #: new ordinary calls answered 503 so far
        self.shed_calls = 0
        #: the signal over its limit while shedding, None while admitting
        self.shedding: str | None = None
        self._shed_at_start = 0

    # -- signals -------------------------------------------------------------------------

    def observe(self, lag: float, reads: int, now: float) -> None:
        """One sample of the adapter: the loop's lateness (s) and datagrams read since."""
        self.loop_lag += LAG_SMOOTHING * (max(lag, 0.0) - self.loop_lag)
        self.read_burst = reads
        if self.shedding is not None:
            self._update(now)

    def attempt_tried(self, call: Call, hop: NextHop) -> None:
        self.in_setup.add(call.id)

    def attempt_failed(self, call: Call, failure: LegFailure) -> None:
        self.in_setup.discard(call.id)

    def call_answered(self, call: Call) -> None:
        self.in_setup.discard(call.id)

    def call_ended(self, call: Call) -> None:
        self.in_setup.discard(call.id)

    # -- the decision --------------------------------------------------------------------

    def over_limit(self) -> str | None:
        """The first signal over its limit, or None."""
        limits = self.settings
        if limits.max_calls_in_setup and len(self.in_setup) >= limits.max_calls_in_setup:
            return OverloadSignal.CALLS_IN_SETUP
        if limits.max_loop_lag_ms and self.loop_lag * 1000 > limits.max_loop_lag_ms:
            return OverloadSignal.LOOP_LAG
        if limits.max_read_burst and self.read_burst > limits.max_read_burst:
            return OverloadSignal.READ_BURST
        return None

    def shed(self, now: float) -> bool:
        """Is a new ordinary call to be shed now? (Counted when it is.)"""
        if not self._update(now):
            return False
        self.shed_calls += 1
        return True

    def _update(self, now: float) -> bool:
        signal = self.over_limit()
        if signal != self.shedding:
            if signal is not None and self.shedding is None:
                self._shed_at_start = self.shed_calls
                log.warning(
                    "overload_shedding",
                    signal=signal,
                    calls_in_setup=len(self.in_setup),
                    loop_lag_ms=round(self.loop_lag * 1000, 1),
                    read_burst=self.read_burst,
                )
            elif signal is None:
                log.warning("overload_over", shed=self.shed_calls - self._shed_at_start)
            self.shedding = signal
        return signal is not None
