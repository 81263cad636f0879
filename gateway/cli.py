"""Command line: ``gateway run``, ``gateway check``, ``gateway reload``, and the listings of
a node's store (``cdr``, ``reservations``) and of a running node's live state
(``registrations``, ``calls``, ``presence``, ``trunks``, through its control socket)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.config.loader import DialplanError, load_dialplan
from gateway.config.settings import Settings, SettingsError, load_settings
from gateway.logs import configure_logging

if TYPE_CHECKING:
    from gateway.stores.ports import Cdr

__all__ = ["main"]

#: exit status for a configuration that cannot run (bad settings or dialplan)
EXIT_CONFIG = 2


def _settings_or_report(**overrides: Path) -> Settings | None:
    """The settings, or ``None`` after printing one line per bad ``GATEWAY_*`` variable."""
    try:
        return load_settings(**overrides)
    except SettingsError as error:
        for problem in error.problems:
            print(f"gateway: bad setting: {problem}", file=sys.stderr)
        return None


def _cmd_run(args: argparse.Namespace) -> int:
    overrides = {}
    if args.dialplan:
        overrides["dialplan"] = Path(args.dialplan)
    settings = _settings_or_report(**overrides)
    if settings is None:
        return EXIT_CONFIG
    try:
        dialplan = load_dialplan(settings.dialplan)
    except DialplanError as exc:
        print(f"gateway: dialplan refused:\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"gateway: cannot read dialplan: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_format, settings.log_level, node=dialplan.node.name)
    from gateway.transport.tls import tls_problems

    problems = tls_problems(dialplan, settings)
    for problem in problems:
        print(f"gateway: TLS: {problem}", file=sys.stderr)
    if problems:
        return EXIT_CONFIG
    from gateway.app import run_gateway

    if settings.use_uvloop:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
    from gateway.events.embedded import NoBrokerError

    failure: BaseException | None = None
    try:
        asyncio.run(run_gateway(dialplan, settings))
    except* (OSError, NoBrokerError) as group:  # raised through the node's task groups
        failure = _first_leaf(group)
    except* KeyboardInterrupt:
        pass
    if failure is not None:
        print(f"gateway: cannot start: {failure}", file=sys.stderr)
        return 1
    return 0


def _first_leaf(error: BaseException) -> BaseException:
    """The first exception inside (nested) exception groups."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def _cmd_check(args: argparse.Namespace) -> int:
    # Settings first, then the dialplan: one run reports both kinds of problem.
    settings = _settings_or_report()
    try:
        dialplan = load_dialplan(args.file)
    except DialplanError as exc:
        print(str(exc), file=sys.stderr)
        return 1 if settings is not None else EXIT_CONFIG
    except OSError as exc:
        print(f"{args.file}: cannot read: {exc}", file=sys.stderr)
        return 1 if settings is not None else EXIT_CONFIG
    if settings is None:
        return EXIT_CONFIG
    print(
        f"{args.file}: OK ({len(dialplan.listen)} listeners, {len(dialplan.trunks)} trunks, "
        f"{len(dialplan.outbound)} outbound rules, {len(dialplan.agents)} agents)"
    )
    status = 0
    from gateway.transport.tls import tls_problems

    for problem in tls_problems(dialplan, settings):
        print(f"{args.file}: TLS: {problem}", file=sys.stderr)
        status = 1
    # issue 13: a trunk whose secret cannot be read runs without credentials (a warning:
    # its calls still go out); the secret itself is never printed
    for name, trunk in dialplan.trunks.items():
        if trunk.auth is not None and trunk.auth.credentials is None:
            print(f"{args.file}: warning: trunk {name}: auth: {trunk.auth.problem}")
    # SPEC E-11: every agent that cannot place emergency calls properly, in words an
    # engineer can act on. These are warnings: such an agent's call still goes out on the
    # best available path (E-3), so the exit status stays 0.
    from gateway.emergency.prerequisites import check_agent, check_config
    from gateway.notify import check_contacts, check_template

    config = dialplan.emergency
    warnings = check_config(config, dialplan)
    mail = bool(settings.smtp_host)
    for agent_id, agent in dialplan.agents.items():
        warnings.extend(check_agent(agent_id, agent, config, dialplan, mail_configured=mail))
        warnings.extend(check_contacts(agent_id, agent))
    templates = Path(args.file).parent / "templates"
    if templates.is_dir():
        for problem in check_template(templates, settings.site_timezone):
            print(f"{args.file}: notification template: {problem}", file=sys.stderr)
            status = 1
    for warning in warnings:
        print(f"{args.file}: emergency: {warning}")
    # Issue 8: rules that meet emergency dial strings (9 + 911 -> 911, ...). Warnings.
    from gateway.config.loader import field_lines
    from gateway.emergency.dialplan_lint import lint_dialplan

    lines = field_lines(args.file)
    for lint in lint_dialplan(dialplan, config):
        line = lines.get(lint.field)
        where = args.file if line is None else f"{args.file}:{line}"
        print(f"{where}: warning: {lint.message}")
    if dialplan.agents and not warnings:
        print(f"{args.file}: emergency: every agent can place emergency calls")
    return max(status, _check_web_users(settings, dialplan.agents))


