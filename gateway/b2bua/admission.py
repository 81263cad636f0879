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
read backlog           a UDP receive queue is ``max_read_backlog`` full at two samples in a
                       row, or the kernel dropped
                       datagrams since the last sample (the gateway is behind: the loop lag
                       stays small while uvloop reads a few dozen datagrams per turn)
read burst             more than ``max_read_burst`` datagrams were read in one sample
admission rate         the loop lag is over ``target_loop_lag_ms`` (or the read backlog
                       was over its limit) and the token bucket of
                       :class:`RateControl` is empty: new ordinary calls are admitted at the
                       rate the loop keeps up with, never below ``min_admit_rate``
=====================  =====================================================================

The overload gate (``gateway/b2bua/gate.py``) asks :meth:`Admission.would_shed` before a
datagram is parsed and answers the new ordinary INVITEs to be shed statelessly; the call
layer's :meth:`Admission.shed` then takes a token for each call the gate passed.

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

__all__ = ["Admission", "OverloadSignal", "RateControl"]

log = structlog.get_logger("gateway.overload")

#: weight of the newest lag sample in the smoothed lag (the rest is the history)
LAG_SMOOTHING = 0.3


class OverloadSignal:
    """The names of the signals, as they appear in the log."""

    CALLS_IN_SETUP = "calls_in_setup"
    LOOP_LAG = "loop_lag"
    READ_BACKLOG = "read_backlog"
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
        #: the fullest UDP receive queue at the last sample (share of its buffer), and
        #: whether the kernel dropped datagrams since the sample before
        self.read_backlog = 0.0
        self.dropping = False
        self._drops: int | None = None
        self._was_full = False
        #: new ordinary calls answered 503 so far
        self.shed_calls = 0
        #: the signal over its limit while shedding, None while admitting
        self.shedding: str | None = None
        self._shed_at_start = 0
        self.rate = RateControl(self.settings)

    # -- signals -------------------------------------------------------------------------

    def observe(
        self, lag: float, reads: int, now: float, backlog: float = 0.0, drops: int = 0
    ) -> None:
        """One sample of the adapter: the loop's lateness (s), datagrams read since, the
        fullest receive queue (share of its buffer) and the kernel's drop count so far."""
        self.loop_lag += LAG_SMOOTHING * (max(lag, 0.0) - self.loop_lag)
        self.read_burst = reads
        limit = self.settings.max_read_backlog
        # a full queue twice in a row: one stall (a collection) that the next turns drain
        # is not overload; a datagram the kernel dropped always is
        full = bool(limit) and backlog >= limit
        self.read_backlog = backlog if full and self._was_full else min(backlog, limit * 0.99)
        self._was_full = full
        self.dropping = self._drops is not None and drops > self._drops
        self._drops = drops
        behind = bool(limit) and (self.read_backlog >= limit or self.dropping)
        self.rate.observe(self.loop_lag, now, behind=behind)
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
        """The first hard signal over its limit, or None (the rate control aside)."""
        limits = self.settings
        if limits.max_calls_in_setup and len(self.in_setup) >= limits.max_calls_in_setup:
            return OverloadSignal.CALLS_IN_SETUP
        if limits.max_loop_lag_ms and self.loop_lag * 1000 > limits.max_loop_lag_ms:
            return OverloadSignal.LOOP_LAG
        if limits.max_read_backlog and (
            self.read_backlog >= limits.max_read_backlog or self.dropping
        ):
            return OverloadSignal.READ_BACKLOG
        if limits.max_read_burst and self.read_burst > limits.max_read_burst:
            return OverloadSignal.READ_BURST
        return None

    def shed(self, now: float) -> bool:
        """Is a new ordinary call to be shed now? (Counted when it is; an admitted call
        takes its token from the rate control.)"""
        if self._update(now) or not self.rate.take(now):
            self.count_shed()
            return True
        return False

    def would_shed(self, now: float) -> bool:
        """Would :meth:`shed` shed a new ordinary call now? Nothing is taken or counted:
        the overload gate asks this before it parses a datagram."""
        return self._update(now) or not self.rate.has_token(now)

    def count_shed(self) -> None:
        """One more new ordinary call shed (by :meth:`shed` or by the overload gate)."""
        self.shed_calls += 1
        self.rate.shed_since += 1

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
                    read_backlog=round(self.read_backlog, 2),
                    kernel_dropping=self.dropping,
                )
            elif signal is None:
                log.warning("overload_over", shed=self.shed_calls - self._shed_at_start)
            self.shedding = signal
        return signal is not None


