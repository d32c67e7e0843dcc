"""Every verb that takes a plan runs at the plan's calibration shape, not the model's default.

A Wan pipeline directory defaults to the published 81x480x832; tiny-wan's rotary embedding has 32
positions per axis, so that default cannot run at all. Calibrated at 9x64x64, the budget, the
search, bench and eval must all run there; asking for the default is refused in one line.
"""

from __future__ import annotations

import dataclasses

import pytest

from f3compile import F3Error, api
from f3compile.calibration import CalibrationConfig, calibrate
from f3compile.evaluation import EvalConfig
from f3compile.models import load_model
from f3compile.models.base import VideoShapes, resolve_shapes, shape_note
from f3compile.options import BenchOptions, PlanOptions
from f3compile.planning import make_plan
from tests.helpers import assert_one_line

PROMPTS = ["a red circle moving left"]


@pytest.fixture(scope="module")
def calibrated():
    # a Wan directory's default shape on tiny-wan's weights (one fingerprint: the same model)
    model = dataclasses.replace(load_model("builtin:tiny-wan"), shapes=VideoShapes(1, 81, 480, 832))
    stats = calibrate(model, PROMPTS, CalibrationConfig(steps=2, frames=9, height=64, width=64, heatmaps=False))
    return model, stats


def test_a_shape_past_the_rotary_embedding_is_refused_in_one_line(calibrated):
    model, _ = calibrated
    with pytest.raises(F3Error, match="rope_max_seq_len") as caught:
        resolve_shapes(model, None, None, None)
    assert_one_line(caught.value)
    assert "--width 832 gives 52 positions" in str(caught.value) and "at most 512 pixels" in str(caught.value)
    assert resolve_shapes(model, 9, 512, 512) == VideoShapes(1, 9, 512, 512)  # 32 positions: the limit itself


def test_budget_search_bench_and_eval_run_at_the_calibrated_shape(calibrated):
    model, stats = calibrated
    budget = api.plan(stats, PlanOptions(target_speedup=1.05, granularity="block"), model=model)
    assert budget.budget["predicted_speedup"] >= 1.05
    searched = api.plan(stats, PlanOptions(search=True, max_error=0.5, actions=("window",), windows=(0,)),
                        model=model, prompts=PROMPTS)
    assert searched.search["evaluations"] > 0
    plan = make_plan(stats, 0.5, "window", window=0)
    bench = api.bench(model, plan, BenchOptions(repeat=1))
    assert bench.extra["shape"] == "9x64x64" and {row["stage"] for row in bench.rows} == {0, "loop"}
    result = api.evaluate(model, [plan], PROMPTS, EvalConfig(samples=1, steps=2, repeat=1, batch=1),
                          measures="fidelity", log=lambda line: None)
    assert set(result["results"]) == {"dense", "plan1"}


def test_another_shape_where_the_units_apply_is_stated(calibrated):
    _, stats = calibrated
    plan = make_plan(stats, 0.5, "head")
    assert shape_note(plan, VideoShapes(1, 9, 64, 64)) is None
    assert "at 13x64x64, not the 9x64x64 the plan was calibrated at" in shape_note(plan, VideoShapes(1, 13, 64, 64))


@pytest.mark.parametrize("name", ["tiny-unet3d", "tiny-wan2.2"])
def test_flops_counted_on_shapes_alone_equal_a_real_forward(name):
    """`ModelCost.measure` counts over fake tensors (seconds at any size); the counts per module are
    those of a real forward on real tensors (Wan 2.2: the larger expert's call)."""
    from f3compile.models import find_temporal_units
    from f3compile.planning.cost import ModelCost, count_flops

    model = load_model(f"builtin:{name}")
    cost = ModelCost.measure(model, find_temporal_units(model), shape_only=True)
    inputs = model.example_inputs(model.shapes, cfg=True)
    real = [count_flops(model.denoise_module(expert), inputs) for expert in (model.experts or [None])]
    assert cost.total_flops == max(total for total, _ in real) > 0
    assert cost.flops == {k: v for _, counts in real for k, v in counts.items()}
