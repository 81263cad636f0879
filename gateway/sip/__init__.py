"""SIP core: URIs, headers, messages, transactions, dialogs.

The parser (``uri``, ``names``, ``headers``, ``model``, ``message``) and the transaction
layer and dialogs (``address``, ``dialog``, ``transaction``) are compiled by mypyc at
install time (see setup.py); their .py files stay the reference. The compiled modules are
used only while they match those sources: when a source has changed since it was compiled
(an editable install that was not rebuilt), or when ``GATEWAY_PURE_PYTHON=1`` is set, the
eight modules are loaded from their .py files here, before anything imports them.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from importlib.machinery import EXTENSION_SUFFIXES
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path

#: the compiled modules, in import order (setup.py keeps the same list)
_COMPILED = ("uri", "names", "headers", "model", "message", "address", "dialog", "transaction")
_HERE = Path(__file__).resolve().parent


def _why_sources() -> str | None:
    """Why the compiled modules must not run; None when they may (or when there are none)."""
    if not any((_HERE / f"message{suffix}").is_file() for suffix in EXTENSION_SUFFIXES):
        return None
    if os.environ.get("GATEWAY_PURE_PYTHON", "").strip() not in ("", "0"):
        return ""
    try:  # written by setup.py beside an in-place (editable) build
        built = json.loads((_HERE / "_native.json").read_text())
    except (OSError, ValueError):
        return None
    for name in _COMPILED:
        digest = hashlib.sha256((_HERE / f"{name}.py").read_bytes()).hexdigest()
        if built.get(name) != digest:
            return f"gateway/sip/{name}.py changed since it was compiled"
    return None


def _load_sources() -> None:
    for name in _COMPILED:
        full = f"{__name__}.{name}"
        spec = spec_from_file_location(full, _HERE / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = module_from_spec(spec)
        sys.modules[full] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[full]
            raise
        globals()[name] = module


_reason = _why_sources()
if _reason is not None:
    if _reason:
        warnings.warn(
            f"{_reason}: running the pure-Python SIP parser; rebuild with `make venv`"
            " or `pip install -e .`",
            RuntimeWarning,
            stacklevel=2,
        )
    _load_sources()
