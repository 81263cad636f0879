"""The ``gateway`` command's entry point: picks the memory allocator, then runs the CLI.

``gateway run`` uses the C library's allocator (``PYTHONMALLOC=malloc``) unless told
otherwise. Why (issue 10, bench/README.md "Memory"): finished SIP transactions linger
64*T1, so a load fills CPython's own allocator with hundreds of thousands of small
objects in 1 MiB arenas; after the load the few objects that outlive it (timestamps,
counters, a cached string) are scattered over those arenas, and an arena goes back to
the OS only when it is empty. Measured after 20,000 calls at 500 calls/s: RSS stayed
+39 % above its start with CPython's allocator, +7 % with glibc's (whose free pages the
idle trim hands back), at 4-7 % more CPU per call.

The allocator is chosen when the interpreter starts, so the command replaces itself
(``execve``: same process id, same arguments, same environment plus
``PYTHONMALLOC=malloc``) before importing anything heavy. It does so only for ``run``,
only when ``PYTHONMALLOC`` is not set already (an operator's choice wins), and not when
``GATEWAY_ALLOCATOR=pymalloc`` keeps CPython's allocator.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

__all__ = ["ALLOCATOR_ENV", "main", "reexec_command"]

ALLOCATOR_ENV = "GATEWAY_ALLOCATOR"
_CHOICES = ("malloc", "pymalloc")


def reexec_command(
    args: Sequence[str], orig_argv: Sequence[str], environ: Mapping[str, str]
) -> tuple[list[str], dict[str, str]] | None:
    """The argv and environment to re-execute with, or None to go on as we are.

    ``args``: the command's arguments (``sys.argv[1:]``); ``orig_argv``: the interpreter's
    own command line (``sys.orig_argv``: the interpreter, its options, then the script or
    ``-m gateway``). A ``GATEWAY_ALLOCATOR`` other than malloc or pymalloc goes on as we
    are: the settings check reports it.
    """
    if not args or args[0] != "run" or "PYTHONMALLOC" in environ:
        return None
    if environ.get(ALLOCATOR_ENV, "malloc") != "malloc":
        return None
    if not orig_argv:
        return None
    env = dict(environ)
    env["PYTHONMALLOC"] = "malloc"
    return [*orig_argv], env


def main() -> int:
    """``gateway ...``: on ``run``, switch to the C allocator (above), then the CLI."""
    command = reexec_command(sys.argv[1:], getattr(sys, "orig_argv", ()), os.environ)
    if command is not None:
        argv, env = command
        try:
            os.execve(sys.executable, argv, env)
        except OSError as exc:  # go on with CPython's allocator
            print(f"gateway: could not switch to the C allocator: {exc}", file=sys.stderr)
    from gateway.cli import main as cli_main

    return cli_main()
