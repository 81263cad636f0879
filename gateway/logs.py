"""Structured logging (SPEC O-3): structlog for our code, stdlib loggers routed through it.

Theory of operation
-------------------
Every event, whether it comes from ``structlog.get_logger()`` or from a library's
``logging.getLogger()``, is rendered as JSON (production) or as coloured console text
(development; ``auto``, the default, picks console on a terminal and JSON otherwise, so a
journal or a pipe always gets JSON) and written as one line to one stream. Both paths share
the same processors, with ``merge_contextvars`` first, so a ``call_id`` bound with
:func:`bind_call` appears on every line logged while the call is handled, including lines
from the stdlib loggers.

A library's line goes through the stdlib: a ``LogRecord`` handled by the root handler whose
:class:`structlog.stdlib.ProcessorFormatter` renders it. Our own lines skip that machinery
(two ``LogRecord`` objects, a stack walk for the caller, the handler chain: about three
quarters of a line's cost, measured at 62-78 us a line on a slow box, five lines per call):
structlog renders them and a :class:`LineWriter` writes the text straight to the root
handler's stream, under that handler's lock, so lines of both kinds never interleave.

structlog loggers are built with :func:`structlog.make_filtering_bound_logger`: a call at a
disabled level is a no-op method, so ``log.debug(...)`` on the SIP hot path costs one method
call when DEBUG is off.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from contextvars import ContextVar, Token
from typing import Any, TextIO, cast

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor

__all__ = ["LineBudget", "LogScope", "bind_call", "configure_logging", "get_logger"]

#: the fields of the call being handled, read when a line is written (see :class:`LogScope`)
_SCOPE: ContextVar[Callable[[], Mapping[str, Any]] | None] = ContextVar("log_scope", default=None)

_HANDLER_NAME = "gateway"


def configure_logging(
    fmt: str = "json",
    level: str = "INFO",
    *,
    stream: TextIO | None = None,
    cache_loggers: bool = True,
    node: str | None = None,
) -> None:
    """Configure structlog and stdlib logging for the whole process.

    ``fmt`` is ``"json"``, ``"console"`` or ``"auto"`` (console when ``stream`` is a
    terminal, else JSON); ``level`` a stdlib level name (any case). ``node``, when given,
    is on every line (``"node": "gw1"``), so lines of several nodes can be told apart.
    Output goes to ``stream`` (default: ``sys.stderr`` at call time). Calling it again
    replaces the previous configuration. With ``cache_loggers`` (the default, for speed)
    a structlog logger keeps the configuration it first logged with; tests that call this
    function more than once should pass ``cache_loggers=False``.
    """
    if fmt not in ("json", "console", "auto"):
        raise ValueError(f"log format must be 'json', 'console' or 'auto', not {fmt!r}")
    level_number = logging.getLevelNamesMapping().get(level.strip().upper())
    if level_number is None:
        raise ValueError(f"unknown log level {level!r}")
    output = sys.stderr if stream is None else stream
    if fmt == "auto":
        fmt = "console" if _is_tty(output) else "json"

    shared = _shared_processors(node)
    renderer = _renderer(fmt, output)

    handler = logging.StreamHandler(output)
    structlog.configure(
        processors=[*shared, *renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level_number),
        logger_factory=LineWriterFactory(handler),
        context_class=dict,
        cache_logger_on_first_use=cache_loggers,
    )

    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level_number)


def _shared_processors(node: str | None) -> list[Processor]:
    """What every line goes through, structlog's or a stdlib logger's."""
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        _merge_scope,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        UtcStamp(),
        structlog.processors.StackInfoRenderer(),
    ]
    if node is not None:
        shared.insert(1, _add_node(node))
    return shared


def _renderer(fmt: str, output: TextIO) -> list[Processor]:
    if fmt == "json":
        return [structlog.processors.dict_tracebacks, JsonLine()]
    return [structlog.dev.ConsoleRenderer(colors=_is_tty(output))]


class UtcStamp:
    """The ``timestamp`` field: ISO 8601 in UTC with microseconds
    (``2026-12-03T21:09:54.211151Z``), as structlog's ``TimeStamper(fmt="iso", utc=True)``
    writes it (which drops the fraction when it is .000000; this keeps it), with the date and
    time of day formatted once a second: 1 us a line instead of 5 (slow box, INFO: five
    lines per call)."""

    __slots__ = ("_second",)

    def __init__(self) -> None:
        #: (the second, its text); one attribute, so that threads never see half of it
        self._second: tuple[int, str] = (-1, "")

    def __call__(self, _logger: Any, _method: str, event_dict: EventDict) -> EventDict:
        second, nanos = divmod(time.time_ns(), 1_000_000_000)
        cached, text = self._second
        if second != cached:
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, text)
        event_dict["timestamp"] = f"{text}.{nanos // 1000:06d}Z"
        return event_dict


def _json_fallback(value: Any) -> Any:
    """A value JSON does not know: its ``__structlog__()``, else its repr (as structlog)."""
    try:
        return value.__structlog__()
    except AttributeError:
        return repr(value)


class JsonLine:
    """The JSON text of a line, as structlog's ``JSONRenderer`` makes it (``json.dumps``
    with its fallback), from one C encoder built once: ``json.dumps`` with a ``default``
    builds a new encoder for every line (9.6 -> 5 us a line on a slow box). A value that
    refers to itself raises (RecursionError here, ValueError there): no line of ours
    logs one."""

    __slots__ = ("_encode",)

    def __init__(self) -> None:
        make = getattr(json.encoder, "c_make_encoder", None)
        if make is None:  # an interpreter without the C accelerator
            encoder = json.JSONEncoder(default=_json_fallback)
            self._encode: Callable[[Any], str] = encoder.encode
        else:
            chunks = make(
                None,
                _json_fallback,
                json.encoder.encode_basestring_ascii,
                None,
                ": ",
                ", ",
                False,
                False,
                True,
            )
            self._encode = lambda value: "".join(chunks(value, 0))

    def __call__(self, _logger: Any, _method: str, event_dict: EventDict) -> str:
        return self._encode(event_dict)


class LineWriter:
    """The logger behind a structlog logger: writes each rendered line to the stream of
    ``handler`` (the root handler of the stdlib lines) under its lock, and flushes it, as
    the handler does. ``name`` is the ``logger`` field."""

    __slots__ = ("_handler", "name")

    def __init__(self, name: str, handler: logging.StreamHandler[TextIO]) -> None:
        self.name = name
        self._handler = handler

    def msg(self, message: str) -> None:
        handler = self._handler
        handler.acquire()
        try:
            stream = handler.stream
            stream.write(message + "\n")
            stream.flush()
        except Exception:  # a closed or broken stream: as the stdlib handler does
            handler.handleError(logging.makeLogRecord({"msg": message}))
        finally:
            handler.release()

    debug = info = warning = warn = error = err = critical = exception = fatal = msg
    failure = log = msg


class LineWriterFactory:
    """structlog's logger factory: one :class:`LineWriter` per name, named as structlog's
    stdlib factory names its loggers (``get_logger(name)``; without a name, the calling
    module's)."""

    def __init__(self, handler: logging.StreamHandler[TextIO]) -> None:
        self.handler = handler
        self._names = structlog.stdlib.LoggerFactory(ignore_frame_names=[__name__])

    def __call__(self, *args: Any) -> LineWriter:
        return LineWriter(self._names(*args).name, self.handler)


def get_logger(name: str | None = None, **initial_values: Any) -> FilteringBoundLogger:
    """Return a structlog logger (named after the calling module unless ``name`` is given)."""
    args = () if name is None else (name,)
    return cast(FilteringBoundLogger, structlog.get_logger(*args, **initial_values))


def bind_call(call_id: str, **fields: Any) -> AbstractContextManager[None]:
    """Bind ``call_id`` (and any ``fields``) to every log line in this context.

    Use as ``with bind_call(call_id): ...``; the previous values are restored on exit.
    Bindings live in :mod:`contextvars`, so each asyncio task sees its own.
    """
    return structlog.contextvars.bound_contextvars(call_id=call_id, **fields)


def _is_tty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _add_node(node: str) -> Processor:
    """A processor that puts the node's name on every line (a bound value wins)."""

    def add(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("node", node)
        return event_dict

    return add


class LineBudget:
    """At most ``lines`` log lines per ``interval_s`` for one kind of event (a flood of
    malformed packets must not flood the log, SPEC O-6). Sans-I/O: time comes in.

    ``allow(now)`` is None while the budget is spent (the line is dropped and counted),
    else the number of lines dropped since the last one allowed (log it with the line).
    """

    __slots__ = ("_count", "_dropped", "_window_start", "interval_s", "lines")

    def __init__(self, lines: int = 10, interval_s: float = 60.0):
        self.lines = lines
        self.interval_s = interval_s
        self._window_start = float("-inf")
        self._count = 0
        self._dropped = 0

    def allow(self, now: float) -> int | None:
        if now - self._window_start >= self.interval_s:
            self._window_start, self._count = now, 0
        if self._count >= self.lines:
            self._dropped += 1
            return None
        self._count += 1
        dropped, self._dropped = self._dropped, 0
        return dropped


class LogScope:
    """``with LogScope(fields):`` every line logged inside carries ``fields()`` (unless the
    line names the field itself). ``fields`` is called only when a line is written, so a
    scope costs one context variable set and reset on the hot path, and a field that
    changes inside the scope (a B-leg's Call-ID once it leaves) is logged as it is now."""

    __slots__ = ("_fields", "_token")

    def __init__(self, fields: Callable[[], Mapping[str, Any]]):
        self._fields = fields
        self._token: Token[Callable[[], Mapping[str, Any]] | None] | None = None

    def __enter__(self) -> None:
        self._token = _SCOPE.set(self._fields)

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _SCOPE.reset(self._token)
            self._token = None


def _merge_scope(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    fields = _SCOPE.get()
    if fields is not None:
        for key, value in fields().items():
            event_dict.setdefault(key, value)
    return event_dict
