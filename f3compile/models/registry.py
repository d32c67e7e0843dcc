"""The one table of what f3compile can load: model kinds, families, builtin models and directory layouts.

Everything else reads it: `f3compile.load` resolves a spec here, the CLI lists the builtins from
here, the tests take their tiny models from here. Adding a model family is one module (its
loader, glue and, for a new kind of model, its `f3compile.kinds.base.ModelKind`) plus its
registrations below (docs/ARCHITECTURE.md, "Add a model family").

- A **kind** is a way of running a model: `diffusion` (a denoiser in a sampling loop) or
  `autoregressive` (prefill and decode-step programs). Each names the object that implements the
  verbs for it (`implementation`, imported on first use).
- A **family** is an architecture inside a kind (unet3d, animatediff, latte, tuneavideo; cogvideo).
- A **builtin** is a model built from code: `tiny` test models, trained `reference` models and
  architecture `preset`s at published sizes (these take `,width-scale=S`).
- A **layout** tells what a local directory holds by a file in it.

Nothing here imports torch, diffusers or a family module: lookups stay cheap and cycle-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any

from ..errors import F3Error


@dataclass(frozen=True)
class Kind:
    name: str
    implementation: str  # "module:attribute" of its ModelKind
    description: str


@dataclass(frozen=True)
class Family:
    name: str
    kind: str
    description: str
    attention: str = "temporal"  # "temporal": factorised (temporal layers); "full": full 3-D attention


@dataclass(frozen=True)
class Builtin:
    name: str
    family: str
    builder: str  # "module:function"; presets take the width scale, others nothing (see `options`)
    shapes: tuple[int, int, int] | None  # default (frames, height, width) in pixels; None: the model's own
    description: str
    group: str  # "tiny", "reference" or "preset"
    options: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments of the builder

    @property
    def kind(self) -> str:
        return FAMILIES[self.family].kind

    @property
    def scalable(self) -> bool:
        """Takes `,width-scale=S` (the architecture presets)."""
        return self.group == "preset"


@dataclass(frozen=True)
class Layout:
    marker: str  # a file in the directory
    kind: str
    description: str


KINDS: dict[str, Kind] = {}
FAMILIES: dict[str, Family] = {}
BUILTINS: dict[str, Builtin] = {}
LAYOUTS: list[Layout] = []
DEFAULT_KIND = "diffusion"  # what a hub id or an unknown path is tried as (its loader explains a refusal)
GROUPS = ("tiny", "reference", "preset")


def register_kind(kind: Kind) -> Kind:
    KINDS[kind.name] = kind
    return kind


def register_family(family: Family) -> Family:
    FAMILIES[family.name] = family
    return family


def register_builtin(builtin: Builtin) -> Builtin:
    if builtin.group not in GROUPS:
        raise ValueError(f"builtin group must be one of {GROUPS}, got {builtin.group!r}")
    BUILTINS[builtin.name] = builtin
    return builtin


def register_layout(layout: Layout) -> Layout:
    LAYOUTS.append(layout)
    return layout


# -- the registrations -------------------------------------------------------------------------
register_kind(Kind("diffusion", "f3compile.kinds.diffusion:KIND",
                   "a denoiser called in a sampling loop (pruned per timestep stage)"))
register_kind(Kind("autoregressive", "f3compile.kinds.autoregressive:KIND",
                   "prefill and decode-step programs with a static key/value cache"))

for _name, _description in (
    ("unet3d", "ModelScope / Zeroscope UNet3DConditionModel (TextToVideoSDPipeline)"),
    ("animatediff", "AnimateDiff UNetMotionModel (AnimateDiffPipeline)"),
    ("latte", "Latte LatteTransformer3DModel (LattePipeline)"),
    ("tuneavideo", "Tune-A-Video's UNet (SD v1 layout with sparse-causal and temporal attention)"),
):
    register_family(Family(_name, "diffusion", _description))
register_family(Family("wan", "diffusion", "Wan 2.1 / 2.2 WanTransformer3DModel (WanPipeline; 2.2: two experts; "
                       "WanImageToVideoPipeline: image conditioning), full 3-D attention", "full"))
register_family(Family("cogvideox", "diffusion", "CogVideoX CogVideoXTransformer3DModel (CogVideoXPipeline), joint "
                       "text + video 3-D attention", "full"))
register_family(Family("hunyuanvideo15", "diffusion", "HunyuanVideo 1.5 HunyuanVideo15Transformer3DModel "
                       "(HunyuanVideo15Pipeline), joint video + text 3-D attention with a text padding mask", "full"))
register_family(Family("cogvideo", "autoregressive", "CogVideo (SwissArmyTransformer names), stage 1 and stage 2"))

_BUILDERS = "f3compile.models.builtin"
_PRESETS = "f3compile.models.presets"
for _builtin in (
    Builtin("tiny-unet3d", "unet3d", f"{_BUILDERS}:build_tiny_unet3d", (8, 16, 16),
            "ModelScope-style UNet3DConditionModel, 2 levels, CLIP-style text encoder", "tiny"),
    Builtin("tiny-animatediff", "animatediff", f"{_BUILDERS}:build_tiny_animatediff", (8, 16, 16),
            "AnimateDiff UNetMotionModel, 2 levels, motion modules", "tiny"),
    Builtin("tiny-latte", "latte", f"{_BUILDERS}:build_tiny_latte", (8, 16, 16),
            "LatteTransformer3DModel, 2 layers, T5-style text encoder", "tiny"),
    Builtin("tiny-tuneavideo", "tuneavideo", f"{_BUILDERS}:build_tiny_tuneavideo", (8, 16, 16),
            "Tune-A-Video UNet (SD v1 layout, 2 levels), CLIP-style text encoder", "tiny"),
    Builtin("ref-unet3d", "unet3d", f"{_BUILDERS}:build_ref_unet3d", (8, 16, 16),
            "trained moving-shapes UNet3DConditionModel, MiniLM text encoder", "reference"),
    Builtin("ref-latte", "latte", f"{_BUILDERS}:build_ref_latte", (8, 16, 16),
            "trained moving-shapes LatteTransformer3DModel, MiniLM text encoder", "reference"),
    Builtin("ref-wan", "wan", f"{_BUILDERS}:build_ref_wan", (8, 16, 16),
            "trained moving-shapes WanTransformer3DModel (full 3-D attention), MiniLM text encoder", "reference"),
    Builtin("arch-modelscope", "unet3d", f"{_PRESETS}:build_arch_modelscope", (16, 256, 256),
            "ModelScope T2V 1.7B UNet3D, 16 frames 256x256", "preset"),
    Builtin("arch-animatediff", "animatediff", f"{_PRESETS}:build_arch_animatediff", (16, 512, 512),
            "SD 1.5 UNet + AnimateDiff v1-5-2 motion modules, 16 frames 512x512", "preset"),
    Builtin("arch-latte", "latte", f"{_PRESETS}:build_arch_latte", (16, 256, 256),
            "Latte-1 (28 layers, 16x72 heads), 16 frames 256x256", "preset"),
    Builtin("arch-tuneavideo", "tuneavideo", f"{_PRESETS}:build_arch_tuneavideo", (8, 512, 512),
            "Tune-A-Video (SD v1.4 UNet + sparse-causal and temporal attention), 8 frames 512x512", "preset"),
    Builtin("tiny-wan", "wan", "f3compile.models.wan:build_tiny_wan", (17, 64, 64),
            "WanTransformer3DModel, 2 layers of 4 heads, Wan VAE strides (17 frames -> 5 latent frames)", "tiny"),
    Builtin("tiny-wan2.2", "wan", "f3compile.models.wan:build_tiny_wan22", (17, 64, 64),
            "Wan 2.2 layout: two tiny-wan experts, the first for timesteps >= 875 (boundary_ratio 0.875)", "tiny"),
    Builtin("tiny-wan-i2v", "wan", "f3compile.models.wan_i2v:build_tiny_wan_i2v", (17, 64, 64),
            "Wan2.1 image-to-video layout on tiny-wan: 36 input channels, CLIP image tokens (17 of 32) through "
            "added k/v", "tiny"),
    Builtin("tiny-wan2.2-i2v", "wan", "f3compile.models.wan_i2v:build_tiny_wan22_i2v", (17, 64, 64),
            "Wan2.2-I2V-A14B layout on tiny-wan: two 36-channel experts (boundary_ratio 0.9), no image encoder",
            "tiny"),
    Builtin("tiny-wan2.2-ti2v", "wan", "f3compile.models.wan_i2v:build_tiny_wan22_ti2v", (17, 64, 64),
            "Wan2.2-TI2V-5B layout on tiny-wan: 48 latent channels of a Wan 2.2 VAE (16x in space), a timestep per "
            "token, the image in place of the first latent frame", "tiny"),
    Builtin("arch-wan2.1-1.3b", "wan", "f3compile.models.wan:build_arch_wan", (81, 480, 832),
            "Wan2.1-T2V-1.3B (30 layers, 12x128 heads), 81 frames 480x832", "preset", {"size": "1.3b"}),
    Builtin("arch-wan2.1-14b", "wan", "f3compile.models.wan:build_arch_wan", (81, 720, 1280),
            "Wan2.1-T2V-14B (40 layers, 40x128 heads), 81 frames 720x1280", "preset", {"size": "14b"}),
    Builtin("arch-wan2.1-i2v-14b", "wan", "f3compile.models.wan_i2v:build_arch_wan_i2v", (81, 480, 832),
            "Wan2.1-I2V-14B (40 layers, 40x128 heads, 36 input channels, CLIP image tokens 257x1280 through added "
            "k/v), 81 frames 480x832", "preset", {"size": "14b"}),
    Builtin("arch-wan2.2-ti2v-5b", "wan", "f3compile.models.wan_i2v:build_arch_wan22_ti2v", (121, 704, 1280),
            "Wan2.2-TI2V-5B (30 layers, 24x128 heads, 48 latent channels, VAE 4x16x16, a timestep per token), "
            "121 frames 704x1280", "preset"),
    Builtin("tiny-cogvideox", "cogvideox", "f3compile.models.cogvideox:build_tiny_cogvideox", (17, 64, 64),
            "CogVideoXTransformer3DModel, 2 layers of 4x16 heads, 16 text tokens, 3-D RoPE (17 frames -> 5 latent frames)",
            "tiny"),
    Builtin("arch-cogvideox-2b", "cogvideox", "f3compile.models.cogvideox:build_arch_cogvideox", (49, 480, 720),
            "CogVideoX-2B (30 layers, 30x64 heads, sincos positions), 49 frames 480x720", "preset", {"size": "2b"}),
    Builtin("arch-cogvideox-5b", "cogvideox", "f3compile.models.cogvideox:build_arch_cogvideox", (49, 480, 720),
            "CogVideoX-5B (42 layers, 48x64 heads, 3-D RoPE), 49 frames 480x720", "preset", {"size": "5b"}),
    Builtin("tiny-hunyuanvideo1.5", "hunyuanvideo15", "f3compile.models.hunyuan15:build_tiny_hunyuan15", (17, 64, 64),
            "HunyuanVideo15Transformer3DModel, 2 blocks of 4x16 heads, 1256 context tokens (ByT5 + Qwen2.5-VL "
            "stand-ins, padding masked) in its joint attention, VAE 4x16x16 (17 frames -> 5 latent frames of 4x4)",
            "tiny"),
    Builtin("tiny-hunyuanvideo1.5-i2v", "hunyuanvideo15", "f3compile.models.hunyuan15:build_tiny_hunyuan15_i2v",
            (17, 64, 64), "HunyuanVideo 1.5 image-to-video layout on tiny-hunyuanvideo1.5: the image's latents and a "
            "mask on channels, 16 SigLIP-style image states before the text", "tiny"),
    Builtin("arch-hunyuanvideo1.5", "hunyuanvideo15", "f3compile.models.hunyuan15:build_arch_hunyuan15", (121, 480, 848),
            "HunyuanVideo 1.5 (54 blocks, 16x128 heads, 32 latent channels, VAE 4x16x16), 121 frames 480x848", "preset"),
    Builtin("tiny-cogvideo", "cogvideo", "f3compile.models.cogvideo:build_builtin", None,
            "CogVideo stage 1, 3 layers of 64, 5 frames of 4x4 tokens", "tiny", {"stage": 1}),
    Builtin("tiny-cogvideo-stage2", "cogvideo", "f3compile.models.cogvideo:build_builtin", None,
            "CogVideo stage 2 (interpolation), 3 layers of 64, windows of 2x2 tokens", "tiny", {"stage": 2}),
    Builtin("arch-cogvideo", "cogvideo", "f3compile.models.cogvideo:build_builtin", None,
            "CogVideo stage 1 at its published sizes (48 layers, 3072 wide, 5 frames of 20x20 tokens)", "preset",
            {"stage": 1}),
    Builtin("arch-cogvideo-stage2", "cogvideo", "f3compile.models.cogvideo:build_builtin", None,
            "CogVideo stage 2 at its published sizes (10x10 windows, shift 5 on odd layers)", "preset", {"stage": 2}),
):
    register_builtin(_builtin)

register_layout(Layout("cogvideo.json", "autoregressive", "a CogVideo model directory written by `f3compile convert`"))
register_layout(Layout("model_index.json", "diffusion", "a diffusers pipeline saved with save_pretrained"))
register_layout(Layout("config.json", "diffusion", "a bare diffusers denoiser saved with save_pretrained"))


# -- lookups -----------------------------------------------------------------------------------
def builtin_names(kind: str | None = None, group: str | None = None, attention: str | None = None) -> list[str]:
    """Names of the builtins of `kind`, `group` and `attention` ("temporal" or "full"; None: any), in
    registration order."""
    return [name for name, entry in BUILTINS.items()
            if (kind is None or entry.kind == kind) and (group is None or entry.group == group)
            and (attention is None or FAMILIES[entry.family].attention == attention)]


def parse_builtin(name: str) -> tuple[Builtin, float]:
    """'arch-latte,width-scale=0.25' (the part after `builtin:`) -> (its entry, 0.25)."""
    base, *options = name.split(",")
    entry = BUILTINS.get(base)
    if entry is None:
        presets = builtin_names(group="preset")
        if base.startswith("arch-"):
            raise F3Error(f"unknown preset '{base}'; choose one of: {', '.join(sorted(presets))}")
        known = builtin_names(group="tiny") + builtin_names(group="reference") + presets
        raise F3Error(f"unknown builtin model '{name}'; choose one of: {', '.join(known)}")
    scale = 1.0
    for option in options:
        key, _, value = option.partition("=")
        if key != "width-scale":
            raise F3Error(f"unknown option '{key}' in builtin:{name}; the presets take width-scale=S")
        if not entry.scalable:
            raise F3Error(f"builtin:{base} takes no width-scale (only the builtin:arch-* presets do)")
        try:
            scale = float(value)
        except ValueError:
            raise F3Error(f"width-scale must be a number, got '{value}'") from None
        if not 0.01 <= scale <= 1.0:
            raise F3Error(f"width-scale must be in [0.01, 1], got {scale}")
    return entry, scale


def kind_of_spec(spec: str | Path) -> Kind:
    """The kind of model `spec` names: a builtin's family's, a directory's layout's, else the default."""
    spec = str(spec)
    if spec.startswith("builtin:"):
        return KINDS[parse_builtin(spec.split(":", 1)[1])[0].kind]
    path = Path(spec).expanduser()
    if path.is_dir():
        for layout in LAYOUTS:
            if (path / layout.marker).is_file():
                return KINDS[layout.kind]
    return KINDS[DEFAULT_KIND]


def resolve(reference: str) -> Any:
    """The object a "module:attribute" reference names (imported now)."""
    module, _, attribute = reference.partition(":")
    return getattr(import_module(module), attribute)


def implementation(kind: str | Kind):
    """The `ModelKind` object that runs the verbs for `kind`."""
    entry = kind if isinstance(kind, Kind) else KINDS.get(kind)
    if entry is None:
        raise F3Error(f"unknown model kind {kind!r}; f3compile runs {', '.join(KINDS)}")
    return resolve(entry.implementation)
