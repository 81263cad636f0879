"""One backoff formula for MQTT reconnects and mail retries (issue 9)."""

from __future__ import annotations

import pytest

from gateway.backoff import jittered_backoff
from gateway.events.buffer import backoff_delay
from gateway.notify.retry import retry_delay


def test_the_ceiling_doubles_up_to_the_cap_and_the_delay_is_its_upper_half() -> None:
    assert [jittered_backoff(n, 0.0, base=1, cap=8) for n in range(5)] == [0.5, 1, 2, 4, 4]
    assert [jittered_backoff(n, 1.0, base=1, cap=8) for n in range(5)] == [1, 2, 4, 8, 8]
    assert jittered_backoff(10_000, 0.5, base=0.5, cap=30) == 22.5


def test_the_floor_holds() -> None:
    assert jittered_backoff(0, 0.0, base=4, cap=4, floor=4) == 4


@pytest.mark.parametrize("attempt", range(8))
@pytest.mark.parametrize("rand", [0.0, 0.3, 0.999])
def test_reconnects_and_mail_retries_share_it(attempt: int, rand: float) -> None:
    assert backoff_delay(attempt, rand, base=0.5, cap=30) == jittered_backoff(
        attempt, rand, base=0.5, cap=30
    )
    assert retry_delay(attempt, rand, base=5, cap=300) == jittered_backoff(
        attempt + 1, rand, base=5, cap=300, floor=5
    )
