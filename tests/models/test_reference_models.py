"""The trained reference models and the probe: committed, hash-checked, loadable, runnable."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from f3compile import F3Error
from f3compile.models import load_model
from f3compile.models.reference import models as ref
from f3compile.models.reference.domain import make_clips
from f3compile.models.reference.probe import HEADS, load_probe

MAX_WEIGHTS_BYTES = 10_000_000  # the README's "≤ 10 MB each"
PROBE_TARGET = 0.98


@pytest.fixture(scope="module")
def ref_latte():
    return load_model("builtin:ref-latte")


@pytest.mark.parametrize("name", ["ref-unet3d", "ref-latte", "ref-wan", "probe"])
def test_weights_are_committed_small_and_hash_checked(name, tmp_path, monkeypatch):
    file = ref.checked_weights(name)
    assert file.stat().st_size <= MAX_WEIGHTS_BYTES
    copy = tmp_path / "weights"
    shutil.copytree(ref.WEIGHTS, copy)
    data = bytearray((copy / file.name).read_bytes())
    data[-1] ^= 0xFF  # one flipped byte in the last tensor
    (copy / file.name).write_bytes(bytes(data))
    monkeypatch.setattr(ref, "WEIGHTS", copy)
    with pytest.raises(F3Error, match="does not match the sha256"):
        ref.checked_weights(name)
    (copy / file.name).unlink()
    with pytest.raises(F3Error, match="train them with"):
        ref.checked_weights(name)


def test_pack_and_unpack_are_inverse():
    frames = torch.from_numpy(make_clips(3, seed=5)[0])  # (3, 8, 16, 16, 3)
    packed = ref.pack(frames)
    assert packed.shape == (3, ref.CHANNELS, 8, 8, 8)
    assert packed.min() >= -1 and packed.max() <= 1
    assert torch.allclose(ref.unpack(packed), frames, atol=1e-6)


def test_probe_classifies_heldout_real_clips():
    clips, _, labels = make_clips(600, seed=12345)  # seeds the probe never trained on
    _, predicted = load_probe().classify(torch.from_numpy(clips))
    for name in HEADS:
        accuracy = np.mean([p == getattr(item, name) for p, item in zip(predicted[name], labels)])
        assert accuracy >= PROBE_TARGET, (name, accuracy)


def test_reference_models_load_as_pixel_space_pipelines(ref_latte):
    unet = load_model("builtin:ref-unet3d")
    for model, family in ((ref_latte, "latte"), (unet, "unet3d")):
        assert model.family == family
        assert model.vae_scale_factor == ref.PACK and model.latent_channels == ref.CHANNELS
        assert model.text_dim == 384  # MiniLM-L6 hidden size
        assert model.pipeline.vae is None
        assert (model.shapes.frames, model.shapes.height, model.shapes.width) == (8, 16, 16)
    assert ref_latte.text_length == 120 and unet.text_length == ref.TEXT_LENGTH


@pytest.fixture(scope="module")
def ref_wan():
    return load_model("builtin:ref-wan")


def test_ref_wan_is_pixel_space_full_attention(ref_wan):
    """Every self-attention spans all 8 frames of 4x4 tokens and nothing else reaches across frames."""
    from f3compile.models.discovery import find_temporal_units

    assert ref_wan.family == "wan" and ref_wan.pipeline.vae is None and ref_wan.temporal_scale == 1
    assert ref_wan.vae_scale_factor == ref.PACK and ref_wan.latent_channels == ref.CHANNELS
    assert (ref_wan.text_length, ref_wan.text_dim) == (ref.TEXT_LENGTH, 384)
    units = find_temporal_units(ref_wan)
    assert [u.id for u in units] == [f"blocks.{i}.attn1" for i in range(6)]
    assert all(u.spatiotemporal and (u.frames, u.tokens, u.text_tokens, u.heads) == (8, 16, 0, 4) for u in units)


def test_ref_wan_samples_what_wan_pipeline_samples(ref_wan):
    """f3compile's encoding and loop equal WanPipeline's own on the MiniLM encoder (states trimmed to
    each prompt's length and zero-padded), from the same start latents."""
    import copy

    from f3compile.sampling import denoise_loop

    prompt, steps = "watch the red round dot as it is heading left", 4
    start = torch.randn((1, ref.CHANNELS, 8, 8, 8), generator=torch.Generator().manual_seed(3))
    # WanPipeline asks a flow scheduler for its begin index and its sigmas, which DDIM has not: DDIM
    # starts at the first step anyway, and the sigmas only label diffusers' cache hooks (none here)
    pipe = copy.copy(ref_wan.pipeline)
    scheduler = type(ref_wan.scheduler).from_config(ref_wan.scheduler.config)
    scheduler.set_begin_index = lambda begin_index=0: None
    scheduler.sigmas = torch.zeros(steps + 1)
    pipe.register_modules(scheduler=scheduler)
    expected = pipe(prompt, negative_prompt="", latents=start.clone(), num_inference_steps=steps, guidance_scale=5.0,
                    height=16, width=16, num_frames=8, max_sequence_length=ref.TEXT_LENGTH, output_type="latent").frames
    cond, uncond = ref_wan.encode_prompts([prompt])
    scheduler = type(ref_wan.scheduler).from_config(ref_wan.scheduler.config)
    latents = denoise_loop(ref_wan.denoise, scheduler, start.clone(), cond, uncond, steps, 5.0, None)
    assert float((latents - expected).norm() / expected.norm()) < 1e-5


@pytest.mark.parametrize("which", ["ref-latte", "ref-wan"])
def test_runtime_generates_what_the_eager_model_samples(which, request, tmp_path):
    from f3compile.compiler.compile import compile_to_dir
    from f3compile.runtime import Runtime
    from f3compile.sampling import denoise_loop, initial_latents

    model = request.getfixturevalue(which.replace("-", "_"))
    manifest = compile_to_dir(model, None, tmp_path / "build")
    assert manifest["decoder"] == {"kind": "pixel_shuffle", "factor": 2, "range": [-1, 1]}
    assert "vae" not in manifest["components"]
    runtime = Runtime(tmp_path / "build")
    latents = runtime.generate("a red circle moving left", seed=4, steps=4, guidance_scale=5.0)
    cond, uncond = model.encode_prompts(["a red circle moving left"])
    generator = torch.Generator().manual_seed(4)
    scheduler = type(model.scheduler).from_config(model.scheduler.config)
    expected = denoise_loop(model.denoise, scheduler, initial_latents(latents.shape, scheduler, generator),
                            cond, uncond, 4, 5.0, generator)
    assert torch.allclose(latents, expected, rtol=1e-4, atol=1e-5)
    frames = runtime.decode(latents)
    assert frames.shape == (1, 8, 16, 16, 3)
    assert torch.equal(frames, ref.unpack(latents))


def test_manifest_rejects_a_malformed_decoder(ref_latte, tmp_path):
    import json

    from f3compile.compiler.compile import compile_to_dir
    from f3compile.manifest import load_manifest

    compile_to_dir(ref_latte, None, tmp_path / "build")
    path = tmp_path / "build" / "manifest.json"
    data = json.loads(path.read_text())
    data["decoder"] = {"kind": "pixel_shuffle", "factor": "2"}
    path.write_text(json.dumps(data))
    with pytest.raises(F3Error, match="decoder must be"):
        load_manifest(tmp_path / "build")
