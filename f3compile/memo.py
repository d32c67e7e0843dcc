"""Results of deterministic work, kept for the rest of the process when they are small.

Tracing a program, serializing it and exporting it to ONNX are pure functions of what they are
given — a model's fingerprint and shapes, a program, a file's sha256 — and take seconds each even
for a small model. A process that compiles one model for several plans, benches the dense
baseline again and again, or opens the same build twice (a notebook, a server, the test suite)
would redo them. `Memo` keeps such results by their key, least recently used dropped first, and
only for inputs whose weights take at most `limit_bytes` (`F3COMPILE_CACHE_MB`, default 64; 0 turns
every memo off), so a deployment-sized model is never held twice.

What is kept is never modified afterwards: programs are only read (`ExportedProgram.module()`
builds a new module each call), file bytes are only written out, and an ONNX graph kept as an
onnx_ir model has its initializers swapped for external references only while it is saved
(`exporters.onnx.WeightFile.write_graph`), and restored.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Hashable


def _default_limit() -> int:
    return int(float(os.environ.get("F3COMPILE_CACHE_MB", "64")) * 2**20)


class Memo:
    """An LRU map of small results (see the module docstring)."""

    def __init__(self, limit_bytes: int | None = None, entries: int = 48):
        self.limit_bytes = _default_limit() if limit_bytes is None else limit_bytes
        self.entries = entries
        self._items: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable) -> Any:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def keeps(self, nbytes: int) -> bool:
        """Whether a result computed from `nbytes` of weights would be kept (compute it only then)."""
        return nbytes <= self.limit_bytes

    def put(self, key: Hashable, value: Any, nbytes: int) -> None:
        """Keep `value` unless what it was computed from is larger than `limit_bytes`."""
        if not self.keeps(nbytes):
            return
        self._items[key] = value
        while len(self._items) > self.entries:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()


def program_bytes(program) -> int:
    """Bytes of a torch.export program's weights and buffers."""
    return int(sum(t.numel() * t.element_size() for t in program.state_dict.values()))


PROGRAMS = Memo()  # the compiler's captures and stage programs
FILES = Memo()  # the .pt2 files' bytes and the ONNX graphs written for a program
LOADED = Memo(entries=16)  # programs loaded from .pt2 files, by the file's sha256
