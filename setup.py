"""Build script: compiles the SIP core with mypyc. The metadata lives in pyproject.toml.

The parser (``gateway/sip/uri.py``, ``names.py``, ``headers.py``, ``model.py``,
``message.py``) and the transaction layer and dialogs (``address.py``, ``dialog.py``,
``transaction.py``) are compiled to C extension modules (one shared library,
``gateway/sip/_native__mypyc``, plus one small module per source) at install time, ``pip
install -e .`` included: parsing is then about twice as fast, and a call costs 8 % fewer
instructions than with the parser alone compiled (``bench/instructions_bench.py``).
``errors.py`` stays interpreted: its exceptions take their status and reason from class
defaults that subclasses override, which compiled exception classes do not keep.
The .py sources stay the reference and the fallback:

* ``GATEWAY_PURE_PYTHON=1`` at install time builds no extension (and removes the ones an
  earlier editable install left in the source tree), so the .py sources run;
* if compiling fails (no C compiler, no Python headers, mypyc refuses the code), the
  install goes on without extensions and says so on stderr (``pip install -v`` shows it);
* at run time, ``gateway.sip`` falls back to the sources by itself when the compiled
  modules do not match them (a source edited since the last install) or when
  ``GATEWAY_PURE_PYTHON=1`` is set (see ``gateway/sip/__init__.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
SIP = HERE / "gateway" / "sip"
#: compiled modules, in import order; keep in step with gateway/sip/__init__.py
COMPILED = ("uri", "names", "headers", "model", "message", "address", "dialog", "transaction")
#: the shared library mypyc builds for the group (``<group>__mypyc``)
GROUP = "gateway.sip._native"
#: source hashes of a compiled build, read by gateway/sip/__init__.py
MANIFEST = SIP / "_native.json"


def _pure_requested() -> bool:
    return os.environ.get("GATEWAY_PURE_PYTHON", "").strip() not in ("", "0")


def _warn(message: str) -> None:
    print(f"gateway setup.py: {message}", file=sys.stderr)


def _remove_in_place_builds() -> None:
    """Remove compiled modules an earlier in-place (editable) build left beside the sources."""
    stems = [*COMPILED, GROUP.rsplit(".", 1)[1] + "__mypyc"]
    for stem in stems:
        for suffix in EXTENSION_SUFFIXES:
            (SIP / f"{stem}{suffix}").unlink(missing_ok=True)
    MANIFEST.unlink(missing_ok=True)


def _write_manifest() -> None:
    hashes = {
        name: hashlib.sha256((SIP / f"{name}.py").read_bytes()).hexdigest() for name in COMPILED
    }
    MANIFEST.write_text(json.dumps(hashes, indent=1, sort_keys=True) + "\n")


def _extensions() -> list[Any]:
    if _pure_requested():
        _warn("GATEWAY_PURE_PYTHON is set: the SIP parser stays pure Python")
        return []
    try:
        from mypyc.build import mypycify

        # The project's strict mypy settings are for `make lint`; the build type-checks with
        # mypy's defaults (an empty config), so that a newer mypy's extra checks cannot break
        # an install. The sources are relative paths: mypyc names the C files after them.
        os.chdir(HERE)
        return mypycify(
            ["--config-file", os.devnull, *(f"gateway/sip/{name}.py" for name in COMPILED)],
            opt_level="3",
            debug_level="0",
            group_name=GROUP,
        )
    except (Exception, SystemExit) as exc:  # mypyc reports failures with SystemExit
        _warn(f"mypyc could not compile the SIP parser ({exc!r}); it stays pure Python")
        return []


class OptionalBuildExt(build_ext):
    """Build the extensions all together or not at all: a failure falls back to pure Python."""

    def run(self) -> None:
        if not self.extensions:
            _remove_in_place_builds()
            return
        started = time.time()
        try:
            super().run()
        except Exception as exc:  # compiler missing or failing: CCompilerError, PlatformError
            _warn(f"compiling the SIP parser failed ({exc!r}); it stays pure Python")
            for ext in self.extensions:
                Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)
            self.extensions = []
            _remove_in_place_builds()
            return
        # an in-place (editable) build: record what was compiled, for gateway/sip/__init__.py
        in_place = [
            SIP / (ext.name.rsplit(".", 1)[1] + self._suffix()) for ext in self.extensions
        ]
        if all(p.is_file() and p.stat().st_mtime >= started - 1 for p in in_place):
            _write_manifest()

    def _suffix(self) -> str:
        return Path(self.get_ext_filename("x")).name[1:]

    def get_outputs(self) -> list[str]:
        return super().get_outputs() if self.extensions else []


ext_modules = _extensions()
if not ext_modules:
    _remove_in_place_builds()

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
