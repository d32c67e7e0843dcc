"""Wan 2.1 (`WanTransformer3DModel` in `WanPipeline`): full 3-D attention over frame-major video tokens.

Each transformer block `blocks.i` holds `attn1`, one self-attention over every token of every
latent frame (a Conv3d patch embedding with temporal patch 1, flattened frame-major), `attn2`, a
cross-attention to the text, and a feed-forward. Discovery finds `attn1` by behaviour as a
spatiotemporal unit; `attn2` is cross-attention and never a unit.

Calling convention: sample (B, 16, F, h, w) latents, timestep (B,), the UMT5 states (B, 512, D)
trimmed to each prompt's length and zero-padded, as `WanPipeline.encode_prompt` returns them
(`families.encode_with_pipeline`). The
VAE compresses time 4x (81 frames -> 21 latent frames) and space 8x; the pipeline draws its start
latents without scaling them and runs a flow-matching scheduler (no `scale_model_input`).

The builders make the tiny test model (`builtin:tiny-wan`) and the published architectures with
random weights (`builtin:arch-wan2.1-1.3b`, `builtin:arch-wan2.1-14b`, width-scalable).
"""

from __future__ import annotations

import torch

TEXT_LENGTH = 512  # WanPipeline's max_sequence_length: every prompt's states are zero-padded to it

# The published configurations (Wan-Video/Wan2.1 `wan/configs/wan_t2v_{1_3B,14B}.py`, the same values
# as the diffusers checkpoints' transformer/config.json): layers, heads x head size, FFN width.
PUBLISHED = {
    "1.3b": {"num_layers": 30, "num_attention_heads": 12, "attention_head_dim": 128, "ffn_dim": 8960},
    "14b": {"num_layers": 40, "num_attention_heads": 40, "attention_head_dim": 128, "ffn_dim": 13824},
}
TEXT_DIM = 4096  # UMT5-XXL
FLOW_SHIFT = 3.0  # the 480p sampling shift of the published scheduler (5.0 at 720p)


def timesteps(timestep, sample) -> torch.Tensor:
    """The step's timestep as the transformer takes it: (B,) fp32 on the sample's device."""
    return torch.as_tensor(timestep, device=sample.device).reshape(-1).to(torch.float32).expand(sample.shape[0])


def denoise(denoiser, sample, timestep, encoder_hidden_states):
    """sample (B, C, F, h, w), timestep (B,) or scalar, encoder_hidden_states (B, L, D) -> (B, C, F, h, w)."""
    t = timesteps(timestep, sample)
    return denoiser(hidden_states=sample, timestep=t, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]


def denoise_experts(denoiser, sample, timestep, encoder_hidden_states, *, boundary: float):
    """Wan 2.2's two experts (`denoiser` holds `transformer` and `transformer_2`): the first runs the
    steps with t >= boundary, the second the others, as `WanPipeline` switches them. Eager only: the
    compiler captures each expert on its own, one program per stage (`VideoModel.experts`)."""
    t = float(torch.as_tensor(timestep).reshape(-1)[0])
    expert = denoiser["transformer"] if t >= boundary else denoiser["transformer_2"]
    return denoise(expert, sample, timestep, encoder_hidden_states)


def expert_ranges(boundary_ratio: float, num_train_timesteps: int) -> dict[str, tuple[int, int]]:
    """Inclusive integer timestep ranges of the two experts (a step's timestep is compared as an
    integer when stages switch; the boundary itself belongs to the first expert)."""
    import math

    boundary = math.ceil(boundary_ratio * num_train_timesteps)
    return {"transformer": (num_train_timesteps - 1, boundary), "transformer_2": (boundary - 1, 0)}


def scheduler():
    """The published sampler: UniPC on flow-matching sigmas, shift 3 (480p)."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000,
                                   flow_shift=FLOW_SHIFT)


def _text(width: int, layers: int = 2):
    """(tokenizer, UMT5 encoder) stand-ins, `width` wide."""
    from .components import t5_family_text

    return t5_family_text(width, TEXT_LENGTH, layers, umt5=True)


def _vae():
    """A small Wan VAE with the published strides: 4x in time (two temporal downsamplings), 8x in space."""
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True]).eval()


def tiny_transformer(**overrides):
    """tiny-wan's transformer (2 layers of 4 heads x 12, text 32 wide), with `overrides` (the
    image-to-video layouts' channels and image inputs)."""
    from diffusers import WanTransformer3DModel

    config = dict(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=12, in_channels=16, out_channels=16,
                  text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True,
                  qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    return WanTransformer3DModel(**{**config, **overrides}).eval()


def arch_transformer(config: dict, text_dim: int, **extra):
    """A published Wan transformer (`config`: layers, heads, head size, FFN; `extra`: channels and
    image inputs) with the settings every published checkpoint shares."""
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(**{**dict(patch_size=(1, 2, 2), in_channels=16, out_channels=16, text_dim=text_dim,
                                           freq_dim=256, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                           eps=1e-6, rope_max_seq_len=1024), **config, **extra}).eval()


def build_tiny_wan():
    from diffusers import WanPipeline

    transformer = tiny_transformer()
    tokenizer, text_encoder = _text(32)
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=_vae(), transformer=transformer,
                       scheduler=scheduler())


