"""The cluster front's flood protection spares emergency calls (issue #12, SPEC E-3, O-6).

``deploy/kamailio/cluster.cfg`` runs pike first: a source above ``PIKE_DENSITY`` requests
per 2 s has its requests dropped, before any reaches a node. An emergency INVITE is exempt,
dialled as 911 or with an outside-line prefix (9911): a phone that floods (a stuck
auto-dialler, a compromised handset) must still reach the PSAP. Here the phones' network
(127.0.0.1) is not trusted and the density is 10; the front relays to a SIPp uas.
"""

from __future__ import annotations

from pathlib import Path

from harness import Sipp, free_port

from testkit.kamailio import start_front

UNTRUSTED = {"TRUSTED_NETS": '"10.255.0.0/16"', "PIKE_DENSITY": "10"}


def test_a_flooding_phone_is_cut_off_by_pike_but_its_emergency_calls_go_through(
    sipp: Sipp, tmp_path: Path
) -> None:
    carrier = sipp.uas("uas_basic.xml", calls=700, timeout=90, trace_messages=False)
    port = free_port()
    front = start_front(
        tmp_path / "front", port, [carrier.address], probe=False, settings=UNTRUSTED
    )
    try:
        # the flood goes on while the emergency calls are made: pike is blocking the source
        flood = sipp.start_uac(
            "uac_basic.xml",
            f"127.0.0.1:{port}",
            600,
            100,
            service="5551230000",
            timeout=40,
            recv_timeout=2.0,
            trace_messages=False,
        )
        for dialled in ("911", "9911", "+112"):
            assert flood.running
            sipp.uac("uac_basic.xml", f"127.0.0.1:{port}", 3, 10, service=dialled).assert_calls(3)
        assert flood.running  # every emergency call got through while the source was blocked
        result = flood.wait(timeout=60)
        assert result.failed_calls > 300, result.describe()  # pike dropped most ordinary ones
    finally:
        front.stop()
    assert "pike: flood from 127.0.0.1" in front.log_path.read_text(errors="replace")
