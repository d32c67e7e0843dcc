"""Reuse plans: which blocks calibration says are safe to reuse, what they save, and the whole CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from f3compile import F3Error
from f3compile.benchmark import bench
from f3compile.compiler.compile import compile as compile_plan, export_inputs
from f3compile.models import find_temporal_units, load_model
from f3compile.planning import PruningPlan, make_plan
from f3compile.planning.cost import ModelCost, count_flops
from f3compile.planning.plan import split_steps
from f3compile.planning.schedule import make_target_plan, predicted_speedup
from f3compile.reuse import pattern_at

from tests.helpers import assert_one_line_error, run

REL_FLOPS = 1e-3  # the cost model vs FLOPs counted on the compiled programs


def change_by_hand(stats, block: str, steps: list[int]) -> float:
    change, calls = stats.tensors[f"block/{block}/change"], stats.tensors[f"block/{block}/change_calls"]
    return float(change[steps].sum() / calls[steps].sum())


def test_reuse_plans_pick_the_blocks_whose_residual_changes_least(calibrations):
    stats = calibrations["tiny-unet3d"][1]
    plan = make_plan(stats, 0.4, "block", "residual_change", stages=2, reuse=3)
    blocks = [b.id for b in stats.blocks]
    for stage, group in zip(plan.stages, split_steps(len(stats.timesteps), 2)):
        ranked = sorted(blocks, key=lambda b: change_by_hand(stats, b, group))
        assert list(stage.reuse) == sorted(ranked[:2], key=blocks.index)
        assert set(stage.reuse.values()) == {3} and not stage.drop_blocks
    again = PruningPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert [s.reuse for s in again.stages] == [s.reuse for s in plan.stages] and again.criterion == "residual_change"
    with pytest.raises(F3Error, match="use --granularity block"):
        make_plan(stats, 0.4, "head", "residual_change")
    with pytest.raises(F3Error, match="use --granularity block"):
        make_plan(stats, 0.4, "attention", reuse=2)
    with pytest.raises(F3Error, match=r"period in \[2, 64\]"):
        make_plan(stats, 0.4, "block", reuse=1)


@pytest.mark.parametrize("name", ["tiny-unet3d", "tiny-wan"])
def test_cost_model_counts_what_the_reuse_programs_skip(models, name):
    """FLOPs removed per call, averaged over a stage of 3 and of 4 steps, against FLOPs counted on
    the compiled compute and reuse programs weighted by the steps each one runs. On Wan a reused
    block's rotary embedding writes in place into a buffer nothing reads then: it goes too."""
    model = models[name] if name in models else load_model(f"builtin:{name}")
    units = find_temporal_units(model)
    blocks = list(dict.fromkeys(u.block for u in units))
    plan = PruningPlan.dense(model, units)
    stage = plan.stages[0]
    # tiny-wan has two blocks: one is reused (period 5, so 3 and 4 steps skip less than a long
    # stage), since a step that skips both also loses the rotary embedding and timestep projection
    # only blocks read, which the cost model does not count
    first = blocks[1] if len(blocks) > 3 else blocks[0]
    stage.reuse = {first: 2, blocks[3]: 3} if len(blocks) > 3 else {first: 5}
    stage.prune_heads = {next(u.id for u in units if u.block == first): [0]}  # pruning inside a reused block
    [built] = compile_plan(model, plan)
    inputs = export_inputs(model, model.shapes)
    dense = count_flops(compile_plan(model, None)[0].program.module(), inputs)[0]
    programs = {(): built.program} | {v.reused: v.program for v in built.reuse_programs}
    with torch.no_grad():
        outputs = built.program.module()(*inputs)
    residuals = dict(zip(stage.reused_blocks, outputs[1:]))
    counted = {pattern: count_flops(program.module(), inputs + tuple(residuals[b] for b in pattern))[0]
               for pattern, program in programs.items()}
    cost = ModelCost.measure(model, units)
    for steps in (3, 4):
        per_call = sum(counted[pattern_at(stage.reuse, step)] for step in range(steps)) / steps
        removed, _ = cost.stage_removed(stage, steps)
        assert removed == pytest.approx(dense - per_call, rel=REL_FLOPS)
        # a long stage skips shares 1/2 and 2/3 of the two blocks' work; 3 or 4 steps skip less
        assert 0 < removed < cost.stage_removed(stage)[0]


