"""The soak (issue 13): >= 1,000,000 mutated SIP messages at a running gateway while SIPp
places ordinary and 911 calls through it. Not part of CI (tests/wire/test_soak_slice.py
runs a few thousand messages there).

The corpus, the mutations and the run are ``testkit.fuzz`` and ``testkit.soak``: RFC 4475
torture messages and every SIPp scenario's messages, mutated 1 to 3 times each (one in
sixteen unchanged), a quarter over TCP and the rest over UDP, paced at --rate per second.
Printed: messages per transport, the rate achieved, whether the gateway still runs,
escaped exceptions in its log, its RSS before (after the first calls) and after, and the
SIPp calls placed and completed on both ends. Exit status 0 when it passed.

    .venv/bin/python bench/soak.py [--messages 1000000] [--rate 4000] [--tcp-share 0.25]
        [--call-rate 3] [--seed 4475] [--call-transport udp|tcp] [--settle-s 40]
        [--json out.json] [--workdir DIR] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testkit.soak import run_soak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=4000.0, help="messages/s, 0: unpaced")
    parser.add_argument("--tcp-share", type=float, default=0.25)
    parser.add_argument("--call-rate", type=float, default=3.0, help="SIPp calls/s in all")
    parser.add_argument("--seed", type=int, default=4475)
    parser.add_argument(
        "--call-transport",
        choices=("udp", "tcp"),
        default="udp",
        help="SIPp's calls and the trunk (tcp: the calls avoid the flooded UDP socket)",
    )
    parser.add_argument("--settle-s", type=float, default=40.0, help="RSS again after this")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--quick", action="store_true", help="20,000 messages: a smoke run")
    args = parser.parse_args()
    messages = 20_000 if args.quick else args.messages
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="soak-"))
    print(f"soak: {messages} messages at {args.rate:g}/s, workdir {workdir}", flush=True)
    result = run_soak(
        workdir,
        messages=messages,
        rate=args.rate,
        tcp_share=args.tcp_share,
        call_rate=args.call_rate,
        seed=args.seed,
        call_transport=args.call_transport,
        settle_s=args.settle_s,
        progress=lambda count: print(f"  {count} messages sent", flush=True),
    )
    text = result.as_json()
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
