"""Tune-A-Video (showlab/Tune-A-Video): its UNet rebuilt from current diffusers parts, its loader.

Tune-A-Video's checkpoints name their UNet ``UNet3DConditionModel`` but it is not diffusers' class
of that name (ModelScope's): it is Stable Diffusion v1's UNet applied per frame, with three changes,
and current diffusers cannot construct or load it. `TuneAVideoUNet` has the published state-dict
keys and computes the published equations:

- convolutions are 2-D, applied per frame (``(b c f h w) -> ((b f) c h w)``); the resnets' and
  ``conv_norm_out``'s GroupNorms run on the 5-D tensor (statistics pooled over all frames);
  samplers never resample frames;
- ``attn1`` is sparse-causal: the queries of frame i attend to the tokens of frame 0 and of frame
  max(i - 1, 0), concatenated on the token axis (spatial attention with a longer key sequence);
- after ``attn1``, ``attn2`` (text) and ``ff`` every transformer block adds
  ``attn_temp(norm_temp(x))`` over ``(b h w) f c``: self-attention over frames, no positional
  encoding, no mask: the model's temporal attention (16 units in the SD v1 layout).

Checkpoint directories are recognised by their keys (``attn_temp`` in the UNet weights), never by
the class name; ``diffusion_pytorch_model.bin`` is read with ``torch.load(weights_only=True)`` and
``.safetensors`` is preferred when both exist.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import F3Error

try:  # the diffusers base classes give `config`, `dtype` and save/load like every other denoiser
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.models.attention import FeedForward
    from diffusers.models.attention_processor import Attention
    from diffusers.models.embeddings import TimestepEmbedding, Timesteps
    from diffusers.models.modeling_utils import ModelMixin
    from diffusers.utils import BaseOutput
    from diffusers import TextToVideoSDPipeline
except ImportError as exc:  # pragma: no cover - diffusers is a hard dependency
    raise ImportError("f3compile's Tune-A-Video support needs diffusers") from exc

UNET_CLASS_NAME = "UNet3DConditionModel"  # what the published config.json says
TEMPORAL_KEYS = ("attn_temp.to_q.weight", "attn_temp.to_k.weight", "attn_temp.to_v.weight",
                 "attn_temp.to_out.0.weight", "attn_temp.to_out.0.bias", "norm_temp.weight", "norm_temp.bias")
LATENT_SCALE = 0.18215


# -- building blocks -------------------------------------------------------------------------
def _per_frame(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2-D module to every frame of (B, C, F, H, W)."""
    batch, _, frames = x.shape[:3]
    # contiguous before folding: with 1x1 feature maps a re-traced reshape can become an invalid view
    y = module(x.transpose(1, 2).contiguous().flatten(0, 1))  # (B*F, C, H, W)
    return y.reshape(batch, frames, *y.shape[1:]).transpose(1, 2)


class InflatedConv(nn.Conv2d):
    """``InflatedConv3d``: an ``nn.Conv2d`` (4-D weight, SD key names) run per frame."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _per_frame(super().forward, x)


class ResnetBlock3D(nn.Module):
    """SD's resnet with GroupNorms over the whole clip (statistics pooled over frames)."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, groups: int, eps: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = InflatedConv(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = InflatedConv(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = InflatedConv(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.conv_shortcut(x) if self.conv_shortcut is not None else x) + h


class Downsample3D(nn.Module):
    def __init__(self, channels: int, padding: int):
        super().__init__()
        self.conv = InflatedConv(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample3D(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = InflatedConv(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, ...] | None = None) -> torch.Tensor:
        if size is None:
            x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)