class RateControl:
    """The admission rate of new ordinary calls, steered to keep the loop lag low.

    Multiplicative increase and decrease on the smoothed loop lag, adjusted every
    ``adjust_interval_ms``: over ``target_loop_lag_ms`` (twice in a row for a first limit)
    the rate limit is set to nine tenths of what was admitted (or of itself); under three
    quarters of the target it grows by a fifth plus a fifth of the floor; once
    nothing has been shed for ``LIFT_AFTER`` adjustments it is lifted. Calls are admitted
    from a token bucket filled at the limit (a burst of ``BURST_S`` worth), and never
    below ``min_admit_rate``. Sans-I/O: the time comes with each call.
    """

    DECREASE = 0.9
    INCREASE = 1.2
    #: adjustments in a row over the target before a first limit is set
    SUSTAINED = 2
    #: the additive part of an increase, as a share of the floor
    STEP = 0.2
    #: the share of the target under which the loop counts as calm
    CALM = 0.75
    BURST_S = 0.05
    LIFT_AFTER = 10

    def __init__(self, settings: OverloadSettings) -> None:
        self.target = settings.target_loop_lag_ms / 1000
        self.floor = settings.min_admit_rate
        self.interval = settings.adjust_interval_ms / 1000
        #: calls per second admitted at most, None while unlimited
        self.limit: float | None = None
        #: calls shed since the last adjustment (the gate's and the call layer's)
        self.shed_since = 0
        #: the share of new ordinary calls shed in the last interval, percent (what RFC 7339's
        #: loss-based ``oc`` asks an upstream that supports it to hold back)
        self.loss = 0
        self._admitted = 0
        self._window_start: float | None = None
        self._calm = 0
        self._hot = 0
        self._behind = False
        self._tokens = 0.0
        self._filled_at = 0.0

    def observe(self, lag: float, now: float, *, behind: bool = False) -> None:
        """A smoothed lag sample, and whether the read backlog says the gateway is behind;
        adjusts the limit once per interval."""
        if not self.target:
            return
        self._behind = self._behind or behind
        if self._window_start is None:
            self._window_start = now
            return
        elapsed = now - self._window_start
        if elapsed < self.interval:
            return
        admitted_rate = self._admitted / elapsed
        offered = self._admitted + self.shed_since
        self.loss = round(100 * self.shed_since / offered) if offered else 0
        self._adjust(lag, admitted_rate, self._behind)
        self._window_start, self._admitted, self.shed_since = now, 0, 0
        self._behind = False

    def _adjust(self, lag: float, admitted_rate: float, behind: bool) -> None:
        if lag > self.target or behind:
            self._hot += 1
            self._calm = 0
            if self.limit is None and self._hot < self.SUSTAINED and not behind:
                return  # one slow interval (a collection, a start-up) is not overload
            base = admitted_rate if self.limit is None else min(self.limit, admitted_rate * 1.1)
            if self.limit is None:
                log.warning(
                    "overload_rate_limited",
                    loop_lag_ms=round(lag * 1000, 1),
                    admitted_per_s=round(admitted_rate, 1),
                )
            self.limit = max(self.floor, base * self.DECREASE)
            return
        self._hot = 0
        if self.limit is not None and lag < self.target * self.CALM:
            self.limit = self.limit * self.INCREASE + self.floor * self.STEP
            self._calm = self._calm + 1 if self.shed_since == 0 else 0
            if self._calm >= self.LIFT_AFTER:
                log.warning("overload_rate_lifted", limit_per_s=round(self.limit, 1))
                self.limit = None

    def has_token(self, now: float) -> bool:
        """Is a call admitted now, without taking its token?"""
        if self.limit is None:
            return True
        self._fill(now)
        return self._tokens >= 1.0

    def take(self, now: float) -> bool:
        """Admit a call (taking its token) or not."""
        if not self.has_token(now):
            return False
        if self.limit is not None:
            self._tokens -= 1.0
        self._admitted += 1
        return True

    def _fill(self, now: float) -> None:
        assert self.limit is not None
        burst = max(1.0, self.limit * self.BURST_S)
        self._tokens = min(burst, self._tokens + (now - self._filled_at) * self.limit)
        self._filled_at = now
