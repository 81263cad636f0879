"""Operators' helpers: ``python -m gateway.web hash | passwd USERS | acl USERS PREFIX``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gateway.web.users import acl_text, hash_password, load_users


def main(argv: Sequence[str]) -> int:
    """``python -m gateway.web hash`` (a password from the terminal or stdin),
    ``... passwd USERS_FILE`` (the web users' lines of a Mosquitto password file),
    ``... acl USERS_FILE PREFIX`` (the explicit ACL the embedded broker would use)."""
    import getpass
    import sys

    if argv[:1] == ["hash"] and len(argv) == 1:
        tty = sys.stdin.isatty()
        password = getpass.getpass() if tty else sys.stdin.readline().rstrip("\n")
        print(hash_password(password))
        return 0
    if argv[:1] == ["passwd"] and len(argv) == 2:
        users = load_users(Path(argv[1]))
        print("".join(f"{user.name}:{user.password_hash}\n" for user in users), end="")
        return 0
    if argv[:1] == ["acl"] and len(argv) == 3:
        print(acl_text(load_users(Path(argv[1])), argv[2]), end="")
        return 0
    print(main.__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
