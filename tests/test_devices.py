"""Programs compiled and run on a device: the same tests on the CPU here and on CUDA where there is
a GPU (`gpu` marker; skipped without CUDA). CUDA results are compared with the CPU program."""

from __future__ import annotations

import pytest
import torch

from f3compile.benchmark import bench
from f3compile.compiler.compile import apply_stage, capture, export_inputs
from f3compile.exporters import ExportConfig, export
from f3compile.models import find_temporal_units
from f3compile.planning import make_plan
from f3compile.runtime import Runtime

from .passes.test_passes import stages_for
from tests.helpers import TINY, assert_one_line_error, run

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
REL_DEVICE = {"fp32": 1e-4, "fp16": 2e-2}  # CUDA vs CPU program (TF32 off), fp16 vs fp32 reference


@pytest.fixture(autouse=True)
def exact_cuda_math():
    if torch.cuda.is_available():  # cuDNN convolutions default to TF32, which is not an fp32 comparison
        conv, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        yield
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul
    else:
        yield


def rel(a, b):
    return float((a.float().cpu() - b.float().cpu()).norm() / b.float().cpu().norm())


@pytest.mark.gpu
@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_every_granularity_runs_on_cuda_like_on_the_cpu(models, name, precision):
    model = models[name]
    units = find_temporal_units(model)
    dtype = {"fp32": torch.float32, "fp16": torch.float16}[precision]
    cpu_program = capture(model, model.shapes)
    cuda_program = capture(model, model.shapes, dtype, device="cuda")
    cpu_inputs = export_inputs(model, model.shapes, seed=4)
    cuda_inputs = export_inputs(model, model.shapes, seed=4, dtype=dtype, device="cuda")
    for kind, stage in stages_for(units).items():
        expected = apply_stage(cpu_program, stage, units, cpu_inputs).program.module()(*cpu_inputs)
        pruned = apply_stage(cuda_program, stage, units, cuda_inputs).program
        assert {t.device.type for t in pruned.state_dict.values()} == {"cuda"}, kind
        assert rel(pruned.module()(*cuda_inputs), expected) <= REL_DEVICE[precision], kind


@pytest.mark.parametrize("device", DEVICES)
def test_bench_on_a_device_reports_its_clock_and_memory(models, calibrations, device):
    plan = make_plan(calibrations["tiny-unet3d"][1], 0.5, "block")
    rows = bench(models["tiny-unet3d"], plan, "torch", repeat=2, warmup=1, device=device)
    loop = rows[-1]
    assert loop["stage"] == "loop" and loop["device"] == device and loop["speedup"] > 0
    if device == "cuda":  # weights + activations, and the pruned program holds fewer weights
        assert 0 < loop["pruned_peak_mb"] <= loop["dense_peak_mb"]
    else:
        assert loop["dense_peak_mb"] is None


@pytest.mark.parametrize("device", DEVICES)
def test_generate_on_a_device_matches_the_cpu(models, calibrations, tmp_path, device):
    plan = make_plan(calibrations["tiny-latte"][1], 0.5, "head", stages=2)
    export(models["tiny-latte"], plan, tmp_path / "cpu", config=ExportConfig(samples=1))
    reference = Runtime(tmp_path / "cpu").generate("a blue square", seed=1, steps=4)
    ours = Runtime(tmp_path / "cpu", device=device).generate("a blue square", seed=1, steps=4)
    assert rel(ours, reference) <= REL_DEVICE["fp32"]
    if device == "cuda":  # compiled on the GPU in fp16: the artifacts record where and how
        manifest = export(models["tiny-latte"], plan, tmp_path / "gpu",
                          config=ExportConfig(samples=1, device="cuda", precision="fp16"))
        assert manifest["device"] == "cuda" and all(s["precision"] == "fp16" for s in manifest["stages"])
        half = Runtime(tmp_path / "gpu", device="cuda").generate("a blue square", seed=1, steps=4)
        assert rel(half, reference) <= 5e-2


@pytest.mark.gpu
def test_aoti_package_on_cuda(models, tmp_path):
    manifest = export(models["tiny-latte"], None, tmp_path / "b",
                      config=ExportConfig(target="aoti", device="cuda", precision="fp16", samples=1))
    stage = manifest["stages"][0]
    assert stage["files"]["aoti"]["device"] == "cuda" and stage["verify"]["aoti_vs_torch"]["passed"]
    compiled = Runtime(tmp_path / "b", backend="aoti", device="cuda").generate("a red circle", seed=0, steps=3)
    program = Runtime(tmp_path / "b", backend="torch", device="cuda").generate("a red circle", seed=0, steps=3)
    assert rel(compiled, program) <= REL_DEVICE["fp16"]


def test_cuda_requests_without_cuda_are_one_line_errors(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for argv in (["compile", "builtin:tiny-latte", "--device", "cuda", "-o", tmp_path / "c"],
                 ["export", "builtin:tiny-latte", "--target", "aoti", "--device", "cuda", "-o", tmp_path / "e"],
                 ["compile", "builtin:tiny-latte", "--device", "tpu", "-o", tmp_path / "c"]):
        code, _, err = run(capsys, *argv)
        assert_one_line_error(code, err, "--device")
    assert not (tmp_path / "c").exists() and not (tmp_path / "e").exists()


def test_meta_is_for_the_python_api_only(capsys, tmp_path):
    code, _, err = run(capsys, "compile", "builtin:tiny-latte", "--device", "meta", "-o", tmp_path / "c")
    assert_one_line_error(code, err, "--device meta is not supported")
    assert not (tmp_path / "c").exists()


@pytest.mark.gpu
def test_generate_on_cuda_encodes_and_decodes_there(tmp_path, monkeypatch):
    """On a GPU the text encoder runs there and is given back to the host before sampling; the VAE
    decodes there, tile by tile when its untiled decode would not fit the free memory."""
    from f3compile.models import load_model

    export(load_model("builtin:tiny-wan"), None, tmp_path / "b", config=ExportConfig(samples=1))
    runtime, reference = Runtime(tmp_path / "b", device="cuda"), Runtime(tmp_path / "b")
    cond, _ = runtime.encode(["a red circle"])
    assert next(runtime.component("text_encoder").parameters()).device.type == "cpu"
    assert rel(cond, reference.encode(["a red circle"])[0]) <= REL_DEVICE["fp32"]
    latents = runtime.generate("a red circle", steps=2)
    frames = runtime.decode(latents)
    assert not runtime.tiled and rel(frames, reference.decode(latents)) <= REL_DEVICE["fp32"]
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1, 1))
    tiled = runtime.decode(latents)
    assert runtime.tiled and rel(tiled, frames) <= 1e-3