def _check_web_users(settings: Settings, agents: Iterable[str]) -> int:
    """The wallboard/desktop logins (SPEC W-1), when a users file is set: 1 if unusable
    (the gateway would run without the pages)."""
    if settings.web_users_file is None:
        return 0
    from gateway.web.users import WebUsersError, load_users

    try:
        users = load_users(settings.web_users_file, agents)
    except WebUsersError as exc:
        print(f"web: {exc}", file=sys.stderr)
        return 1
    print(f"{settings.web_users_file}: OK ({len(users)} wallboard and desktop logins)")
    return 0


def _when(text: str) -> float:
    """A ``--since``/``--until`` value as unix time (see the option's help)."""
    import re
    import time
    from datetime import UTC, datetime

    age = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if age is not None:
        seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400}[age.group(2)]
        return time.time() - float(age.group(1)) * seconds
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an ISO date/time (2025-01-31, 2025-01-31T12:00) nor an "
            "age (30m, 12h, 7d)"
        ) from None
    return (when if when.tzinfo is not None else when.replace(tzinfo=UTC)).timestamp()


def _store_missing(settings: Settings) -> str | None:
    """Why the node's store cannot be read here (no data directory, no database), or None.

    A listing must not create an empty database in the wrong directory."""
    from gateway.stores import sqlite_path

    if not settings.store.lower().startswith("sqlite"):
        return None
    path = sqlite_path(settings.store, settings.data_dir)
    if isinstance(path, str) or path.exists():
        return None
    if not path.parent.is_dir():
        return f"no data directory {path.parent} (set GATEWAY_DATA_DIR)"
    return f"no gateway database in {path.parent} (no {path.name}; set GATEWAY_DATA_DIR)"


def _cmd_cdr(args: argparse.Namespace) -> int:
    """Print the most recent call detail records from the store."""
    from gateway.stores import open_stores

    settings = _settings_or_report()
    if settings is None:
        return EXIT_CONFIG
    missing = _store_missing(settings)
    if missing is not None:
        print(f"gateway: {missing}", file=sys.stderr)
        return 1

    async def read() -> int:
        stores = await open_stores(settings.store, settings.data_dir, timeout=5.0)
        try:
            rows = await stores.cdrs.recent(args.limit, since=args.since, until=args.until)
        finally:
            await stores.close()
        if args.json:
            import dataclasses
            import json

            for row in rows:
                print(json.dumps(dataclasses.asdict(row)))
            return 0
        _print_cdr_table(rows)
        if not rows:
            print(f"(no call history in {_store_name(settings)})")
        return 0

    return _run_reading(read)


