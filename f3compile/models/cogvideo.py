"""The CogVideo family: an autoregressive transformer with dual-channel attention (stage 1, which
makes 5 frames, and stage 2, which interpolates between them; `CogVideoConfig.stage`).

Parameter names follow SwissArmyTransformer 0.2.x as the published checkpoints (stage 1 and stage 2
alike) store them
(`transformer.*` for the CogView2 base, `mixins.*` for what CogVideo adds), so a real state dict
maps by name:

    transformer.word_embeddings.weight                       [V, H]   (image logits are tied to its
                                                                       first image_tokens rows)
    transformer.position_embeddings.weight                   [1024, H] (text 0..T-1, frame 1 from 512)
    transformer.layers.N.input_layernorm.{weight,bias}       [H]
    transformer.layers.N.attention.query_key_value.{w,b}     [3H, H]  base (spatial) channel
    transformer.layers.N.attention.dense.{weight,bias}       [H, H]
    transformer.layers.N.third_layernorm.{weight,bias}       [H]      sandwich LN after attention
    transformer.layers.N.post_attention_layernorm.{w,b}      [H]
    transformer.layers.N.mlp.dense_h_to_4h.{weight,bias}     [4H, H]
    transformer.layers.N.mlp.dense_4h_to_h.{weight,bias}     [H, 4H]
    transformer.layers.N.fourth_layernorm.{weight,bias}      [H]      sandwich LN after the MLP
    transformer.final_layernorm.{weight,bias}                [H]
    mixins.extra_position_embedding.position_embeddings.weight   [E, H]  frames 2.. positions
    mixins.attention_plus.query_key_value.N.{weight,bias}    [3H, H]  plus (temporal) channel
    mixins.attention_plus.dense.N.{weight,bias}              [H, H]
    mixins.attention_plus.attn_distribution.N                [H]      the channel gate

Sequence: `text_length` text slots (left-padded), then `frames` × grid² image tokens; the first
token of every frame is `<start_of_image>`. A frame token's attention output is
σ(a)·dense(ctx_base) + (1 − σ(a))·dense_plus(ctx_plus) where the base channel sees the text and
its own frame (causal) and the plus channel sees the text and every earlier frame token
(causal); text tokens (which see all text) and the first frame get the base term alone, as the
published inference runs it. Stage 2 holds three key frames (times 0, 2, 4) and the two frames it
fills (times 1, 3) in its 5 slots; its plus channel attends within shifted windows (see
`f3compile.autoregressive.program`). Not modelled: the pipeline's log-weight on text keys (1.4 for the
first frame), its unpadded text, and its guidance run; padding slots are attended like text. The math lives in
`f3compile.autoregressive.program`; this module holds the weights, the configs and the loaders.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import F3Error
from .base import fingerprint_modules

CONFIG_FILE = "cogvideo.json"
WEIGHTS_FILE = "model.safetensors"


LIMITS = {"num_layers": 1024, "hidden_size": 65536, "num_heads": 1024, "frames": 64, "grid": 256, "patch": 64,
          "text_length": 4096, "stage": 2, "window": 256}  # sizes beyond these are typos, not models; others: 10**7


@dataclass(frozen=True)
class CogVideoConfig:
    """Sizes of a CogVideo transformer (defaults: the published stage-1 model)."""

    num_layers: int = 48  # transformer layers, each with a base and a plus attention channel
    hidden_size: int = 3072  # model width H
    num_heads: int = 48  # heads of both channels (head dim H / heads)
    vocab_size: int = 150010  # image tokens, then text tokens and specials
    image_tokens: int = 20000  # ids [0, image_tokens) are image tokens
    text_length: int = 64  # text slots before the first frame (left-padded)
    frames: int = 5  # frames of stage 1
    grid: int = 20  # image tokens per frame side (grid² per frame)
    patch: int = 8  # pixels per token side of the decoder (160×160 frames for 20×20 tokens)
    max_position: int = 1024  # rows of transformer.position_embeddings (text, then the first frame from 512)
    frame_position_offset: int = 512  # position id of the first frame's first token
    extra_positions: int = 2000  # rows of mixins.extra_position_embedding (frames 2.. )
    layernorm_epsilon: float = 1e-5  # every layer norm
    start_of_image: int = 0  # id fed at every frame's first position (set by the builtins)
    pad_token: int = 0  # id of the text padding
    stage: int = 1  # 1: frames one after another (full plus attention); 2: interpolation (windowed plus attention)
    window: int = 10  # stage 2: side of the plus channel's windows (shift window // 2 on odd layers)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def frame_tokens(self) -> int:
        return self.grid * self.grid

    @property
    def sequence_length(self) -> int:
        return self.text_length + self.frames * self.frame_tokens

    @property
    def given_frames(self) -> int:
        """Frame slots that are inputs, not generated: stage 2 takes 3 key frames and fills 2 between."""
        return 3 if self.stage == 2 else 0

    @property
    def slot_times(self) -> tuple[int, ...]:
        """The time of each frame slot (its position ids): stage 2 holds key frames 0, 2, 4 in slots 0-2 and
        generates frames 1 and 3 in slots 3 and 4, as the published interpolation orders them."""
        return (0, 2, 4, 1, 3) if self.stage == 2 else tuple(range(self.frames))

    @property
    def plus_from(self) -> int:
        """First frame slot whose tokens use the plus channel (stage 1 runs the first frame without it)."""
        return 0 if self.stage == 2 else 1

    @property
    def prefill_length(self) -> int:
        """Tokens of the prefill: the text and the first `<start_of_image>` (stage 1), or the text and the
        three key frames (stage 2)."""
        return self.text_length + (self.given_frames * self.frame_tokens if self.stage == 2 else 1)

    def shift(self, layer: int) -> int:
        """Stage 2: the window shift of `layer` (0 on even layers, window // 2 on odd ones)."""
        return self.window // 2 if layer % 2 else 0

    def check(self) -> "CogVideoConfig":
        def need(condition: bool, what: str) -> None:
            if not condition:
                raise F3Error(f"CogVideo config: {what}")

        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "layernorm_epsilon":
                need(isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1,
                     "layernorm_epsilon must be a number in (0, 1)")
            else:
                need(isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= LIMITS.get(item.name, 10**7),
                     f"{item.name} must be an integer in [0, {LIMITS.get(item.name, 10**7)}]")
        need(self.num_layers >= 1 and self.num_heads >= 1 and self.hidden_size % self.num_heads == 0,
             f"hidden_size {self.hidden_size} must be a positive multiple of num_heads {self.num_heads}")
        need(0 < self.image_tokens < self.vocab_size, "image_tokens must lie in (0, vocab_size)")
        need(self.frames >= 2 and self.grid >= 1 and self.text_length >= 1 and self.patch >= 1,
             "frames >= 2, grid >= 1, patch >= 1 and text_length >= 1")
        need(self.text_length <= self.frame_position_offset, "text_length must not exceed frame_position_offset")
        need(self.frame_position_offset + self.frame_tokens <= self.max_position,
             "max_position must cover the first frame (frame_position_offset + grid²)")
        need((self.frames - 1) * self.frame_tokens <= self.extra_positions,
             "extra_positions must cover frames 2.. ((frames - 1) · grid²)")
        need(0 <= self.start_of_image < self.vocab_size and 0 <= self.pad_token < self.vocab_size,
             "start_of_image and pad_token must be token ids")
        need(self.stage in (1, 2), "stage must be 1 (sequential frames) or 2 (interpolation)")
        if self.stage == 2:
            need(self.frames == 5, "a stage-2 model has 5 frame slots (3 key frames, 2 interpolated)")
            need(self.window >= 2 and self.grid % self.window == 0, "stage 2: window must be >= 2 and divide grid")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "CogVideoConfig":
        """A config from cogvideo.json (or a manifest): keys and JSON types by the schema layer
        (`schema.validate`, this dataclass is the schema), ranges and relations by `check`."""
        from ..schema import validate

        validate(cls, data, where)
        return cls(**data).check()


class _Attention(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.query_key_value = nn.Linear(hidden, 3 * hidden)
        self.dense = nn.Linear(hidden, hidden)


class _MLP(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(hidden, 4 * hidden)
        self.dense_4h_to_h = nn.Linear(4 * hidden, hidden)


class _Layer(nn.Module):
    def __init__(self, hidden: int, eps: float):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(hidden, eps=eps)
        self.attention = _Attention(hidden)
        self.third_layernorm = nn.LayerNorm(hidden, eps=eps)
        self.post_attention_layernorm = nn.LayerNorm(hidden, eps=eps)
        self.mlp = _MLP(hidden)
        self.fourth_layernorm = nn.LayerNorm(hidden, eps=eps)


class _Transformer(nn.Module):
    def __init__(self, config: CogVideoConfig):
        super().__init__()
        hidden = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, hidden)
        self.position_embeddings = nn.Embedding(config.max_position, hidden)
        self.layers = nn.ModuleList(_Layer(hidden, config.layernorm_epsilon) for _ in range(config.num_layers))
        self.final_layernorm = nn.LayerNorm(hidden, eps=config.layernorm_epsilon)


class _ExtraPositions(nn.Module):
    def __init__(self, rows: int, hidden: int):
        super().__init__()
        self.position_embeddings = nn.Embedding(rows, hidden)


class _AttentionPlus(nn.Module):
    def __init__(self, layers: int, hidden: int):
        super().__init__()
        self.query_key_value = nn.ModuleList(nn.Linear(hidden, 3 * hidden) for _ in range(layers))
        self.dense = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers))
        self.attn_distribution = nn.ParameterList(nn.Parameter(torch.zeros(hidden)) for _ in range(layers))


