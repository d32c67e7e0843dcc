"""The denoising loop, written once: classifier-free guidance around any `denoise` function.

It follows the diffusers text-to-video pipelines step for step (same latents from the same
generator, same scheduler calls), so that calibration, generation and the deployed runtime all
see exactly the trajectory the original pipeline would produce.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch

DenoiseFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


NATIVE = "B,C,F,H,W"  # the layout of every program's sample here


def to_native(x: torch.Tensor, layout: str) -> torch.Tensor:
    """(B, C, F, H, W) -> the pipeline's own latent layout (CogVideoX: (B, F, C, H, W))."""
    return x if layout == NATIVE else x.permute(0, 2, 1, 3, 4)


def from_native(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x if layout == NATIVE else x.permute(0, 2, 1, 3, 4)


# families whose pipelines give the scheduler their own sigmas (a function of the step count) instead of
# calling `set_timesteps(steps)`: HunyuanVideo 1.5 samples on linspace(1, 0, n + 1)[:-1], shifted by the scheduler
def _linear_sigmas(steps: int):
    import numpy as np

    return np.linspace(1.0, 0.0, steps + 1)[:-1]


FAMILY_SIGMAS = {"hunyuanvideo15": _linear_sigmas}


def set_timesteps(scheduler, steps: int, device=None, family: str | None = None) -> None:
    """`scheduler.set_timesteps` as `family`'s pipeline calls it (with its own sigmas where it has them)."""
    rule = FAMILY_SIGMAS.get(family)
    if rule is None:
        scheduler.set_timesteps(steps, device=device)
    else:
        scheduler.set_timesteps(sigmas=rule(steps), device=device)


def initial_latents(shape: tuple[int, ...], scheduler, generator: torch.Generator, layout: str = NATIVE) -> torch.Tensor:
    """Gaussian latents scaled by the scheduler's initial sigma (as `prepare_latents` does), drawn in
    the pipeline's own `layout` so that a seed gives the pipeline's noise; returned (B, C, F, H, W)."""
    native = tuple(to_native(torch.empty(shape, device="meta"), layout).shape)
    noise = torch.randn(native, generator=generator, dtype=torch.float32) * initial_sigma(scheduler)
    return from_native(noise, layout).contiguous()


def initial_sigma(scheduler) -> float:
    """What `prepare_latents` scales the first latents by: the scheduler's `init_noise_sigma`, 1 for
    flow-matching samplers that have none (their pipelines do not scale: `models.schedulers`)."""
    return getattr(scheduler, "init_noise_sigma", 1.0)


def read_latents(path) -> torch.Tensor:
    """Starting latents (B, C, F, h, w) from a file, as float32: a ``.pt`` tensor (read with
    ``torch.load(weights_only=True)``, e.g. Tune-A-Video's DDIM-inverted ``inv_latents/*.pt``) or a
    safetensors file holding exactly one tensor (what ``generate --save-latents`` writes)."""
    from pathlib import Path

    from .errors import F3Error

    path = Path(path)
    if not path.is_file():
        raise F3Error(f"--latents {path} does not exist; pass a .pt or .safetensors file holding one latent tensor")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = list(load_file(str(path)).values())
            if len(tensors) != 1:
                raise F3Error(f"--latents {path} holds {len(tensors)} tensors; save exactly one")
            latents = tensors[0]
        else:
            latents = torch.load(str(path), map_location="cpu", weights_only=True)
    except F3Error:
        raise
    except Exception as exc:  # not a tensor file, truncated, or pickled objects weights_only refuses
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise F3Error(f"--latents {path} is not a readable tensor file ({reason}); "
                      "save one tensor with torch.save or safetensors") from None
    if not isinstance(latents, torch.Tensor) or latents.ndim != 5 or not latents.is_floating_point():
        shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise F3Error(f"--latents {path} must hold one floating-point (B, C, F, h, w) tensor, got {shape}")
    latents = latents.float()
    if not torch.isfinite(latents).all():
        raise F3Error(f"--latents {path} contains NaN or inf; pass finite latents")
    return latents


def start_latents(given: torch.Tensor | None, shape: tuple[int, ...], scheduler, generator: torch.Generator,
                  layout: str = NATIVE) -> torch.Tensor:
    """The loop's first latents: Gaussian noise, or `given` (batch 1 repeated, or one row per
    prompt) scaled by the scheduler's initial sigma as `prepare_latents` does with user latents."""
    if given is None:
        return initial_latents(shape, scheduler, generator, layout)
    check_latents(given, shape)
    return given.float().expand(shape).clone() * initial_sigma(scheduler)


def check_latents(given: torch.Tensor, shape: tuple[int, ...]) -> None:
    """Refuse starting latents that do not fit `shape` (batch 1 is repeated for every prompt)."""
    from .errors import F3Error

    if tuple(given.shape[1:]) != tuple(shape[1:]) or given.shape[0] not in (1, shape[0]):
        batch = "batch 1" if shape[0] == 1 else f"batch 1 or {shape[0]}"
        raise F3Error(f"--latents has shape {tuple(given.shape)}; these videos start from {tuple(shape)} "
                      f"({batch}): match --frames/--height/--width to the latents")


def _step_kwargs(scheduler, generator: torch.Generator, eta: float) -> dict:
    params = set(inspect.signature(scheduler.step).parameters)
    kwargs = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs


@dataclass
class StepState:
    """Where a sampling loop stands before one step: what `guided_step` needs to take that step
    again on its own (the scheduler as it was, with its multistep history; CogVideoX's previous x0)."""

    index: int
    timestep: torch.Tensor
    latents: torch.Tensor
    scheduler: object
    previous_x0: torch.Tensor | None


@torch.no_grad()
def guided_step(fn: DenoiseFn, state: StepState, timesteps, cond: torch.Tensor, uncond: torch.Tensor | None,
                guidance_scale: float, step_kwargs: dict, layout: str = NATIVE, condition: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One step of the loop from `state` (its scheduler is stepped in place): classifier-free guidance
    around `fn`, then the scheduler's step. Returns the next latents and CogVideoX's x0. `condition`
    (B, C', F, h, w): an image-to-video model's condition latents, appended to the latents' channels
    of every call (both halves of the CFG batch), as `WanImageToVideoPipeline` does; or an object
    whose `blend(latents)` gives each call's input and the loop's result (`wan_i2v.FirstFrame`)."""
    scheduler, latents, t, index = state.scheduler, state.latents, state.timestep, state.index
    cfg = guidance_scale > 1.0 and uncond is not None
    context = torch.cat([uncond, cond]) if cfg else cond
    model_input = torch.cat([latents] * 2) if cfg else latents
    if hasattr(scheduler, "scale_model_input"):  # flow-matching Euler has none (and needs none)
        model_input = scheduler.scale_model_input(model_input, t)
    if hasattr(condition, "blend"):  # in place of latents (Wan2.2 TI2V's first frame: `wan_i2v.FirstFrame`)
        model_input = condition.blend(model_input)
    elif condition is not None:
        condition = condition.to(model_input.device, model_input.dtype)
        model_input = torch.cat([model_input, condition.repeat(model_input.shape[0] // condition.shape[0], 1, 1, 1, 1)],
                                dim=1)
    timestep = torch.full((model_input.shape[0],), float(t), dtype=torch.float32, device=model_input.device)
    noise_pred = fn(model_input, timestep, context)
    if cfg:
        noise_uncond, noise_text = noise_pred.chunk(2)
        noise_pred = noise_uncond + guidance_scale * (noise_text - noise_uncond)
    noise_pred, latents = to_native(noise_pred, layout), to_native(latents, layout)
    # CogVideoX's DPM solver steps from the previous step's x0 prediction and timestep as well
    if type(scheduler).__name__ == "CogVideoXDPMScheduler":
        latents, previous_x0 = scheduler.step(noise_pred, state.previous_x0, t, timesteps[index - 1] if index else None,
                                              latents, **step_kwargs, return_dict=False)
    else:
        latents, previous_x0 = scheduler.step(noise_pred, t, latents, **step_kwargs, return_dict=False)[0], None
    return from_native(latents, layout), previous_x0


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
    layout: str = NATIVE,
    on_state: Callable[[StepState], None] | None = None,
    condition: torch.Tensor | None = None,
    family: str | None = None,
) -> torch.Tensor:
    """Run `steps` denoising steps from `latents` (B, C, F, h, w); return the final latents.

    `on_step(i, t)` is called before step i; `denoise_for(t)` may pick a different denoise
    function per timestep (stage switching); `on_state(state)` sees where the loop stands before
    each step (the search copies what it needs to take that step again); `condition`: an
    image-to-video model's condition latents (`guided_step`); `family`: the model family, whose
    pipeline may set the schedule its own way (`set_timesteps`). The scheduler steps in the
    pipeline's own `layout`, where a stochastic step draws its noise (CogVideoX's DPM solver), so a
    seed gives the pipeline's result.
    """
    set_timesteps(scheduler, steps, latents.device, family)
    step_kwargs = _step_kwargs(scheduler, generator, eta)
    previous_x0 = None
    timesteps = scheduler.timesteps
    for index, t in enumerate(timesteps):
        if on_step is not None:
            on_step(index, t)
        state = StepState(index, t, latents, scheduler, previous_x0)
        if on_state is not None:
            on_state(state)
        fn = denoise_for(int(t)) if denoise_for is not None else denoise  # stage switching
        latents, previous_x0 = guided_step(fn, state, timesteps, cond, uncond, guidance_scale, step_kwargs, layout,
                                           condition)
    return condition.blend(latents) if hasattr(condition, "blend") else latents
