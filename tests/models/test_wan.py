"""The wan family: loading (pipeline and bare transformer directories, refusals), parity with
diffusers' WanPipeline, spatiotemporal discovery, the per-head frame-distance calibration against a
brute-force oracle, window plans, and the whole CLI on builtin:tiny-wan."""

from __future__ import annotations

import json

import pytest
import torch

from f3compile import api
from f3compile.errors import F3Error
from f3compile.models import load_model
from f3compile.models.base import VideoShapes
from f3compile.models.discovery import find_temporal_units
from tests.helpers import assert_one_line_error, rel, run

PARITY = 1e-4  # relative L2 of final latents vs the diffusers pipeline, fp32 (the bound)
PROMPTS = ["a red circle moving left", "a blue square moving up"]


@pytest.fixture(scope="module")
def wan():
    return load_model("builtin:tiny-wan")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """builtin:tiny-wan saved with diffusers' save_pretrained, and the pipeline object itself."""
    from f3compile.models.loading import build_builtin

    pipe, _ = build_builtin("tiny-wan")
    directory = tmp_path_factory.mktemp("wan") / "pipeline"
    pipe.save_pretrained(directory)
    return pipe, directory


@pytest.fixture(scope="module")
def calibration(wan, tmp_path_factory):
    from f3compile.calibration import CalibrationConfig, calibrate

    directory = tmp_path_factory.mktemp("wan-calib") / "calib"
    stats = calibrate(wan, PROMPTS, CalibrationConfig(steps=4, guidance_scale=5.0, heatmaps=False), output_dir=directory)
    return directory, stats