class CogVideoTransformer(nn.Module):
    """The weights of a CogVideo model under their SAT names (see the module docstring)."""

    def __init__(self, config: CogVideoConfig):
        super().__init__()
        self.config = config.check()
        self.transformer = _Transformer(config)
        self.mixins = nn.ModuleDict({
            "extra_position_embedding": _ExtraPositions(config.extra_positions, config.hidden_size),
            "attention_plus": _AttentionPlus(config.num_layers, config.hidden_size),
        })

    def plus(self, layer: int) -> tuple[nn.Linear, nn.Linear, torch.Tensor]:
        """(query_key_value, dense, attn_distribution) of the plus channel of `layer`."""
        mixin = self.mixins["attention_plus"]
        return mixin.query_key_value[layer], mixin.dense[layer], mixin.attn_distribution[layer]


def unit_id(layer: int) -> str:
    """The temporal unit of `layer`: its plus channel (the SAT path of its weights)."""
    return f"mixins.attention_plus.{layer}"


def layer_of(unit: str) -> int:
    prefix = "mixins.attention_plus."
    if not unit.startswith(prefix) or not unit[len(prefix):].isdigit():
        raise F3Error(f"{unit!r} is not a CogVideo temporal unit (mixins.attention_plus.N)")
    return int(unit[len(prefix):])


