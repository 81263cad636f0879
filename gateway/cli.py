"""Command line: ``gateway run``, ``gateway check``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from gateway.config.loader import DialplanError, load_dialplan
from gateway.config.settings import load_settings
from gateway.logs import configure_logging

__all__ = ["main"]


def _cmd_run(args: argparse.Namespace) -> int:
    overrides = {}
    if args.dialplan:
        overrides["dialplan"] = Path(args.dialplan)
    settings = load_settings(**overrides)
    configure_logging(settings.log_format, settings.log_level)
    try:
        dialplan = load_dialplan(settings.dialplan)
    except DialplanError as exc:
        print(f"gateway: dialplan refused:\n{exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"gateway: cannot read dialplan: {exc}", file=sys.stderr)
        return 2
    from gateway.app import run_gateway

    if settings.use_uvloop:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
    try:
        asyncio.run(run_gateway(dialplan, settings))
    except OSError as exc:
        print(f"gateway: cannot start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    try:
        dialplan = load_dialplan(args.file)
    except DialplanError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{args.file}: cannot read: {exc}", file=sys.stderr)
        return 1
    print(
        f"{args.file}: OK ({len(dialplan.listen)} listeners, {len(dialplan.trunks)} trunks, "
        f"{len(dialplan.outbound)} outbound rules)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the gateway")
    run.add_argument("--dialplan", help="dialplan YAML file (default: $GATEWAY_DIALPLAN)")
    run.set_defaults(func=_cmd_run)
    check = sub.add_parser("check", help="validate a dialplan without starting")
    check.add_argument("file")
    check.set_defaults(func=_cmd_check)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