def test_target_speedup_with_reuse_reaches_its_prediction(models, calibrations):
    model, stats = models["tiny-latte"], calibrations["tiny-latte"][1]
    units = find_temporal_units(model)
    cost = ModelCost.measure(model, units)
    plan = make_target_plan(stats, cost, 1.05, "block", "residual_change", stages=2, reuse=2)
    assert all(not s.drop_blocks for s in plan.stages) and any(s.reuse for s in plan.stages)
    assert predicted_speedup(plan, cost) == pytest.approx(plan.budget["predicted_speedup"], rel=1e-6)
    assert plan.budget["predicted_speedup"] >= 1.05
    with pytest.raises(F3Error, match="out of reach: reusing"):
        make_target_plan(stats, cost, 3.0, "block", "residual_change", stages=2, reuse=2)


def test_bench_weights_the_reuse_programs_by_their_steps(models, calibrations):
    stats = calibrations["tiny-latte"][1]
    plan = make_plan(stats, 1.0, "block", "residual_change", stages=2, reuse=2)
    rows = bench(models["tiny-latte"], plan, "torch", repeat=2)
    for row in rows[:2]:  # 3 steps per stage: compute, reuse, compute
        assert row["steps"] == 3 and set(row["reuse"]) == {"pruned", "reuse:" + ",".join(plan.stages[0].reuse)}
        assert row["reuse"]["pruned"]["share"] == pytest.approx(2 / 3)
        expected = sum(e["median_ms"] * e["share"] for e in row["reuse"].values())
        assert row["pruned_ms"] == pytest.approx(expected) and row["residual_mb"] > 0
        assert row["dense_flops"] / row["pruned_flops"] == pytest.approx(row["predicted_speedup"])
        assert 1.0 < row["predicted_speedup"]


@pytest.mark.slow
def test_reuse_plan_through_the_cli(capsys, calibrations, tmp_path):
    """calibrate (fixture) → plan --reuse → inspect → export ONNX → generate on onnxruntime → bench."""
    directory, stats = calibrations["tiny-latte"]
    plan_path, build = tmp_path / "plan.json", tmp_path / "build"
    code, out, err = run(capsys, "plan", directory, "--ratio", "0.5", "--granularity", "block", "--reuse", "2",
                         "--stages", "2", "-o", plan_path)
    assert code == 0, err
    assert "reuse every 2 steps" in out
    plan = PruningPlan.load(plan_path)
    assert plan.criterion == "residual_change" and all(len(s.reuse) == 1 for s in plan.stages)
    code, out, err = run(capsys, "inspect", plan_path, "--model", "builtin:tiny-latte")
    assert code == 0, err
    block = next(iter(plan.stages[0].reuse))
    assert f"reuse every 2 steps (block {block})" in out and "averaged over the stage: reuse" in out
    code, out, err = run(capsys, "export", "builtin:tiny-latte", "--plan", plan_path, "-o", build)
    assert code == 0, err
    manifest = json.loads((build / "manifest.json").read_text())
    assert all(s["reuse"]["programs"][0]["verify"]["onnxruntime_vs_torch"]["passed"] for s in manifest["stages"])
    code, out, err = run(capsys, "generate", build, "--prompt", "a red circle", "--backend", "onnxruntime", "--steps", "4",
                         "-o", tmp_path / "v.gif")
    assert code == 0, err
    bytes_ = manifest["stages"][0]["reuse"]["residual_bytes"]
    assert f"temporal reuse carried {bytes_ / 2**20:.2f} MiB" in out and (tmp_path / "v.gif").stat().st_size > 0
    code, _, err = run(capsys, "plan", directory, "--ratio", "0.5", "--granularity", "head", "--reuse", "2", "-o",
                       tmp_path / "bad.json")
    assert_one_line_error(code, err, "use --granularity block")
    assert not (tmp_path / "bad.json").exists()
    assert math.isfinite(stats.residual_change(block))
