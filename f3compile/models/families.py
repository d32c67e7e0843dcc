"""Per-architecture glue: how each family's denoiser is called and how prompts are encoded.

This is the only place that knows the calling conventions of the diffusers classes; discovery,
calibration and the compiler passes work from `VideoModel` alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from . import cogvideox, hunyuan15, wan
from .components import hashed_embeddings


def _timesteps(timestep: torch.Tensor | float, batch: int, device: torch.device) -> torch.Tensor:
    # (B,) float32: the exported signature; diffusers' sinusoidal embeddings cast to float anyway.
    timestep = torch.as_tensor(timestep, device=device).reshape(-1).to(torch.float32)
    return timestep.expand(batch)


def _denoise_unet3d(denoiser: nn.Module, sample, timestep, encoder_hidden_states):
    # sample (B, C, F, h, w); encoder_hidden_states (B, L, D)
    t = _timesteps(timestep, sample.shape[0], sample.device)
    return denoiser(sample, t, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]


def _denoise_animatediff(denoiser: nn.Module, sample, timestep, encoder_hidden_states):
    # UNetMotionModel wants the text embeddings per frame: (B, L, D) -> (B*F, L, D)
    frames = sample.shape[2]
    t = _timesteps(timestep, sample.shape[0], sample.device)
    per_frame = encoder_hidden_states.repeat_interleave(frames, dim=0)
    return denoiser(sample, t, encoder_hidden_states=per_frame, return_dict=False)[0]


def _denoise_latte(denoiser: nn.Module, sample, timestep, encoder_hidden_states):
    t = _timesteps(timestep, sample.shape[0], sample.device)
    out = denoiser(
        hidden_states=sample,
        encoder_hidden_states=encoder_hidden_states,
        timestep=t,
        enable_temporal_attentions=True,
        return_dict=False,
    )[0]
    # Latte predicts [eps; learned variance] along channels; the sampling loop uses eps.
    channels = sample.shape[1]
    return out[:, :channels] if out.shape[1] == 2 * channels else out


def _encoder_device(pipe) -> torch.device:
    """Where the text encoder's weights are (the CPU unless a caller moved it); embeddings come back on the CPU."""
    return next(pipe.text_encoder.parameters()).device


def _encode_clip_like(model, prompts: list[str], negative: list[str]):
    pipe = model.pipeline
    cond, uncond = pipe.encode_prompt(
        prompts, device=_encoder_device(pipe), num_images_per_prompt=1,
        do_classifier_free_guidance=True, negative_prompt=negative,
    )
    return cond.cpu(), uncond.cpu()


def _encode_latte(model, prompts: list[str], negative: list[str]):
    pipe = model.pipeline
    cond, uncond = pipe.encode_prompt(
        prompts, do_classifier_free_guidance=True, negative_prompt=negative,
        num_images_per_prompt=1, device=_encoder_device(pipe), clean_caption=False, mask_feature=False,
    )
    return cond.cpu(), uncond.cpu()


def encode_with_pipeline(model, prompts: list[str], negative: list[str]):
    """(cond, uncond) exactly as the pipeline's own `encode_prompt` makes them at the model's text
    length (Wan: cleaned, trimmed, zero-padded UMT5 states; CogVideoX: T5 states, no mask)."""
    pipe = model.pipeline
    cond, uncond = pipe.encode_prompt(prompts, negative_prompt=negative, do_classifier_free_guidance=True,
                                      num_videos_per_prompt=1, max_sequence_length=model.text_length,
                                      device=_encoder_device(pipe))
    return cond.float().cpu(), uncond.float().cpu()


def _encode_hashed(model, prompts: list[str], negative: list[str]):
    """Bare denoisers have no text encoder: each prompt maps to a fixed pseudo-random embedding
    (seeded by its sha256), so calibration still sees distinct, reproducible conditions."""
    return (hashed_embeddings(prompts, model.text_length, model.text_dim),
            hashed_embeddings(negative, model.text_length, model.text_dim))


@dataclass(frozen=True)
class Family:
    name: str
    denoiser_class: str
    pipeline_class: str
    denoise: Callable
    encode: Callable


FAMILIES: dict[str, Family] = {
    "unet3d": Family("unet3d", "UNet3DConditionModel", "TextToVideoSDPipeline", _denoise_unet3d, _encode_clip_like),
    "animatediff": Family("animatediff", "UNetMotionModel", "AnimateDiffPipeline", _denoise_animatediff, _encode_clip_like),
    "latte": Family("latte", "LatteTransformer3DModel", "LattePipeline", _denoise_latte, _encode_latte),
    # Tune-A-Video calls its UNet "UNet3DConditionModel" too; loading tells it apart by its keys
    "tuneavideo": Family("tuneavideo", "TuneAVideoUNet", "TuneAVideoPipeline", _denoise_unet3d, _encode_clip_like),
    "wan": Family("wan", "WanTransformer3DModel", "WanPipeline", wan.denoise, encode_with_pipeline),
    "cogvideox": Family("cogvideox", "CogVideoXTransformer3DModel", "CogVideoXPipeline", cogvideox.denoise,
                        encode_with_pipeline),
    # its denoise needs the context's packing, bound when a model is loaded
    "hunyuanvideo15": Family("hunyuanvideo15", hunyuan15.DENOISER_CLASS, hunyuan15.PIPELINE_CLASS, hunyuan15.denoise,
                             hunyuan15.encode),
}

BY_DENOISER_CLASS = {family.denoiser_class: family for family in FAMILIES.values()}
BY_PIPELINE_CLASS = {family.pipeline_class: family for family in FAMILIES.values()}
BY_PIPELINE_CLASS["WanImageToVideoPipeline"] = FAMILIES["wan"]  # image-to-video: `wan_i2v`
BY_PIPELINE_CLASS[hunyuan15.I2V_PIPELINE_CLASS] = FAMILIES["hunyuanvideo15"]  # its image: `hunyuan15.encode_images`
encode_hashed = _encode_hashed
