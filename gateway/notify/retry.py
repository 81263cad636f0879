"""When to try a notification e-mail again, and when to stop (SPEC E-6); pure functions.

* A transient failure (server unreachable, timeout, TLS or login trouble, any 4xx reply)
  is retried after a jittered exponential delay: the n-th retry waits a random time in
  ``[max(base, c/2), c]`` with ``c = min(cap, base * 2**n)``, so the first waits between
  ``base`` and ``2 * base`` and later ones between ``cap / 2`` and ``cap``. The jitter
  keeps the mails of several calls from hammering a recovering server in step.
* A 5xx reply to the recipient or to the message (RFC 5321 section 4.2.1: permanent
  negative completion) fails that mail at once: asking again will not change the answer.
* Nothing is attempted at or after ``give_up_at``; a retry that would fall after it is
  moved to ``give_up_at`` itself, so the last attempt happens on the deadline and the mail
  is given up only when that one fails too.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.backoff import jittered_backoff

__all__ = ["GiveUp", "Retry", "after_failure", "retry_delay"]


@dataclass(frozen=True, slots=True)
class Retry:
    """Try again at ``at`` (unix seconds)."""

    at: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Stop: ``permanent`` for a 5xx refusal, else the deadline has passed."""

    permanent: bool


def retry_delay(retry: int, rand: float, *, base: float, cap: float) -> float:
    """Seconds before retry number ``retry`` (0 for the first); ``rand`` in [0, 1)."""
    if base <= 0 or cap < base:
        raise ValueError("retry delays need 0 < base <= cap")
    return jittered_backoff(retry + 1, rand, base=base, cap=cap, floor=base)


def after_failure(
    *,
    attempts: int,
    permanent: bool,
    now: float,
    give_up_at: float,
    rand: float,
    base: float,
    cap: float,
) -> Retry | GiveUp:
    """What to do after attempt number ``attempts`` (1 for the first) failed at ``now``."""
    if permanent:
        return GiveUp(permanent=True)
    if now >= give_up_at:
        return GiveUp(permanent=False)
    at = now + retry_delay(max(attempts - 1, 0), rand, base=base, cap=cap)
    return Retry(at=min(at, give_up_at))
