"""The memory report (`inspect --memory`): what it traces on the meta device equals what a real
forward allocates, its weights are those a real load holds, and at the published sizes it says
which verbs fit (the CPU peaks it was checked against: tools/memory_check.py, docs/BENCHMARKS.md)."""

from __future__ import annotations

import json
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from f3compile import F3Error, memory
from f3compile.models.base import VideoShapes
from f3compile.models.loading import load_model
from tests.helpers import assert_one_line_error, run

GIB = 2**30


class _LiveBytes(TorchDispatchMode):
    """The oracle: bytes of the real tensors a real forward's operators return, alive at once
    (storages keyed by their address; the weights and inputs are not the call's)."""

    def __init__(self, exclude):
        super().__init__()
        self.skip = {t.untyped_storage().data_ptr() for t in exclude}
        self.live, self.now, self.peak = {}, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                address = storage.data_ptr()
                if address in self.skip or address in self.live or not storage.nbytes():
                    continue
                self.live[address] = storage.nbytes()
                self.now += storage.nbytes()
                weakref.finalize(storage, self._free, address)
        self.peak = max(self.peak, self.now)
        return out

    def _free(self, address):
        self.now -= self.live.pop(address, 0)


@pytest.mark.parametrize("name", ["tiny-wan", "tiny-latte"])
def test_the_traced_call_is_what_a_real_forward_allocates(name):
    """The meta trace (fused attention: its output only) against a real CPU forward, whose
    attention kernel is fused too: within 5% (the kernel's log-sum-exp is the difference)."""
    meta = load_model(f"builtin:{name}", meta=True)
    real = load_model(f"builtin:{name}")
    shapes = real.shapes
    predicted = memory.call_peak(meta, shapes)
    inputs = real.example_inputs(shapes, cfg=True)
    oracle = _LiveBytes([*real.denoiser.parameters(), *real.denoiser.buffers(), *inputs])
    with torch.no_grad(), oracle:
        real.denoise_call(real.denoiser, *inputs)
    assert oracle.peak > 0
    assert predicted == pytest.approx(oracle.peak, rel=0.05)


def test_weights_are_those_a_real_load_holds():
    """bf16 with Wan's fp32-kept modules: the report's denoiser bytes are a real bf16 load's."""
    spec = "builtin:tiny-wan"
    real = load_model(spec, precision="bf16")
    held = sum(t.nbytes for t in (*real.denoiser.parameters(), *real.denoiser.buffers()))
    meta = load_model(spec, meta=True, precision="bf16")
    calibrate = memory.predict(meta, VideoShapes(1, 9, 64, 64), precision="bf16")[0]
    assert calibrate.device["denoiser weights"] == held
    assert calibrate.device["text encoder weights"] == sum(t.nbytes for t in real.text_encoder.parameters()) + \
        sum(t.nbytes for t in real.text_encoder.buffers())


def test_the_published_sizes_fit_where_the_issue_says(capsys, tmp_path):
    """arch-wan2.1-1.3b at 81x480x832 in bf16: calibrate and generate within a 24 GB card; the
    published UMT5-XXL is counted, not the preset's stand-in. arch-wan2.1-14b at 81x720x1280:
    every verb within 80 GB with a torch build."""
    plan = tmp_path / "plan.json"
    from f3compile import api
    from f3compile.calibration import CalibrationConfig
    from f3compile.planning import make_plan

    stats = api.calibrate("builtin:tiny-wan", ["a red circle"], CalibrationConfig(steps=2, heatmaps=False))
    make_plan(stats, 0.5, "window", window=0, stages=2).save(plan)
    code, out, err = run(capsys, "inspect", plan, "--model", "builtin:arch-wan2.1-1.3b", "--frames", "81",
                         "--height", "480", "--width", "832", "--memory", "--json")
    assert code == 0, err
    report = json.loads(out)
    verbs = {v["verb"]: v for v in report["verbs"]}
    assert set(verbs) == set(memory.VERBS) and report["published_components"] and report["stages"] == 2
    assert verbs["calibrate"]["device_bytes"] <= 24e9 and verbs["generate"]["device_bytes"] <= 24e9
    assert 10 * GIB < verbs["calibrate"]["device"]["text encoder weights"] < 13 * GIB  # UMT5-XXL in bf16
    code, _, err = run(capsys, "inspect", plan, "--memory")
    assert_one_line_error(code, err, "--memory needs --model")
    # arch-wan2.1-14b at 81x720x1280 built with compile (torch programs sharing their common weights):
    # every verb within one 80 GB card (an ONNX build's count per stage: the pool test below)
    code, out, err = run(capsys, "inspect", plan, "--model", "builtin:arch-wan2.1-14b", "--frames", "81",
                         "--height", "720", "--width", "1280", "--memory", "--json", "--target", "torch")
    assert code == 0, err
    peaks = {v["verb"]: v["device_bytes"] for v in json.loads(out)["verbs"]}
    assert set(peaks) == {"calibrate", "plan --search", "compile", "generate"}
    assert all(peak <= 80e9 for peak in peaks.values()), peaks


