"""One declarative validator for every JSON document f3compile reads.

A document's shape is a dataclass (a *schema*): each field is a key, its annotation the JSON type
of the value, and `key(...)` adds a value check, the message when the value is wrong, and whether
the key may be left out. `validate(Schema, data, where)` checks, in field order:

- the document is a JSON object; unknown keys are refused unless the schema is `OPEN`; every key
  without a default is present (a `MISSING_IS_WRONG` schema reports a missing key as that field's
  wrong value, with its message);
- each value has its declared type, strictly (`int` is never a `bool`, `float` is any JSON number,
  `tuple[int, int]` a list of two, `dict[str, X]`, `list[X]`, `X | None`, `Literal[...]`, `Any`,
  or another schema, validated in turn);
- each value passes its field's `check`;
- then the schema's `relations(data, where)` hook checks what spans fields.

Every refusal is one `F3Error` line: `where: what is wrong` (names from the file quoted when odd)
with the schema's `FIX` appended (what the user should do). A schema's `MESSAGE` replaces any
structural error inside it with one message, `where MESSAGE` (for parts reported as a whole);
`relations` report their own.

Written here rather than taken from a schema library: the messages must be single lines that name
the file, the field and the fix, the checks must be strict about JSON types (a library's coercion,
`True` as 1 or "1" as 1, would let a damaged file load), and the relations (timestep ranges that
tile the trajectory, ids that must name scored units) are code either way.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable, Literal, Union, get_args, get_origin

from .errors import F3Error

ABSENT: Any = dataclasses.MISSING  # `key(optional=True)` fields have no default: the key may be left out


def key(default: Any = dataclasses.MISSING, *, check: Callable[[Any], bool] | None = None,
        message: str | Callable[[Any], str] | None = None, optional: bool = False, help: str = "") -> Any:
    """A schema field: the value must also pass `check`; `message` (or `message(value)`) replaces
    the default "NAME must be TYPE" when it does not; `optional`: the key may be absent."""
    metadata = {"check": check, "message": message, "optional": optional, "help": help}
    if default is dataclasses.MISSING:
        return dataclasses.field(default=None if optional else dataclasses.MISSING, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def name(value: Any) -> str:
    """A name from a file for a one-line message: odd ones (empty, control characters, not text) quoted."""
    return value if isinstance(value, str) and value.isprintable() and value.strip() == value != "" else repr(value)


def names(values) -> str:
    return ", ".join(map(name, values))


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Invalid(F3Error):
    """A schema refusal (an `F3Error`: one line, the user's to fix)."""


def fail(where: str, what: str, fix: str = "") -> None:
    raise Invalid(f"{where}: {what}" + (f"; {fix}" if fix else ""))


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(schema: type) -> dict[str, Any]:
    if schema not in _HINTS:
        _HINTS[schema] = typing.get_type_hints(schema)
    return _HINTS[schema]


def describe(kind: Any) -> str:
    """A type annotation as words: 'an integer', 'a list of strings', ..."""
    origin, args = get_origin(kind), get_args(kind)
    if kind is Any:
        return "a value"
    if kind is str:
        return "a string"
    if kind is bool:
        return "true or false"
    if kind is int:
        return "an integer"
    if kind is float:
        return "a number"
    if kind is type(None):
        return "null"
    if dataclasses.is_dataclass(kind):
        return "an object"
    if origin in (Union, getattr(__import__("types"), "UnionType", Union)):
        return " or ".join(describe(arg) for arg in args)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin is list:
        return f"a list of {_plural(describe(args[0]))}"
    if origin is tuple:
        return f"a list of {len(args)} {_plural(describe(args[0]))}"
    if origin is dict:
        return f"an object of {_plural(describe(args[1]))}"
    return getattr(kind, "__name__", str(kind))


def _plural(words: str) -> str:
    for article in ("an ", "a "):
        if words.startswith(article):
            words = words[len(article):]
            return {"value": "values", "string": "strings", "integer": "integers", "number": "numbers",
                    "object": "objects"}.get(words, words + "s")
    return words


def conforms(kind: Any, value: Any, where: str, fix: str = "") -> bool:
    """True when `value` has JSON type `kind`; a nested schema is validated (and raises) in place."""
    origin, args = get_origin(kind), get_args(kind)
    if kind is Any:
        return True
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return is_int(value)
    if kind is float:
        return is_number(value)
    if kind is str:
        return isinstance(value, str)
    if kind is type(None):
        return value is None
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            return False
        validate(kind, value, where, fix)
        return True
    if origin is Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if origin in (Union, getattr(__import__("types"), "UnionType", Union)):
        plain = [arg for arg in args if not dataclasses.is_dataclass(arg)]
        nested = [arg for arg in args if dataclasses.is_dataclass(arg)]
        return any(conforms(arg, value, where, fix) for arg in plain) or (
            bool(nested) and isinstance(value, dict) and conforms(nested[0], value, where, fix))
    if origin is list:
        return isinstance(value, list) and all(conforms(args[0], item, f"{where}[{i}]", fix) for i, item in enumerate(value))
    if origin is tuple:
        return (isinstance(value, list) and len(value) == len(args)
                and all(conforms(arg, item, f"{where}[{i}]", fix) for i, (arg, item) in enumerate(zip(args, value))))
    if origin is dict:
        return isinstance(value, dict) and all(
            isinstance(k, str) and conforms(args[1], v, f"{where}.{name(k)}", fix) for k, v in value.items())
    raise TypeError(f"schema type {kind!r} is not supported")


def validate(schema: type, data: Any, where: str, fix: str | None = None) -> dict:
    """Check `data` against `schema` (see the module docstring); returns `data`."""
    fix = getattr(schema, "FIX", "") if fix is None else getattr(schema, "FIX", "") or fix
    whole = getattr(schema, "MESSAGE", None)
    try:
        _validate(schema, data, where, fix)
    except Invalid:
        if whole is None:
            raise
        raise Invalid(f"{where} {whole}" + (f"; {fix}" if fix else "")) from None
    relations = getattr(schema, "relations", None)
    if relations is not None:
        relations(data, where)
    return data


def _validate(schema: type, data: Any, where: str, fix: str) -> None:
    if not isinstance(data, dict):
        fail(where, "must be a JSON object", fix)
    fields = dataclasses.fields(schema)
    known = [f.name for f in fields]
    unknown = sorted((k for k in data if k not in known), key=str)
    if unknown and not getattr(schema, "OPEN", False):
        fail(where, f"unknown key(s) {names(unknown)}; allowed: {', '.join(known)}", fix)
    missing = [f.name for f in fields if f.name not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING and not f.metadata.get("optional")]
    if missing and not getattr(schema, "MISSING_IS_WRONG", False):
        fail(where, f"missing key(s) {', '.join(missing)}", fix)
    hints = _hints(schema)
    for f in fields:
        if f.name not in data and f.name not in missing:
            continue
        value, check, message = data.get(f.name), f.metadata.get("check"), f.metadata.get("message")
        inner = where if f.name.startswith("_") else f"{where}: {f.name}"
        if not conforms(hints[f.name], value, inner, fix) or (check is not None and not check(value)):
            if message is None:
                fail(where, f"{f.name} must be {describe(hints[f.name])}", fix)
            fail(where, message(value) if callable(message) else message, fix)
