"""Image-to-video: Wan (`WanImageToVideoPipeline`: Wan2.1-I2V with CLIP image tokens, Wan2.2-I2V-A14B's
two experts, Wan2.2-TI2V-5B's per-token timesteps and first-frame image, also as text-to-video through
`WanPipeline`) and HunyuanVideo 1.5 (`HunyuanVideo15ImageToVideoPipeline`: the image's latents on
channels, SigLIP states in front of the text in its joint attention): parity of dense builds with the diffusers pipeline from the same start latents and
image, the conditioning image through calibrate, plan, compile, generate and apply, and refusals."""

from __future__ import annotations

import json

import pytest
import torch

from f3compile import F3Error, api
from f3compile.models import load_model
from tests.helpers import assert_one_line_error, rel, run

PARITY = 1e-4  # relative L2 of final latents vs the diffusers pipeline, fp32
EXACT = 1e-5  # the plan applied inside the pipeline vs its compiled build
SHAPES = {"tiny-wan2.2-ti2v": (9, 64, 64)}  # its VAE is 16x in space: 3 latent frames of 2x2 tokens, as 9x32x32 elsewhere


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two conditioning images (not the video's size: the pipeline resizes them) and a JSON-lines
    prompts file naming them relative to itself."""
    from PIL import Image

    directory = tmp_path_factory.mktemp("images")
    generator = torch.Generator().manual_seed(3)
    paths = []
    for number in range(2):
        pixels = (torch.rand(40, 56, 3, generator=generator) * 255).to(torch.uint8).numpy()
        paths.append(directory / f"first-frame-{number}.png")
        Image.fromarray(pixels).save(paths[-1])
    prompts = directory / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": text, "image": path.name}) + "\n"
                               for text, path in zip(["a red circle moving left", "a blue square moving up"], paths)))
    return paths, prompts


@pytest.fixture(scope="module", params=["tiny-wan-i2v", "tiny-wan2.2-i2v", "tiny-wan2.2-ti2v", "tiny-hunyuanvideo1.5-i2v"])
def saved(request, tmp_path_factory):
    """(builtin name, its pipeline, the pipeline written with save_pretrained)."""
    from f3compile.models.loading import build_builtin

    pipe, _ = build_builtin(request.param)
    directory = tmp_path_factory.mktemp(request.param) / "pipeline"
    pipe.save_pretrained(directory)
    return request.param, pipe, directory


def _hunyuan_shape(pipe, image, frames=9):
    """The video shape HunyuanVideo15ImageToVideoPipeline picks for `image` (its aspect-ratio bucket
    at the transformer's target size): what f3compile is calibrated and built at to match it."""
    from PIL import Image

    with Image.open(image) as opened:
        height, width = pipe.video_processor.calculate_default_height_width(opened.height, opened.width,
                                                                            pipe.target_size)
    return frames, int(height), int(width)


def _pipeline_latents(pipe, image, start, steps=4, shape=(9, 32, 32)):
    from PIL import Image

    frames, height, width = shape
    given = {} if image is None else {"image": Image.open(image).convert("RGB")}
    if type(pipe).__name__ == "HunyuanVideo15ImageToVideoPipeline":  # its size is the image's; guidance its guider's
        assert shape == _hunyuan_shape(pipe, image, frames)
        import copy

        pipe = copy.copy(pipe)
        pipe.guider = pipe.guider.new(guidance_scale=5.0)
        return pipe(**given, prompt="a red circle", negative_prompt="", latents=start.clone(), num_inference_steps=steps,
                    output_type="latent", num_frames=frames).frames
    return pipe(**given, prompt="a red circle", negative_prompt="", latents=start.clone(), num_inference_steps=steps,
                guidance_scale=5.0, output_type="latent", num_frames=frames, height=height, width=width).frames


CONDITIONING = {  # builtin -> (latent channels, program sample channels, the manifest's conditioning)
    "tiny-wan-i2v": (16, 36, {"kind": "image", "channels": 20, "tokens": 17, "width": 32}),  # CLIP: 4x4 patches + 1
    "tiny-wan2.2-i2v": (16, 36, {"kind": "image", "channels": 20, "tokens": 0, "width": 0}),
    "tiny-wan2.2-ti2v": (48, 48, {"kind": "image", "channels": 0, "tokens": 0, "width": 0, "first_frame": True}),
    # the image's 4 latent channels and a mask; SigLIP: 4x4 patches, no class token
    "tiny-hunyuanvideo1.5-i2v": (4, 9, {"kind": "image", "channels": 5, "tokens": 16, "width": 16,
                                        "family": "hunyuanvideo15"}),
}


def _shape(name, pipe, images):
    return _hunyuan_shape(pipe, images[0][0]) if "hunyuan" in name else SHAPES.get(name, (9, 32, 32))


@pytest.mark.parametrize("variant", ["published", "flow-euler", "text-to-video"])
def test_dense_build_reproduces_the_pipeline(saved, images, tmp_path, variant):
    import copy

    from f3compile.options import CompileOptions, Shapes

    name, pipe, directory = saved
    shape = _shape(name, pipe, images)
    if variant == "flow-euler":  # the scheduler WanImageToVideoPipeline declares
        if name != "tiny-wan-i2v":
            pytest.skip("one image-to-video model is enough for the second sampler")
        from diffusers import FlowMatchEulerDiscreteScheduler

        pipe = copy.copy(pipe)
        pipe.register_modules(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    if variant == "text-to-video":  # TI2V-5B without an image: WanPipeline with expand_timesteps
        if name != "tiny-wan2.2-ti2v":
            pytest.skip("text-to-video with one timestep per token is Wan2.2 TI2V's")
        from diffusers import WanPipeline

        pipe = WanPipeline(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae,
                           transformer=pipe.transformer, scheduler=pipe.scheduler, expand_timesteps=True)
        pipe.set_progress_bar_config(disable=True)
    if variant != "published":
        pipe.save_pretrained(tmp_path / variant)
        directory = tmp_path / variant
    model = load_model(str(directory))
    channels, sample_channels, conditioning = CONDITIONING[name]
    image = variant != "text-to-video"
    assert (model.latent_channels, model.sample_channels) == (channels, sample_channels if image else channels)
    assert bool(model.experts) == (name == "tiny-wan2.2-i2v")
    (first, second), _ = images
    latent = (shape[0] - 1) // 4 + 1, shape[1] // model.vae_scale_factor, shape[2] // model.vae_scale_factor
    start = torch.randn(1, channels, *latent, generator=torch.Generator().manual_seed(1))
    reference = _pipeline_latents(pipe, first if image else None, start, shape=shape)
    api.compile(model, None, CompileOptions(shapes=Shapes(*shape)), output_dir=tmp_path / "build")
    runtime = api.Runtime(tmp_path / "build")
    assert runtime.manifest.get("conditioning") == (conditioning if image else None)
    ours = runtime.generate("a red circle", steps=4, guidance_scale=5.0, latents=start, image=first if image else None)
    assert rel(ours, reference) <= PARITY
    assert rel(start, reference) > 0.1  # it did denoise
    if image:
        other = runtime.generate("a red circle", steps=4, guidance_scale=5.0, latents=start, image=second)
        assert rel(other, reference) > 1e-3  # the image conditions the video


def test_image_prompts_through_every_verb(saved, images, tmp_path, capsys):
    """calibrate on JSON-lines prompts with images, a window plan and a search, compile, generate
    --image; the plan applied inside the user's pipeline equals the build; one-line refusals."""
    import f3compile as f3

    name, pipe, directory = saved
    if name not in ("tiny-wan-i2v", "tiny-hunyuanvideo1.5-i2v"):
        pytest.skip("the verbs are shared by the image-to-video layouts: walked on those with image tokens")
    (first, _), prompts = images
    calib, plan, build, video = tmp_path / "calib", tmp_path / "plan.json", tmp_path / "build", tmp_path / "v.gif"
    size = _shape(name, pipe, images)
    shape = ("--frames", size[0], "--height", size[1], "--width", size[2])
    code, out, err = run(capsys, "calibrate", directory, "--prompts", prompts, "--steps", 3, *shape, "--no-heatmaps",
                         "-o", calib)
    assert code == 0, err
    meta = json.loads((calib / "calibration.json").read_text())
    assert meta["images"]["count"] == 2 and meta["images"]["sha256"].startswith("sha256:")
    assert run(capsys, "plan", calib, "--granularity", "window", "--window", 0, "--ratio", 0.5, "--stages", 2,
               "-o", plan)[0] == 0
    wan = name == "tiny-wan-i2v"  # what the two walks share (inspect, the search, the refusals) is walked once
    if wan:
        _inspect_says_what_windows_hide_of_the_first_frame(capsys, calib, tmp_path / "w1.json")
        code, out, err = run(capsys, "plan", calib, "--search", "--prompts", prompts, "--max-error", 0.05, "--stages", 2,
                             "--actions", "window", "--search-budget", 6, "-o", tmp_path / "search.json")
        assert code == 0, err
        assert json.loads((tmp_path / "search.json").read_text())["search"]["calls"] > 0
    assert run(capsys, "compile", directory, "--plan", plan, "-o", build)[0] == 0
    code, out, err = run(capsys, "generate", build, "--prompt", "a red circle", "--image", first, "--steps", 3,
                         "-o", video)
    assert code == 0 and video.stat().st_size > 0, err

    latent = (3, size[1] // (16 if "hunyuan" in name else 8), size[2] // (16 if "hunyuan" in name else 8))
    start = torch.randn(1, CONDITIONING[name][0], *latent, generator=torch.Generator().manual_seed(2))
    applied = f3.apply(pipe, plan)
    try:
        inside = _pipeline_latents(pipe, first, start, steps=3, shape=size)
    finally:
        applied.remove()
    built = api.Runtime(build).generate("a red circle", steps=3, guidance_scale=5.0, latents=start, image=first)
    assert rel(built, inside) <= EXACT
    if not wan:
        return

    # refusals: no image for an image-to-video build or calibration, a missing image, an image for text-to-video
    code, out, err = run(capsys, "generate", build, "--prompt", "a red circle", "-o", tmp_path / "no.gif")
    assert_one_line_error(code, err, "image-to-video build")
    assert not (tmp_path / "no.gif").exists()
    text = tmp_path / "text.txt"
    text.write_text("a red circle\n")
    code, out, err = run(capsys, "calibrate", directory, "--prompts", text, "--steps", 1, *shape, "-o", tmp_path / "c2")
    assert_one_line_error(code, err, "every prompt needs an image")
    assert not (tmp_path / "c2").exists()
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"prompt": "a red circle", "image": "nowhere.png"}) + "\n")
    code, out, err = run(capsys, "calibrate", directory, "--prompts", missing, "--steps", 1, *shape, "-o", tmp_path / "c3")
    assert_one_line_error(code, err, "does not exist")
    code, out, err = run(capsys, "calibrate", "builtin:tiny-wan", "--prompts", prompts, "--steps", 1, *shape,
                         "-o", tmp_path / "c4")
    assert_one_line_error(code, err, "takes no image")
    assert not (tmp_path / "c4").exists()


def _inspect_says_what_windows_hide_of_the_first_frame(capsys, calib, plan):
    """inspect's share of the windowed heads' attention from later frames to the first (conditioning)
    frame, and the part a ±1 window hides (frames 2.. no longer see it), against the recorded sums."""
    import re

    from safetensors.torch import load_file

    assert run(capsys, "plan", calib, "--granularity", "window", "--window", 1, "--ratio", 0.5, "-o", plan)[0] == 0
    code, out, err = run(capsys, "inspect", plan)
    assert code == 0, err
    stats, windows = load_file(str(calib / "stats.safetensors")), json.loads(plan.read_text())["stages"][0]["windows"]
    for unit, heads in windows.items():
        mean = stats[f"unit/{unit}/attn"].double().sum(0) / stats[f"unit/{unit}/rows"].double().sum()  # (H, F, F)
        on_first = mean[[h for h, w in enumerate(heads) if w is not None], 1:, 0]  # windowed heads, later query frames
        given, hidden = float(on_first.mean()), float(on_first[:, 1:].sum(1).mean() / on_first.shape[1])
        line = next(line for line in out.splitlines() if line.strip().startswith(unit))
        shown = [float(x) / 100 for x in re.findall(r"([0-9.]+)%", line)]
        assert shown == pytest.approx([given, hidden], abs=6e-4) and 0 < hidden < given


def test_a_bare_image_to_video_transformer_is_refused(saved, tmp_path, capsys):
    name, _, directory = saved
    if name in ("tiny-wan2.2-ti2v", "tiny-hunyuanvideo1.5-i2v"):
        pytest.skip("a bare TI2V transformer (48 channels in and out, no image inputs) is a text-to-video one; "
                    "HunyuanVideo 1.5's text-to-video pipeline runs its image-to-video transformer too")
    code, out, err = run(capsys, "calibrate", directory / "transformer", "--prompts", __file__, "-o", tmp_path / "c")
    assert_one_line_error(code, err, "WanImageToVideoPipeline")
    assert not (tmp_path / "c").exists()


def test_an_image_encoder_of_another_width_is_refused(saved):
    """HunyuanVideo 1.5 projects the image encoder's states with its `image_embed_dim`: a pipeline
    whose encoder is another width is refused in one line when it is loaded, not when it is called."""
    import copy

    from f3compile.models.hunyuan15 import _vision
    from f3compile.models.loading import from_pipeline
    from tests.helpers import assert_one_line

    name, pipe, _ = saved
    if name != "tiny-hunyuanvideo1.5-i2v":
        pytest.skip("Wan's CLIP states are checked by the transformer's own image_dim")
    other = copy.copy(pipe)
    other.image_encoder = _vision(24, 32, 8)[1]
    with pytest.raises(F3Error, match="must be one width") as caught:
        from_pipeline(other, "pipe")
    assert_one_line(caught.value)


def test_the_i2v_14b_preset_has_the_published_configuration():
    """arch-wan2.1-i2v-14b on the meta device: Wan2.1-I2V-14B-480P-Diffusers' transformer config
    and CLIP ViT-H/14's 257 image states of 1280."""
    model = load_model("builtin:arch-wan2.1-i2v-14b", meta=True)
    config = model.denoiser.config
    assert (config.num_layers, config.num_attention_heads, config.attention_head_dim, config.ffn_dim) == (40, 40, 128, 13824)
    assert (config.in_channels, config.out_channels, config.image_dim, config.added_kv_proj_dim) == (36, 16, 1280, 5120)
    assert (model.conditioning.channels, model.conditioning.tokens, model.conditioning.width) == (20, 257, 1280)
    assert (model.shapes.frames, model.shapes.height, model.shapes.width) == (81, 480, 832)
    from f3compile.memory import published_components

    clip = published_components(model)["image_encoder"]  # what the memory report counts: ViT-H/14's vision tower
    assert round(sum(p.numel() for p in clip.parameters()) / 1e6) == 631


def test_the_ti2v_5b_preset_has_the_published_configuration():
    """arch-wan2.2-ti2v-5b on the meta device: Wan-Video/Wan2.2's ti2v_5B (30 layers, 24 heads of
    128, FFN 14336, VAE stride 4x16x16, 121 frames at 704x1280), 5.0 B parameters."""
    model = load_model("builtin:arch-wan2.2-ti2v-5b", meta=True)
    config = model.denoiser.config
    assert (config.num_layers, config.num_attention_heads, config.attention_head_dim, config.ffn_dim) == (30, 24, 128, 14336)
    assert (config.in_channels, config.out_channels, model.vae_scale_factor, model.temporal_scale) == (48, 48, 16, 4)
    assert model.conditioning.first_frame and model.pipeline.config.expand_timesteps
    assert round(sum(p.numel() for p in model.denoiser.parameters()) / 1e9, 1) == 5.0
    assert (model.shapes.frames, model.shapes.height, model.shapes.width) == (121, 704, 1280)
    from f3compile.memory import published_components

    vae = published_components(model)["vae"]  # the Wan 2.2 VAE, 2.8 GB in fp32 as published
    assert (vae.config.z_dim, vae.config.scale_factor_spatial, round(sum(p.numel() for p in vae.parameters()) / 1e6)) \
        == (48, 16, 705)


@pytest.mark.parametrize("pipeline", ["WanVACEPipeline", "WanAnimatePipeline", "LTX2Pipeline",
                                      "SkyReelsV2DiffusionForcingPipeline", "HunyuanVideoPipeline",
                                      ["WanPipeline"]])  # a class name that is not a string
def test_pipelines_f3compile_does_not_run_are_refused_naming_the_supported_ones(pipeline, tmp_path, capsys):
    """A directory of another video pipeline: one line naming the pipelines that load, exit 2, nothing
    written (before any weight is read)."""
    directory = tmp_path / "pipeline"
    directory.mkdir()
    (directory / "model_index.json").write_text(json.dumps({"_class_name": pipeline, "_diffusers_version": "0.42.1"}))
    code, out, err = run(capsys, "calibrate", directory, "--prompts", __file__, "-o", tmp_path / "calib")
    assert_one_line_error(code, err, f"holds a {pipeline!r} pipeline" if isinstance(pipeline, list)
                          else f"holds a {pipeline} pipeline; f3compile loads")
    assert "WanImageToVideoPipeline" in err and "WanPipeline" in err
    assert not (tmp_path / "calib").exists()
