"""The full 3-D attention families (wan, cogvideox): loading (pipeline and bare transformer
directories, refusals), parity with diffusers' WanPipeline and CogVideoXPipeline, spatiotemporal
discovery, the per-head frame-distance calibration against a brute-force oracle, window plans, and the
whole CLI on the tiny builtins."""

from __future__ import annotations

import copy
import importlib
import json
import logging

import pytest
import torch

from f3compile import api
from f3compile.errors import F3Error
from f3compile.models import load_model
from f3compile.models.base import VideoShapes
from f3compile.models.discovery import find_temporal_units
from tests.helpers import TINY_FULL, assert_one_line_error, rel, run

PARITY = 1e-4  # relative L2 of final latents vs the diffusers pipeline, fp32 (the bound)
PROMPTS = ["a red circle moving left", "a blue square moving up"]


@pytest.fixture(scope="module", params=TINY_FULL)
def name(request):
    return request.param


@pytest.fixture(scope="module")
def wan(name):
    """The tiny full-attention builtin under test (tiny-wan, tiny-cogvideox)."""
    return load_model(f"builtin:{name}")


@pytest.fixture(scope="module")
def saved(name, tmp_path_factory):
    """The builtin saved with diffusers' save_pretrained, and the pipeline object itself."""
    from f3compile.models.loading import build_builtin

    pipe, _ = build_builtin(name)
    directory = tmp_path_factory.mktemp(name) / "pipeline"
    pipe.save_pretrained(directory)
    return pipe, directory


def _pipeline_latents(pipe, prompt, start, steps, **kwargs):
    """Final latents (B, C, F, h, w) of the diffusers pipeline itself from `start` (B, C, F, h, w)."""
    generator = torch.Generator().manual_seed(0)  # the runtime's seed 0: a stochastic step draws the same noise
    if type(pipe).__name__ == "HunyuanVideo15Pipeline":  # guidance is its guider's
        pipe = copy.copy(pipe)
        pipe.guider = pipe.guider.new(guidance_scale=kwargs.pop("guidance_scale"))
    if type(pipe).__name__ == "CogVideoXPipeline":  # its latents are (B, F, C, h, w); T5 length as the transformer's
        return pipe(prompt, negative_prompt="", latents=start.permute(0, 2, 1, 3, 4).clone(), num_inference_steps=steps,
                    max_sequence_length=pipe.transformer.config.max_text_seq_length, output_type="latent",
                    generator=generator, **kwargs).frames.permute(0, 2, 1, 3, 4)
    return pipe(prompt, negative_prompt="", latents=start.clone(), num_inference_steps=steps, output_type="latent",
                generator=generator, **kwargs).frames


@pytest.fixture(scope="module")
def calibration(wan, tmp_path_factory):
    from f3compile.calibration import CalibrationConfig, calibrate

    directory = tmp_path_factory.mktemp("wan-calib") / "calib"
    stats = calibrate(wan, PROMPTS, CalibrationConfig(steps=4, guidance_scale=5.0, heatmaps=False), output_dir=directory)
    return directory, stats


# -- loading and parity ------------------------------------------------------------------------
def _flow_scheduler(kind: str, **config):
    """Samplers WanPipeline takes besides its published UniPC, in flow-matching mode."""
    import diffusers

    if kind == "flow-euler":
        return diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0, **config)
    return diffusers.DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                 flow_shift=3.0, **config)