# -- loading and parity ------------------------------------------------------------------------
def test_dense_build_reproduces_the_wan_pipeline(saved, tmp_path):
    from f3compile.options import CompileOptions, Shapes

    pipe, directory = saved
    model = load_model(str(directory))
    assert (model.family, model.temporal_scale, model.vae_scale_factor, model.text_length) == ("wan", 4, 8, 512)
    start = torch.randn(1, 16, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    reference = pipe("a red circle", negative_prompt="", num_frames=9, height=32, width=32, num_inference_steps=4,
                     guidance_scale=5.0, latents=start.clone(), output_type="latent").frames
    api.compile(model, None, CompileOptions(shapes=Shapes(9, 32, 32)), output_dir=tmp_path / "build")
    ours = api.Runtime(tmp_path / "build").generate("a red circle", steps=4, guidance_scale=5.0, latents=start)
    assert rel(ours, reference) <= PARITY
    assert rel(start, reference) > 0.1  # it did denoise


def test_bare_transformer_directory(saved, tmp_path):
    pipe, directory = saved
    model = load_model(str(directory / "transformer"))
    assert model.family == "wan" and model.pipeline is None and model.temporal_scale == 4
    assert type(model.scheduler).__name__ == "UniPCMultistepScheduler"
    sample, timestep, ehs = model.example_inputs(VideoShapes(1, 9, 32, 32))
    with torch.no_grad():
        expected = pipe.transformer(hidden_states=sample, timestep=timestep, encoder_hidden_states=ehs,
                                    return_dict=False)[0]
        assert torch.equal(model.denoise(sample, timestep, ehs), expected)


def _rewrite_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("where, change, message", [
    ("transformer/config.json", {"image_dim": 1280, "added_kv_proj_dim": 5120}, "image-to-video"),
    ("model_index.json", {"expand_timesteps": True}, "TI2V"),
])
def test_unsupported_variants_are_refused_in_one_line(saved, tmp_path, capsys, where, change, message):
    import shutil

    _, directory = saved
    copy = tmp_path / "variant"
    shutil.copytree(directory, copy)
    _rewrite_json(copy / where, **change)
    for spec in ([str(copy), str(copy / "transformer")] if where.startswith("transformer") else [str(copy)]):
        code, out, err = run(capsys, "calibrate", spec, "--prompts", __file__, "-o", tmp_path / "calib")
        assert_one_line_error(code, err, message)
        assert not (tmp_path / "calib").exists()


# -- discovery ---------------------------------------------------------------------------------
def test_discovery_finds_the_self_attention_over_all_frames(wan):
    units = find_temporal_units(wan)
    assert [u.id for u in units] == ["blocks.0.attn1", "blocks.1.attn1"]  # attn2 (text cross-attention) is not a unit
    for number, unit in enumerate(units):
        assert (unit.block, unit.heads, unit.head_dim, unit.frames, unit.tokens, unit.text_tokens) == (
            f"blocks.{number}", 4, 12, 5, 16, 0)  # 17 frames -> 5 latent; 64 px -> 8 latent -> 4x4 patches
    other = find_temporal_units(wan, VideoShapes(1, 9, 32, 32))
    assert (other[0].frames, other[0].tokens) == (3, 4)


def test_a_token_order_that_is_not_frame_major_is_refused(wan):
    import dataclasses

    # the patch embedding's (B, C, F, h, w) output with frames and rows swapped: the same sequence
    # lengths at every shape, but the tokens of one frame are spread over the whole sequence
    model = dataclasses.replace(wan, fingerprint=wan.fingerprint + "-rows-first")
    handle = wan.denoiser.patch_embedding.register_forward_hook(lambda m, a, out: out.transpose(2, 3).contiguous())
    try:
        with pytest.raises(F3Error, match="not in frame-major order"):
            find_temporal_units(model, VideoShapes(1, 17, 64, 64))
    finally:
        handle.remove()


# -- calibration ---------------------------------------------------------------------------------
def _brute_force(model, units, inputs, positions=None):
    """Per unit (H, F, F) mass of all recorded queries of frame f on keys of frame g, from the full
    probability matrix of every head, read through diffusers' dispatch function (not the recorder)."""
    import diffusers.models.transformers.transformer_wan as wan_module

    seen, original = [], wan_module.dispatch_attention_fn

    def capture(query, key, value, **kwargs):
        seen.append((query.detach(), key.detach()))
        return original(query, key, value, **kwargs)

    wan_module.dispatch_attention_fn = capture
    try:
        with torch.no_grad():
            out = model.denoise(*inputs)
    finally:
        wan_module.dispatch_attention_fn = original
    result = {}
    attn1 = seen[0::2]  # per block: attn1 then attn2
    for unit, (query, key) in zip(units, attn1):
        q, k = query.transpose(1, 2).double(), key.transpose(1, 2).double()  # (B, H, N, d)
        probs = torch.softmax(q @ k.transpose(-1, -2) / unit.head_dim ** 0.5, dim=-1)  # (B, H, N, N)
        frames, tokens = unit.frames, unit.tokens
        probs = probs.reshape(*probs.shape[:2], frames, tokens, frames, tokens)
        if positions is not None:
            probs = probs[:, :, :, positions]
        result[unit.id] = probs.sum(dim=(0, 3, 5)).float()  # (H, F, F)
    return result, out


@pytest.mark.parametrize("fraction", [1.0, 0.25])
def test_recorded_frame_distances_equal_the_full_probability_matrix(wan, fraction):
    from f3compile.calibration.recorder import AttentionRecorder, sampled_positions
    from f3compile.models.discovery import temporal_blocks

    units = find_temporal_units(wan)
    inputs = wan.example_inputs(seed=5)
    positions = None if fraction == 1.0 else sampled_positions(units[0].tokens, fraction, 0, units[0].id)
    recorder = AttentionRecorder(wan.denoiser, units, temporal_blocks(units), steps=1, query_fraction=fraction)
    with torch.no_grad():
        plain = wan.denoise(*inputs)
        with recorder:
            recorded_out = wan.denoise(*inputs)
    assert torch.equal(recorded_out, plain)  # recording is read-only: bit-identical output
    tensors = recorder.tensors()
    for unit in units:
        if positions is None:
            expected, _ = _brute_force(wan, units, inputs)
        else:
            per_unit = sampled_positions(unit.tokens, fraction, 0, unit.id)
            expected, _ = _brute_force(wan, units, inputs, per_unit)
            assert len(per_unit) == 4  # a quarter of 16 positions, the same in every frame
        rows = 2 * (unit.tokens if positions is None else 4)  # CFG batch 2 x recorded queries per frame
        assert float(tensors[f"unit/{unit.id}/rows"][0]) == rows
        assert torch.allclose(tensors[f"unit/{unit.id}/attn"][0], expected[unit.id], rtol=1e-4, atol=1e-4)
        assert torch.allclose(tensors[f"unit/{unit.id}/attn"][0].sum(-1), torch.full((unit.heads, unit.frames),
                                                                                       float(rows)), rtol=1e-5)


def test_calibration_records_the_query_fraction(wan, tmp_path):
    from f3compile.calibration import CalibrationConfig, calibrate

    stats = calibrate(wan, PROMPTS[:1], CalibrationConfig(steps=2, heatmaps=False, query_fraction=0.5),
                      output_dir=tmp_path / "calib")
    meta = json.loads((tmp_path / "calib" / "calibration.json").read_text())
    assert meta["query_fraction"] == 0.5 and meta["seed"] == 0
    assert meta["units"][0]["tokens"] == 16 and meta["units"][0]["text_tokens"] == 0
    assert float(stats.unit("blocks.0.attn1", "rows")[0]) == 2 * 8
    with pytest.raises(F3Error, match="query-fraction"):
        calibrate(wan, PROMPTS[:1], CalibrationConfig(steps=1, heatmaps=False, query_fraction=0.0))


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
    (dict(ratio=0.5, granularity="head"), "does not apply to full 3-D attention"),
    (dict(ratio=0.5, granularity="frame"), "does not apply to full 3-D attention"),
    (dict(ratio=0.5, granularity="window", window=0, keep_mass=0.5), "exactly one of"),
    (dict(ratio=None, granularity="window", window=0, keep_mass=1.5), "--keep-mass must be in [0, 1]"),
])
def test_window_plan_refusals(calibration, kwargs, message):
    from f3compile.planning import make_plan

    _, stats = calibration
    ratio = kwargs.pop("ratio")
    with pytest.raises(F3Error, match=message.replace("[", r"\[").replace("]", r"\]")):
        make_plan(stats, ratio, **kwargs)


