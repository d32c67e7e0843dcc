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


@pytest.mark.parametrize("name", ["ref-unet3d", "ref-latte", "probe"])
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


def test_runtime_generates_what_the_eager_model_samples(ref_latte, tmp_path):
    from f3compile.compiler.compile import compile_to_dir
    from f3compile.runtime import Runtime
    from f3compile.sampling import denoise_loop, initial_latents

    manifest = compile_to_dir(ref_latte, None, tmp_path / "build")
    assert manifest["decoder"] == {"kind": "pixel_shuffle", "factor": 2, "range": [-1, 1]}
    assert "vae" not in manifest["components"]
    runtime = Runtime(tmp_path / "build")
    latents = runtime.generate("a red circle moving left", seed=4, steps=4, guidance_scale=5.0)
    cond, uncond = ref_latte.encode_prompts(["a red circle moving left"])
    generator = torch.Generator().manual_seed(4)
    scheduler = type(ref_latte.scheduler).from_config(ref_latte.scheduler.config)
    expected = denoise_loop(ref_latte.denoise, scheduler, initial_latents(latents.shape, scheduler, generator),
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
