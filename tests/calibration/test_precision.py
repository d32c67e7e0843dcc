"""`--precision`: the denoiser and text encoder loaded and run in fp32, bf16 or fp16.

A checkpoint keeps one fingerprint in fp32 and bf16 (plans move between a bf16 calibration on a
GPU and an fp32 build), the modules a class keeps in fp32 stay fp32 as diffusers' own loader
keeps them, and a bf16 calibration of the tiny builtins chooses what an fp32 one chooses.
"""

from __future__ import annotations

import json

import pytest
import torch

import f3compile as f3
from f3compile import F3Error
from f3compile.devices import canonical, resolve_precision
from f3compile.models.loading import build_builtin, load_model
from f3compile.planning import make_plan

from tests.helpers import assert_one_line_error, run

PROMPTS = ["a red circle moving left", "a blue square moving up"]


def _dtypes(module: torch.nn.Module) -> dict[str, torch.dtype]:
    return {name: p.dtype for name, p in module.named_parameters()}


def test_the_default_precision_follows_the_device():
    assert resolve_precision(None, "cuda") == "bf16" and resolve_precision(None, "cuda:1") == "bf16"
    assert resolve_precision(None, "cpu") == "fp32" and resolve_precision("fp16", "cpu") == "fp16"
    with pytest.raises(F3Error, match="fp8"):
        resolve_precision("fp8")


def test_cuda_names_the_current_device():
    """`cuda` and `cuda:0` are one device: nothing is loaded twice between them."""
    assert canonical(torch.device("cuda"), current=0) == torch.device("cuda:0")
    assert canonical(torch.device("cuda:1"), current=0) == torch.device("cuda:1")
    assert canonical(torch.device("cpu")) == torch.device("cpu")


def test_a_bf16_directory_load_matches_diffusers_and_keeps_the_fingerprint(tmp_path):
    """A pipeline directory read in bf16 (diffusers' own loader, `dtype=`) holds exactly the dtypes a
    builtin cast in place holds; both keep the fp32 load's fingerprint, but not its cache key."""
    import diffusers

    pipe, _ = build_builtin("tiny-wan")
    pipe.save_pretrained(tmp_path / "wan")
    fp32 = load_model("builtin:tiny-wan")
    cast = load_model("builtin:tiny-wan", precision="bf16")
    read = load_model(str(tmp_path / "wan"), precision="bf16")
    assert fp32.fingerprint == cast.fingerprint == read.fingerprint
    assert cast.cache_key != fp32.cache_key
    assert _dtypes(read.denoiser) == _dtypes(cast.denoiser)
    keep = diffusers.WanTransformer3DModel._keep_in_fp32_modules
    for name, dtype in _dtypes(read.denoiser).items():
        expected = torch.float32 if any(part in keep for part in name.split(".")) else torch.bfloat16
        assert dtype == expected, name
    assert {p.dtype for p in read.text_encoder.parameters()} == {torch.bfloat16}  # transformers keeps no module of UMT5 in bf16
    assert _dtypes(read.text_encoder) == _dtypes(cast.text_encoder)
    assert {p.dtype for p in read.pipeline.vae.parameters()} == {torch.float32}  # the VAE decodes in fp32
    assert (read.precision, fp32.precision) == ("bf16", "fp32")


def test_fp16_is_cast_after_fingerprinting():
    model = load_model("builtin:tiny-latte", precision="fp16")
    assert model.fingerprint == load_model("builtin:tiny-latte").fingerprint
    assert model.precision == "fp16" and model.cache_key is not None  # the cast weights are the ones compiled
    sample, timestep, states = model.example_inputs(cfg=False)
    assert sample.dtype == torch.float16
    assert model.denoise(sample, timestep, states).dtype == torch.float32  # noise_pred comes back in fp32