def published_keys(config: CogVideoConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter name of a SAT state dict (either stage) with its shape, written out independently
    of the module above (the key-compatibility tests compare the two)."""
    h, keys = config.hidden_size, {}
    keys["transformer.word_embeddings.weight"] = (config.vocab_size, h)
    keys["transformer.position_embeddings.weight"] = (config.max_position, h)
    for n in range(config.num_layers):
        p = f"transformer.layers.{n}."
        for norm in ("input_layernorm", "third_layernorm", "post_attention_layernorm", "fourth_layernorm"):
            keys[p + norm + ".weight"] = keys[p + norm + ".bias"] = (h,)
        keys[p + "attention.query_key_value.weight"], keys[p + "attention.query_key_value.bias"] = (3 * h, h), (3 * h,)
        keys[p + "attention.dense.weight"], keys[p + "attention.dense.bias"] = (h, h), (h,)
        keys[p + "mlp.dense_h_to_4h.weight"], keys[p + "mlp.dense_h_to_4h.bias"] = (4 * h, h), (4 * h,)
        keys[p + "mlp.dense_4h_to_h.weight"], keys[p + "mlp.dense_4h_to_h.bias"] = (h, 4 * h), (h,)
        m = "mixins.attention_plus."
        keys[f"{m}query_key_value.{n}.weight"], keys[f"{m}query_key_value.{n}.bias"] = (3 * h, h), (3 * h,)
        keys[f"{m}dense.{n}.weight"], keys[f"{m}dense.{n}.bias"] = (h, h), (h,)
        keys[f"{m}attn_distribution.{n}"] = (h,)
    keys["transformer.final_layernorm.weight"] = keys["transformer.final_layernorm.bias"] = (h,)
    keys["mixins.extra_position_embedding.position_embeddings.weight"] = (config.extra_positions, h)
    return keys


# ---------------------------------------------------------------------------------------------
# builtins: a tiny model for tests and an architecture preset at the published sizes

TINY = dict(num_layers=3, hidden_size=64, num_heads=4, image_tokens=64, text_length=8, frames=5, grid=4,
            patch=4, max_position=48, frame_position_offset=24, extra_positions=64)


def _text_vocab_start(config: CogVideoConfig) -> int:
    return config.image_tokens + 2  # image tokens, <start_of_image>, <pad>, then bytes


def tiny_config(stage: int = 1) -> CogVideoConfig:
    image = TINY["image_tokens"]
    return CogVideoConfig(vocab_size=image + 2 + 256, start_of_image=image, pad_token=image + 1, stage=stage,
                          window=2 if stage == 2 else CogVideoConfig.window,
                          **TINY).check()


def arch_config(scale: float, stage: int = 1) -> CogVideoConfig:
    """The published sizes with the width scaled (heads of 64 kept; at least one head)."""
    heads = max(1, round(48 * scale))
    return CogVideoConfig(hidden_size=64 * heads, num_heads=heads, vocab_size=150010,
                          start_of_image=20000, pad_token=20001, stage=stage).check()


def init_weights(model: CogVideoTransformer, seed: int) -> CogVideoTransformer:
    """Deterministic weights: N(0, 0.02) matrices and embeddings, zero biases, unit norms; the
    plus gates get small random values so that both channels contribute."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if "layernorm" in name:
                tensor.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith(".bias"):
                tensor.zero_()
            elif "attn_distribution" in name:
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.02)
    return model.eval()


