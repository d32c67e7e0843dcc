"""Wan 2.2's two experts (builtin:tiny-wan2.2): the high-noise expert runs t >= 875, the low-noise one
the rest. Each is discovered, calibrated on its own steps and planned on its own; every stage of a
build runs one expert's program, holding only that expert's weights."""

from __future__ import annotations

import json

import pytest
import torch

from f3compile import api
from f3compile.errors import F3Error
from f3compile.models import load_model
from f3compile.models.base import VideoShapes
from f3compile.models.discovery import find_temporal_units
from f3compile.options import CompileOptions, Shapes
from tests.helpers import rel

PARITY = 1e-4
EXPERTS = {"transformer": (999, 875), "transformer_2": (874, 0)}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from f3compile.models.loading import build_builtin

    pipe, _ = build_builtin("tiny-wan2.2")
    directory = tmp_path_factory.mktemp("wan22") / "pipeline"
    pipe.save_pretrained(directory)
    return pipe, directory


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    from f3compile.calibration import CalibrationConfig, calibrate

    model = load_model("builtin:tiny-wan2.2")
    stats = calibrate(model, ["a red circle moving left"],  # 4 steps: 999 and 900 on the first expert, 750 and 500
                      CalibrationConfig(steps=4, guidance_scale=5.0, heatmaps=False))
    return model, stats


def test_two_expert_pipeline_is_reproduced_stage_by_stage(saved, tmp_path):
    pipe, directory = saved
    model = load_model(str(directory))
    assert model.experts == EXPERTS and sorted(model.denoiser) == ["transformer", "transformer_2"]
    units = find_temporal_units(model, VideoShapes(1, 9, 32, 32))
    assert [u.id for u in units] == ["transformer.blocks.0.attn1", "transformer.blocks.1.attn1",
                                     "transformer_2.blocks.0.attn1", "transformer_2.blocks.1.attn1"]
    start = torch.randn(1, 16, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    reference = pipe("a red circle", negative_prompt="", num_frames=9, height=32, width=32, num_inference_steps=4,
                     guidance_scale=5.0, latents=start.clone(), output_type="latent").frames
    manifest = api.compile(model, None, CompileOptions(shapes=Shapes(9, 32, 32)), output_dir=tmp_path / "build").manifest
    assert [(s["expert"], tuple(s["timesteps"])) for s in manifest["stages"]] == list(EXPERTS.items())
    expert_parameters = sum(p.numel() for p in pipe.transformer.parameters())
    assert [s["parameters"] for s in manifest["stages"]] == [expert_parameters] * 2  # one expert's weights each
    ours = api.Runtime(tmp_path / "build").generate("a red circle", steps=4, guidance_scale=5.0, latents=start)
    assert rel(ours, reference) <= PARITY
    # the experts differ: running every step on the first expert gives another video
    first_only = pipe.transformer
    with torch.no_grad():
        sample, timestep, ehs = model.example_inputs(VideoShapes(1, 9, 32, 32))
        assert rel(model.denoise(sample, torch.full_like(timestep, 100.0), ehs),
                   model.info["_expert_call"](first_only, sample, torch.full_like(timestep, 100.0), ehs)) > 1e-3


def test_each_expert_is_calibrated_and_planned_on_its_own_steps(calibrated, tmp_path):
    from f3compile.compiler.compile import compile
    from f3compile.planning import make_plan

    model, stats = calibrated
    assert stats.meta["experts"] == {k: list(v) for k, v in EXPERTS.items()}
    high = [i for i, t in enumerate(stats.timesteps) if t >= 875]
    assert stats.timesteps == [999, 900, 750, 500] and high == [0, 1]
    for unit in stats.units:  # a unit records only the steps its expert ran
        calls = stats.unit(unit.id, "calls")
        ran = [i for i in range(len(stats.timesteps)) if calls[i] > 0]
        assert ran == (high if unit.id.startswith("transformer.") else sorted(set(range(len(stats.timesteps))) - set(high)))
    plan = make_plan(stats, 0.5, "window", window=1, stages=2)
    assert [s.timesteps for s in plan.stages][0][0] == 999 and len(plan.stages) == 4
    assert plan.stages[1].timesteps[1] == 875 and plan.stages[2].timesteps[0] == 874 and plan.stages[3].timesteps[1] == 0
    for stage in plan.stages:
        expert = model.expert_for(stage.timesteps)
        windowed = [h for unit, ws in stage.windows.items() for h in ws if h is not None]
        assert all(unit.startswith(expert + ".") for unit in stage.windows)
        assert len(windowed) == 4  # half of the running expert's 8 heads
    compiled = compile(model, plan, VideoShapes(1, 17, 64, 64))
    first = sum(p.numel() for p in model.denoiser["transformer"].parameters())
    assert [c.parameters for c in compiled] == [first] * 4
    from f3compile.benchmark import bench

    rows = bench(model, plan, "torch", VideoShapes(1, 17, 64, 64), repeat=1, warmup=0)
    assert [row["stage"] for row in rows] == [0, 1, 2, 3, "loop"]
    assert all(row["dense_params"] == first and row["pruned_flops"] < row["dense_flops"] for row in rows[:4])
    with pytest.raises(F3Error, match="span two experts"):
        model.expert_for((999, 500))


def test_budgets_and_searches_refuse_experts_in_one_line(calibrated):
    from f3compile.options import PlanOptions

    _, stats = calibrated
    with pytest.raises(F3Error, match="experts"):
        api.plan(stats, PlanOptions(target_speedup=1.2, granularity="window", window=0))


def test_a_ratio_per_stage_is_given_to_each_expert(calibrated, tmp_path):
    from f3compile.planning import PruningPlan, make_plan

    model, stats = calibrated
    plan = make_plan(stats, [0.0, 1.0], "window", window=0, stages=2)
    assert plan.ratio == [0.0, 1.0, 0.0, 1.0]  # two stages per expert, the same schedule for each
    assert [bool(s.windows) for s in plan.stages] == [False, True, False, True]
    plan.save(tmp_path / "plan.json")
    assert PruningPlan.load(tmp_path / "plan.json").ratio == [0.0, 1.0, 0.0, 1.0]
    heads = make_plan(stats, [0.5, 0.0], "head", stages=2)
    assert heads.ratio == [0.5, 0.0, 0.5, 0.0] and [bool(s.prune_heads) for s in heads.stages] == [True, False, True, False]
