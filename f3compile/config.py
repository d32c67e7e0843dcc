"""Typed configs: dataclasses whose fields carry a default and a one-line description."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from .errors import F3Error

T = TypeVar("T")


def option(default: Any, help: str) -> Any:
    """A dataclass field with a default and a one-line description (shown in --help)."""
    return dataclasses.field(default=default, metadata={"help": help})


def describe(cls: type, name: str) -> str:
    return next(f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.name == name)


def from_dict(cls: type[T], data: dict[str, Any], where: str) -> T:
    """Build `cls` from `data`, rejecting unknown keys with a message naming them."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise F3Error(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
    return cls(**data)
