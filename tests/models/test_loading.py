import json

import pytest
import torch

from f3compile import F3Error
from f3compile.models import load_model
from f3compile.sampling import denoise_loop, initial_latents
from tests.helpers import TINY


@pytest.mark.parametrize("name", TINY)
def test_builtin_denoise_shape_and_determinism(models, name):
    model = models[name]
    sample, timestep, ehs = model.example_inputs()
    out = model.denoise(sample, timestep, ehs)
    assert out.shape == sample.shape
    assert model.fingerprint == load_model(f"builtin:{name}").fingerprint  # built deterministically


@pytest.mark.parametrize("name", TINY)
def test_saved_pipeline_directory_loads_back_identically(models, name, tmp_path):
    model = models[name]
    model.pipeline.save_pretrained(tmp_path / "pipe")
    assert json.loads((tmp_path / "pipe" / "model_index.json").read_text())["_class_name"] == model.info["pipeline_class"]
    loaded = load_model(str(tmp_path / "pipe"))
    assert loaded.family == model.family
    assert loaded.fingerprint == model.fingerprint
    inputs = model.example_inputs()
    assert torch.equal(loaded.denoise(*inputs), model.denoise(*inputs))
    cond_a, _ = loaded.encode_prompts(["a red circle"])
    cond_b, _ = model.encode_prompts(["a red circle"])
    assert torch.equal(cond_a, cond_b)


def test_bare_denoiser_directory(models, tmp_path):
    model = models["tiny-unet3d"]
    model.denoiser.save_pretrained(tmp_path / "unet")
    loaded = load_model(str(tmp_path / "unet"))
    assert loaded.family == "unet3d" and loaded.pipeline is None
    cond, uncond = loaded.encode_prompts(["a", "b"])
    assert cond.shape == (2, loaded.text_length, loaded.text_dim)
    assert not torch.equal(cond[0], cond[1])  # distinct prompts, distinct embeddings


@pytest.mark.parametrize("name", TINY)
def test_sampling_loop_reproduces_the_diffusers_pipeline(models, name):
    model, pipe, shapes = models[name], models[name].pipeline, models[name].shapes
    kwargs = {"video_length": shapes.frames, "clean_caption": False, "mask_feature": False} if name == "tiny-latte" \
        else {"num_frames": shapes.frames}
    reference = pipe(prompt=["a red circle"], num_inference_steps=3, height=shapes.height, width=shapes.width,
                     output_type="latent", generator=torch.Generator().manual_seed(5), guidance_scale=7.5, **kwargs).frames
    cond, uncond = model.encode_prompts(["a red circle"])
    generator = torch.Generator().manual_seed(5)
    latents = initial_latents(model.latent_shape(shapes), model.scheduler, generator)
    ours = denoise_loop(model.denoise, model.scheduler, latents, cond, uncond, 3, 7.5, generator)
    assert torch.equal(ours, reference)


@pytest.mark.parametrize("spec, message", [
    ("builtin:nope", "unknown builtin model"),
    ("/definitely/not/here", "does not exist"),
    ("someorg/not-cached-model", "nor in the local Hugging Face cache"),
])
def test_unresolvable_specs(spec, message, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(F3Error, match=message):
        load_model(spec)


def test_directory_without_model_files(tmp_path):
    with pytest.raises(F3Error, match="neither model_index.json"):
        load_model(str(tmp_path))