def test_a_bf16_calibration_chooses_what_fp32_chooses():
    """tiny-wan (full 3-D attention), same prompts and seeds: the block, reuse and window choices of
    two-stage plans agree, and the calibration records its precision."""
    runs = {}
    for precision in ("fp32", "bf16"):
        runs[precision] = f3.calibrate("builtin:tiny-wan", PROMPTS, f3.CalibrationConfig(
            steps=4, heatmaps=False, precision=precision))
    assert runs["bf16"].meta["precision"] == "bf16" and runs["fp32"].meta["precision"] == "fp32"
    assert runs["bf16"].meta["model"]["fingerprint"] == runs["fp32"].meta["model"]["fingerprint"]

    def choices(stats):
        plans = [make_plan(stats, 0.5, "block", "cross_frame_mass", 2),
                 make_plan(stats, 0.5, "block", "residual_change", 2, reuse=2),
                 make_plan(stats, 0.5, "window", "cross_frame_mass", 2, window=0)]
        return [[stage.to_dict() for stage in plan.stages] for plan in plans]

    assert choices(runs["bf16"]) == choices(runs["fp32"])
    assert len(choices(runs["fp32"])[2][0]["windows"]) > 0  # the window plan chose something to compare


def test_a_loaded_model_is_not_cast_behind_the_callers_back():
    model = load_model("builtin:tiny-latte")
    with pytest.raises(F3Error, match="loaded in fp32, not bf16") as caught:
        f3.calibrate(model, PROMPTS, f3.CalibrationConfig(steps=2, heatmaps=False, precision="bf16"))
    assert len(str(caught.value).splitlines()) == 1


def test_the_cli_takes_precision_where_the_model_runs(capsys, tmp_path, prompts_file):
    code, _, err = run(capsys, "calibrate", "builtin:tiny-latte", "--prompts", prompts_file, "--steps", "2",
                       "--precision", "bf16", "--no-heatmaps", "-o", tmp_path / "calib")
    assert code == 0, err
    assert json.loads((tmp_path / "calib" / "calibration.json").read_text())["precision"] == "bf16"
    code, _, err = run(capsys, "plan", tmp_path / "calib", "--ratio", "0.5", "--precision", "bf16",
                       "-o", tmp_path / "plan.json")
    assert_one_line_error(code, err, "--precision belongs to --search and --target-speedup")
    assert not (tmp_path / "plan.json").exists()
    code, _, err = run(capsys, "calibrate", "builtin:tiny-latte", "--prompts", prompts_file, "--precision", "fp8",
                       "-o", tmp_path / "other")
    assert code == 2 and "fp8" in err and not (tmp_path / "other").exists()


def test_bf16_programs_run_in_the_eval_loop():
    """eval compiles the programs in the model's precision and runs them in an fp32 sampling loop:
    the sample and text states go in as bf16 and noise_pred comes back as fp32 (before, the loop's
    fp32 latents reached bf16 weights and the call failed)."""
    from f3compile.evaluation import EvalConfig

    stats = f3.calibrate("builtin:tiny-latte", PROMPTS[:1], f3.CalibrationConfig(steps=2, heatmaps=False))
    plan = make_plan(stats, 0.5, "head")
    result = f3.evaluate("builtin:tiny-latte", [plan], PROMPTS[:1], EvalConfig(samples=1, steps=2, repeat=1, batch=1,
                                                                               precision="bf16"),
                         measures="fidelity", log=lambda line: None)
    assert result["config"]["precision"] == "bf16" and set(result["results"]) == {"dense", "plan1"}
    assert 0 < result["results"]["plan1"]["latents_rel_l2_vs_dense"] < 1 and result["results"]["plan1"]["psnr_vs_dense"] > 0


def test_a_bf16_build_reads_the_spec_in_bf16_and_equals_one_cast_from_fp32():
    """compile --precision bf16 of a spec builds from a bf16 load (no fp32 copy to cast), holding
    the dtypes diffusers gives each parameter (Wan's fp32-kept modules stay fp32), and the same
    program as compiling an fp32 object in bf16."""
    from f3compile.options import CompileOptions

    from_spec = f3.compile("builtin:tiny-wan", None, CompileOptions(precision="bf16"))
    from_object = f3.compile(load_model("builtin:tiny-wan"), None, CompileOptions(precision="bf16"))
    assert from_spec.model.dtype == torch.bfloat16 and from_object.model.dtype == torch.float32
    a, b = from_spec[0].program.state_dict, from_object[0].program.state_dict
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    dtypes = {v.dtype for v in a.values()}
    assert dtypes == {torch.bfloat16, torch.float32}  # the kept modules: not a flat cast
    kept = {k for k, v in a.items() if v.dtype == torch.float32}
    assert kept and all(any(m in k for m in ("norm", "time_embedder", "scale_shift_table")) for k in kept), kept
