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
        try:
            tensors = load_file(str(stats_path))
        except (SafetensorError, OSError) as exc:
            raise F3Error(f"{stats_path} is unreadable ({exc}); re-run `f3compile calibrate`") from None
        stats = cls(meta=meta, tensors=tensors)
        for unit in stats.units:
            if f"unit/{unit.id}/attn" not in tensors:
                raise F3Error(f"{stats_path} lacks statistics for {unit.id}; re-run `f3compile calibrate`")
        return stats