def build(config: CogVideoConfig, seed: int = 0) -> CogVideoTransformer:
    with torch.device("meta"):
        model = CogVideoTransformer(config)
    model = model.to_empty(device="cpu")
    return init_weights(model, seed)


# ---------------------------------------------------------------------------------------------
# stand-in tokenizer and decoder (the published ones, icetk, are not shipped)

class ByteTextTokenizer:
    """Text → ids: UTF-8 bytes mapped after the image tokens and the two specials, left-padded to
    `text_length` (longer prompts keep their first bytes)."""

    def __init__(self, config: CogVideoConfig):
        self.config = config
        self.offset = _text_vocab_start(config)
        if self.offset + 256 > config.vocab_size:
            raise F3Error("the byte tokenizer needs 256 text ids after the image tokens and specials")

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        rows = []
        for prompt in prompts:
            ids = [self.offset + b for b in prompt.encode()][: self.config.text_length]
            rows.append([self.config.pad_token] * (self.config.text_length - len(ids)) + ids)
        return torch.tensor(rows, dtype=torch.int64)


class PaletteDecoder:
    """Image token → a patch×patch RGB tile, from a fixed seeded palette (a stand-in for the
    icetk decoder, so that token videos can be looked at)."""

    def __init__(self, config: CogVideoConfig, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.config = config
        base = torch.rand((config.image_tokens, 3, 1, 1), generator=generator)
        shade = torch.linspace(0.8, 1.0, config.patch).view(1, 1, config.patch, 1)
        self.tiles = (base * shade).expand(-1, -1, config.patch, config.patch).clamp(0, 1)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, frames, grid²) image ids → (B, frames, 3, grid·patch, grid·patch) in [0, 1]."""
        c = self.config
        batch, frames = tokens.shape[:2]
        tiles = self.tiles[tokens.clamp(0, c.image_tokens - 1).reshape(-1)]  # (B·F·g², 3, p, p)
        tiles = tiles.view(batch, frames, c.grid, c.grid, 3, c.patch, c.patch)
        return tiles.permute(0, 1, 4, 2, 5, 3, 6).reshape(batch, frames, 3, c.grid * c.patch, c.grid * c.patch)


# ---------------------------------------------------------------------------------------------
# loading: builtins, converted directories, SAT checkpoints

@dataclass
class CogVideoModel:
    """A loaded CogVideo: weights, sizes, tokenizer and fingerprint (the autoregressive
    counterpart of `VideoModel`; `kind` tells the CLI which pipeline to run)."""

    spec: str
    config: CogVideoConfig
    module: CogVideoTransformer
    fingerprint: str
    kind: str = "autoregressive"
    family: str = "cogvideo"

    @property
    def tokenizer(self) -> ByteTextTokenizer:
        return ByteTextTokenizer(self.config)


def _fingerprint(config: CogVideoConfig, module: nn.Module) -> str:
    return fingerprint_modules(config.to_dict(), module)


def build_builtin(group: str, scale: float = 1.0, stage: int = 1) -> CogVideoTransformer:
    """The weights of a CogVideo builtin: `tiny` sizes or the published ones (`preset`, width × `scale`)."""
    config = tiny_config(stage) if group == "tiny" else arch_config(scale, stage)
    return build(config, seed=stage - 1)  # the two stages are separate models


def load_cogvideo(spec: str) -> CogVideoModel:
    """A CogVideo from `builtin:NAME[,width-scale=S]` (registered in `models.registry`) or a directory
    holding cogvideo.json and model.safetensors (`f3compile convert` writes one)."""
    from . import registry

    if spec.startswith("builtin:"):
        entry, scale = registry.parse_builtin(spec[8:])
        if entry.family != "cogvideo":
            raise F3Error(f"builtin:{entry.name} is not a CogVideo model")
        module = registry.resolve(entry.builder)(entry.group, scale, **entry.options)
        config = module.config
    else:
        from .._io import read_json

        directory = Path(spec)
        config = CogVideoConfig.from_dict(read_json(directory / CONFIG_FILE, "write it again with `f3compile convert`"),
                                          str(directory / CONFIG_FILE))
        weights = directory / WEIGHTS_FILE
        if not weights.is_file():
            raise F3Error(f"{directory} has {CONFIG_FILE} but no {WEIGHTS_FILE}; write one with `f3compile convert`")
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError) as exc:
            raise F3Error(f"{weights} is unreadable ({exc}); write it again with `f3compile convert`") from None
        module = module_from_state(config, state, str(weights))
    return CogVideoModel(spec=spec, config=config, module=module, fingerprint=_fingerprint(config, module))


def module_from_state(config: CogVideoConfig, state: dict[str, torch.Tensor], where: str) -> CogVideoTransformer:
    """A module holding `state`, which must have exactly the published keys and shapes."""
    expected = published_keys(config)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise F3Error(f"{where}: {len(missing)} missing and {len(unexpected)} unexpected CogVideo keys "
                      f"(first missing: {missing[:2]}, first unexpected: {unexpected[:2]}); check the config sizes")
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise F3Error(f"{where}: {name} has shape {list(state[name].shape)}, the config implies {list(shape)}")
    with torch.device("meta"):
        module = CogVideoTransformer(config)
    module.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    return module.eval()


def _rng_state_globals() -> list:
    """What SAT's training loop stores beside the weights needs beyond plain tensors: numpy's random
    state (`np_rng_state`, an ndarray of uint32) — array reconstruction only, no code."""
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def read_sat_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a SAT `mp_rank_00_model_states.pt`, read with `torch.load(weights_only=True)`
    (no code from the file runs; the only globals allowed beyond tensors are numpy's array
    reconstruction, for the random state SAT saves with the weights); the state dict sits under
    `module` (or is the file itself)."""
    path = Path(path)
    if not path.is_file():
        raise F3Error(f"{path} does not exist; pass the mp_rank_00_model_states.pt of a SAT checkpoint")
    try:
        with torch.serialization.safe_globals(_rng_state_globals()):
            data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError for anything outside the allow-list
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise F3Error(f"{path} cannot be read as weights only ({first[:160]}); "
                      "re-save its state dict with plain tensors, or convert it where it was trained") from None
    state = data.get("module", data) if isinstance(data, dict) else None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise F3Error(f"{path} holds no state dict of tensors (expected one under 'module')")
    return state