def _print_cdr_table(rows: list[Cdr]) -> None:
    """The records as aligned columns, times in UTC, "-" for what is missing."""
    from datetime import UTC, datetime

    def when(ts: float | None) -> str:
        if ts is None:
            return "-"
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")

    header = (
        "started (UTC)",
        "dir",
        "caller",
        "callee",
        "queue",
        "agent",
        "answered",
        "ended",
        "result",
        "code",
        "route",
        "b-leg Call-ID",
    )
    table = [header] + [
        (
            when(r.started_at),
            r.direction,
            r.caller,
            r.callee,
            r.queue or "-",
            r.agent or "-",
            when(r.answered_at),
            when(r.ended_at),
            r.result,
            "-" if r.sip_code is None else str(r.sip_code),
            r.route or "-",
            r.b_call_id or "-",
        )
        for r in rows
    ]
    widths = [max(len(str(line[i])) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join(str(v).ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())


def _cmd_reservations(args: argparse.Namespace) -> int:
    """Print the live emergency callback DID reservations (SPEC E-4)."""
    import time
    from datetime import UTC, datetime

    from gateway.stores import open_stores

    settings = _settings_or_report()
    if settings is None:
        return EXIT_CONFIG
    missing = _store_missing(settings)
    if missing is not None:
        print(f"gateway: {missing}", file=sys.stderr)
        return 1

    async def read() -> int:
        stores = await open_stores(settings.store, settings.data_dir, timeout=5.0)
        try:
            rows = await stores.reservations.live(time.time())
        finally:
            await stores.close()
        if args.json:
            import dataclasses
            import json

            for row in rows:
                print(json.dumps(dataclasses.asdict(row)))
            return 0
        for r in rows:
            until = datetime.fromtimestamp(r.expires_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
            left = int(r.expires_at - time.time())
            test = " (test)" if r.test else ""
            print(f"{r.did}  agent={r.agent_id}  until={until} UTC  ({left} s left){test}")
        if not rows:
            print(f"(no live callback reservations in {_store_name(settings)})")
        return 0

    return _run_reading(read)


def _store_name(settings: Settings) -> str:
    """Where the store is, for a message: the data directory, or Redis without credentials."""
    if settings.store.startswith("sqlite"):
        return str(settings.data_dir)
    return settings.store.split("@")[-1]


def _run_reading(read: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run a command that reads the store; a store it cannot reach is one line, exit 1."""
    from gateway.stores import StoreError

    try:
        return asyncio.run(read())
    except StoreError as exc:
        print(f"gateway: the store cannot be read: {exc}", file=sys.stderr)
        return 1


def _cmd_reload(args: argparse.Namespace) -> int:
    """Check the dialplan, then SIGHUP the node whose pid file is in the data directory."""
    import os
    import signal

    from gateway.reload import PID_FILE

    overrides = {"dialplan": Path(args.dialplan)} if args.dialplan else {}
    settings = _settings_or_report(**overrides)
    if settings is None:
        return EXIT_CONFIG
    try:
        load_dialplan(settings.dialplan)
    except DialplanError as exc:
        print(f"gateway: dialplan refused, the running one is kept:\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"gateway: cannot read dialplan: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    pid_path = settings.data_dir / PID_FILE
    try:
        pid = int(pid_path.read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError) as exc:
        print(f"gateway: no running gateway found through {pid_path}: {exc}", file=sys.stderr)
        return 1
    print(f"gateway: reload requested (pid {pid}); its log says whether it was applied")
    return 0


def _cmd_live(args: argparse.Namespace) -> int:
    """Ask the running node (its control socket in the data directory) for a listing."""
    import json

    from gateway.control import ControlError, ask, print_rows

    settings = _settings_or_report()
    if settings is None:
        return EXIT_CONFIG
    try:
        rows = ask(settings.data_dir, args.command)
    except ControlError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        print_rows(rows, f"(no {args.command})")
    return 0


_LIVE = {
    "registrations": "live registered contacts of the running gateway",
    "calls": "calls in progress on the running gateway (both legs' Call-IDs)",
    "presence": "agents' presence on the running gateway",
    "trunks": "trunk gateways and their OPTIONS keep-alive state",
}


def main(argv: list[str] | None = None) -> int:
    from gateway import __version__

    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the gateway")
    run.add_argument("--dialplan", help="dialplan YAML file (default: $GATEWAY_DIALPLAN)")
    run.set_defaults(func=_cmd_run)
    check = sub.add_parser("check", help="validate a dialplan without starting")
    check.add_argument("file")
    check.set_defaults(func=_cmd_check)
    res = sub.add_parser("reservations", help="print live callback DID reservations")
    res.add_argument("--json", action="store_true", help="one JSON object per line")
    res.set_defaults(func=_cmd_reservations)
    for name, text in _LIVE.items():
        live = sub.add_parser(name, help=text)
        live.add_argument("--json", action="store_true", help="one JSON object per line")
        live.set_defaults(func=_cmd_live)
    cdr = sub.add_parser("cdr", help="print recent call history (GATEWAY_DATA_DIR)")
    cdr.add_argument("--limit", type=int, default=20)
    cdr.add_argument("--json", action="store_true", help="one JSON object per line")
    for bound, text in (("since", "ended at or after"), ("until", "ended before")):
        cdr.add_argument(
            f"--{bound}",
            type=_when,
            help=f"only calls that {text} WHEN: an ISO date or time (UTC unless it says), "
            "or an age such as 30m, 12h, 7d",
        )
    cdr.set_defaults(func=_cmd_cdr)
    reload = sub.add_parser("reload", help="check the dialplan and make the running node reload it")
    reload.add_argument("--dialplan", help="dialplan YAML file (default: $GATEWAY_DIALPLAN)")
    reload.set_defaults(func=_cmd_reload)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except BrokenPipeError:
        # the reader went away (``gateway cdr | head``): what it read was printed; no
        # traceback, and no second error when Python flushes stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