class SparseCausalAttnProcessor:
    """``attn1``: queries of frame i, keys and values of frame 0 ‖ frame max(i - 1, 0).

    Its sequence is 2·h·w tokens: spatial attention that reads two frames, not temporal
    attention in f3compile's sense (discovery leaves it alone).
    """

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, video_length: int | None = None) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None or video_length is None:
            raise ValueError("sparse-causal attention takes the frames' tokens and video_length only")
        rows, tokens, _ = hidden_states.shape  # (B*F, h*w, C)
        frames = int(video_length)

        def two_frames(x: torch.Tensor) -> torch.Tensor:
            x = x.reshape(rows // frames, frames, tokens, x.shape[-1])
            first = x[:, :1].expand(-1, frames, -1, -1)
            former = torch.cat([x[:, :1], x[:, :-1]], dim=1)  # frame max(i - 1, 0)
            return torch.cat([first, former], dim=2).reshape(rows, 2 * tokens, x.shape[-1])

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(rows, x.shape[1], attn.heads, -1).transpose(1, 2)

        query = heads(attn.to_q(hidden_states))
        key = heads(two_frames(attn.to_k(hidden_states)))
        value = heads(two_frames(attn.to_v(hidden_states)))
        out = F.scaled_dot_product_attention(query, key, value)
        out = out.transpose(1, 2).reshape(rows, tokens, -1).to(query.dtype)
        return attn.to_out[1](attn.to_out[0](out))


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, cross_attention_dim: int, bias: bool, upcast: bool):
        super().__init__()
        self.attn1 = Attention(query_dim=dim, heads=heads, dim_head=head_dim, bias=bias, upcast_attention=upcast,
                               processor=SparseCausalAttnProcessor())
        self.norm1 = nn.LayerNorm(dim)
        self.attn2 = Attention(query_dim=dim, cross_attention_dim=cross_attention_dim, heads=heads, dim_head=head_dim,
                               bias=bias, upcast_attention=upcast)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.norm3 = nn.LayerNorm(dim)
        self.attn_temp = Attention(query_dim=dim, heads=heads, dim_head=head_dim, bias=bias, upcast_attention=upcast)
        nn.init.zeros_(self.attn_temp.to_out[0].weight)  # as published: a new temporal layer starts as a no-op
        self.norm_temp = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, frames: int) -> torch.Tensor:
        x = self.attn1(self.norm1(x), video_length=frames) + x
        x = self.attn2(self.norm2(x), encoder_hidden_states=context) + x
        x = self.ff(self.norm3(x)) + x
        rows, tokens, channels = x.shape  # (B*F, h*w, C) -> (B*h*w, F, C)
        x = x.reshape(rows // frames, frames, tokens, channels).transpose(1, 2).contiguous().reshape(-1, frames, channels)
        x = self.attn_temp(self.norm_temp(x)) + x
        return x.reshape(rows // frames, tokens, frames, channels).transpose(1, 2).contiguous().reshape(rows, tokens, channels)


class Transformer3DModel(nn.Module):
    """Per-frame spatial transformer (norm, proj_in, one block, proj_out, residual)."""

    def __init__(self, channels: int, heads: int, cross_attention_dim: int, groups: int, linear: bool, upcast: bool):
        super().__init__()
        self.linear = linear
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels) if linear else nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(channels, heads, channels // heads, cross_attention_dim, False, upcast)])
        self.proj_out = nn.Linear(channels, channels) if linear else nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        batch, channels, frames, height, width = x.shape
        frames_first = x.transpose(1, 2).contiguous().flatten(0, 1)  # (B*F, C, H, W)
        context = context.repeat_interleave(frames, dim=0)  # text per frame
        h = self.norm(frames_first)
        if not self.linear:
            h = self.proj_in(h)
        h = h.permute(0, 2, 3, 1).reshape(batch * frames, height * width, channels)
        if self.linear:
            h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, context, frames)
        if self.linear:
            h = self.proj_out(h)
        h = h.reshape(batch * frames, height, width, channels).permute(0, 3, 1, 2)
        if not self.linear:
            h = self.proj_out(h)
        out = h + frames_first
        return out.reshape(batch, frames, channels, height, width).transpose(1, 2)


class _Level(nn.Module):
    """One down or up level: resnets, optional transformers, optional sampler."""

    def __init__(self, resnets: list[ResnetBlock3D], attentions: list[Transformer3DModel] | None,
                 sampler: nn.Module | None, up: bool):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions) if attentions else None
        if sampler is not None:
            setattr(self, "upsamplers" if up else "downsamplers", nn.ModuleList([sampler]))
        else:
            setattr(self, "upsamplers" if up else "downsamplers", None)

    def down(self, x, temb, context):
        outputs = []
        for index, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[index](x, context)
            outputs.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            outputs.append(x)
        return x, outputs

    def up(self, x, skips, temb, context, size):
        for index, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1), temb)
            if self.attentions is not None:
                x = self.attentions[index](x, context)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, size)
        return x


class MidBlock3D(nn.Module):
    def __init__(self, resnets: list[ResnetBlock3D], attentions: list[Transformer3DModel]):
        super().__init__()
        self.attentions = nn.ModuleList(attentions)
        self.resnets = nn.ModuleList(resnets)

    def forward(self, x, temb, context):
        x = self.resnets[0](x, temb)
        for attention, resnet in zip(self.attentions, self.resnets[1:]):
            x = resnet(attention(x, context), temb)
        return x


@dataclass
class TuneAVideoUNetOutput(BaseOutput):
    sample: torch.Tensor


