"""Calibration results on disk: `stats.safetensors` (tensors) + `calibration.json` (metadata)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._io import read_json, sha256_file
from ..errors import F3Error
from ..models.base import TemporalBlock, TemporalUnit
from ..schema import fail, key, validate

SCHEMA = "f3compile.calibration/1"
STATS_FILE = "stats.safetensors"
META_FILE = "calibration.json"


@dataclass
class CalibrationStats:
    """Per-unit, per-step temporal attention statistics and how they were obtained."""

    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @property
    def units(self) -> list[TemporalUnit]:
        return [TemporalUnit(**unit) for unit in self.meta["units"]]

    @property
    def blocks(self) -> list[TemporalBlock]:
        order: dict[str, list[str]] = {}
        for unit in self.units:
            order.setdefault(unit.block, []).append(unit.id)
        return [TemporalBlock(block, tuple(ids)) for block, ids in order.items()]

    @property
    def timesteps(self) -> list[int]:
        return list(self.meta["timesteps"])

    @property
    def num_train_timesteps(self) -> int:
        return int(self.meta["num_train_timesteps"])

    def unit(self, unit_id: str, name: str) -> torch.Tensor:
        return self.tensors[f"unit/{unit_id}/{name}"]

    def block(self, block_id: str, name: str) -> torch.Tensor:
        return self.tensors[f"block/{block_id}/{name}"]

    def residual_change(self, block_id: str, steps: list[int] | None = None) -> float | None:
        """Mean ‖r_s − r_{s−1}‖ / ‖r_{s−1}‖ of the block's residual over `steps` (default: all),
        weighted by the number of comparisons; None without the statistics or comparisons."""
        change, calls = f"block/{block_id}/change", f"block/{block_id}/change_calls"
        if change not in self.tensors or calls not in self.tensors:
            return None
        steps = list(range(len(self.timesteps))) if steps is None else list(steps)
        count = float(self.tensors[calls][steps].double().sum())
        if count <= 0:
            return None
        return float(self.tensors[change][steps].double().sum()) / count

    def save(self, directory: Path) -> None:
        """Write the tensors, then the metadata with the tensors' sha256 (`stats_sha256`)."""
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in self.tensors.items()}, str(directory / STATS_FILE))
        self.meta["stats_sha256"] = sha256_file(directory / STATS_FILE)
        (directory / META_FILE).write_text(json.dumps(self.meta, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> "CalibrationStats":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        meta_path, stats_path = directory / META_FILE, directory / STATS_FILE
        if not meta_path.is_file() or not stats_path.is_file():
            raise F3Error(f"{directory} is not a calibration directory (needs {META_FILE} and {STATS_FILE}); run `f3compile calibrate` first")
        meta = read_json(meta_path, "re-run `f3compile calibrate`")
        if not isinstance(meta, dict) or meta.get("schema") != SCHEMA:
            raise F3Error(f"{meta_path} is not a {SCHEMA} file; re-run `f3compile calibrate`")
        shard = meta.get("shard")
        if shard is not None:
            part = f"{shard.get('index')}/{shard.get('count')}" if isinstance(shard, dict) else "a part"
            raise F3Error(f"{directory} is shard {part} of a calibration; join all shards with `f3compile merge` first")
        _check_meta(meta, str(meta_path))
        try:
            tensors = load_file(str(stats_path))
        except (SafetensorError, OSError) as exc:
            raise F3Error(f"{stats_path} is unreadable ({exc}); re-run `f3compile calibrate`") from None
        stats = cls(meta=meta, tensors=tensors)
        steps = len(stats.timesteps)
        expected: dict[str, tuple[int, ...]] = {}
        for unit in stats.units:
            expected |= {f"unit/{unit.id}/{name}": shape for name, shape in (
                ("attn", (steps, unit.heads, unit.frames, unit.frames)), ("rows", (steps,)), ("branch", (steps,)),
                ("head_branch", (steps, unit.heads)), ("calls", (steps,)))}
            if unit.text_tokens:
                expected[f"unit/{unit.id}/text"] = (steps, unit.heads, unit.frames)
        for block in stats.blocks:
            expected |= {f"block/{block.id}/ratio": (steps,), f"block/{block.id}/calls": (steps,)}
        for block in stats.blocks:  # residual change: absent from calibrations written before it was recorded
            change, calls = f"block/{block.id}/change", f"block/{block.id}/change_calls"
            if (change in tensors) != (calls in tensors):
                present, missing = (change, calls) if change in tensors else (calls, change)
                raise F3Error(f"{stats_path} has {present!r} but lacks {missing!r}; re-run `f3compile calibrate`")
            if change in tensors:
                expected |= {change: (steps,), calls: (steps,)}
        for name, shape in expected.items():
            if name not in tensors:
                raise F3Error(f"{stats_path} lacks statistics {name!r}; re-run `f3compile calibrate`")
            if tuple(tensors[name].shape) != shape:
                raise F3Error(f"{stats_path}: {name!r} has shape {list(tensors[name].shape)} but {META_FILE} implies "
                              f"{list(shape)}; re-run `f3compile calibrate`")
        return stats


def _count(value: Any, least: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _positive(value: Any) -> bool:
    return _count(value)


@dataclass
class UnitDocument:
    """units[i]: one temporal attention (`models.base.TemporalUnit`)."""

    MESSAGE = ("must be an object with string id and block, positive integer heads, head_dim, frames and channels "
               "and, for full 3-D attention, positive tokens and non-negative text_tokens")
    id: str = key(check=bool)
    block: str = key(check=bool)
    heads: int = key(check=_positive)
    head_dim: int = key(check=_positive)
    frames: int = key(check=_positive)
    channels: int = key(check=_positive)
    tokens: int = key(optional=True, check=_positive)
    text_tokens: int = key(optional=True, check=lambda v: _count(v, 0))


@dataclass
class CalibrationDocument:
    """The calibration.json fields that planning reads (others are recorded for people), with their
    types; `relations` checks timesteps, steps and the units' blocks."""

    OPEN = True  # seeds, scheduler, versions, seconds, ... are recorded but not read
    MISSING_IS_WRONG = True
    FIX = "re-run `f3compile calibrate`"
    model: dict[str, Any] = key(check=lambda v: isinstance(v.get("spec"), str) and isinstance(v.get("fingerprint"), str),
                                message="model must be an object with a string spec and fingerprint")
    prompts: dict[str, Any] = key(check=lambda v: _count(v.get("count")), message="prompts.count must be a positive integer")
    shapes: dict[str, Any] = key(check=lambda v: _count(v.get("frames")), message="shapes.frames must be a positive integer")
    num_train_timesteps: int = key(check=_positive, message="num_train_timesteps must be a positive integer")
    timesteps: list[int] = key(check=lambda v: bool(v) and all(t >= 0 for t in v) and all(a > b for a, b in zip(v, v[1:])),
                               message="timesteps must be a non-empty, decreasing list of distinct integers in [0, "
                                       "num_train_timesteps - 1]")
    steps: int = key(check=_positive, message="steps must be a positive integer")
    units: list[UnitDocument] = key(check=bool, message="units must be a non-empty list")
    experts: dict[str, Any] = key(optional=True, check=lambda v: bool(v) and all(
        isinstance(name, str) and name and isinstance(span, list) and len(span) == 2
        and all(_count(t, 0) for t in span) and span[0] >= span[1] for name, span in v.items()),
        message="experts must map expert names to [high, low] timestep ranges")

    @staticmethod
    def relations(meta: dict, where: str) -> None:
        fix = CalibrationDocument.FIX
        total, timesteps = meta["num_train_timesteps"], meta["timesteps"]
        if meta.get("experts") is not None and any(span[0] >= total for span in meta["experts"].values()):
            fail(where, f"experts must map expert names to [high, low] timestep ranges within [0, {total - 1}]", fix)
        if not timesteps[0] < total:
            fail(where, f"timesteps must be a non-empty, decreasing list of distinct integers in [0, {total - 1}]", fix)
        if not meta["steps"] <= total:
            fail(where, f"steps must be an integer in [1, {total}]", fix)
        units, seen = meta["units"], set()
        for number, unit in enumerate(units):
            if not (unit["id"] == unit["block"] or unit["id"].startswith(unit["block"] + ".")):
                fail(where, f"units[{number}]: block {unit['block']!r} must be {unit['id']!r} or a module that encloses it", fix)
            if unit["id"] in seen:
                fail(where, f"units[{number}]: id {unit['id']!r} appears twice", fix)
            seen.add(unit["id"])
        blocks = {unit["block"] for unit in units if unit["block"] != unit["id"]}
        for number, unit in enumerate(units):
            if unit["block"] != unit["id"] and unit["block"] in seen:
                fail(where, f"units[{number}]: block {unit['block']!r} is another temporal attention; an attention "
                            "encloses no other", fix)
            if unit["block"] == unit["id"] and any(unit["id"].startswith(b + ".") for b in blocks):
                fail(where, f"units[{number}]: {unit['id']!r} is its own block inside another temporal block", fix)


def _check_meta(meta: dict, where: str) -> None:
    validate(CalibrationDocument, meta, where)