def infer_config(state: dict[str, torch.Tensor], **overrides: Any) -> CogVideoConfig:
    """Sizes read off a state dict's shapes (heads are not visible in shapes: 64 per head)."""
    try:
        vocab, hidden = state["transformer.word_embeddings.weight"].shape
        layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("transformer.layers."))
        max_position = state["transformer.position_embeddings.weight"].shape[0]
        extra = state["mixins.extra_position_embedding.position_embeddings.weight"].shape[0]
    except (KeyError, ValueError, IndexError):
        raise F3Error("the checkpoint lacks CogVideo's embeddings or layers "
                      "(transformer.word_embeddings, transformer.layers.N, mixins.extra_position_embedding)") from None
    values = dict(num_layers=layers, hidden_size=int(hidden), num_heads=max(1, int(hidden) // 64), vocab_size=int(vocab),
                  max_position=int(max_position), extra_positions=int(extra),
                  start_of_image=CogVideoConfig.start_of_image, pad_token=CogVideoConfig.pad_token)
    values.update(overrides)
    return CogVideoConfig(**values).check()


def convert(source: str | Path, output: str | Path, **overrides: Any) -> CogVideoConfig:
    """A SAT `.pt` (or a safetensors file of the same keys) → OUTPUT/{cogvideo.json, model.safetensors}."""
    from safetensors.torch import load_file, save_file

    from .._io import atomic_dir

    source = Path(source)
    if source.suffix == ".safetensors":
        state = load_file(str(source))
    else:
        state = read_sat_checkpoint(source)
    config = infer_config(state, **overrides)
    module_from_state(config, state, str(source))  # checks keys and shapes
    with atomic_dir(Path(output)) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / WEIGHTS_FILE))
        (tmp / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    return config


__all__ = ["CogVideoConfig", "CogVideoTransformer", "CogVideoModel", "load_cogvideo",
           "published_keys", "convert", "read_sat_checkpoint", "unit_id", "layer_of"]
