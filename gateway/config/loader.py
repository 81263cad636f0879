"""Load dialplan YAML files with errors that name the file, line and field (SPEC O-1).

Theory of operation
-------------------
The YAML text is *composed* into a node tree first (PyYAML keeps a start mark, i.e. line
and column, on every node), and the tree is walked once to record where each mapping key
and sequence item starts, keyed by its path (``("outbound", 1, "trunk")``). Only then is
the tree *constructed* into plain Python data and validated by :class:`Dialplan`. Each
pydantic error carries a ``loc`` tuple of the same shape, so its line is the recorded mark
of the longest prefix of ``loc`` (for a missing field: the mapping that lacks it).

All problems found are raised together as one :class:`DialplanError`, one per line::

    dialplans/x.yaml:14: outbound[1].trunk: unknown trunk 'carier' (known: carrier)

YAML 1.1 reads some unquoted words and numbers as something else: ``NO`` and ``on`` are
booleans, ``+15555550101`` is the integer 15555550101 (the ``+`` is gone). The walk also
keeps the text of every unquoted scalar that did not become a string, so an error about
such a value says what YAML made of it and what to write instead::

    dialplans/x.yaml:30: agents.al.location.country: Input should be a valid string, got
    False from YAML; quote the value: 'NO'
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from gateway.config.dialplan import Dialplan

__all__ = ["DialplanError", "Problem", "field_lines", "load_dialplan", "load_dialplan_text"]

FieldPath = tuple[str | int, ...]

# Error types raised by gateway.config.dialplan whose messages already quote the input.
_SELF_DESCRIBING = frozenset(
    {
        "duplicate",
        "empty",
        "front",
        "host",
        "name",
        "regex",
        "rewrite",
        "timer_order",
        "country",
        "uri",
        "unknown_trunk",
        "version",
    }
)


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a dialplan file.

    ``line`` and ``column`` are 1-based and ``None`` when unknown (e.g. unreadable file);
    ``field`` is a dotted path such as ``outbound[1].trunk`` ("" for the whole file).
    """

    file: str
    line: int | None
    column: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class DialplanError(Exception):
    """A dialplan file could not be loaded; ``problems`` lists every reason found."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(problem) for problem in self.problems)


def load_dialplan(path: str | os.PathLike[str]) -> Dialplan:
    """Read and validate a dialplan file; raise :class:`DialplanError` on any problem."""
    filename = os.fspath(path)
    try:
        text = Path(filename).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DialplanError([Problem(filename, None, None, "", f"cannot read: {error}")]) from None
    return load_dialplan_text(text, filename)


def load_dialplan_text(text: str, filename: str = "<string>") -> Dialplan:
    """Validate dialplan YAML ``text``; ``filename`` is only used in error messages."""
    data, positions, problems = _parse_yaml(text, filename)
    try:
        dialplan = Dialplan.model_validate(data)
    except ValidationError as error:
        problems.extend(
            _problem_from_error(detail, filename, positions) for detail in error.errors()
        )
    if problems:
        problems.sort(key=lambda problem: (problem.line or 0, problem.column or 0))
        raise DialplanError(problems)
    return dialplan


def field_lines(path: str | os.PathLike[str]) -> dict[FieldPath, int]:
    """The line of every key and sequence item of a dialplan file, by field path
    (``("outbound", 1)``), for messages about a file that loaded (``gateway check``).

    Raises :class:`DialplanError` when the file cannot be read or parsed."""
    filename = os.fspath(path)
    try:
        text = Path(filename).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DialplanError([Problem(filename, None, None, "", f"cannot read: {error}")]) from None
    _data, positions, _problems = _parse_yaml(text, filename)
    return {field: line for field, (line, _column) in positions.marks.items()}


# --- YAML with positions ---------------------------------------------------------------

_Mark = tuple[int, int]  # 1-based (line, column)

#: YAML 1.1 tags a plain (unquoted) scalar may resolve to instead of a string
_NON_STRING_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}" for name in ("bool", "int", "float", "null", "timestamp")
)


#: errors that mean "this should have been text": where YAML's reading of an unquoted
#: scalar (NO -> False) is the likely cause
_WANTED_TEXT = frozenset({"string_type", "literal_error"})


@dataclass(slots=True)
class _Positions:
    """Where each key and item starts, and the text of plain scalars YAML did not read as
    strings (keyed by path; a mapping key's own text under ``(*path, "[key]")``)."""

    marks: dict[FieldPath, _Mark]
    plain_text: dict[tuple[str | int, ...], str]


def _mark_of(node: yaml.Node) -> _Mark:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _parse_yaml(text: str, filename: str) -> tuple[dict[Any, Any], _Positions, list[Problem]]:
    """Return the document as plain data, the position of every key and item, and the
    duplicate keys found (problems that do not stop validation)."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            raise DialplanError([Problem(filename, 1, 1, "", "the file is empty")])
        positions = _Positions({(): _mark_of(root)}, {})
        duplicates: list[Problem] = []
        _record_marks(loader, root, (), positions, duplicates, filename)
        data = loader.construct_document(root)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        detail = error.problem or error.context or "invalid YAML"
        if error.context and error.problem:
            # e.g. "expected ',' or '}', but got '<stream end>' (while parsing a flow
            # mapping that starts on line 3)"
            started = error.context_mark
            where = f" that starts on line {started.line + 1}" if started else ""
            detail = f"{error.problem} ({error.context}{where})"
        line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
        raise DialplanError(
            [Problem(filename, line, column, "", f"YAML syntax error: {detail}")]
        ) from None
    except yaml.YAMLError as error:
        raise DialplanError([Problem(filename, None, None, "", f"YAML error: {error}")]) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise DialplanError(
            [Problem(filename, 1, 1, "", "the top level must be a mapping (version: 1, ...)")]
        )
    return data, positions, duplicates


def _is_non_string_plain(node: yaml.Node) -> bool:
    return (
        isinstance(node, yaml.ScalarNode)
        and node.style is None
        and node.tag in _NON_STRING_TAGS
        and bool(node.value)
    )


def _record_marks(
    loader: yaml.SafeLoader,
    node: yaml.Node,
    path: FieldPath,
    positions: _Positions,
    duplicates: list[Problem],
    filename: str,
) -> None:
    """Walk a composed node, recording where each key and sequence item starts."""
    marks = positions.marks
    if _is_non_string_plain(node):
        positions.plain_text[path] = node.value
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *anchor" merge key
                continue
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int):
                continue
            line, column = _mark_of(key_node)
            if key in seen:
                # PyYAML silently keeps the last value; a dialplan must not. Marks below
                # are overwritten with this occurrence, the one the data holds.
                duplicates.append(
                    Problem(
                        filename,
                        line,
                        column,
                        _dotted((*path, key)),
                        f"duplicate key (first defined on line {seen[key]}; "
                        "YAML would silently keep only this one)",
                    )
                )
            seen.setdefault(key, line)
            marks[(*path, key)] = (line, column)
            if _is_non_string_plain(key_node):
                positions.plain_text[(*path, key, "[key]")] = key_node.value
            _record_marks(loader, value_node, (*path, key), positions, duplicates, filename)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            marks[(*path, index)] = _mark_of(item)
            _record_marks(loader, item, (*path, index), positions, duplicates, filename)


# --- pydantic errors to problems --------------------------------------------------------


def _clean_loc(loc: tuple[int | str, ...]) -> FieldPath:
    # pydantic adds a "[key]" marker after a dict key whose *key* failed validation.
    return tuple(part for part in loc if part != "[key]")


def _dotted(path: FieldPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _problem_from_error(detail: ErrorDetails, filename: str, positions: _Positions) -> Problem:
    path = _clean_loc(detail["loc"])
    prefix = path
    while prefix not in positions.marks:
        prefix = prefix[:-1]
    line, column = positions.marks[prefix]
    message = _message(detail, path)
    plain = positions.plain_text.get(tuple(detail["loc"]))
    if plain is not None and detail["type"] in _WANTED_TEXT:
        message = _yaml_hint(message, detail.get("input"), plain)
    return Problem(filename, line, column, _dotted(path), message)


def _yaml_hint(message: str, value: Any, plain: str) -> str:
    """Say what YAML made of an unquoted scalar, and how to keep it as written."""
    got = f", got {value!r}"
    hint = f"{got} from YAML; quote the value: {plain!r}"
    if message.endswith(got):
        return message.removesuffix(got) + hint
    return message + hint


def _message(detail: ErrorDetails, path: FieldPath) -> str:
    kind = detail["type"]
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return _unknown_field_message(path)
    message = detail["msg"]
    value = detail.get("input")
    if (
        kind not in _SELF_DESCRIBING
        and isinstance(value, str | int | float | bool)
        and not (isinstance(value, str) and repr(value) in message)
    ):
        message = f"{message}, got {value!r}"
    return message


def _unknown_field_message(path: FieldPath) -> str:
    name = str(path[-1]) if path else ""
    model = _model_at(path[:-1])
    if model is None:
        return f"unknown field {name!r}"
    allowed = list(model.model_fields)
    close = difflib.get_close_matches(name, allowed, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(allowed)}"
    return f"unknown field {name!r} ({hint})"


def _model_at(path: FieldPath) -> type[BaseModel] | None:
    """The model class that validates the mapping at ``path`` in a dialplan, if any."""
    current: Any = Dialplan
    for part in path:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return None
            current = _unwrap_optional(field.annotation)
        else:
            origin, args = typing.get_origin(current), typing.get_args(current)
            if origin in (tuple, list) and args:
                current = _unwrap_optional(args[0])
            elif origin is dict and len(args) == 2:
                current = _unwrap_optional(args[1])
            else:
                return None
    if isinstance(current, type) and issubclass(current, BaseModel):
        return current
    return None


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return models[0] if len(models) == 1 else annotation
    return annotation
