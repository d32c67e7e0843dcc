"""Typed configs: dataclasses whose fields carry a default and a one-line description."""

from __future__ import annotations

import dataclasses
from typing import Any


def option(default: Any, help: str) -> Any:
    """A dataclass field with a default and a one-line description of what it sets."""
    return dataclasses.field(default=default, metadata={"help": help})
