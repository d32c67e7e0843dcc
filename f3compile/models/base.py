"""The model contract every later stage works from: `VideoModel` and its temporal units."""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..errors import F3Error


@dataclass(frozen=True)
class TemporalUnit:
    """One attention module that mixes frames.

    A *temporal* unit (the factorised families) is self-attention whose sequence axis is the frame
    axis. A *spatiotemporal* unit (full 3-D attention: Wan, CogVideoX) is self-attention over every
    token of every frame: `text_tokens` text tokens first (CogVideoX; 0 for Wan), then `frames` ×
    `tokens` video tokens in frame-major order; `tokens` is 0 for a temporal unit.

    `id` is the module path inside the denoiser (stable, human-readable); `block` is the
    path of the enclosing block (temporal: the outermost module that holds only temporal
    attention; spatiotemporal: the transformer block around it), which is what `drop_blocks`
    removes and temporal reuse reuses. `frames` counts latent frames.
    """

    id: str
    block: str
    heads: int
    head_dim: int
    frames: int
    channels: int  # width of the attention's input/output
    tokens: int = 0  # spatial tokens per frame of a spatiotemporal unit; 0: a temporal unit
    text_tokens: int = 0  # text tokens before the video tokens in the same sequence (CogVideoX)

    @property
    def spatiotemporal(self) -> bool:
        return self.tokens > 0

    @property
    def sequence(self) -> int:
        """Length of the attention's sequence (temporal units: the frames)."""
        return self.text_tokens + self.frames * self.tokens if self.tokens else self.frames


def attention_scores_bytes(units, batch: int) -> int:
    """Bytes of the largest full 3-D attention's (batch, heads, N, N) fp32 scores: what a runtime
    without a fused attention kernel (onnxruntime's CPU provider) holds for one call."""
    return max((batch * u.heads * u.sequence**2 * 4 for u in units if u.spatiotemporal), default=0)


@dataclass(frozen=True)
class TemporalBlock:
    """A temporal block: pruning it makes its output equal to its input."""

    id: str
    units: tuple[str, ...]


@dataclass
class VideoShapes:
    """Shapes of one denoising call, before classifier-free guidance doubles the batch."""

    batch: int = 1
    frames: int = 8
    height: int = 64  # pixels
    width: int = 64  # pixels

    def to_dict(self) -> dict[str, int]:
        return {"batch": self.batch, "frames": self.frames, "height": self.height, "width": self.width}


class DenoiseModule(nn.Module):
    """`(sample, timestep, encoder_hidden_states) -> noise_pred` as an nn.Module.

    The denoiser is registered as the submodule ``denoiser``, so every unit id `u` appears
    in traced graphs as ``denoiser.<u>``. This is exactly the function that is exported.
    """

    PREFIX = "denoiser."

    def __init__(self, denoiser: nn.Module, call: Callable[..., torch.Tensor]):
        super().__init__()
        self.denoiser = denoiser
        self._call = call

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        return self._call(self.denoiser, sample, timestep, encoder_hidden_states)


