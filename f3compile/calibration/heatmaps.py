"""Heatmaps of calibration statistics: per unit frame×frame attention, per model score by step."""

from __future__ import annotations

import re
from pathlib import Path

from .stats import CalibrationStats


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def write_heatmaps(stats: CalibrationStats, directory: Path, criterion: str = "cross_frame_mass") -> list[Path]:
    """Write `unit_<id>.png` (head-averaged attention, key frame vs query frame) and
    `scores_by_step.png` (unit × step score). Returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .criteria import mean_attention, score_by_step

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for unit in stats.units:
        attn = mean_attention(stats, unit.id).mean(0).numpy()
        fig, ax = plt.subplots(figsize=(3.6, 3.2))
        image = ax.imshow(attn, vmin=0.0, vmax=max(float(attn.max()), 1e-6), cmap="viridis")
        ax.set_xlabel("key frame")
        ax.set_ylabel("query frame")
        ax.set_title(unit.id, fontsize=6)
        fig.colorbar(image, ax=ax, fraction=0.046)
        fig.tight_layout()
        path = directory / f"unit_{_safe(unit.id)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    table = score_by_step(stats, criterion).numpy()
    units = stats.units
    fig, ax = plt.subplots(figsize=(max(4.0, 0.25 * table.shape[1] + 3), max(3.0, 0.22 * len(units) + 1.5)))
    image = ax.imshow(table, aspect="auto", cmap="magma")
    ax.set_yticks(range(len(units)), [u.id for u in units], fontsize=5)
    step_labels = [str(t) for t in stats.timesteps]
    stride = max(1, len(step_labels) // 12)
    ax.set_xticks(range(0, len(step_labels), stride), step_labels[::stride], fontsize=6)
    ax.set_xlabel("timestep")
    ax.set_title(f"{criterion} by unit and step", fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = directory / "scores_by_step.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written
