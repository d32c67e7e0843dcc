import json

import pytest
import torch
from safetensors.torch import load_file

from f3compile import F3Error
from f3compile.calibration import CalibrationConfig, calibrate, read_prompts
from f3compile.calibration.recorder import AttentionRecorder
from f3compile.models import find_temporal_units, temporal_blocks
from tests.helpers import TINY

ROW_SUM_TOL = 1e-4  # summed fp32 probabilities, rows of length F


@pytest.mark.parametrize("name", TINY)
def test_recording_does_not_change_outputs(models, name):
    model = models[name]
    units = find_temporal_units(model)
    inputs = model.example_inputs(seed=3)
    with torch.no_grad():
        plain = model.denoise(*inputs)
        with AttentionRecorder(model.denoiser, units, temporal_blocks(units), steps=1) as recorder:
            recorded = model.denoise(*inputs)
    assert torch.equal(plain, recorded)
    assert recorder.tensors()[f"unit/{units[0].id}/calls"][0] == 1
    with torch.no_grad():  # hooks are gone afterwards
        assert torch.equal(model.denoise(*inputs), plain)


def test_recorded_probabilities_match_diffusers_attention_scores(models):
    model = models["tiny-unet3d"]
    units = find_temporal_units(model)
    unit = units[2]
    attention = dict(model.denoiser.named_modules())[unit.id]
    seen = {}

    def grab(module, args, kwargs):
        seen["x"] = (args[0] if args else kwargs["hidden_states"]).detach()

    handle = attention.register_forward_pre_hook(grab, with_kwargs=True)
    inputs = model.example_inputs(seed=1)
    try:
        with torch.no_grad(), AttentionRecorder(model.denoiser, units, temporal_blocks(units), steps=1) as recorder:
            model.denoise(*inputs)
    finally:
        handle.remove()
    with torch.no_grad():  # independent reference: diffusers' own get_attention_scores
        q = attention.head_to_batch_dim(attention.to_q(seen["x"]))
        k = attention.head_to_batch_dim(attention.to_k(seen["x"]))
        probs = attention.get_attention_scores(q, k)  # (N*H, F, F)
    rows = seen["x"].shape[0]
    reference = probs.reshape(rows, unit.heads, unit.frames, unit.frames).sum(0)
    recorded = recorder.tensors()[f"unit/{unit.id}/attn"][0]
    torch.testing.assert_close(recorded, reference, rtol=1e-5, atol=1e-4)
    assert recorder.tensors()[f"unit/{unit.id}/rows"][0] == rows
    torch.testing.assert_close(recorded.sum(-1), torch.full((unit.heads, unit.frames), float(rows)), rtol=0, atol=ROW_SUM_TOL * rows)


def test_calibration_files_and_metadata(calibrations, models):
    directory, stats = calibrations["tiny-unet3d"]
    meta = json.loads((directory / "calibration.json").read_text())
    assert meta["model"]["fingerprint"] == models["tiny-unet3d"].fingerprint
    assert meta["steps"] == 6 and len(meta["timesteps"]) == 6 and meta["timesteps"][0] > meta["timesteps"][-1]
    assert meta["prompts"]["count"] == 2 and meta["stats_sha256"].startswith("sha256:")
    assert {"torch", "diffusers", "transformers"} <= set(meta["versions"])
    tensors = load_file(str(directory / "stats.safetensors"))
    unit = stats.units[0]
    assert tensors[f"unit/{unit.id}/attn"].shape == (6, unit.heads, unit.frames, unit.frames)
    assert tensors[f"unit/{unit.id}/attn"].dtype == torch.float32
    # batch size 1: each of the 2 prompts is its own sampling run, one (CFG-doubled) call per step
    calls = tensors[f"unit/{unit.id}/calls"]
    assert torch.equal(calls, torch.full((6,), 2.0))
    assert (tensors[f"block/{unit.block}/ratio"] > 0).all()


def test_same_seed_bit_identical_other_seed_differs(models, tmp_path):
    model = models["tiny-latte"]
    config = CalibrationConfig(steps=3, heatmaps=False, seed=7)
    calibrate(model, ["a red circle"], config, output_dir=tmp_path / "a")
    calibrate(model, ["a red circle"], config, output_dir=tmp_path / "b")
    calibrate(model, ["a red circle"], CalibrationConfig(steps=3, heatmaps=False, seed=8), output_dir=tmp_path / "c")
    a, b, c = (load_file(str(tmp_path / d / "stats.safetensors")) for d in "abc")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "stats.safetensors").read_bytes() == (tmp_path / "b" / "stats.safetensors").read_bytes()
    assert any(not torch.equal(a[k], c[k]) for k in a if k.endswith("/attn"))


def test_heatmaps_written(models, tmp_path):
    model = models["tiny-latte"]
    calibrate(model, ["x"], CalibrationConfig(steps=2), output_dir=tmp_path / "cal")
    pngs = sorted(p.name for p in (tmp_path / "cal" / "heatmaps").iterdir())
    assert "scores_by_step.png" in pngs and len(pngs) == 1 + len(find_temporal_units(model))
    assert all((tmp_path / "cal" / "heatmaps" / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)


def test_read_prompts_formats_and_errors(tmp_path):
    text = tmp_path / "p.txt"
    text.write_text('# c\nfirst\n\n{"prompt": "second", "color": "red"}\n')
    assert read_prompts(text) == ["first", "second"]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# only a comment\n")
    with pytest.raises(F3Error, match="has no prompts"):
        read_prompts(empty)
    with pytest.raises(F3Error, match="does not exist"):
        read_prompts(tmp_path / "missing.txt")


def test_bad_shapes_are_refused(models, tmp_path):
    with pytest.raises(F3Error, match="--frames 8"):
        calibrate(models["tiny-latte"], ["x"], CalibrationConfig(steps=1, frames=4), output_dir=tmp_path / "x")
    with pytest.raises(F3Error, match="multiple of"):
        calibrate(models["tiny-unet3d"], ["x"], CalibrationConfig(steps=1, height=30), output_dir=tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