# -- the CLI, end to end ---------------------------------------------------------------------------
def test_cli_calibrate_plan_inspect_export_generate_bench_eval(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    calib, plan, build = tmp_path / "calib", tmp_path / "plan.json", tmp_path / "build"
    code, out, err = run(capsys, "calibrate", "builtin:tiny-wan", "--prompts", prompts, "--steps", 3,
                         "--guidance-scale", 5, "--no-heatmaps", "--query-fraction", 0.5, "-o", calib)
    assert code == 0, err
    code, out, err = run(capsys, "plan", calib, "--granularity", "window", "--window", 0, "--ratio", 0.5,
                         "--stages", 1, "-o", plan)
    assert code == 0, err
    assert "window plan" in out
    code, out, err = run(capsys, "inspect", plan, "--model", "builtin:tiny-wan")
    assert code == 0, err
    assert out.count("window: ") == 2 and "at W=0" in out and "FLOP-predicted speedup" in out
    code, out, err = run(capsys, "export", "builtin:tiny-wan", "--plan", plan, "-o", build)
    assert code == 0, err
    manifest = json.loads((build / "manifest.json").read_text())
    verify = manifest["stages"][0]["verify"]
    assert all(result["relative_l2_error"] < 1e-4 for result in verify.values())
    assert manifest["decoder"]["kind"] == "wan_vae" and manifest["text_encoder"]["style"] == "umt5"
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
    code, out, err = run(capsys, "bench", "builtin:tiny-wan", "--plan", plan, "--repeat", 2, "--json", tmp_path / "b.json")
    assert code == 0, err
    rows = json.loads((tmp_path / "b.json").read_text())["results"]
    assert [row["stage"] for row in rows] == [0, "loop"]
    assert rows[0]["pruned_flops"] < rows[0]["dense_flops"] and rows[0]["predicted_speedup"] > 1
    code, out, err = run(capsys, "eval", "builtin:tiny-wan", "--plan", plan, "--measures", "fidelity", "--prompts",
                         prompts, "--samples", 1, "--steps", 3, "--repeat", 1, "-o", tmp_path / "eval")
    assert code == 0, err
    assert (tmp_path / "eval").is_dir() and "PSNR" in out


# -- presets at published shapes ------------------------------------------------------------------
def test_preset_flops_at_the_published_shape_on_the_meta_device(calibration, tmp_path, capsys):
    """Wan2.1-T2V-1.3B at 480x832x81 counted without weights: the attention core equals 4·B·N²·D per
    layer counted by hand, and a plan from tiny-wan carried over predicts what the formula says."""
    from f3compile.options import Shapes
    from f3compile.planning import make_plan
    from f3compile.planning.cost import ModelCost

    model = load_model("builtin:arch-wan2.1-1.3b", meta=True)
    assert model.on_meta and model.fingerprint.startswith("meta:sha256:")
    units = find_temporal_units(model)
    assert len(units) == 30 and (units[0].frames, units[0].tokens, units[0].heads, units[0].head_dim) == (21, 30 * 52, 12, 128)
    cost = ModelCost.measure(model, units)
    tokens, width, batch = 21 * 30 * 52, 1536, 2  # CFG batch
    by_hand = 30 * 4 * batch * tokens * tokens * width  # QKᵀ and PV of 30 self-attentions
    assert sum(cost._attention_split(u.id)["core"] for u in units) == by_hand
    assert 0.69 < by_hand / cost.total_flops < 0.71
    _, stats = calibration
    plan = make_plan(stats, 1.0, "window", window=0)
    path = tmp_path / "plan.json"
    plan.save(path)
    text = api.inspect(path, "builtin:arch-wan2.1-1.3b", Shapes(81, 480, 832))
    share = by_hand / cost.total_flops
    expected = 1 / (1 - share * (1 - 1 / 21))
    assert f"FLOP-predicted speedup {expected:.3f}x" in text
    assert "carried over from builtin:tiny-wan" in text and text.count("window: 12 heads at W=0") == 30
