"""Tune-A-Video: published state-dict keys, numerics against an independent reference, checkpoint
directories in the published layout, discovery, and the whole CLI on such a directory."""

from __future__ import annotations

import json

import pytest
import torch

from f3compile import F3Error
from f3compile.models import find_temporal_units, load_model
from f3compile.models.tuneavideo import TEMPORAL_KEYS, TuneAVideoUNet, save_pipeline, save_unet

from tests.helpers import assert_one_line_error, rel, run
from .tuneavideo_reference import reference_forward

REL_REFERENCE = 1e-5  # our module vs the independent functional reference (fp32)
SD_V1 = dict(  # Stable Diffusion v1's UNet config at 1/10 width (the published layout, 4 levels)
    block_out_channels=(32, 64, 128, 128), layers_per_block=2, cross_attention_dim=64, attention_head_dim=8,
    norm_num_groups=8, sample_size=8,
    down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
    up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3,
)
# the 16 transformer blocks that carry attn_temp in the SD v1 layout
TEMPORAL_BLOCKS = ([f"down_blocks.{i}.attentions.{j}" for i in range(3) for j in range(2)] + ["mid_block.attentions.0"]
                   + [f"up_blocks.{i}.attentions.{j}" for i in range(1, 4) for j in range(3)])


def random_state(unet: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Every tensor of `unet` drawn at random (norm affines around 1/0, attn_temp's output non-zero)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in unet.state_dict().items():
        noise = torch.randn(value.shape, generator=generator)
        if "norm" in key.rsplit(".", 1)[0].rsplit(".", 1)[-1] and key.endswith("weight"):
            state[key] = 1.0 + 0.1 * noise
        else:
            state[key] = noise * (0.1 if key.endswith("bias") else max(value[0].numel(), 1) ** -0.5)
    return state


def sd_v1_published_keys() -> dict[str, tuple]:
    """Keys and shapes of SD v1's UNet2DConditionModel (diffusers' own class) + Tune-A-Video's 112."""
    from diffusers import UNet2DConditionModel

    unet2d = UNet2DConditionModel(
        block_out_channels=SD_V1["block_out_channels"], layers_per_block=2, cross_attention_dim=64,
        attention_head_dim=8, norm_num_groups=8, sample_size=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    keys = {k: tuple(v.shape) for k, v in unet2d.state_dict().items()}
    assert len(keys) == 686  # SD v1's UNet2DConditionModel
    for block in TEMPORAL_BLOCKS:
        channels = keys[f"{block}.proj_in.weight"][0]
        prefix = f"{block}.transformer_blocks.0."
        for name in ("to_q", "to_k", "to_v"):
            keys[f"{prefix}attn_temp.{name}.weight"] = (channels, channels)
        keys[f"{prefix}attn_temp.to_out.0.weight"] = (channels, channels)
        for name in ("attn_temp.to_out.0.bias", "norm_temp.weight", "norm_temp.bias"):
            keys[prefix + name] = (channels,)
    return keys


def test_state_dict_is_the_published_key_list():
    published = sd_v1_published_keys()
    ours = {k: tuple(v.shape) for k, v in TuneAVideoUNet(**SD_V1).state_dict().items()}
    assert len(published) == 798
    assert set(ours) == set(published)
    assert ours == published  # every shape too: 4-D convolution weights under SD's names
    assert sum(k.endswith(tuple(TEMPORAL_KEYS)) for k in ours) == 16 * len(TEMPORAL_KEYS)


@pytest.mark.parametrize("weights", ["bin", "safetensors"])
def test_a_published_checkpoint_loads_with_no_missing_or_unexpected_key(tmp_path, weights):
    published = sd_v1_published_keys()
    generator = torch.Generator().manual_seed(3)
    state = {k: torch.randn(shape, generator=generator) for k, shape in sorted(published.items())}
    unet_dir = tmp_path / "unet"
    unet_dir.mkdir()
    config = {"_class_name": "UNet3DConditionModel", "_diffusers_version": "0.11.1", "mid_block_type": "UNetMidBlock3DCrossAttn",
              "in_channels": 4, "out_channels": 4, "center_input_sample": False, "flip_sin_to_cos": True,
              "freq_shift": 0, "downsample_padding": 1, "mid_block_scale_factor": 1, "act_fn": "silu", "norm_eps": 1e-5,
              "dual_cross_attention": False, "use_linear_projection": False, "upcast_attention": False,
              **{k: list(v) if isinstance(v, tuple) else v for k, v in SD_V1.items()}}
    (unet_dir / "config.json").write_text(json.dumps(config))
    if weights == "bin":
        torch.save(state, unet_dir / "diffusion_pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        save_file(state, str(unet_dir / "diffusion_pytorch_model.safetensors"))
    model = load_model(str(unet_dir))  # a bare unet/ directory, recognised by its keys
    assert model.family == "tuneavideo" and model.info["denoiser_class"] == "TuneAVideoUNet"
    loaded = model.denoiser.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)


@pytest.mark.parametrize("variant", ["tiny", "linear-projection", "odd-size"])
def test_numerics_match_the_independent_reference(variant):
    config = dict(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=16, attention_head_dim=(2, 4),
                  norm_num_groups=8, down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                  up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"))
    size = (8, 8)
    if variant == "linear-projection":
        config["use_linear_projection"] = True
    if variant == "odd-size":  # not a multiple of the down factor: the upsampler is given the skip's size
        config.update(block_out_channels=(32, 32, 64), attention_head_dim=2, layers_per_block=2,
                      down_block_types=("CrossAttnDownBlock3D",) * 2 + ("DownBlock3D",),
                      up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 2)
        size = (6, 10)
    unet = TuneAVideoUNet(**config).eval()
    state = random_state(unet, seed=5)
    unet.load_state_dict(state)
    generator = torch.Generator().manual_seed(7)
    sample = torch.randn((2, 4, 5, *size), generator=generator)
    timestep = torch.tensor([999.0, 261.0])
    text = torch.randn((2, 7, 16), generator=generator)
    with torch.no_grad():
        ours = unet(sample, timestep, encoder_hidden_states=text, return_dict=False)[0]
        expected = reference_forward(state, dict(unet.config), sample, timestep, text)
    assert ours.shape == expected.shape == (2, 4, 5, *size)
    assert rel(ours, expected) <= REL_REFERENCE
    # the temporal attention does work here: without it the output differs
    without = {k: (torch.zeros_like(v) if ".attn_temp.to_out" in k else v) for k, v in state.items()}
    with torch.no_grad():
        assert rel(reference_forward(without, dict(unet.config), sample, timestep, text), expected) > 1e-3


def test_discovery_finds_the_16_temporal_attentions_and_nothing_else():
    model = load_model("builtin:arch-tuneavideo,width-scale=0.1")
    units = find_temporal_units(model)
    assert [u.id for u in units] == [f"{b}.transformer_blocks.0.attn_temp" for b in TEMPORAL_BLOCKS]
    assert all(u.block == u.id for u in units)  # no module holds attn_temp alone: it is its own block
    assert all(u.heads == 8 and u.frames == 8 for u in units)
    assert {u.channels for u in units} == {32, 64, 128}


def test_modelscope_and_tuneavideo_directories_are_told_apart_by_keys(tmp_path):
    from f3compile.models.loading import build_builtin

    pipe, _ = build_builtin("tiny-unet3d")
    pipe.unet.save_pretrained(tmp_path / "modelscope")  # also says "UNet3DConditionModel"
    assert load_model(str(tmp_path / "modelscope")).family == "unet3d"
    tav, _ = build_builtin("tiny-tuneavideo")
    save_unet(tav.unet, tmp_path / "tav")
    assert json.loads((tmp_path / "tav" / "config.json").read_text())["_class_name"] == "UNet3DConditionModel"
    assert load_model(str(tmp_path / "tav")).family == "tuneavideo"


def test_broken_checkpoints_fail_with_one_line(tmp_path, capsys):
    from f3compile.models.loading import build_builtin

    pipe, _ = build_builtin("tiny-tuneavideo")
    save_unet(pipe.unet, tmp_path / "unet", safetensors=False)
    state = torch.load(tmp_path / "unet" / "diffusion_pytorch_model.bin", weights_only=True)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a dog\n")
    key = "mid_block.attentions.0.transformer_blocks.0.norm_temp.bias"
    missing = tmp_path / "missing"
    save_unet(pipe.unet, missing, safetensors=False)
    torch.save({k: v for k, v in state.items() if k != key}, missing / "diffusion_pytorch_model.bin")
    code, _, err = run(capsys, "calibrate", missing, "--prompts", prompts, "-o", tmp_path / "c")
    assert_one_line_error(code, err, f"1 missing (first: {key})")

    class Payload:  # a pickle that would run code when unpickled without weights_only
        def __reduce__(self):
            return (print, ("unpickled",))

    hostile = tmp_path / "hostile"
    save_unet(pipe.unet, hostile, safetensors=False)
    torch.save({**state, "extra": Payload()}, hostile / "diffusion_pytorch_model.bin")
    code, out, err = run(capsys, "calibrate", hostile, "--prompts", prompts, "-o", tmp_path / "c")
    assert code == 2 and "unpickled" not in out  # refused, never executed
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
def test_published_directory_through_the_whole_cli(tmp_path, capsys):
    """save_pretrained layout (SD v1 UNet at small width, pickle UNet weights, fp16 DDIM-inverted
    latents) -> calibrate -> plan -> inspect -> export (which compiles) -> generate."""
    from f3compile.models.components import preset_vae, randomize_temporal_outputs, text_encoder as preset_text
    from f3compile.models.tuneavideo import TuneAVideoPipeline
    from diffusers import DDIMScheduler

    torch.manual_seed(0)
    unet = TuneAVideoUNet(**{**SD_V1, "block_out_channels": (32, 32, 64, 64), "cross_attention_dim": 32}).eval()
    randomize_temporal_outputs(unet)
    tokenizer, text_encoder = preset_text(32, 77, t5=False)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    directory = tmp_path / "tune-a-video"
    save_pipeline(TuneAVideoPipeline(vae=preset_vae(), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                     scheduler=scheduler), directory, safetensors=False)
    assert (directory / "unet" / "diffusion_pytorch_model.bin").is_file()
    (directory / "inv_latents").mkdir()
    inverted = directory / "inv_latents" / "ddim_latent-3.pt"
    torch.save(torch.randn((1, 4, 8, 8, 8), generator=torch.Generator().manual_seed(1)).half(), inverted)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a man is skiing on mars\na rabbit is eating an orange\n")

    code, out, err = run(capsys, "calibrate", directory, "--prompts", prompts, "--steps", "3", "--latents", inverted,
                         "-o", tmp_path / "calib")
    assert code == 0, err
    meta = json.loads((tmp_path / "calib" / "calibration.json").read_text())
    assert meta["model"]["family"] == "tuneavideo" and len(meta["units"]) == 16
    assert meta["latents"]["shape"] == [1, 4, 8, 8, 8]
    for granularity in ("block", "attention", "head", "frame"):
        code, _, err = run(capsys, "plan", tmp_path / "calib", "--ratio", "0.5", "--granularity", granularity,
                           "--stages", "2", "-o", tmp_path / f"{granularity}.json")
        assert code == 0, err
    plan = json.loads((tmp_path / "block.json").read_text())
    assert all(len(stage["drop_blocks"]) == 8 for stage in plan["stages"])
    code, _, err = run(capsys, "plan", tmp_path / "calib", "--ratio", "0.5", "--granularity", "block",
                       "-o", tmp_path / "block-1.json")  # one stage below: every stage is a full compile
    assert code == 0, err
    code, out, err = run(capsys, "inspect", tmp_path / "block-1.json", "--model", directory)
    assert code == 0, err
    assert out.count("pruned (its own block)") == 8 and "FLOP-predicted speedup" in out
    code, _, err = run(capsys, "export", directory, "--plan", tmp_path / "block-1.json", "-o", tmp_path / "build")
    assert code == 0, err
    verified = json.loads((tmp_path / "build" / "stage0" / "verify.json").read_text())["verify"]["onnxruntime_vs_torch"]
    assert verified["passed"] and (tmp_path / "build" / "stage0" / "denoiser.pt2").is_file()
    video = tmp_path / "video.gif"
    code, out, err = run(capsys, "generate", tmp_path / "build", "--prompt", "a man is skiing on mars", "--steps", "3",
                         "--backend", "onnxruntime", "--latents", inverted, "--save-latents", tmp_path / "final.safetensors",
                         "-o", video)
    assert code == 0, err
    assert video.stat().st_size > 0 and "8 frames 64x64" in out
    # the inverted latents are the start: another seed gives the same video
    code, _, err = run(capsys, "generate", tmp_path / "build", "--prompt", "a man is skiing on mars", "--steps", "3",
                       "--backend", "onnxruntime", "--latents", inverted, "--seed", "5",
                       "--save-latents", tmp_path / "again.safetensors", "-o", tmp_path / "again.gif")
    from safetensors.torch import load_file

    assert code == 0 and torch.equal(load_file(str(tmp_path / "final.safetensors"))["latents"],
                                     load_file(str(tmp_path / "again.safetensors"))["latents"])


def test_latents_that_do_not_fit_fail_with_one_line(tmp_path, capsys, prompts_file):
    wrong = tmp_path / "wrong.pt"
    torch.save(torch.zeros((1, 4, 3, 8, 8)), wrong)
    code, _, err = run(capsys, "calibrate", "builtin:tiny-tuneavideo", "--prompts", prompts_file, "--steps", "2",
                       "--latents", wrong, "-o", tmp_path / "c")
    assert_one_line_error(code, err, "--latents has shape (1, 4, 3, 8, 8)")
    assert not (tmp_path / "c").exists()
    notes = tmp_path / "notes.pt"
    torch.save({"not": "a tensor"}, notes)
    code, _, err = run(capsys, "calibrate", "builtin:tiny-tuneavideo", "--prompts", prompts_file, "--latents", notes,
                       "-o", tmp_path / "c")
    assert_one_line_error(code, err, "must hold one floating-point (B, C, F, h, w) tensor")
    with pytest.raises(F3Error, match="does not exist"):
        from f3compile.sampling import read_latents

        read_latents(tmp_path / "absent.pt")
