"""A short slice of the soak (issue 13; the full run is bench/soak.py, outside CI).

A few thousand mutated messages (RFC 4475 torture messages and the SIPp scenarios'
messages, mutated; UDP and TCP) at a running gateway while SIPp places ordinary and 911
calls through it (over TCP, so that the flood's datagrams cannot crowd theirs out of the
socket buffer): the gateway keeps running, no exception escapes into its log, and every
SIPp call completes on both ends.
"""

from __future__ import annotations

from pathlib import Path

from testkit.fuzz import Mutator, load_corpus
from testkit.soak import escaped_exceptions, run_soak


def test_the_corpus_is_rfc_4475_and_the_sipp_scenarios() -> None:
    corpus = load_corpus()
    assert len(corpus) >= 100
    assert any(m.startswith(b"INVITE sip:vivekg@chair-dnrc.example.com") for m in corpus)
    assert any(b"sip:fuzz@127.0.0.1" in m for m in corpus)
    first = [Mutator(corpus, seed=1).next() for _ in range(50)]
    assert first == [Mutator(corpus, seed=1).next() for _ in range(50)]  # replayable
    # what counts as an escaped exception in the gateway's log
    log = (
        '{"event": "call_end", "level": "info"}\n'
        '{"event": "event_handler_failed", "exception": [{"exc_type": "KeyError"}]}\n'
        "Traceback (most recent call last):\n"
    )
    assert len(escaped_exceptions(log)) == 2


def test_a_soak_slice_leaves_the_gateway_running_and_every_call_completed(
    tmp_path: Path,
) -> None:
    result = run_soak(
        tmp_path,
        messages=4000,
        rate=2000,
        call_rate=3.0,
        expected_seconds=2.0,
        call_transport="tcp",  # the calls' datagrams are not lost in the UDP flood
    )
    assert result.passed, result.as_json()
    assert result.messages_udp + result.messages_tcp == 4000
    assert result.messages_tcp >= 500