@pytest.mark.parametrize("scheduler", ["published", "dpm", "flow-euler", "flow-dpm"])
def test_dense_build_reproduces_the_pipeline(name, saved, tmp_path, scheduler):
    from f3compile.options import CompileOptions, Shapes

    pipe, directory = saved
    if scheduler != "published":
        if (scheduler == "dpm") != (name == "tiny-cogvideox"):
            pytest.skip("the DPM solver with a two-argument step is CogVideoX's; flow-matching samplers are Wan's")
        if name == "tiny-hunyuanvideo1.5":  # its published sampler is flow-matching Euler (t = 1000 first): as above;
            # a plan applied in its pipeline: tests/models/test_image_to_video.py (the image-to-video layout)
            pytest.skip("HunyuanVideo15Pipeline hands FlowMatchEuler its sigmas; DPM-Solver is refused")
        from f3compile.models.cogvideox import scheduler as cogvideox_scheduler

        pipe = copy.copy(pipe)  # the module's pipeline keeps its own scheduler
        pipe.register_modules(scheduler=cogvideox_scheduler(1.0, dpm=True) if scheduler == "dpm"
                              else _flow_scheduler(scheduler))  # CogVideoX-5B's sampler; Wan's other samplers
        pipe.save_pretrained(tmp_path / scheduler)
        directory = tmp_path / scheduler
    model = load_model(str(directory))
    expected = {"tiny-wan": ("wan", 4, 8, 512, 16), "tiny-cogvideox": ("cogvideox", 4, 8, 16, 4),
                "tiny-hunyuanvideo1.5": ("hunyuanvideo15", 4, 16, 1256, 4)}[name]
    assert (model.family, model.temporal_scale, model.vae_scale_factor, model.text_length, model.latent_channels) == expected
    size = 4 * model.vae_scale_factor  # 4x4 latent pixels
    start = torch.randn(1, model.latent_channels, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    prompt = 'a sign that reads "open"' if model.family == "hunyuanvideo15" else "a red circle"  # glyph text: ByT5 too
    reference = _pipeline_latents(pipe, prompt, start, 4, num_frames=9, height=size, width=size, guidance_scale=5.0)
    api.compile(model, None, CompileOptions(shapes=Shapes(9, size, size)), output_dir=tmp_path / "build")
    ours = api.Runtime(tmp_path / "build").generate(prompt, steps=4, guidance_scale=5.0, latents=start)
    assert rel(ours, reference) <= PARITY
    assert rel(start, reference) > 0.1  # it did denoise
    if scheduler == "flow-euler":  # its first timestep is t = 1000: calibrated, planned and built as the top step
        from f3compile.calibration import CalibrationConfig, calibrate
        from f3compile.planning import make_plan

        stats = calibrate(model, PROMPTS[:1], CalibrationConfig(steps=4, frames=9, height=size, width=size, heatmaps=False))
        assert stats.timesteps[0] == 999 and float(pipe.scheduler.timesteps[0]) == 1000.0
        plan = make_plan(stats, 1.0, "window", window=0, stages=2)
        api.compile(model, plan, CompileOptions(shapes=Shapes(9, size, size)), output_dir=tmp_path / "windowed")
        windowed = api.Runtime(tmp_path / "windowed").generate(prompt, steps=4, guidance_scale=5.0, latents=start)
        assert torch.isfinite(windowed).all() and 0 < rel(windowed, reference) < 1
        import f3compile as f3

        applied = f3.apply(pipe, plan)  # inside the pipeline, t = 1000 also runs the first stage's windows
        try:
            inside = _pipeline_latents(pipe, prompt, start, 4, num_frames=9, height=size, width=size,
                                       guidance_scale=5.0)
        finally:
            applied.remove()
        assert rel(windowed, inside) <= 1e-5


@pytest.mark.parametrize("kind, config, message", [
    ("flow-euler", {"stochastic_sampling": True}, "stochastic_sampling=False"),
    ("flow-euler", {"use_dynamic_shifting": True}, "use_dynamic_shifting=False"),
    ("flow-dpm", {"algorithm_type": "sde-dpmsolver++"}, "use dpmsolver++"),
])
def test_samplers_the_pipeline_would_not_seed_or_run_are_refused(kind, config, message):
    """Configurations of Wan's samplers that draw unseeded noise or need an argument the pipeline
    does not pass: refused in one line when the pipeline is loaded (`models.schedulers`)."""
    from f3compile.models.schedulers import check_scheduler
    from tests.helpers import assert_one_line

    check_scheduler("wan", _flow_scheduler(kind), "pipe")  # as published: runs
    with pytest.raises(F3Error, match=message) as caught:
        check_scheduler("wan", _flow_scheduler(kind, **config), "pipe")
    assert_one_line(caught.value)


def test_bare_transformer_directory(name, saved):
    pipe, directory = saved
    from f3compile.models.registry import BUILTINS

    model = load_model(str(directory / "transformer"))
    assert model.family == BUILTINS[name].family and model.pipeline is None and model.temporal_scale == 4
    assert type(model.scheduler).__name__ == type(pipe.scheduler).__name__
    assert model.vae_scale_factor == load_model(str(directory)).vae_scale_factor
    sample, timestep, ehs = model.example_inputs(VideoShapes(1, 9, 32, 32))
    with torch.no_grad():
        assert torch.equal(model.denoise(sample, timestep, ehs), load_model(str(directory)).denoise(sample, timestep, ehs))


def _rewrite_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


MISMATCHED = [  # a config.json that does not fit the weights, or does not build the class
    ("transformer/config.json", {"num_attention_heads": 8}, "does not match its weights"),
    ("transformer/config.json", {"num_layers": 3}, "the weights lack"),
    ("transformer/config.json", {"patch_size": "x"}, "patch_size is \"x\", where"),
]
VARIANTS = {
    "tiny-wan": [("transformer/config.json", {"image_dim": 1280, "added_kv_proj_dim": 5120}, "image-to-video"),
                 ("transformer/config.json", {"pos_embed_seq_len": 514}, "first-last-frame"),
                 # samplers WanPipeline takes that f3compile does not run as the pipeline does
                 ("model_index.json", {"scheduler": ["diffusers", "EulerDiscreteScheduler"]},
                  "scheduler EulerDiscreteScheduler is not supported with wan"),
                 ] + MISMATCHED,
    "tiny-cogvideox": [("transformer/config.json", {"in_channels": 8}, "image-to-video"),
                       ("transformer/config.json", {"ofs_embed_dim": 512}, "image-to-video"),
                       ("transformer/config.json", {"patch_size_t": 2}, "CogVideoX 1.5")] + MISMATCHED,
    "tiny-hunyuanvideo1.5": [("transformer/config.json", {"use_meanflow": True}, "MeanFlow"),
                             ("transformer/config.json", {"rope_axes_dim": [4, 6, 8]}, "rope_axes_dim [4, 6, 8] must"),
                             ("model_index.json", {"scheduler": ["diffusers", "UniPCMultistepScheduler"]},
                              "scheduler UniPCMultistepScheduler is not supported with hunyuanvideo15"),
                             ] + MISMATCHED,
}


@pytest.mark.parametrize("variant", range(6))
def test_unsupported_variants_are_refused_in_one_line(name, saved, tmp_path, capsys, variant):
    import shutil

    if variant >= len(VARIANTS[name]):
        pytest.skip(f"{name} has {len(VARIANTS[name])} refused variants")
    where, change, message = VARIANTS[name][variant]
    _, directory = saved
    copy = tmp_path / "variant"
    shutil.copytree(directory, copy)
    _rewrite_json(copy / where, **change)
    for spec in ([str(copy), str(copy / "transformer")] if where.startswith("transformer") else [str(copy)]):
        code, out, err = run(capsys, "calibrate", spec, "--prompts", __file__, "--frames", 9, "--height", 32,
                             "--width", 32, "-o", tmp_path / "calib")
        assert_one_line_error(code, err, message)
        assert not (tmp_path / "calib").exists()


def test_an_offloading_hook_on_the_transformer_still_runs(wan):
    """accelerate wraps a transformer's forward for model CPU offload and device maps; HunyuanVideo 1.5's
    call (the family's forward put in for the call) goes through that wrapper, and leaves it in place."""
    if wan.family != "hunyuanvideo15":
        pytest.skip("the other families call the transformer's own forward")
    from accelerate.hooks import ModelHook, add_hook_to_module, remove_hook_from_module

    class Counting(ModelHook):
        calls = 0

        def pre_forward(self, module, *args, **kwargs):
            Counting.calls += 1
            return args, kwargs

    inputs = wan.example_inputs(seed=4)
    with torch.no_grad():
        plain = wan.denoise(*inputs)
    add_hook_to_module(wan.denoiser, Counting())
    try:
        wrapper = vars(wan.denoiser)["forward"]
        with torch.no_grad():
            hooked = wan.denoise(*inputs)
        assert Counting.calls == 1 and torch.equal(hooked, plain) and vars(wan.denoiser)["forward"] is wrapper
    finally:
        remove_hook_from_module(wan.denoiser)


# -- discovery ---------------------------------------------------------------------------------
def test_discovery_finds_the_self_attention_over_all_frames(name, wan):
    units = find_temporal_units(wan)
    # Wan: attn2 (text cross-attention) is not a unit; CogVideoX: the joint attention has 16 text tokens first;
    # HunyuanVideo 1.5: 256 glyph + 1000 Qwen context tokens, run first (padding masked, still in the sequence)
    blocks, attention, head_dim, text = {"tiny-wan": ("blocks", "attn1", 12, 0),
                                         "tiny-cogvideox": ("transformer_blocks", "attn1", 16, 16),
                                         "tiny-hunyuanvideo1.5": ("transformer_blocks", "attn", 16, 1256)}[name]
    assert [u.id for u in units] == [f"{blocks}.0.{attention}", f"{blocks}.1.{attention}"]
    for number, unit in enumerate(units):
        assert (unit.block, unit.heads, unit.head_dim, unit.frames, unit.tokens, unit.text_tokens) == (
            f"{blocks}.{number}", 4, head_dim, 5, 16, text)  # 17 frames -> 5 latent; 64 px -> 8 latent -> 4x4 patches
    other = find_temporal_units(wan, VideoShapes(1, 9, 32, 32))
    assert (other[0].frames, other[0].tokens, other[0].text_tokens) == (3, 4, text)


def test_a_token_order_that_is_not_frame_major_is_refused(wan):
    import dataclasses

    # the first block's video tokens rolled by one position: the same sequence lengths at every shape,
    # but no frame's tokens are where a frame-major order puts them
    block = dict(wan.denoiser.named_modules())[find_temporal_units(wan)[0].block]

    def roll(module, args, kwargs):
        if args:
            return (args[0].roll(1, dims=1), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"].roll(1, dims=1)}

    model = dataclasses.replace(wan, fingerprint=wan.fingerprint + "-rolled")
    handle = block.register_forward_pre_hook(roll, with_kwargs=True)
    try:
        with pytest.raises(F3Error, match="not in frame-major order"):
            find_temporal_units(model, VideoShapes(1, 17, 64, 64))
    finally:
        handle.remove()


# -- calibration ---------------------------------------------------------------------------------
def _brute_force(model, units, inputs, positions: dict | None = None):
    """Per unit ((H, F, F) mass of the recorded queries of frame f on the keys of frame g, (H, F) mass on
    text keys) from the full probability matrix of every head. q and k are read where the processors
    hand them to torch's attention function (swapped in for the call; none of the recorder is used)."""
    import torch.nn.functional as F

    seen, original = [], F.scaled_dot_product_attention

    def capture(query, key, value, *args, **kwargs):
        mask = args[0] if args else kwargs.get("attn_mask")  # HunyuanVideo 1.5: an additive bias on padded text keys
        seen.append((query.detach(), key.detach(), kwargs.get("scale"), mask))
        return original(query, key, value, *args, **kwargs)

    F.scaled_dot_product_attention = capture
    try:
        with torch.no_grad():
            model.denoise(*inputs)
    finally:
        F.scaled_dot_product_attention = original
    joint = [entry for entry in seen if entry[0].shape[-2] == entry[1].shape[-2] == units[0].sequence]
    assert len(joint) == len(units)  # the cross-attentions (Wan's attn2) attend to 512 text states
    result = {}
    for unit, (query, key, scale, mask) in zip(units, joint):
        q, k = query.double(), key.double()  # (B, H, N, d)
        scores = q @ k.transpose(-1, -2) * (scale or unit.head_dim ** -0.5)
        if mask is not None:
            scores = scores.masked_fill(mask.expand_as(scores) < -1e30, float("-inf"))
        probs = torch.softmax(scores, dim=-1)  # (B, H, N, N)
        T, F_, S = unit.text_tokens, unit.frames, unit.tokens
        video = probs[:, :, T:].reshape(*probs.shape[:2], F_, S, -1)  # (B, H, F, S, N) queries of frame f
        if positions is not None:
            video = video[:, :, :, positions[unit.id]]
        per_frame = video[..., T:].reshape(*video.shape[:4], F_, S).sum(dim=(0, 3, 5))  # (H, F, F)
        text = video[..., :T].sum(dim=(0, 3, 4))  # (H, F)
        result[unit.id] = (per_frame.float(), text.float())
    return result


@pytest.mark.parametrize("fraction", [1.0, 0.25])
def test_recorded_frame_distances_equal_the_full_probability_matrix(wan, fraction):
    from f3compile.calibration.recorder import AttentionRecorder, sampled_positions
    from f3compile.models.discovery import temporal_blocks

    units = find_temporal_units(wan)
    inputs = wan.example_inputs(seed=5)
    recorder = AttentionRecorder(wan.denoiser, units, temporal_blocks(units), steps=1, query_fraction=fraction)
    with torch.no_grad():
        plain = wan.denoise(*inputs)
        with recorder:
            recorded_out = wan.denoise(*inputs)
    assert torch.equal(recorded_out, plain)  # recording is read-only: bit-identical output
    tensors = recorder.tensors()
    positions = None
    if fraction < 1.0:
        positions = {u.id: sampled_positions(u.tokens, fraction, 0, u.id) for u in units}
        assert all(len(p) == 4 for p in positions.values())  # a quarter of 16 positions, the same in every frame
        assert not torch.equal(positions[units[0].id], positions[units[1].id])  # drawn per unit
    expected = _brute_force(wan, units, inputs, positions)
    for unit in units:
        rows = 2 * (unit.tokens if positions is None else 4)  # CFG batch 2 x recorded queries per frame
        assert float(tensors[f"unit/{unit.id}/rows"][0]) == rows
        per_frame, text = expected[unit.id]
        assert torch.allclose(tensors[f"unit/{unit.id}/attn"][0], per_frame, rtol=1e-4, atol=1e-4)
        if unit.text_tokens:
            assert torch.allclose(tensors[f"unit/{unit.id}/text"][0], text, rtol=1e-4, atol=1e-4)
            assert float(text.min()) > 0
        else:
            assert f"unit/{unit.id}/text" not in tensors
        total = tensors[f"unit/{unit.id}/attn"][0].sum(-1) + (tensors[f"unit/{unit.id}/text"][0] if unit.text_tokens else 0)
        assert torch.allclose(total, torch.full((unit.heads, unit.frames), float(rows)), rtol=1e-5)


def test_calibration_records_the_query_fraction(wan, tmp_path):
    from f3compile.calibration import CalibrationConfig, calibrate

    stats = calibrate(wan, PROMPTS[:1], CalibrationConfig(steps=2, heatmaps=False, query_fraction=0.5),
                      output_dir=tmp_path / "calib")
    meta = json.loads((tmp_path / "calib" / "calibration.json").read_text())
    assert meta["query_fraction"] == 0.5 and meta["seed"] == 0
    assert meta["units"][0]["tokens"] == 16
    assert meta["units"][0]["text_tokens"] == wan.text_length * (wan.family in ("cogvideox", "hunyuanvideo15"))
    assert float(stats.unit(meta["units"][0]["id"], "rows")[0]) == 2 * 8
    with pytest.raises(F3Error, match="query-fraction"):
        calibrate(wan, PROMPTS[:1], CalibrationConfig(steps=1, heatmaps=False, query_fraction=0.0))
    stats = calibrate(wan, PROMPTS[:1], CalibrationConfig(steps=1, heatmaps=False))  # the default: all, at 16 a frame
    assert stats.meta["query_fraction"] == 1.0 and "recorder_share" not in stats.meta


def test_default_query_fraction_keeps_the_recorder_within_a_quarter(wan, monkeypatch):
    """The default `--query-fraction`: all queries while frames are short; at long frames the share
    whose recorder work (10x its score FLOPs) is a quarter of one plain call's FLOPs, counted here
    with torch's own counter, and never fewer than 64 positions per frame."""
    from torch.utils.flop_counter import FlopCounterMode

    module = importlib.import_module("f3compile.calibration.calibrate")  # the package exports its function

    assert module.auto_query_fraction(wan, find_temporal_units(wan), wan.shapes) == (1.0, None)  # 16 tokens a frame
    shapes = VideoShapes(1, 5, 160, 160)  # 100 tokens a frame
    units = find_temporal_units(wan, shapes)
    fraction, share = module.auto_query_fraction(wan, units, shapes)
    assert fraction == pytest.approx(64 / 100) and share > 0.25  # the floor: this tiny model's scores cost more
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():  # attention as matmuls
        wan.denoise(*wan.example_inputs(shapes, cfg=True))
    plain = counter.get_total_flops()
    scores = sum(2 * u.heads * u.sequence ** 2 * (2 * u.head_dim + 8) for u in units)  # CFG batch 2
    monkeypatch.setattr(module, "MIN_QUERIES", 1)
    fraction, share = module.auto_query_fraction(wan, units, shapes)
    assert fraction == pytest.approx(0.25 * plain / (10 * scores), rel=1e-6) and share == pytest.approx(0.25)


# -- plans ----------------------------------------------------------------------------------------
def test_window_plans_by_ratio_and_by_kept_mass(calibration):
    from f3compile.calibration.criteria import window_mass
    from f3compile.planning import make_plan

    directory, stats = calibration
    units = stats.units
    heads = sum(u.heads for u in units)
    plan = make_plan(stats, 0.5, "window", window=1)
    windowed = [(u, h) for u, ws in plan.stages[0].windows.items() for h, w in enumerate(ws) if w is not None]
    assert len(windowed) == heads // 2 and all(w in (None, 1) for ws in plan.stages[0].windows.values() for w in ws)
    outside = {u.id: 1 - window_mass(stats, u.id, 1) for u in units}
    threshold = max(float(outside[u][h]) for u, h in windowed)
    assert all(float(outside[u.id][h]) >= threshold for u in units for h in range(u.heads)
               if (u.id, h) not in windowed)  # the lowest-scored half
    assert plan.scores[units[0].id]["per_head"] == pytest.approx([float(x) for x in outside[units[0].id]], abs=1e-6)
    keep = float(sorted(1 - outside[u.id][h] for u in units for h in range(u.heads))[heads // 4])
    by_mass = make_plan(stats, None, "window", window=1, keep_mass=keep)
    chosen = [(u, h) for u, ws in by_mass.stages[0].windows.items() for h, w in enumerate(ws) if w is not None]
    assert chosen and all(float(1 - outside[u][h]) >= keep - 1e-6 for u, h in chosen)
    assert len(chosen) == sum(float(1 - outside[u.id][h]) >= keep - 1e-6 for u in units for h in range(u.heads))
    staged = make_plan(stats, [0.0, 1.0], "window", window=0, stages=2)
    assert staged.stages[0].windows == {} and all(w == 0 for ws in staged.stages[1].windows.values() for w in ws)


@pytest.mark.parametrize("kwargs, message", [
    (dict(ratio=0.5, granularity="window"), "--window W"),
    (dict(ratio=0.5, granularity="frame"), "does not apply to full 3-D attention"),
    (dict(ratio=0.5, granularity="window", window=0, keep_mass=0.5), "exactly one of"),
    (dict(ratio=None, granularity="window", window=0, keep_mass=1.5), "--keep-mass must be in [0, 1]"),
])
def test_window_plan_refusals(calibration, kwargs, message):
    from f3compile.planning import make_plan

    _, stats = calibration
    kwargs = dict(kwargs)
    ratio = kwargs.pop("ratio")
    with pytest.raises(F3Error, match=message.replace("[", r"\[").replace("]", r"\]")):
        make_plan(stats, ratio, **kwargs)


# -- the CLI, end to end ---------------------------------------------------------------------------
def test_cli_calibrate_plan_inspect_export_generate_bench_eval(name, tmp_path, capsys, caplog):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    calib, plan, build = tmp_path / "calib", tmp_path / "plan.json", tmp_path / "build"
    code, out, err = run(capsys, "calibrate", f"builtin:{name}", "--prompts", prompts, "--steps", 3,
                         "--guidance-scale", 5, "--no-heatmaps", "--query-fraction", 0.5, "-o", calib)
    assert code == 0, err
    code, out, err = run(capsys, "plan", calib, "--granularity", "window", "--window", 1, "--ratio", 0.5,
                         "--stages", 1, "-o", plan)
    assert code == 0, err
    assert "window plan" in out
    code, out, err = run(capsys, "inspect", plan, "--model", f"builtin:{name}")
    assert code == 0, err
    assert out.count("window: ") == 2 and "at W=1" in out and "FLOP-predicted speedup" in out
    caplog.set_level(logging.WARNING)
    code, out, err = run(capsys, "export", f"builtin:{name}", "--plan", plan, "-o", build)
    assert code == 0, err
    # the ONNX clean-up's per-node notes ("Skipping constant folding for op Split ...") stay out of the output
    assert not [record for record in caplog.records if record.name.startswith("onnxscript")]
    manifest = json.loads((build / "manifest.json").read_text())
    from f3compile.exporters.trt_readiness import check_onnx

    readiness = check_onnx(build / manifest["stages"][0]["files"]["onnx"]["path"])
    assert readiness["ready"], readiness["unsupported"]  # windows use Gather, Slice, Concat, Expand, a constant mask
    assert readiness["operators"]["Softmax"] >= 4
    verify = manifest["stages"][0]["verify"]
    assert all(result["relative_l2_error"] < 1e-4 for result in verify.values())
    assert manifest["decoder"]["kind"] == "video_vae" and manifest["decoder"]["temporal_scale"] == 4 
    assert manifest["text_encoder"]["style"] == {"tiny-wan": "umt5", "tiny-cogvideox": "clip",
                                                 "tiny-hunyuanvideo1.5": "hunyuan15"}[name]
    videos = {}
    for backend in ("torch", "onnxruntime"):
        code, out, err = run(capsys, "generate", build, "--prompt", PROMPTS[0], "--steps", 3, "--guidance-scale", 5,
                             "--backend", backend, "--save-latents", tmp_path / f"{backend}.safetensors",
                             "-o", tmp_path / f"{backend}.gif")
        assert code == 0, err
        assert (tmp_path / f"{backend}.gif").is_file() and "17 frames 64x64" in out
        from safetensors.torch import load_file

        videos[backend] = next(iter(load_file(str(tmp_path / f"{backend}.safetensors")).values()))
    assert rel(videos["onnxruntime"], videos["torch"]) < 1e-4
    if name != "tiny-wan":
        return  # bench and eval go through the same compiled programs for both families
    code, out, err = run(capsys, "bench", f"builtin:{name}", "--plan", plan, "--repeat", 2, "--json", tmp_path / "b.json")
    assert code == 0, err
    rows = json.loads((tmp_path / "b.json").read_text())["results"]
    assert [row["stage"] for row in rows] == [0, "loop"]
    assert rows[0]["pruned_flops"] < rows[0]["dense_flops"] and rows[0]["predicted_speedup"] > 1
    code, out, err = run(capsys, "eval", f"builtin:{name}", "--plan", plan, "--measures", "fidelity", "--prompts",
                         prompts, "--samples", 1, "--steps", 3, "--repeat", 1, "-o", tmp_path / "eval")
    assert code == 0, err
    assert (tmp_path / "eval").is_dir() and "PSNR" in out


# -- presets at published shapes ------------------------------------------------------------------
PRESETS = {  # tiny builtin -> (preset, published frames x height x width, latent frames, tokens per frame, text, width, layers)
    "tiny-wan": ("arch-wan2.1-1.3b", (81, 480, 832), 21, 30 * 52, 0, 12 * 128, 30),
    "tiny-cogvideox": ("arch-cogvideox-5b", (49, 480, 720), 13, 30 * 45, 226, 48 * 64, 42),
}


def test_preset_flops_at_the_published_shape_on_the_meta_device(name, calibration, tmp_path):
    """The published architecture at its published shape counted without weights: the attention core
    equals 4·B·N²·D per layer counted by hand, and a plan from the tiny model carried over by depth
    predicts what that share says (every head at W = 0). One family here (the count is the same code
    for both); tools/window_table.py prints all four presets."""
    if name != "tiny-wan":
        pytest.skip("counted on arch-wan2.1-1.3b")
    from f3compile.options import Shapes
    from f3compile.planning import make_plan
    from f3compile.planning.cost import ModelCost, window_core_share

    preset, shape, frames, tokens, text, width, layers = PRESETS[name]
    model = load_model(f"builtin:{preset}", meta=True)
    assert model.on_meta and model.fingerprint.startswith("meta:sha256:")
    units = find_temporal_units(model)
    assert len(units) == layers and (units[0].frames, units[0].tokens, units[0].text_tokens) == (frames, tokens, text)
    cost = ModelCost.measure(model, units)
    sequence, batch = text + frames * tokens, 2  # the CFG batch
    by_hand = layers * 4 * batch * sequence * sequence * width  # QKᵀ and PV of every joint self-attention
    assert sum(cost._attention_split(u.id)["core"] for u in units) == by_hand
    _, stats = calibration
    plan = make_plan(stats, 1.0, "window", window=0)
    path = tmp_path / "plan.json"
    plan.save(path)
    text_out = api.inspect(path, f"builtin:{preset}", Shapes(*shape))
    share = by_hand / cost.total_flops
    expected = 1 / (1 - share * (1 - window_core_share(units[0], 0)))
    assert f"FLOP-predicted speedup {expected:.3f}x" in text_out
    heads = units[0].heads
    assert f"carried over from builtin:{name}" in text_out and text_out.count(f"window: {heads} heads at W=0") == layers


def test_attention_core_removed_by_windows_and_reuse(name, wan, calibration):
    """The attention-core share `inspect` reports, against counts by hand: a head at W = 0 keeps, of
    its T + F·S keys per query, the T text keys and its own frame's S (the text queries keep all);
    reusing every block at K = 2 over n steps runs ceil(n/2) of the calls."""
    import math

    from f3compile.planning import make_plan
    from f3compile.planning.inspect import summarize

    _, stats = calibration
    units = find_temporal_units(wan)
    unit = units[0]
    text, frames, tokens = unit.text_tokens, unit.frames, unit.tokens
    length = text + frames * tokens
    kept = (text * length + frames * tokens * (text + tokens)) / length ** 2
    steps = len(stats.timesteps)
    for reuse, fraction in ((None, 1.0), (2, math.ceil(steps / 2) / steps)):
        plan = make_plan(stats, 1.0, "window", window=0, reuse=reuse)
        summary = summarize(plan, wan, units)
        assert summary["trajectory_core_removed"] / summary["core_flops"] == pytest.approx(1 - kept * fraction, rel=1e-6)
    dense = summarize(make_plan(stats, 0.0, "window", window=0), wan, units)
    assert dense["trajectory_core_removed"] == 0 and dense["predicted_speedup"] == 1.0


# -- budgets and searches with windows -----------------------------------------------------------
def test_window_budget_reaches_the_target_with_the_least_outside_mass_first(wan, calibration):
    from f3compile.calibration.criteria import window_scores
    from f3compile.planning import make_plan
    from f3compile.planning.cost import ModelCost
    from f3compile.planning.plan import plan_stages_of
    from f3compile.planning.schedule import make_target_plan, predicted_speedup

    _, stats = calibration
    units = find_temporal_units(wan)
    cost = ModelCost.measure(wan, units)
    ceiling = predicted_speedup(make_target_plan(stats, cost, 1.0, "window", stages=2, window=0), cost)
    assert ceiling == 1.0  # a target of 1 windows nothing
    every = predicted_speedup(make_plan(stats, 1.0, "window", stages=2, window=0), cost)
    target = 1 + (every - 1) / 2
    plan = make_target_plan(stats, cost, target, "window", stages=2, window=0)
    reached = predicted_speedup(plan, cost)
    assert target <= reached <= every and plan.budget["predicted_speedup"] == pytest.approx(reached, abs=1e-6)
    chosen = {(n, u, h) for n, s in enumerate(plan.stages) for u, ws in s.windows.items() for h, w in enumerate(ws) if w == 0}
    assert 0 < len(chosen) < 2 * sum(u.heads for u in units)
    scores = {(n, u.id, h): float(x) for n, (group, _) in enumerate(plan_stages_of(stats, 2)) for u in units
              for h, x in enumerate(window_scores(stats, u.id, 0, "cross_frame_mass", group))}
    assert max(scores[c] for c in chosen) <= min(scores[c] for c in scores if c not in chosen) + 1e-9
    with pytest.raises(F3Error, match="out of reach"):
        make_target_plan(stats, cost, every * 1.5, "window", stages=2, window=0)


def test_search_with_window_actions_and_eager_windows_equal_the_program(name, wan, calibration):
    from f3compile.compiler.compile import compile
    from f3compile.planning.cost import ModelCost
    from f3compile.inplace import install
    from f3compile.planning.search import search_plan

    _, stats = calibration
    units = find_temporal_units(wan)
    cost = ModelCost.measure(wan, units)
    plan, steps = search_plan(wan, stats, PROMPTS[:1], cost, units, max_error=10.0, stages=1, actions=("window",),
                              windows=(0, 1))
    assert steps and all(step.action in ("window:0", "window:1") for step in steps)
    assert plan.search["actions"] == ["window:0", "window:1"]
    stage = plan.stages[0]
    assert set(stage.windows) == {u.id for u in units} and all(len(set(ws)) == 1 for ws in stage.windows.values())
    # the search measured the plan applied in place: the compiled program computes the same
    program = compile(wan, plan)[0].program.module()
    inputs = wan.example_inputs(seed=2)
    with torch.no_grad(), install(wan, plan, units):
        eager = wan.denoise(*inputs)
    with torch.no_grad():
        assert rel(program(*inputs), eager) <= 1e-5
    with pytest.raises(F3Error, match="heads does not apply"):
        search_plan(wan, stats, PROMPTS[:1], cost, units, max_error=1.0, stages=1, actions=("heads",))
    if wan.family != "wan":  # joint blocks return text and video: never dropped or reused whole, in a search or apply
        with pytest.raises(F3Error, match="do not apply"):
            search_plan(wan, stats, PROMPTS[:1], cost, units, max_error=1.0, stages=1, actions=("reuse",))
        dropping = copy.deepcopy(plan)
        dropping.stages[0].drop_blocks = [units[0].block]
        with pytest.raises(F3Error, match="2 outputs"):
            install(wan, dropping, units)
    if wan.family == "hunyuanvideo15":  # another attention processor would get a mask it does not expect
        from diffusers.models.attention_processor import AttnProcessor2_0

        attention = dict(wan.denoiser.named_modules())[units[0].id]
        own = attention.processor
        attention.processor = AttnProcessor2_0()
        try:
            with pytest.raises(F3Error, match="set_attn_processor"), torch.no_grad():
                wan.denoise(*inputs)
        finally:
            attention.processor = own
