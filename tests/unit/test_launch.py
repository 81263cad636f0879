"""``gateway run`` picks the C allocator by re-executing itself (gateway/launch.py)."""

from __future__ import annotations

from gateway.launch import reexec_command

ORIG = ["/venv/bin/python", "-X", "dev", "-m", "gateway", "run", "--dialplan", "d.yaml"]


def test_run_reexecutes_with_pythonmalloc_and_the_same_command_line() -> None:
    command = reexec_command(["run", "--dialplan", "d.yaml"], ORIG, {"PATH": "/bin"})
    assert command == (ORIG, {"PATH": "/bin", "PYTHONMALLOC": "malloc"})


def test_other_commands_and_an_operators_choice_are_left_alone() -> None:
    assert reexec_command(["cdr", "--json"], ORIG, {}) is None
    assert reexec_command([], ORIG, {}) is None
    assert reexec_command(["run"], ORIG, {"PYTHONMALLOC": "pymalloc"}) is None
    assert reexec_command(["run"], ORIG, {"PYTHONMALLOC": "malloc"}) is None  # no loop
    assert reexec_command(["run"], ORIG, {"GATEWAY_ALLOCATOR": "pymalloc"}) is None
    assert reexec_command(["run"], ORIG, {"GATEWAY_ALLOCATOR": "malloc"}) is not None
    assert reexec_command(["run"], ORIG, {"GATEWAY_ALLOCATOR": "jemalloc"}) is None  # refused later
    assert reexec_command(["run"], [], {}) is None