def test_the_traced_decode_is_what_a_real_decode_allocates():
    """The VAE decode the runtime traces to decide on tiling, against a real decode of tiny-wan's
    Wan VAE (time-causal, frame by frame) on the CPU."""
    from f3compile.runtime.pipeline import vae_decode

    model = load_model("builtin:tiny-wan")
    vae = model.pipeline.vae
    latents = torch.randn(model.latent_shape(model.shapes))
    predicted = memory.decode_bytes(vae, tuple(latents.shape))
    assert next(vae.parameters()).device.type == "cpu"  # the VAE itself is left as it was
    oracle = _LiveBytes([*vae.parameters(), *vae.buffers(), latents])
    with torch.no_grad(), oracle:
        vae_decode(vae, latents)
    assert predicted == pytest.approx(oracle.peak, rel=0.05)


def _tensor_bytes(obj, seen: set) -> int:
    """Bytes of every tensor and array reachable from `obj` (each counted once)."""
    import numpy as np

    if isinstance(obj, (torch.Tensor, np.ndarray)):
        if id(obj) in seen:
            return 0
        seen.add(id(obj))
        return obj.numel() * obj.element_size() if isinstance(obj, torch.Tensor) else obj.nbytes
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v, seen) for v in obj)
    return sum(_tensor_bytes(v, seen) for v in vars(obj).values()) if hasattr(obj, "__dict__") else 0


@pytest.mark.parametrize("name", ["tiny-wan", "tiny-hunyuanvideo1.5"])
def test_the_search_trajectory_per_step_is_what_a_loop_keeps(name):
    """What `plan --search` keeps on the host per prompt and sampled step (a deep copy of the loop's
    state before the step, and the latents after it), against those copies made in a real loop: a
    multistep sampler's history (UniPC) and a sampler without one (FlowMatchEuler)."""
    import copy

    from f3compile.sampling import denoise_loop, initial_latents

    model = load_model(f"builtin:{name}")
    cond, uncond = model.encode_prompts(["a red circle"], [""])
    generator = torch.Generator().manual_seed(0)
    start = initial_latents(model.latent_shape(model.shapes), model.scheduler, generator, model.native_layout)
    kept = []
    denoise_loop(model.denoise, model.scheduler, start, cond, uncond, 4, 5.0, generator, layout=model.native_layout,
                 family=model.family, on_state=lambda state: kept.append(copy.deepcopy(state)))
    measured = max(_tensor_bytes(state, set()) for state in kept) + _tensor_bytes(start, set())  # and the latents after
    assert memory.trajectory_step_bytes(model, model.shapes) == pytest.approx(measured, rel=0.05)


def test_generate_decodes_tile_by_tile_where_untiled_would_not_fit():
    """HunyuanVideo 1.5's VAE decodes the whole video at once: its tiled decode (traced, against a real
    tiled decode) is what `generate` holds where the untiled one would not fit beside the programs in
    the device's memory (`--budget`), as the runtime decides; without a budget it is noted."""
    from f3compile.runtime.pipeline import vae_decode

    model = load_model("builtin:tiny-hunyuanvideo1.5")
    vae = model.pipeline.vae
    shapes = VideoShapes(1, 5, 320, 320)  # over the VAE's 256-pixel tile
    latents = torch.randn(model.latent_shape(shapes))
    untiled = memory.decode_bytes(vae, tuple(latents.shape))
    tiled = memory.decode_bytes(vae, tuple(latents.shape), tiled=True)
    assert tiled < 0.75 * untiled and not vae.use_tiling  # the VAE itself is left untiled
    vae.enable_tiling()
    try:
        oracle = _LiveBytes([*vae.parameters(), *vae.buffers(), latents])
        with torch.no_grad(), oracle:
            vae_decode(vae, latents)
    finally:
        vae.disable_tiling()
    assert tiled == pytest.approx(oracle.peak, rel=0.05)

    def generate(budget):
        return memory.predict(model, shapes, device="cuda", budget=budget)[-1]

    beside = memory.weight_bytes(model.denoiser) + memory.weight_bytes(vae)  # the programs and the VAE's weights
    unknown, tight, roomy = generate(None), generate(beside + untiled), generate(beside + 2 * untiled)
    assert any("tile by tile" in note and "--budget" in note for note in unknown.notes)
    assert unknown.device_total == roomy.device_total > tight.device_total  # 0.9 of the free memory: tiled
    assert any("tile by tile" in name for name in tight.device) and tight.device_total - tiled < untiled


