"""The denoising loop, written once: classifier-free guidance around any `denoise` function.

It follows the diffusers text-to-video pipelines step for step (same latents from the same
generator, same scheduler calls), so that calibration, generation and the deployed runtime all
see exactly the trajectory the original pipeline would produce.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch

DenoiseFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def initial_latents(shape: tuple[int, ...], scheduler, generator: torch.Generator) -> torch.Tensor:
    """Gaussian latents scaled by the scheduler's initial sigma (as `prepare_latents` does)."""
    return torch.randn(shape, generator=generator, dtype=torch.float32) * scheduler.init_noise_sigma


def _step_kwargs(scheduler, generator: torch.Generator, eta: float) -> dict:
    params = set(inspect.signature(scheduler.step).parameters)
    kwargs = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs


@torch.no_grad()
def denoise_loop(
    denoise: DenoiseFn,
    scheduler,
    latents: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor | None,
    steps: int,
    guidance_scale: float,
    generator: torch.Generator,
    eta: float = 0.0,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
    denoise_for: Callable[[int], DenoiseFn] | None = None,
) -> torch.Tensor:
    """Run `steps` denoising steps from `latents` (B, C, F, h, w); return the final latents.

    `on_step(i, t)` is called before step i; `denoise_for(t)` may pick a different denoise
    function per timestep (stage switching).
    """
    scheduler.set_timesteps(steps, device=latents.device)
    cfg = guidance_scale > 1.0 and uncond is not None
    context = torch.cat([uncond, cond]) if cfg else cond
    step_kwargs = _step_kwargs(scheduler, generator, eta)
    for index, t in enumerate(scheduler.timesteps):
        if on_step is not None:
            on_step(index, t)
        model_input = torch.cat([latents] * 2) if cfg else latents
        model_input = scheduler.scale_model_input(model_input, t)
        fn = denoise_for(int(t)) if denoise_for is not None else denoise  # stage switching
        timestep = torch.full((model_input.shape[0],), float(t), dtype=torch.float32, device=model_input.device)
        noise_pred = fn(model_input, timestep, context)
        if cfg:
            noise_uncond, noise_text = noise_pred.chunk(2)
            noise_pred = noise_uncond + guidance_scale * (noise_text - noise_uncond)
        latents = scheduler.step(noise_pred, t, latents, **step_kwargs, return_dict=False)[0]
    return latents
