"""Per-stage ranking, tie-breaking by module order and per-stage ratios, on synthetic statistics.

The statistics are made by hand: every attention matrix has one value `d` on its diagonal and
spreads the rest evenly over the other frames, so its `cross_frame_mass` is exactly 1 − d and
the expected plans follow from a few numbers written below.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from f3compile.calibration.stats import CalibrationStats
from f3compile.cli import main
from f3compile.planning import make_plan

SCORE_ABS = 1e-6  # plan scores are rounded to 6 decimals
HEADS, HEAD_DIM, FRAMES, CHANNELS = 2, 8, 8, 16
ROWS = 64.0  # summed rows per (step, head, query frame)

# Cross-frame mass per calibration step (6 steps; 2 stages = steps [0, 1, 2] and [3, 4, 5]).
# A does little cross-frame work early and much late; B the opposite.
EARLY_LATE = {
    "blocks.0.attn1": [0.10, 0.15, 0.20, 0.60, 0.70, 0.90],  # A
    "blocks.1.attn1": [0.50, 0.55, 0.60, 0.30, 0.20, 0.10],  # B
}
# Constant over steps, with ties; ids deliberately not in alphabetical order, so that module
# order (the order listed here, i.e. `stats.units`) and sorting by id disagree.
TIED = {
    "up.1.attn1": 0.5,
    "down.0.attn1": 0.3,
    "mid.attn1": 0.5,
    "down.1.attn1": 0.5,
    "conv.attn1": 0.9,
}


def _attention(cross_mass: float) -> torch.Tensor:
    """(H, F, F) summed probabilities of ROWS rows whose frames keep 1 − cross_mass on themselves."""
    off = cross_mass / (FRAMES - 1)
    matrix = torch.full((FRAMES, FRAMES), off, dtype=torch.float64)
    matrix.fill_diagonal_(1.0 - cross_mass)
    return (ROWS * matrix).float().expand(HEADS, FRAMES, FRAMES).clone()


def _synthetic(real: CalibrationStats, masses: dict[str, list[float]], directory) -> CalibrationStats:
    """A calibration of `masses` (unit id -> cross-frame mass per step), saved and loaded back."""
    meta = copy.deepcopy(real.meta)
    steps = len(next(iter(masses.values())))
    assert steps == len(meta["timesteps"])
    meta["model"] = {"spec": "synthetic", "fingerprint": "sha256:" + "0" * 64}
    meta["units"] = [
        {"id": unit_id, "block": unit_id.rpartition(".")[0], "heads": HEADS, "head_dim": HEAD_DIM,
         "frames": FRAMES, "channels": CHANNELS}
        for unit_id in masses
    ]
    tensors = {}
    for unit_id, per_step in masses.items():
        tensors |= {
            f"unit/{unit_id}/attn": torch.stack([_attention(m) for m in per_step]),
            f"unit/{unit_id}/rows": torch.full((steps,), ROWS),
            f"unit/{unit_id}/branch": torch.ones(steps),
            f"unit/{unit_id}/head_branch": torch.ones(steps, HEADS),
            f"unit/{unit_id}/calls": torch.ones(steps),
            f"block/{unit_id.rpartition('.')[0]}/ratio": torch.ones(steps),
            f"block/{unit_id.rpartition('.')[0]}/calls": torch.ones(steps),
        }
    directory.mkdir()
    CalibrationStats(meta=meta, tensors=tensors).save(directory)
    return CalibrationStats.load(directory)  # the loader validates the meta and the tensor shapes


@pytest.fixture
def early_late(calibrations, tmp_path):
    directory = tmp_path / "early-late"
    return directory, _synthetic(calibrations["tiny-latte"][1], EARLY_LATE, directory)


@pytest.fixture
def tied(calibrations, tmp_path):
    steps = len(calibrations["tiny-latte"][1].timesteps)
    return _synthetic(calibrations["tiny-latte"][1], {u: [m] * steps for u, m in TIED.items()}, tmp_path / "tied")


def test_each_stage_is_ranked_on_its_own_steps(early_late):
    _, stats = early_late
    a, b = EARLY_LATE
    groups = [[0, 1, 2], [3, 4, 5]]
    by_hand = [{u: sum(EARLY_LATE[u][s] for s in g) / len(g) for u in EARLY_LATE} for g in groups]
    assert by_hand[0][a] < by_hand[0][b] and by_hand[1][b] < by_hand[1][a]
    plan = make_plan(stats, 0.5, "attention", stages=2)
    timesteps = stats.timesteps
    assert [stage.timesteps for stage in plan.stages] == [(999, timesteps[2]), (timesteps[2] - 1, 0)]
    assert [stage.drop_attention for stage in plan.stages] == [[a], [b]]


def test_one_stage_follows_the_whole_trajectory_average(early_late):
    _, stats = early_late
    a, b = EARLY_LATE
    whole = {u: sum(v) / len(v) for u, v in EARLY_LATE.items()}  # A 0.441667, B 0.375
    assert whole[b] < whole[a]
    plan = make_plan(stats, 0.5, "attention", stages=1)
    assert [stage.drop_attention for stage in plan.stages] == [[b]]
    for unit_id, expected in whole.items():
        assert plan.scores[unit_id]["score"] == pytest.approx(expected, abs=SCORE_ABS)
        assert plan.scores[unit_id]["per_head"] == pytest.approx([expected] * HEADS, abs=SCORE_ABS)


@pytest.mark.parametrize("granularity, ratio, expected", [
    # 5 units, 3 pruned: down.0 (0.3), then the first two of the three 0.5 ties in module order
    ("attention", 0.6, ["up.1.attn1", "down.0.attn1", "mid.attn1"]),
    ("block", 0.6, ["up.1", "down.0", "mid"]),
    # 10 heads, 5 pruned: down.0's two (0.3), then ties by module order, then by head index
    ("head", 0.5, {"up.1.attn1": [0, 1], "down.0.attn1": [0, 1], "mid.attn1": [0]}),
])
def test_equal_scores_are_pruned_in_module_order(tied, granularity, ratio, expected):
    plan = make_plan(tied, ratio, granularity, stages=2)
    field = {"attention": "drop_attention", "block": "drop_blocks", "head": "prune_heads"}[granularity]
    for stage in plan.stages:
        assert getattr(stage, field) == expected


def test_per_stage_ratios_prune_nothing_then_everything(early_late, tmp_path, capsys):
    directory, stats = early_late
    in_module_order = [unit.id for unit in stats.units]
    assert in_module_order == list(EARLY_LATE)
    plan = make_plan(stats, [0.0, 1.0], "attention", stages=2)
    assert plan.ratio == [0.0, 1.0]
    assert [stage.drop_attention for stage in plan.stages] == [[], in_module_order]

    output = tmp_path / "schedule.json"
    status = main(["plan", str(directory), "--ratio", "0,1", "--stages", "2", "--granularity", "attention",
                   "-o", str(output)])
    assert status == 0, capsys.readouterr().err
    saved = json.loads(output.read_text())
    assert saved["ratio"] == [0.0, 1.0]
    assert [stage["drop_attention"] for stage in saved["stages"]] == [[], in_module_order]