def test_generate_counts_the_weights_the_runtime_pool_holds(tmp_path):
    """A 2-stage window plan compiled on tiny-wan: the torch runtime holds one copy of what the
    stages share plus each stage's regrouped attention weights, which the report's torch build
    counts from above (within the windowed units' copies); an ONNX build counts a copy per stage
    on a GPU (each onnxruntime CUDA session holds its own initializers) and the shared copy on the
    CPU (the sessions share one mapping of the build's weight file)."""
    from f3compile import api
    from f3compile.calibration import CalibrationConfig
    from f3compile.compiler import compile_to_dir
    from f3compile.planning import make_plan
    from f3compile.runtime import Runtime

    model = load_model("builtin:tiny-wan")
    stats = api.calibrate(model, ["a red circle", "a blue square"], CalibrationConfig(steps=2, heatmaps=False))
    plan = make_plan(stats, 0.5, "window", window=0, stages=2)
    compile_to_dir(model, plan, tmp_path / "build")
    held = Runtime(tmp_path / "build").weights.bytes
    denoiser = sum(t.nbytes for t in (*model.denoiser.parameters(), *model.denoiser.buffers()))
    meta = load_model("builtin:tiny-wan", meta=True, precision="fp32")
    torch_build = memory.predict(meta, model.shapes, plan, precision="fp32", target="torch")[3]
    onnx_build = memory.predict(meta, model.shapes, plan, precision="fp32", target="onnx")[3]
    shared, permuted = (torch_build.device[k] for k in ("stage programs' weights (shared)", "windowed units' permuted weights"))
    assert shared == denoiser and permuted > 0
    assert denoiser < held <= shared + permuted  # more than one copy (the stages differ), at most what is predicted
    assert onnx_build.device["2 stage program(s)' weights"] == 2 * denoiser
    onnx_cpu = memory.predict(meta, model.shapes, plan, precision="fp32", target="onnx", device="cpu")[3]
    assert (onnx_cpu.device["stage programs' weights (shared)"], onnx_cpu.device["windowed units' permuted weights"]) \
        == (shared, permuted) and "2 stage program(s)' weights" not in onnx_cpu.device


def test_a_pipeline_directory_is_counted_from_its_configs(tmp_path):
    """inspect --memory on a saved tiny-wan pipeline: built from its configs on the meta device, with
    its weight files made unreadable (so none is read), it predicts what the builtin does."""
    from f3compile import api
    from f3compile.calibration import CalibrationConfig
    from f3compile.models.loading import build_builtin
    from f3compile.options import Shapes
    from f3compile.planning import make_plan

    pipe, _ = build_builtin("tiny-wan")
    directory = tmp_path / "wan"
    pipe.save_pretrained(directory)
    for weights in directory.rglob("*.safetensors"):
        weights.write_bytes(b"not weights")
    stats = api.calibrate("builtin:tiny-wan", ["a red circle"], CalibrationConfig(steps=2, heatmaps=False))
    plan = make_plan(stats, 0.5, "window", window=0, stages=2)
    shapes = Shapes(9, 64, 64)
    counted = {}
    for model in ("builtin:tiny-wan", str(directory)):
        predictions, _ = api.memory_report(plan, model, shapes, precision="bf16")
        counted[model] = [(p.verb, p.device, p.host) for p in predictions]
    assert counted[str(directory)] == counted["builtin:tiny-wan"]
    with pytest.raises(F3Error, match="builtins and pipeline directories"):
        api.memory_report(plan, str(tmp_path), shapes)