class TuneAVideoUNet(ModelMixin, ConfigMixin):
    """Tune-A-Video's ``UNet3DConditionModel``: SD v1.x UNet per frame + sparse-causal and temporal attention.

    The constructor takes the published ``unet/config.json`` fields; `forward` follows diffusers'
    UNet calling convention ``(sample, timestep, encoder_hidden_states, return_dict)``.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        sample_size: int | None = None,
        in_channels: int = 4,
        out_channels: int = 4,
        center_input_sample: bool = False,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple[str, ...] = ("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
        mid_block_type: str = "UNetMidBlock3DCrossAttn",
        up_block_types: tuple[str, ...] = ("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3,
        only_cross_attention: bool = False,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 1280,
        attention_head_dim: int | tuple[int, ...] = 8,
        dual_cross_attention: bool = False,
        use_linear_projection: bool = False,
        class_embed_type: str | None = None,
        num_class_embeds: int | None = None,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
    ):
        super().__init__()
        _check_config(len(block_out_channels), down_block_types, up_block_types, mid_block_type, only_cross_attention,
                      mid_block_scale_factor, act_fn, dual_cross_attention, class_embed_type, num_class_embeds,
                      resnet_time_scale_shift)
        levels = len(block_out_channels)
        heads = (attention_head_dim,) * levels if isinstance(attention_head_dim, int) else tuple(attention_head_dim)
        if len(heads) != levels:
            raise F3Error(f"attention_head_dim lists {len(heads)} head counts for {levels} levels")
        for channels, count in zip(block_out_channels, heads):
            if channels % count:
                raise F3Error(f"{channels} channels cannot be split into {count} attention heads")
        temb = block_out_channels[0] * 4
        groups, eps = norm_num_groups, norm_eps

        def transformer(channels, count):
            return Transformer3DModel(channels, count, cross_attention_dim, groups, use_linear_projection, upcast_attention)

        self.conv_in = InflatedConv(in_channels, block_out_channels[0], 3, padding=1)
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], temb)

        self.down_blocks = nn.ModuleList()
        channels = block_out_channels[0]
        for index, kind in enumerate(down_block_types):
            previous, channels = channels, block_out_channels[index]
            resnets = [ResnetBlock3D(previous if j == 0 else channels, channels, temb, groups, eps)
                       for j in range(layers_per_block)]
            attentions = ([transformer(channels, heads[index]) for _ in range(layers_per_block)]
                          if kind == "CrossAttnDownBlock3D" else None)
            sampler = Downsample3D(channels, downsample_padding) if index < levels - 1 else None
            self.down_blocks.append(_Level(resnets, attentions, sampler, up=False))

        top = block_out_channels[-1]
        self.mid_block = MidBlock3D([ResnetBlock3D(top, top, temb, groups, eps) for _ in range(2)],
                                    [transformer(top, heads[-1])])

        self.up_blocks = nn.ModuleList()
        reversed_channels, reversed_heads = list(reversed(block_out_channels)), list(reversed(heads))
        channels = reversed_channels[0]
        for index, kind in enumerate(up_block_types):
            previous, channels = channels, reversed_channels[index]
            skip_in = reversed_channels[min(index + 1, levels - 1)]
            resnets = []
            for j in range(layers_per_block + 1):
                skip = skip_in if j == layers_per_block else channels
                resnets.append(ResnetBlock3D((previous if j == 0 else channels) + skip, channels, temb, groups, eps))
            attentions = ([transformer(channels, reversed_heads[index]) for _ in range(layers_per_block + 1)]
                          if kind == "CrossAttnUpBlock3D" else None)
            sampler = Upsample3D(channels) if index < levels - 1 else None
            self.up_blocks.append(_Level(resnets, attentions, sampler, up=True))

        self.conv_norm_out = nn.GroupNorm(groups, block_out_channels[0], eps=eps)
        self.conv_act = nn.SiLU()
        self.conv_out = InflatedConv(block_out_channels[0], out_channels, 3, padding=1)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float, encoder_hidden_states: torch.Tensor,
                return_dict: bool = True, **_unused: Any):
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0
        timestep = torch.as_tensor(timestep, device=sample.device)
        timestep = timestep.reshape(-1).expand(sample.shape[0])
        emb = self.time_embedding(self.time_proj(timestep).to(dtype=sample.dtype))

        x = self.conv_in(sample)
        skips = [x]
        for level in self.down_blocks:
            x, outputs = level.down(x, emb, encoder_hidden_states)
            skips.extend(outputs)
        x = self.mid_block(x, emb, encoder_hidden_states)
        factor = 2 ** (len(self.up_blocks) - 1)
        forward_size = any(s % factor for s in sample.shape[-2:])
        for level in self.up_blocks:
            level_skips = skips[-len(level.resnets):]
            del skips[-len(level.resnets):]
            size = tuple(skips[-1].shape[2:]) if forward_size and skips else None
            x = level.up(x, level_skips, emb, encoder_hidden_states, size)
        x = self.conv_out(self.conv_act(self.conv_norm_out(x)))
        return (x,) if not return_dict else TuneAVideoUNetOutput(sample=x)


def _check_config(levels, down, up, mid, only_cross, mid_scale, act, dual, class_embed, class_count, shift) -> None:
    """Refuse options the published model does not use (and that this rebuild does not implement)."""
    if len(down) != levels or len(up) != levels:
        raise F3Error(f"down/up block types must list {levels} levels, one per block_out_channels entry")
    bad = [t for t in down if t not in ("CrossAttnDownBlock3D", "DownBlock3D")]
    bad += [t for t in up if t not in ("CrossAttnUpBlock3D", "UpBlock3D")]
    if mid != "UNetMidBlock3DCrossAttn":
        bad.append(mid)
    if bad:
        raise F3Error(f"Tune-A-Video UNet block type(s) {', '.join(map(str, bad))} are unknown")
    unsupported = {"only_cross_attention": only_cross not in (False, None), "mid_block_scale_factor": mid_scale != 1,
                   "act_fn": act not in ("silu", "swish"), "dual_cross_attention": bool(dual),
                   "class_embed_type": class_embed is not None, "num_class_embeds": class_count is not None,
                   "resnet_time_scale_shift": shift != "default"}
    named = [key for key, value in unsupported.items() if value]
    if named:
        raise F3Error(f"Tune-A-Video UNet option(s) {', '.join(named)} differ from the published model and are not supported")


# -- checkpoints -----------------------------------------------------------------------------
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def weights_file(unet_dir: Path) -> Path | None:
    for name in WEIGHT_FILES:
        if (unet_dir / name).is_file():
            return unet_dir / name
    return None


def read_state_dict(path: Path, *, mmap: bool = False) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, or from a pickle checkpoint through ``weights_only=True``
    (memory-mapped with `mmap` where the file's format allows, to read keys without the data)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            try:
                state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
            except RuntimeError:
                if not mmap:
                    raise
                state = torch.load(str(path), map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as exc:  # truncated, not a checkpoint, or holding objects weights_only refuses
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise F3Error(f"{path} is not a readable weights file ({reason}); re-save it as safetensors") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise F3Error(f"{path} does not hold a flat state dict of tensors; re-save the UNet's state_dict()")
    return state


def is_tuneavideo_unet(unet_dir: Path) -> bool:
    """True when the weights in `unet_dir` carry Tune-A-Video's temporal keys (``attn_temp``).

    A weights file that cannot be read safely is an error here, before any other loader tries it."""
    path = weights_file(unet_dir)
    if path is None:
        return False
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as handle:
                keys = list(handle.keys())
        except Exception as exc:
            reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise F3Error(f"{path} is not a readable safetensors file ({reason}); re-save the weights") from None
    else:
        keys = list(read_state_dict(path, mmap=True))
    return any(".attn_temp." in key for key in keys)


def load_unet(unet_dir: Path) -> TuneAVideoUNet:
    """Build `TuneAVideoUNet` from ``unet_dir/config.json`` and load its weights exactly."""
    from .._io import read_json

    config = read_json(unet_dir / "config.json", "re-save the UNet")
    if not isinstance(config, dict):
        raise F3Error(f"{unet_dir}/config.json must be a JSON object")
    known = set(inspect.signature(TuneAVideoUNet.__init__).parameters) - {"self"}
    arguments = {k: v for k, v in config.items() if k in known}
    try:
        with torch.device("meta"):  # no random init of weights that are loaded next (SD v1: 860M parameters)
            unet = TuneAVideoUNet(**arguments)
    except (TypeError, ValueError, ZeroDivisionError, IndexError) as exc:
        raise F3Error(f"{unet_dir}/config.json does not describe a Tune-A-Video UNet ({exc})") from None
    path = weights_file(unet_dir)
    if path is None:
        raise F3Error(f"{unet_dir} has no {' or '.join(WEIGHT_FILES)}")
    state = read_state_dict(path)
    expected = unet.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        detail = "; ".join(part for part in (
            f"{len(missing)} missing (first: {missing[0]})" if missing else "",
            f"{len(unexpected)} unexpected (first: {unexpected[0]})" if unexpected else "") if part)
        raise F3Error(f"{path} does not match its config.json: {detail}")
    wrong = [k for k in expected if tuple(state[k].shape) != tuple(expected[k].shape)]
    if wrong:
        raise F3Error(f"{path}: {wrong[0]} has shape {tuple(state[wrong[0]].shape)}, the config makes "
                      f"{tuple(expected[wrong[0]].shape)}")
    unet.load_state_dict({k: v.to(expected[k].dtype).contiguous() for k, v in state.items()}, assign=True)
    return unet.eval()


def save_unet(unet: TuneAVideoUNet, unet_dir: Path, *, safetensors: bool = True) -> None:
    """Write ``unet_dir`` in the published layout (config with the published class name)."""
    import json

    unet_dir.mkdir(parents=True, exist_ok=True)
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(unet.config).items() if not k.startswith("_")}
    config = {"_class_name": UNET_CLASS_NAME, "_diffusers_version": "0.11.1", **config}
    (unet_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.detach().contiguous() for k, v in unet.state_dict().items()}
    if safetensors:
        from safetensors.torch import save_file

        save_file(state, str(unet_dir / WEIGHT_FILES[0]))
    else:
        torch.save(state, str(unet_dir / WEIGHT_FILES[1]))


class TuneAVideoPipeline(TextToVideoSDPipeline):
    """Tune-A-Video's pipeline: CLIP text encoder, SD VAE (latents ×0.18215, decoded per frame), DDIM.

    Prompt encoding and decoding are those of diffusers' text-to-video SD pipeline, which Tune-A-
    Video's own pipeline matches (the same CLIP encoding with classifier-free guidance; frames
    decoded one by one with the same scale).
    """

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler):
        super().__init__(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)


PIPELINE_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def load_pipeline(path: Path) -> TuneAVideoPipeline:
    """A Tune-A-Video ``save_pretrained`` directory: its UNet by keys, the other parts by their
    own configs (CLIP text encoder and tokenizer via transformers, VAE and scheduler via diffusers)."""
    import diffusers
    import transformers

    from .._io import read_json

    missing = [part for part in PIPELINE_PARTS if not (path / part).is_dir()]
    if missing:
        raise F3Error(f"{path} is a Tune-A-Video checkpoint without {', '.join(missing)}/; "
                      f"a pipeline directory needs {', '.join(PIPELINE_PARTS)}")
    scheduler_config = read_json(path / "scheduler" / "scheduler_config.json", "re-save the scheduler")
    scheduler_class = getattr(diffusers, str(scheduler_config.get("_class_name")), None) if isinstance(scheduler_config, dict) else None
    if not (isinstance(scheduler_class, type) and issubclass(scheduler_class, diffusers.SchedulerMixin)):
        raise F3Error(f"{path}/scheduler/scheduler_config.json names no diffusers scheduler class; re-save the scheduler")
    try:
        safetensors = (path / "vae" / "diffusion_pytorch_model.safetensors").is_file()  # else .bin, weights_only
        vae = diffusers.AutoencoderKL.from_pretrained(str(path / "vae"), use_safetensors=safetensors).eval()
        text_encoder = transformers.CLIPTextModel.from_pretrained(str(path / "text_encoder")).eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path / "tokenizer"))
    except (OSError, ValueError, KeyError) as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise F3Error(f"{path}: a pipeline part could not be loaded ({reason})") from None
    return TuneAVideoPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=load_unet(path / "unet"),
                              scheduler=scheduler_class.from_config(scheduler_config))


def save_pipeline(pipe: TuneAVideoPipeline, path: Path, *, safetensors: bool = True) -> None:
    """Write `pipe` in the published layout (``model_index.json`` naming Tune-A-Video's classes)."""
    import json

    path.mkdir(parents=True, exist_ok=True)
    save_unet(pipe.unet, path / "unet", safetensors=safetensors)
    pipe.vae.save_pretrained(str(path / "vae"), safe_serialization=safetensors)
    pipe.text_encoder.save_pretrained(str(path / "text_encoder"))
    pipe.tokenizer.save_pretrained(str(path / "tokenizer"))
    pipe.scheduler.save_pretrained(str(path / "scheduler"))
    index = {"_class_name": "TuneAVideoPipeline", "_diffusers_version": "0.11.1",
             "scheduler": ["diffusers", type(pipe.scheduler).__name__], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", type(pipe.tokenizer).__name__],
             "unet": ["tuneavideo.models.unet", UNET_CLASS_NAME], "vae": ["diffusers", "AutoencoderKL"]}
    (path / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