def build_tiny_wan22():
    """Wan 2.2's layout on tiny-wan's sizes: a high-noise expert for t >= 875 and a low-noise one
    (`boundary_ratio` 0.875, as the published T2V-A14B pipeline), each with its own weights."""
    from diffusers import WanPipeline

    high, low = tiny_transformer(), tiny_transformer()
    tokenizer, text_encoder = _text(32)
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=_vae(), transformer=high,
                       transformer_2=low, scheduler=scheduler(), boundary_ratio=0.875)


def _scaled(size: str, scale: float) -> dict:
    from .presets import _width

    published = PUBLISHED[size]
    head_dim = _width(published["attention_head_dim"], scale, 8)  # 12 or 40 heads as published, narrower
    return dict(published, attention_head_dim=head_dim, ffn_dim=_width(published["ffn_dim"], scale, 8))


def build_arch_wan(scale: float, size: str = "1.3b"):
    """Wan2.1-T2V at its published depth and head count, channel widths times `scale`."""
    from diffusers import WanPipeline

    from .presets import _width

    config = _scaled(size, scale)
    text_dim = _width(TEXT_DIM, scale, 64)
    transformer = arch_transformer(config, text_dim)
    tokenizer, text_encoder = _text(text_dim, layers=1)
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=_vae(), transformer=transformer,
                       scheduler=scheduler())


def vae_scales(vae) -> tuple[int, int]:
    """(temporal, spatial) compression of a Wan VAE, as `WanPipeline` reads them from its config
    (Wan 2.2's VAE patches 2x2 pixels before its downsamplings: 16x in space)."""
    downsample = list(vae.config.temperal_downsample)
    config = vae.config
    return (int(config.get("scale_factor_temporal") or 2 ** sum(downsample)),
            int(config.get("scale_factor_spatial") or 2 ** len(downsample)))


@torch.no_grad()
def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """(B, 16, F, h, w) latents -> (B, frames, H, W, 3) in [0, 1], as `WanPipeline` decodes them."""
    config = vae.config
    mean = torch.tensor(config.latents_mean).view(1, config.z_dim, 1, 1, 1).to(latents)
    std = torch.tensor(config.latents_std).view(1, config.z_dim, 1, 1, 1).to(latents)
    video = vae.decode(latents * std + mean, return_dict=False)[0]  # (B, 3, frames, H, W) in [-1, 1]
    return (video.permute(0, 2, 3, 4, 1).float() / 2 + 0.5).clamp(0, 1)


def refuse_unsupported(pipe_or_config, where: str, image: bool = False) -> None:
    """Refuse, in one line, the Wan variants this family does not run (`image`: the model is loaded
    through `WanImageToVideoPipeline`, which brings the image-to-video transformers' conditioning).
    Wan2.2 TI2V (`expand_timesteps`) runs through either pipeline (`wan_i2v.denoise_per_token`)."""
    from ..errors import F3Error

    config = getattr(pipe_or_config, "config", pipe_or_config)
    get = config.get if isinstance(config, dict) else (lambda key, default=None: getattr(config, key, default))
    i2v = get("image_dim") is not None or get("added_kv_proj_dim") is not None or (
        get("in_channels") is not None and get("out_channels") is not None and get("in_channels") != get("out_channels"))
    if i2v and not image:
        raise F3Error(f"{where} is a Wan image-to-video model (image conditioning); load the WanImageToVideoPipeline "
                      "directory it belongs to, whose VAE and image encoder encode the conditioning image")
    if get("pos_embed_seq_len") is not None:
        raise F3Error(f"{where} has an image position embedding (pos_embed_seq_len: first-last-frame); f3compile runs "
                      "Wan text- and image-to-video")
