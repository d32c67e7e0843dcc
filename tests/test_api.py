"""The public API: the same verbs for every kind of model, a user's own pipeline object, the example."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import f3compile as f3
from f3compile.errors import F3Error
from tests.helpers import assert_one_line

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a red circle moving left", "a blue square moving up"]


def test_the_verbs_are_at_the_top_level():
    for name in ("load", "calibrate", "plan", "inspect", "compile", "export", "Runtime", "generate", "bench", "evaluate",
                 "PlanOptions", "CompileOptions", "GenerateOptions", "BenchOptions", "CalibrationConfig", "ExportConfig"):
        assert callable(getattr(f3, name)), name


def test_calibrate_plan_compile_on_a_diffusion_builtin(models, tmp_path):
    model = models["tiny-latte"]
    stats = f3.calibrate(model, PROMPTS, f3.CalibrationConfig(steps=3, heatmaps=False), output_dir=tmp_path / "calib")
    assert (tmp_path / "calib" / "stats.safetensors").is_file() and stats.meta["model"]["spec"] == "builtin:tiny-latte"
    plan = f3.plan(tmp_path / "calib", f3.PlanOptions(ratio=0.5, granularity="head", stages=2))
    assert len(plan.stages) == 2 and all(stage.prune_heads for stage in plan.stages)
    compiled = f3.compile(model, plan, output_dir=tmp_path / "build")
    assert len(compiled) == 2 and compiled.manifest["stages"][1]["timesteps"] == list(plan.stages[1].timesteps)
    from f3compile.runtime import Runtime

    assert isinstance(f3.Runtime(tmp_path / "build"), Runtime)
    assert "stage 1:" in f3.inspect(plan) and "removed per denoiser call" in f3.inspect(plan, model)


class MyPipeline:  # defined inside the test: a subclass of a supported diffusers pipeline
    pass


def test_a_users_own_pipeline_object(tmp_path):
    """`f3.load(pipe)` takes a diffusers pipeline a user already has, subclasses included, and the
    calibration and plan record where it came from: its class and origin, not a builtin name."""
    from diffusers import TextToVideoSDPipeline

    from f3compile.models.loading import build_builtin

    class StudioPipeline(TextToVideoSDPipeline):
        pass

    pipe, _ = build_builtin("tiny-unet3d", seed=5)
    mine = StudioPipeline(**pipe.components)
    model = f3.load(mine)
    assert model.family == "unet3d" and model.spec == f"pipeline:{__name__}.{StudioPipeline.__qualname__}"
    assert model.info["pipeline_class"] == "StudioPipeline"
    stats = f3.calibrate(model, PROMPTS[:1], f3.CalibrationConfig(steps=2, heatmaps=False))
    plan = f3.plan(stats, f3.PlanOptions(ratio=1.0, granularity="block"))
    assert plan.model == {"spec": model.spec, "fingerprint": model.fingerprint}
    compiled = f3.compile(model, plan)
    inputs = compiled.inputs(seed=1)
    with torch.no_grad():
        assert compiled[0].program.module()(*inputs).shape == inputs[0].shape
    # a budget needs the model again: a pipeline object cannot be reloaded from its spec
    with pytest.raises(F3Error, match="recorded on a pipeline object") as caught:
        f3.plan(stats, f3.PlanOptions(target_speedup=1.1, granularity="block"))
    assert_one_line(caught.value)
    assert f3.plan(stats, f3.PlanOptions(target_speedup=1.05, granularity="block"), model=mine).budget is not None
    # saved and loaded back from a directory, it records the directory
    pipe.save_pretrained(tmp_path / "saved")
    loaded = TextToVideoSDPipeline.from_pretrained(tmp_path / "saved")
    assert f3.load(loaded).spec.endswith(f"@{tmp_path / 'saved'}")


def test_anything_else_is_refused_in_one_line():
    for thing in (42, object(), MyPipeline()):
        with pytest.raises(F3Error, match="cannot use a") as caught:
            f3.load(thing)
        assert_one_line(caught.value)


def test_calibrate_plan_compile_on_cogvideo(tmp_path):
    model = f3.load("builtin:tiny-cogvideo")
    assert f3.kind_of(model).name == "autoregressive"
    stats = f3.calibrate(model, PROMPTS[:1], output_dir=tmp_path / "calib")
    assert stats.meta["kind"] == "autoregressive" and len(stats.units) == model.config.num_layers
    plan = f3.plan(stats, f3.PlanOptions(ratio=0.5, granularity="head"))
    built = f3.compile(model, plan, output_dir=tmp_path / "build", plan_path=None)
    assert built.manifest["plan"]["granularity"] == "head"
    assert (tmp_path / "build" / "decode.pt2").is_file()
    runtime = f3.Runtime(tmp_path / "build")
    assert type(runtime).__name__ == "ARRuntime" and runtime.stage == 1
    for options, message in ((f3.PlanOptions(ratio=0.5, stages=2), "one stage"),
                             (f3.PlanOptions(target_speedup=1.2), "one stage")):
        with pytest.raises(F3Error, match=message):
            f3.plan(stats, options)
    with pytest.raises(F3Error, match="eval scores diffusion models"):
        f3.evaluate(model, [plan])


@pytest.mark.slow
def test_the_api_example_runs_end_to_end(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "api_quickstart.py"), str(tmp_path / "out"),
                           "--steps", "4"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "out"
    for name in ("calib/stats.safetensors", "plan.json", "build/manifest.json", "dense-build/manifest.json",
                 "pruned.gif", "dense.gif", "bench.json"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "build" / "manifest.json").read_text())
    assert manifest["targets"] == ["onnx"] and all("reuse" in stage for stage in manifest["stages"])
    loop = next(row for row in json.loads((out / "bench.json").read_text())["results"] if row["stage"] == "loop")
    assert loop["predicted_speedup"] > 1.0 and "measured" in done.stdout