@dataclass
class VideoModel:
    """A loaded text-to-video model, normalized across architectures.

    - `denoise(sample, timestep, encoder_hidden_states) -> noise_pred`: sample is
      (B, C, F, h, w) latents, timestep (B,) or scalar, encoder_hidden_states (B, L, D)
      for every family (AnimateDiff's per-frame repetition happens inside);
      noise_pred has the sample's shape (a learned-variance half is dropped).
    - `encode_prompts(prompts, negative)` → (cond, uncond), each (B, L, D).
    """

    spec: str
    family: str
    denoiser: nn.Module
    scheduler: Any
    text_encoder: nn.Module | None
    tokenizer: Any
    pipeline: Any  # the diffusers pipeline where there is one (VAE decode, parity checks)
    shapes: VideoShapes
    latent_channels: int
    vae_scale_factor: int
    text_length: int
    text_dim: int
    fingerprint: str
    denoise_call: Callable[..., torch.Tensor]
    encode_call: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    info: dict[str, Any] = field(default_factory=dict)

    sample_layout: str = "B,C,F,H,W"  # what the programs take and return
    native_layout: str = "B,C,F,H,W"  # the pipeline's own latents (CogVideoX: B,F,C,H,W): noise and scheduler steps
    temporal_scale: int = 1  # a VAE that compresses time: latent frames = (frames - 1) // scale + 1
    # several experts (Wan 2.2): `denoiser` holds them by name; name -> inclusive timestep range it runs
    experts: dict[str, tuple[int, int]] | None = None
    # image-to-video (`wan_i2v.ImageConditioning`): condition channels after the latents, image
    # states packed before the text states in the context; None: text only
    conditioning: Any = None
    # a context with a padding mask in its last column (HunyuanVideo 1.5's packed context): example
    # inputs mask the later rows of each part, as a tokenizer pads, instead of drawing that column
    context_mask: Callable[[torch.Tensor], torch.Tensor] | None = None
    _weights_at_fingerprint: tuple = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._weights_at_fingerprint = weights_state(self.denoiser)

    @property
    def cache_key(self) -> str | None:
        """The fingerprint and the dtype of the weights while the denoiser's weights are those it
        was computed from; None once they were edited in place or replaced (a fine-tune,
        `load_state_dict`), so that nothing compiled from the old weights is reused (`memo`). The
        dtype is part of it: one checkpoint loaded in fp32 and in bf16 has one fingerprint, but not
        the same weights to compile from."""
        if weights_state(self.denoiser) != self._weights_at_fingerprint:
            return None
        return f"{self.fingerprint}@{self.dtype}"

    def cast(self, dtype: torch.dtype) -> None:
        """The denoiser(s) and text encoder in `dtype`, in place (the modules their classes keep in
        fp32 stay fp32). The fingerprint stays that of the weights as loaded: fp16 is reached this
        way, from an fp32 load, so that its plans are those of the fp32 and bf16 loads."""
        modules = [self.denoiser[name] for name in self.experts] if self.experts else [self.denoiser]
        for module in modules + [self.text_encoder]:
            if module is not None:
                cast_weights(module, dtype)
        self._weights_at_fingerprint = weights_state(self.denoiser)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the denoiser's weights (of most of them: see `weights_dtype`)."""
        return weights_dtype(self.denoiser)

    @property
    def precision(self) -> str:
        """`dtype` by name: fp32, bf16 or fp16."""
        from ..devices import precision_of

        return precision_of(self.dtype)

    def denoise(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """noise_pred in float32 (as a build's runtime returns it); the sample and text states go in
        as the weights' dtype, as diffusers' pipelines cast them."""
        dtype = self.dtype
        if dtype == torch.float32:
            return self.denoise_call(self.denoiser, sample, timestep, encoder_hidden_states)
        out = self.denoise_call(self.denoiser, sample.to(dtype), timestep, encoder_hidden_states.to(dtype))
        return out.float()

    @contextlib.contextmanager
    def placed(self, device: torch.device | str):
        """The denoiser and text encoder on `device` while the block runs, back where they were after.
        Moving copies the weights without changing them, so a valid `cache_key` stays valid."""
        device = torch.device(device)
        if device.type == "cpu":
            yield
            return
        valid = self.cache_key is not None
        modules = [m for m in (self.denoiser, self.text_encoder) if m is not None]
        homes = [next(m.parameters()).device for m in modules]
        try:
            for module in modules:
                module.to(device)
            yield
        finally:
            for module, home in zip(modules, homes):
                module.to(home)
            if valid:
                self._weights_at_fingerprint = weights_state(self.denoiser)

    @property
    def on_meta(self) -> bool:
        """Built on the meta device: shapes without weights (FLOPs can be counted, nothing run)."""
        return any(p.is_meta for p in self.denoiser.parameters())

    def info_public(self) -> dict[str, Any]:
        """`info` without private cache entries (safe to write to JSON)."""
        return {k: v for k, v in self.info.items() if not k.startswith("_")}

    def denoise_module(self, expert: str | None = None) -> DenoiseModule:
        """The normalized call wrapped as a module (what torch.export captures); with experts, the
        one named `expert`, held at the same path as in `denoiser` (`<expert>.…`)."""
        if self.experts is None:
            return DenoiseModule(self.denoiser, self.denoise_call)
        return DenoiseModule(self.expert_holder(expert), self.expert_call)

    def expert_holder(self, expert: str, module: nn.Module | None = None) -> nn.Module:
        """A module holding only the expert `expert` (of `module`, default the denoiser) under its name."""
        holder = nn.Module()
        setattr(holder, expert, (module or self.denoiser)[expert])
        holder.f3_expert = expert
        return holder

    def expert_call(self, holder: nn.Module, sample, timestep, encoder_hidden_states):
        """The denoise call on a `DenoiseModule`'s module: the denoiser itself, or one expert's holder."""
        name = getattr(holder, "f3_expert", None)
        if name is None:
            return self.denoise_call(holder, sample, timestep, encoder_hidden_states)
        return self.info["_expert_call"](getattr(holder, name), sample, timestep, encoder_hidden_states)

    def expert_for(self, timesteps: tuple[int, int]) -> str | None:
        """The expert that runs every timestep of the inclusive range (high, low); None without experts."""
        if self.experts is None:
            return None
        high, low = timesteps
        for name, (top, bottom) in self.experts.items():
            if bottom <= low and high <= top:
                return name
        bounds = ", ".join(f"{name} {top}..{bottom}" for name, (top, bottom) in self.experts.items())
        raise F3Error(f"timesteps {high}..{low} span two experts of {self.spec} ({bounds}); plan with stages per expert")

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], negative: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        negative = negative if negative is not None else [""] * len(prompts)
        return self.encode_call(self, prompts, negative)

    def latent_frames(self, frames: int) -> int:
        """Latent frames of a `frames`-frame video (`temporal_scale` 4: 81 frames -> 21)."""
        return frames if self.temporal_scale == 1 else (frames - 1) // self.temporal_scale + 1

    def latent_shape(self, shapes: VideoShapes) -> tuple[int, int, int, int, int]:
        return (
            shapes.batch,
            self.latent_channels,
            self.latent_frames(shapes.frames),
            shapes.height // self.vae_scale_factor,
            shapes.width // self.vae_scale_factor,
        )

    @property
    def context_shape(self) -> tuple[int, int]:
        """(tokens, width) of the context input: the text states, after an image-to-video model's
        image states (`wan_i2v.pack_context`)."""
        extra = self.conditioning.tokens if self.conditioning is not None else 0
        width = max(self.text_dim, self.conditioning.width) if extra else self.text_dim
        return self.text_length + extra, width

    @property
    def sample_channels(self) -> int:
        """Channels of the programs' sample: the latents', then an image-to-video model's condition."""
        return self.latent_channels + (self.conditioning.channels if self.conditioning is not None else 0)

    def encode_conditioned(self, prompts: list[str], shapes: VideoShapes, device="cpu", negative: list[str] | None = None,
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(cond, uncond, condition): the prompts' text states and, for an image-to-video model, every
        prompt's image (`Prompt.image`, a path or a PIL image) encoded: its image states packed into
        both contexts, its condition latents (B, C', F, h, w) returned (None for text-to-video)."""
        images = self.check_images(prompts)
        cond, uncond = self.encode_prompts(list(prompts), negative)
        if self.conditioning is None:
            return cond, uncond, None
        from .wan_i2v import load_images

        condition, states = self.encode_images(load_images(images), shapes, device)
        return self.conditioning.pack(cond, states), self.conditioning.pack(uncond, states), condition

    def check_images(self, prompts: list[str]) -> list:
        """Each prompt's image (`Prompt.image`); refused in one line unless every prompt has one
        (image-to-video) or none has (text-to-video)."""
        images = [getattr(prompt, "image", None) for prompt in prompts]
        if self.conditioning is None and any(image is not None for image in images):
            raise F3Error(f"{self.spec} is a text-to-video model and takes no image; drop the \"image\" fields")
        if self.conditioning is not None and any(image is None for image in images):
            raise F3Error(f"{self.spec} is an image-to-video model: every prompt needs an image (a JSON-lines prompts "
                          "file with {\"prompt\": ..., \"image\": PATH}, or generate --image PATH)")
        return images

    def encode_images(self, images: list, shapes: VideoShapes, device="cpu") -> tuple[torch.Tensor, torch.Tensor | None]:
        """(condition, image states) of one image per video with the pipeline's own components
        (`ImageConditioning.encode`)."""
        pipe = self.pipeline
        components = {name: getattr(pipe, name, None)
                      for name in ("vae", "image_encoder", "image_processor", "feature_extractor")}
        return self.conditioning.encode(images, shapes.frames, shapes.height, shapes.width, components, device)

    def example_inputs(self, shapes: VideoShapes | None = None, cfg: bool = True, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """Random inputs of the exported signature (batch doubled when `cfg`); the sample and text
        states in the weights' dtype (drawn in fp32 and rounded: the same numbers in every precision)."""
        shapes = shapes or self.shapes
        generator = torch.Generator().manual_seed(seed)
        batch = shapes.batch * (2 if cfg else 1)
        latent = (batch, self.sample_channels) + self.latent_shape(shapes)[2:]
        sample = torch.randn(latent, generator=generator)
        timestep = torch.full((batch,), 500.0)
        ehs = torch.randn((batch,) + self.context_shape, generator=generator)
        if self.context_mask is not None:
            ehs = self.context_mask(ehs)
        dtype = self.dtype
        if dtype != torch.float32:
            sample, ehs = sample.to(dtype), ehs.to(dtype)
        if self.on_meta:
            return sample.to("meta"), timestep.to("meta"), ehs.to("meta")
        return sample, timestep, ehs


# families whose transformer blocks return video and text states: a block is never removed or reused whole
JOINT_FAMILIES = ("cogvideox", "hunyuanvideo15")


class Prompt(str):
    """A prompt with the image an image-to-video model starts its video from (`image`: a path or a
    PIL image; None for text-to-video). It is the prompt text everywhere a string is expected."""

    image: Any

    def __new__(cls, text: str, image: Any = None) -> "Prompt":
        prompt = super().__new__(cls, text)
        prompt.image = image
        return prompt

    def __reduce__(self):  # pickled (torchrun, worker processes) with its image
        return (Prompt, (str(self), self.image))


def weights_state(module: nn.Module) -> tuple:
    """(storage address, version counter) of every parameter and buffer: it changes when a weight
    is edited in place (its version counter moves) or replaced."""
    return tuple((t.data_ptr(), t._version) for t in (*module.parameters(), *module.buffers()))


def fingerprint_modules(config: dict[str, Any], *modules: torch.nn.Module | None) -> str:
    """sha256 over the denoiser config (canonical JSON) and every parameter and buffer.

    Private config keys (``_diffusers_version``, ``_use_default_values``, …) are bookkeeping,
    not architecture: a model saved and loaded back keeps its fingerprint. Floating-point tensors
    are hashed as their bf16 rounding, so one checkpoint has one fingerprint whether it was loaded
    in fp32 or in bf16 (a calibration in bf16 on a GPU fits a build in fp32). fp16 rounds
    differently (no rounding agrees with both), so `load_model` reaches fp16 by casting an fp32 load
    after fingerprinting it. Each tensor is rounded on its own device, one at a time.
    """
    public = {key: value for key, value in config.items() if not key.startswith("_")}
    digest = hashlib.sha256(json.dumps(public, sort_keys=True, default=str).encode())
    for module in modules:
        if module is None:
            continue
        for name, tensor in sorted(module.state_dict().items()):
            tensor = tensor.detach()
            kind = str(tensor.dtype)
            if tensor.is_floating_point():
                tensor, kind = tensor.to(torch.bfloat16), "float"
            digest.update(name.encode())
            digest.update(str(tuple(tensor.shape)).encode() + kind.encode())
            digest.update(tensor.contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def weights_dtype(module: nn.Module) -> torch.dtype:
    """The dtype most of `module`'s floating-point weights have (a model loaded in bf16 keeps a few
    small modules in fp32, as diffusers' `_keep_in_fp32_modules` asks); fp32 when it has none."""
    counts: dict[torch.dtype, int] = {}
    for tensor in module.parameters():
        if tensor.is_floating_point():
            counts[tensor.dtype] = counts.get(tensor.dtype, 0) + tensor.numel()
    return max(counts, key=counts.get) if counts else torch.float32


def cast_weights(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """`module` in `dtype` in place, as `from_pretrained(dtype=…)` would have loaded it: the
    submodules its class keeps in fp32 stay fp32, matched on a parameter's path components —
    diffusers keeps `_keep_in_fp32_modules` in every lower precision; transformers keeps them in
    fp16 only, and `_keep_in_fp32_modules_strict` in fp16 and bf16."""
    if hasattr(module, "_keep_in_fp32_modules_strict"):  # a transformers model
        keep = tuple(module._keep_in_fp32_modules_strict or ()) + (
            tuple(module._keep_in_fp32_modules or ()) if dtype == torch.float16 else ())
    else:
        keep = tuple(getattr(module, "_keep_in_fp32_modules", None) or ())
    module.to(dtype)
    if dtype != torch.float32 and keep:
        for name, sub in module.named_modules():
            if any(part in keep for part in name.split(".")):
                sub.to(torch.float32)
        for name, param in module.named_parameters():  # a parameter held directly (scale_shift_table)
            if name.split(".")[-1] in keep:
                param.data = param.data.float()
    return module


def resolve_shapes(model: VideoModel, frames: int | None, height: int | None, width: int | None, batch: int = 1) -> VideoShapes:
    """The model's default shapes with the given overrides, checked against the architecture."""
    shapes = VideoShapes(batch, frames or model.shapes.frames, height or model.shapes.height, width or model.shapes.width)
    for name, value in (("batch", shapes.batch), ("frames", shapes.frames), ("height", shapes.height), ("width", shapes.width)):
        if value < 1:
            raise F3Error(f"--{name} must be a positive integer, got {value}")
    if shapes.frames < 2:
        raise F3Error("--frames must be at least 2: temporal attention needs several frames")
    scale = model.temporal_scale
    if scale > 1 and (shapes.frames - 1) % scale:
        below = (shapes.frames - 1) // scale * scale + 1
        raise F3Error(f"--frames {shapes.frames} does not fit {model.spec}'s VAE, which compresses time {scale}x: "
                      f"use 1 + {scale}k frames (e.g. {below} or {below + scale})")
    if scale > 1 and model.latent_frames(shapes.frames) < 2:
        raise F3Error(f"--frames must be at least {scale + 1} for {model.spec}: attention across frames needs two latent frames")
    fixed = model.denoiser.config.get("video_length") if hasattr(model.denoiser, "config") else None
    if fixed and shapes.frames != fixed:
        raise F3Error(f"{model.spec} has a fixed temporal position embedding for {fixed} frames; use --frames {fixed}")
    config = getattr(model.denoiser, "config", None)
    patch = config.get("patch_size") if config is not None else None  # transformers' spatial patch; else 2
    patch = patch[-1] if isinstance(patch, (list, tuple)) else patch
    multiple = model.vae_scale_factor * (int(patch) if isinstance(patch, int) and patch > 0 else 2)
    for name, value in (("height", shapes.height), ("width", shapes.width)):
        if value % multiple:
            raise F3Error(f"--{name} {value} must be a multiple of {multiple} for {model.spec}")
    _check_positions(model, shapes)
    return shapes


def _denoiser_config(model: VideoModel) -> dict:
    denoiser = model.denoiser
    if model.experts:
        denoiser = denoiser[next(iter(model.experts))]
    return dict(getattr(denoiser, "config", None) or {})


def _check_positions(model: VideoModel, shapes: VideoShapes) -> None:
    """Refuse a shape whose patches outnumber the positions a rotary embedding has (Wan's
    `rope_max_seq_len` per axis), in one line, before anything runs into it."""
    config = _denoiser_config(model)
    limit = config.get("rope_max_seq_len")
    patch = config.get("patch_size")
    if model.family != "wan" or not limit or not patch:
        return
    latent = model.latent_shape(shapes)[2:]
    for (name, size, factor), step in zip((("frames", shapes.frames, model.temporal_scale),
                                           ("height", shapes.height, model.vae_scale_factor),
                                           ("width", shapes.width, model.vae_scale_factor)), patch):
        positions = latent[("frames", "height", "width").index(name)] // step
        if positions > limit:
            largest = limit * step * (factor if name != "frames" else 1)
            hint = (f"at most {(limit - 1) * factor + 1} frames" if name == "frames" and factor > 1
                    else f"at most {largest} {'frames' if name == 'frames' else 'pixels'}")
            raise F3Error(f"--{name} {size} gives {positions} positions along {name}, more than the "
                          f"{limit} {model.spec}'s rotary embedding has (rope_max_seq_len): use {hint}")


def plan_shapes(model: VideoModel, plan: Any, frames: int | None = None, height: int | None = None,
                width: int | None = None, batch: int = 1) -> VideoShapes:
    """The shapes a verb that takes a plan runs at: each one given, else the plan's calibration's
    (the shape its units were found at), else — the dense model, or a plan written before heights
    were recorded — the model's own; checked against the architecture."""
    recorded = {} if plan is None else (plan.calibration or {})
    chosen = [given or recorded.get(name) for given, name in ((frames, "frames"), (height, "height"), (width, "width"))]
    return resolve_shapes(model, *chosen, batch)


def shape_note(plan: Any, shapes: VideoShapes) -> str | None:
    """One line when `shapes` are not those the plan was calibrated at (its units were found there
    and apply at this shape too, or the verb would have refused); None when they are."""
    recorded = {} if plan is None else (plan.calibration or {})
    calibrated = tuple(recorded.get(name) for name in ("frames", "height", "width"))
    if None in calibrated or calibrated == (shapes.frames, shapes.height, shapes.width):
        return None
    return (f"at {shapes.frames}x{shapes.height}x{shapes.width}, not the {'x'.join(map(str, calibrated))} the plan "
            "was calibrated at: its units apply at both")
