"""CogVideoX (`CogVideoXTransformer3DModel` in `CogVideoXPipeline`): one joint attention over text and video.

Each `transformer_blocks.i.attn1` runs one self-attention over `cat([text, video])`: the
`max_text_seq_length` text tokens first, then the video tokens frame-major (2x2 patches of every
latent frame). Rotary embeddings (CogVideoX-5B) are applied to the video part of q and k only.
Discovery finds `attn1` as a spatiotemporal unit with a text block.

Calling convention: the normalized sample is (B, C, F, h, w) like every family here; the transformer
takes (B, F, C, h, w), so the call permutes in and out. The 3-D rotary embedding is computed from the
sample's shape exactly as `CogVideoXPipeline._prepare_rotary_positional_embeddings` does. Prompts
are T5 states of `max_text_seq_length` tokens (no attention mask; `families.encode_with_pipeline`), the schedulers are CogVideoX's
DDIM (or DPM, whose step also takes the previous prediction: `sampling.denoise_loop`), with
v-prediction, zero-terminal-SNR betas and static classifier-free guidance.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

# The published configurations (THUDM/CogVideo `CogVideoX-{2b,5b}` transformer/config.json and the
# diffusers class docs): layers, heads x head size, positions, the scheduler's SNR shift.
PUBLISHED = {
    "2b": {"num_layers": 30, "num_attention_heads": 30, "attention_head_dim": 64,
           "use_rotary_positional_embeddings": False, "snr_shift_scale": 3.0},
    "5b": {"num_layers": 42, "num_attention_heads": 48, "attention_head_dim": 64,
           "use_rotary_positional_embeddings": True, "snr_shift_scale": 1.0},
}
TEXT_DIM, TEXT_LENGTH, TIME_EMBED_DIM = 4096, 226, 512


def rotary_embedding(denoiser, frames: int, height: int, width: int, device):
    """(cos, sin) of the 3-D rotary embedding for `frames` latent frames of `height` x `width`
    latents, or None without rotary embeddings; the pipeline's own method, at latent scale."""
    if not denoiser.config.use_rotary_positional_embeddings:
        return None
    from diffusers import CogVideoXPipeline

    at_latent_scale = SimpleNamespace(vae_scale_factor_spatial=1, transformer=denoiser)
    return CogVideoXPipeline._prepare_rotary_positional_embeddings(at_latent_scale, height, width, frames, device)


def denoise(denoiser, sample, timestep, encoder_hidden_states):
    """sample (B, C, F, h, w) -> v-prediction (B, C, F, h, w)."""
    batch, _, frames, height, width = sample.shape
    t = torch.as_tensor(timestep, device=sample.device).reshape(-1).to(torch.float32).expand(batch)
    rotary = rotary_embedding(denoiser, frames, height, width, sample.device)
    out = denoiser(hidden_states=sample.permute(0, 2, 1, 3, 4), encoder_hidden_states=encoder_hidden_states,
                   timestep=t, image_rotary_emb=rotary, return_dict=False)[0]
    return out.permute(0, 2, 1, 3, 4)


def scheduler(snr_shift_scale: float = 3.0, dpm: bool = False):
    """CogVideoX's sampler: DDIM (or DPM) on zero-terminal-SNR scaled-linear betas, v-prediction."""
    from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler

    kind = CogVideoXDPMScheduler if dpm else CogVideoXDDIMScheduler
    return kind(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                clip_sample=False, set_alpha_to_one=True, steps_offset=0, prediction_type="v_prediction",
                rescale_betas_zero_snr=True, timestep_spacing="trailing", snr_shift_scale=snr_shift_scale)


def _vae(latent_channels: int = 4):
    """A small CogVideoX VAE with the published strides: 4x in time, 8x in space."""
    from diffusers import AutoencoderKLCogVideoX

    blocks = 4
    return AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * blocks,
        up_block_types=("CogVideoXUpBlock3D",) * blocks, block_out_channels=(8,) * blocks,
        latent_channels=latent_channels, layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
    ).eval()


def _text(width: int, length: int, layers: int = 2):
    from .components import t5_family_text

    return t5_family_text(width, length, layers)


def build_tiny_cogvideox():
    from diffusers import CogVideoXPipeline, CogVideoXTransformer3DModel

    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=8, text_embed_dim=32,
        num_layers=2, sample_width=8, sample_height=8, sample_frames=17, patch_size=2, temporal_compression_ratio=4,
        max_text_seq_length=16, use_rotary_positional_embeddings=True,
    ).eval()
    tokenizer, text_encoder = _text(32, 16)
    return CogVideoXPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=_vae(), transformer=transformer,
                             scheduler=scheduler())


def build_arch_cogvideox(scale: float, size: str = "2b"):
    """CogVideoX at its published depth and head count, head size times `scale`."""
    from diffusers import CogVideoXPipeline, CogVideoXTransformer3DModel

    from .presets import _width

    published = dict(PUBLISHED[size])
    shift = published.pop("snr_shift_scale")
    published["attention_head_dim"] = _width(published["attention_head_dim"], scale, 8)
    text_dim = _width(TEXT_DIM, scale, 64)
    transformer = CogVideoXTransformer3DModel(
        in_channels=16, out_channels=16, time_embed_dim=TIME_EMBED_DIM, text_embed_dim=text_dim, sample_width=90,
        sample_height=60, sample_frames=49, patch_size=2, temporal_compression_ratio=4,
        max_text_seq_length=TEXT_LENGTH, **published,
    ).eval()
    tokenizer, text_encoder = _text(text_dim, TEXT_LENGTH, layers=1)
    return CogVideoXPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=_vae(16), transformer=transformer,
                             scheduler=scheduler(shift, dpm=size == "5b"))


def vae_scales(vae) -> tuple[int, int]:
    """(temporal, spatial) compression, as `CogVideoXPipeline` derives them."""
    return int(vae.config.temporal_compression_ratio), 2 ** (len(vae.config.block_out_channels) - 1)


@torch.no_grad()
def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """(B, C, F, h, w) latents -> (B, frames, H, W, 3) in [0, 1], as `CogVideoXPipeline` decodes them."""
    video = vae.decode(latents / vae.config.scaling_factor).sample  # (B, 3, frames, H, W) in [-1, 1]
    return (video.permute(0, 2, 3, 4, 1).float() / 2 + 0.5).clamp(0, 1)


def refuse_unsupported(config, where: str) -> None:
    """Refuse, in one line, the CogVideoX variants this family does not run yet."""
    from ..errors import F3Error

    get = config.get if isinstance(config, dict) else (lambda key, default=None: getattr(config, key, default))
    if get("ofs_embed_dim") is not None or (get("in_channels") and get("out_channels")
                                            and get("in_channels") == 2 * get("out_channels")):
        raise F3Error(f"{where} is a CogVideoX image-to-video model (image latents); f3compile runs CogVideoX "
                      "text-to-video only")
    if get("patch_size_t") is not None:
        raise F3Error(f"{where} is CogVideoX 1.5 (temporal patches of {get('patch_size_t')} frames); f3compile runs "
                      "CogVideoX 1.0 (2B, 5B) only")
