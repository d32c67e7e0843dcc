"""`load_model(spec)`: builtin names, local diffusers directories and locally cached hub ids."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .._io import read_json
from ..errors import F3Error
from . import registry
from .base import VideoModel, VideoShapes, cast_weights, fingerprint_modules
from .families import BY_DENOISER_CLASS, BY_PIPELINE_CLASS, FAMILIES, Family, encode_hashed
from .wan_i2v import ImageConditioning

DEFAULT_FRAMES = 8
# what a precision applies to: the denoiser(s) and the text encoder; the VAE stays fp32 (it decodes
# once per video, and its fp16/bf16 decodes are where diffusers' pipelines keep fp32 too)
CAST_COMPONENTS = ("transformer", "transformer_2", "unet", "text_encoder", "text_encoder_2")


def quiet_libraries() -> None:
    # Library chatter (deprecations, optional backends) would drown the tool's own output.
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*deprecated.*")
    try:
        import diffusers
        import transformers

        diffusers.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.disable_progress_bar()  # "Loading pipeline components" bars
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # pragma: no cover - logging is cosmetic
        pass


def pixel_pack_factor(channels: int) -> int:
    """k for a pixel-space denoiser whose sample holds RGB frames packed k×k space-to-depth."""
    factor = round((channels / 3) ** 0.5)
    if 3 * factor * factor != channels:
        raise F3Error(f"a pipeline without a VAE works on packed RGB pixels (3·k² channels); "
                      f"its denoiser has {channels} input channels")
    return factor


def _denoiser_of(pipe) -> torch.nn.Module:
    return pipe.transformer if hasattr(pipe, "transformer") and pipe.transformer is not None else pipe.unet


def _default_shapes(family: Family, denoiser, vae_scale_factor: int) -> VideoShapes:
    if family.name == "wan":  # the published 480p shape: 81 frames (21 latent frames)
        return VideoShapes(batch=1, frames=81, height=480, width=832)
    if family.name == "cogvideox":  # the published shape: 49 frames (13 latent frames) of 480x720
        return VideoShapes(batch=1, frames=49, height=480, width=720)
    if family.name == "hunyuanvideo15":  # the published 480p shape: 121 frames (31 latent frames) of 480x848
        return VideoShapes(batch=1, frames=121, height=480, width=848)
    config = denoiser.config
    latent = config.get("sample_size", 32)
    latent = latent[0] if isinstance(latent, (list, tuple)) else latent
    frames = config.get("video_length", None) or DEFAULT_FRAMES
    return VideoShapes(batch=1, frames=int(frames), height=int(latent) * vae_scale_factor, width=int(latent) * vae_scale_factor)


def _text_dims(family: Family, denoiser, pipe) -> tuple[int, int]:
    if family.name == "latte":
        dim = denoiser.config.caption_channels
        length = 120  # LattePipeline pads prompts to 120 tokens
    elif family.name == "wan":
        from .wan import TEXT_LENGTH

        dim, length = denoiser.config.text_dim, TEXT_LENGTH
        if pipe is not None and getattr(pipe, "tokenizer", None) is not None:  # a shorter tokenizer pads less
            length = min(length, int(pipe.tokenizer.model_max_length))
    elif family.name == "cogvideox":  # the pipeline's max_sequence_length must equal the transformer's
        dim, length = denoiser.config.text_embed_dim, denoiser.config.max_text_seq_length
    elif family.name == "hunyuanvideo15":  # the packed context: glyph and Qwen rows, one mask column
        from .hunyuan15 import packing_of

        packing = packing_of(denoiser.config)
        return packing.length, packing.width + 1
    else:
        dim = denoiser.config.cross_attention_dim
        length = pipe.tokenizer.model_max_length if pipe is not None else 77
    if pipe is not None and getattr(pipe, "text_encoder", None) is not None:
        dim = pipe.text_encoder.config.hidden_size if hasattr(pipe.text_encoder.config, "hidden_size") else dim
    return int(length), int(dim)


def from_pipeline(pipe, spec: str, shapes: tuple[int, int, int] | None = None, meta: bool = False) -> VideoModel:
    """Wrap a diffusers text-to-video pipeline as a `VideoModel` (`meta`: its weights are on the meta
    device; fingerprinted by configuration)."""
    # the class itself or the supported pipeline it subclasses
    family = next((BY_PIPELINE_CLASS[cls.__name__] for cls in type(pipe).__mro__ if cls.__name__ in BY_PIPELINE_CLASS), None)
    if family is None:
        raise F3Error(
            f"pipeline class {type(pipe).__name__} is not supported; "
            f"use one of: {', '.join(sorted(BY_PIPELINE_CLASS))}"
        )
    pipe.set_progress_bar_config(disable=True)
    from .schedulers import check_scheduler

    check_scheduler(family.name, getattr(pipe, "scheduler", None), spec)
    denoiser = _denoiser_of(pipe).eval()
    temporal_scale, experts, denoise_call, extra = 1, None, family.denoise, {}
    conditioning, latent_channels, image, expand = None, None, False, False
    if family.name == "wan":
        from functools import partial

        from . import wan, wan_i2v

        image = any(cls.__name__ == wan_i2v.PIPELINE_CLASS for cls in type(pipe).__mro__)
        expand = bool(pipe.config.get("expand_timesteps"))  # Wan2.2 TI2V: a timestep per token
        wan.refuse_unsupported(pipe, spec)
        wan.refuse_unsupported(denoiser, spec, image=image or expand)
        if expand:
            denoise_call = partial(wan_i2v.denoise_per_token, first_frame=image)
        if image:
            conditioning = wan_i2v.conditioning_of(denoiser.config, getattr(pipe, "image_encoder", None), expand)
            latent_channels = int(denoiser.config.out_channels)
            if conditioning.tokens:
                denoise_call = partial(wan_i2v.denoise, tokens=conditioning.tokens, width=conditioning.width,
                                       text_dim=int(denoiser.config.text_dim))
            elif conditioning.width:
                raise F3Error(f"{spec}: the transformer takes CLIP image states (image_dim) but the pipeline has no "
                              "image_encoder; save the pipeline with its image encoder and image processor")
        if pipe.vae is not None:
            temporal_scale, vae_scale = wan.vae_scales(pipe.vae)
        else:  # no VAE: packed RGB pixels, one latent frame per frame (builtin:ref-wan)
            vae_scale = pixel_pack_factor(int(denoiser.config.in_channels))
        second = getattr(pipe, "transformer_2", None)
        if second is not None or pipe.config.get("boundary_ratio") is not None:
            if second is None or pipe.transformer is None or pipe.config.get("boundary_ratio") is None:
                raise F3Error(f"{spec} has one Wan 2.2 expert or no boundary_ratio; f3compile runs both experts "
                              "(transformer, transformer_2) with their boundary_ratio")
            wan.refuse_unsupported(second, spec, image=image)
            if (image and conditioning.tokens) or expand:
                raise F3Error(f"{spec}: two experts with CLIP image states or per-token timesteps are not a published "
                              "Wan layout; f3compile runs the Wan2.2 A14B experts (no image encoder, one timestep)")
            total = int(pipe.scheduler.config.num_train_timesteps)
            experts = wan.expert_ranges(float(pipe.config.boundary_ratio), total)
            extra = {"_expert_call": family.denoise, "boundary_ratio": float(pipe.config.boundary_ratio),
                     "experts": {name: list(span) for name, span in experts.items()}}
            denoise_call = partial(wan.denoise_experts, boundary=float(pipe.config.boundary_ratio) * total)
            denoiser = torch.nn.ModuleDict({"transformer": pipe.transformer.eval(), "transformer_2": second.eval()})
    elif family.name == "cogvideox":
        from . import cogvideox

        cogvideox.refuse_unsupported(denoiser.config, spec)
        temporal_scale, vae_scale = cogvideox.vae_scales(pipe.vae)
    elif family.name == "hunyuanvideo15":
        from . import hunyuan15

        hunyuan15.refuse_unsupported(denoiser.config, spec)
        image = any(cls.__name__ == hunyuan15.I2V_PIPELINE_CLASS for cls in type(pipe).__mro__)
        tokens = 0
        if image:
            encoder, extractor = getattr(pipe, "image_encoder", None), getattr(pipe, "feature_extractor", None)
            if encoder is None or extractor is None:
                raise F3Error(f"{spec}: a HunyuanVideo15ImageToVideoPipeline needs its image_encoder and "
                              "feature_extractor; save the pipeline with them")
            tokens = (int(encoder.config.image_size) // int(encoder.config.patch_size)) ** 2  # SigLIP: patches only
            if int(denoiser.config.image_embed_dim) != int(encoder.config.hidden_size):
                raise F3Error(f"{spec}: the image encoder's states are {encoder.config.hidden_size} wide, the "
                              f"transformer's image_embed_dim {denoiser.config.image_embed_dim}; they must be one width")
            conditioning = ImageConditioning(int(denoiser.config.in_channels) - int(denoiser.config.out_channels), tokens,
                                            int(denoiser.config.image_embed_dim), family="hunyuanvideo15")
        denoise_call, extra["context_mask"], extra["packing"] = hunyuan15.calling(denoiser.config, tokens)
        temporal_scale, vae_scale = int(pipe.vae_scale_factor_temporal), int(pipe.vae_scale_factor_spatial)
        latent_channels = int(denoiser.config.out_channels)
    elif getattr(pipe, "vae", None) is not None:
        vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    else:  # no VAE: pixel space, RGB frames packed space-to-depth into the channels (3·k² of them)
        vae_scale = pixel_pack_factor(int(denoiser.config.in_channels))
    if shapes is not None:
        frames, height, width = shapes
        default = VideoShapes(1, frames, height, width)
    else:
        default = _default_shapes(family, denoiser, vae_scale)
    first = pipe.transformer if experts else denoiser  # the experts share the calling convention
    length, dim = _text_dims(family, first, pipe)
    config = dict(first.config) if not experts else {  # private (bookkeeping) keys left out, as at the top level
        "experts": {name: {k: v for k, v in denoiser[name].config.items() if not k.startswith("_")} for name in experts},
        "boundary_ratio": extra["boundary_ratio"]}
    if family.name == "wan" and (image or expand):  # one checkpoint called two ways is two models (its plans, programs)
        config["f3compile_call"] = {"image": image, "expand_timesteps": expand}
    if family.name == "hunyuanvideo15" and image:
        config["f3compile_call"] = {"image": True}
    image_encoder = getattr(pipe, "image_encoder", None) if conditioning is not None else None
    if conditioning is not None:
        extra["conditioning"] = conditioning.to_dict()
    context_mask = extra.pop("context_mask", None)
    return VideoModel(
        spec=spec, family=family.name, denoiser=denoiser, scheduler=pipe.scheduler,
        text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, pipeline=pipe, shapes=default,
        latent_channels=latent_channels or int(first.config.in_channels), vae_scale_factor=vae_scale,
        text_length=length, text_dim=dim,
        fingerprint=("meta:" + fingerprint_modules(config)) if meta
        else fingerprint_modules(config, denoiser, pipe.text_encoder, image_encoder, getattr(pipe, "text_encoder_2", None)),
        denoise_call=denoise_call, encode_call=family.encode, experts=experts,
        info={**extra, "pipeline_class": type(pipe).__name__, "denoiser_class": type(first).__name__,
              "text_encoder_class": type(pipe.text_encoder).__name__ if pipe.text_encoder is not None else None,
              "scheduler_class": type(pipe.scheduler).__name__},
        temporal_scale=temporal_scale, native_layout="B,F,C,H,W" if family.name == "cogvideox" else "B,C,F,H,W",
        conditioning=conditioning, context_mask=context_mask,
    )


def check_config_types(cls, config, where: str) -> None:
    """Refuse, in one line, a config.json value whose type the class's own default rules out (a list
    for `eps`, a string for `num_layers`, ...): diffusers builds such a model and it fails only when
    called. Keys whose default is None (any type) and unknown keys are left to the class."""
    import inspect

    if not isinstance(config, dict):
        return
    for name, parameter in inspect.signature(cls.__init__).parameters.items():
        default, value = parameter.default, config.get(name)
        if name not in config or default is inspect.Parameter.empty or default is None:
            continue
        if value is None and isinstance(default, (int, float)) and not isinstance(default, bool):
            raise F3Error(f"{where}: {name} is null, where {cls.__name__} takes a number like {json.dumps(default)}; "
                          "fix the config or re-save the model with save_pretrained")
        if value is None:
            continue
        if isinstance(default, bool):
            fits = isinstance(value, bool)
        elif isinstance(default, float):
            fits = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif isinstance(default, int):
            fits = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, str):
            fits = isinstance(value, str)
        elif isinstance(default, (tuple, list)):
            fits = isinstance(value, (tuple, list)) and len(value) == len(default) and all(
                isinstance(v, type(d)) and not isinstance(v, bool) for v, d in zip(value, default))
        else:
            continue
        if not fits:
            raise F3Error(f"{where}: {name} is {json.dumps(value)[:60]}, where {cls.__name__} takes a value like "
                          f"{json.dumps(default)}; fix the config or re-save the model with save_pretrained")


def _from_bare_denoiser(path: Path, spec: str, class_name: str, dtype: torch.dtype | None = None) -> VideoModel:
    import diffusers

    family = BY_DENOISER_CLASS[class_name]
    if family.name == "tuneavideo":
        from .tuneavideo import load_unet

        denoiser = load_unet(path)
        if dtype is not None:
            cast_weights(denoiser, dtype)
    else:
        if family.name in ("wan", "cogvideox", "hunyuanvideo15"):
            from . import cogvideox, hunyuan15, wan

            found = read_json(path / "config.json", "re-save the denoiser")
            check_config_types(getattr(diffusers, class_name), found, f"{path}/config.json")
            {"wan": wan, "cogvideox": cogvideox, "hunyuanvideo15": hunyuan15}[family.name].refuse_unsupported(
                found, str(path))
        denoiser = _from_pretrained(getattr(diffusers, class_name), path, dtype).eval()
    return from_denoiser(denoiser, spec, family)


def cast_pipeline(pipe, dtype: torch.dtype) -> None:
    """The pipeline's denoiser(s) and text encoder in `dtype`, in place, as `from_pretrained` with
    that dtype would have loaded them (the modules their classes keep in fp32 stay fp32)."""
    for name in CAST_COMPONENTS:
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module):
            cast_weights(module, dtype)


def from_denoiser(denoiser: torch.nn.Module, spec: str, family: Family | None = None) -> VideoModel:
    """A `VideoModel` around a denoiser module alone (no pipeline: the published sampler and VAE
    strides of its family; prompts map to hashed pseudo-embeddings), fingerprinted by config and weights."""
    import diffusers

    if family is None:
        family = next((BY_DENOISER_CLASS[cls.__name__] for cls in type(denoiser).__mro__
                       if cls.__name__ in BY_DENOISER_CLASS), None)
        if family is None:
            raise F3Error(f"denoiser class {type(denoiser).__name__} is not supported; "
                          f"use one of: {', '.join(sorted(BY_DENOISER_CLASS))}")
    class_name = family.denoiser_class
    temporal_scale, vae_scale, latent_channels = 1, 8, int(denoiser.config.in_channels)
    denoise_call, encode_call, extra, context_mask = family.denoise, encode_hashed, {}, None
    if family.name == "wan":  # the published sampler and VAE strides; a bare transformer brings neither
        from . import wan

        wan.refuse_unsupported(denoiser, spec)
        scheduler, temporal_scale = wan.scheduler(), 4
    elif family.name == "cogvideox":
        from . import cogvideox

        cogvideox.refuse_unsupported(denoiser.config, spec)
        scheduler, temporal_scale = cogvideox.scheduler(), 4
    elif family.name == "hunyuanvideo15":  # the published sampler, VAE strides 4x16x16 and 32 latent channels
        from . import hunyuan15

        hunyuan15.refuse_unsupported(denoiser.config, spec)
        scheduler, temporal_scale, vae_scale = hunyuan15.scheduler(), 4, 16
        denoise_call, context_mask, packing = hunyuan15.calling(denoiser.config)
        encode_call = hunyuan15.encode_hashed
        latent_channels = int(denoiser.config.out_channels)
        extra = {"packing": packing}
    else:
        scheduler = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                            clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    length, dim = _text_dims(family, denoiser, None)
    return VideoModel(
        spec=spec, family=family.name, denoiser=denoiser, scheduler=scheduler, text_encoder=None, tokenizer=None,
        pipeline=None, shapes=_default_shapes(family, denoiser, vae_scale), latent_channels=latent_channels,
        vae_scale_factor=vae_scale, text_length=length, text_dim=dim,
        fingerprint=fingerprint_modules(dict(denoiser.config), denoiser),
        denoise_call=denoise_call, encode_call=encode_call, context_mask=context_mask,
        info={**extra, "pipeline_class": None, "denoiser_class": class_name, "text_encoder_class": None,
              "scheduler_class": type(scheduler).__name__, "note": "bare denoiser: prompts map to hashed pseudo-embeddings"},
        temporal_scale=temporal_scale, native_layout="B,F,C,H,W" if family.name == "cogvideox" else "B,C,F,H,W",
    )


def _from_pretrained(cls, path: Path, dtype: torch.dtype | None = None):
    """`cls.from_pretrained(path)`, a directory whose config does not build the class or does not fit
    its weights refused in one line (diffusers raises ValueError, TypeError, RuntimeError, ... there).
    `dtype`: the denoiser(s) and text encoder are read in it (a bf16 checkpoint is never widened to
    fp32 on the way), the other components in fp32."""
    kwargs = {}
    if dtype is not None and dtype != torch.float32:
        import diffusers

        pipeline = issubclass(cls, diffusers.DiffusionPipeline)
        kwargs["dtype"] = {**{name: dtype for name in CAST_COMPONENTS}, "default": torch.float32} if pipeline else dtype
    try:
        loaded = cls.from_pretrained(path, **kwargs)
    except F3Error:
        raise
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        reason = lines[0][:200] if lines else type(exc).__name__
        raise F3Error(f"{path} does not load as a {cls.__name__} ({type(exc).__name__}: {reason}); its config.json does "
                      "not match its weights or is malformed: re-save it with save_pretrained") from None
    modules = [loaded] if isinstance(loaded, torch.nn.Module) else [
        c for c in getattr(loaded, "components", {}).values() if isinstance(c, torch.nn.Module)]
    for module in modules:  # a config with more layers than the weights leaves them unloaded, on the meta device
        missing = next((name for name, p in module.named_parameters() if p.is_meta), None)
        if missing is not None:
            raise F3Error(f"{path}: the weights lack {missing} that its config.json asks for; the config does not "
                          "match the weights: re-save it with save_pretrained")
    return loaded


def _load_directory(path: Path, spec: str, dtype: torch.dtype | None = None) -> VideoModel:
    import diffusers

    from . import tuneavideo

    if (path / "model_index.json").is_file():
        index = read_json(path / "model_index.json", "re-save the pipeline")
        class_name = index.get("_class_name") if isinstance(index, dict) else None
        class_name = class_name if isinstance(class_name, str) else repr(class_name)
        if tuneavideo.is_tuneavideo_unet(path / "unet"):  # by its keys: the class names clash with ModelScope's
            pipe = tuneavideo.load_pipeline(path)
            if dtype is not None:
                cast_pipeline(pipe, dtype)
            return from_pipeline(pipe, spec)
        if class_name not in BY_PIPELINE_CLASS:
            raise F3Error(
                f"{path} holds a {class_name} pipeline; f3compile loads {', '.join(sorted(BY_PIPELINE_CLASS))}"
            )
        family = BY_PIPELINE_CLASS[class_name].name
        if family in ("wan", "cogvideox", "hunyuanvideo15"):  # refused before loading any weights
            from . import cogvideox, hunyuan15, wan

            module = {"wan": wan, "cogvideox": cogvideox, "hunyuanvideo15": hunyuan15}[family]
            image = {"image": class_name == "WanImageToVideoPipeline"} if family == "wan" else {}
            if family == "wan":
                wan.refuse_unsupported(index, str(path))
            for expert in ("transformer", "transformer_2"):
                if (path / expert / "config.json").is_file():
                    found = read_json(path / expert / "config.json", "re-save the pipeline")
                    check_config_types(getattr(diffusers, FAMILIES[family].denoiser_class), found,
                                       f"{path / expert}/config.json")
                    module.refuse_unsupported(found, str(path), **image)
        pipe = _from_pretrained(getattr(diffusers, class_name), path, dtype)
        return from_pipeline(pipe, spec)
    if (path / "config.json").is_file():
        config = read_json(path / "config.json", "re-save the denoiser")
        class_name = config.get("_class_name") if isinstance(config, dict) else None
        class_name = class_name if isinstance(class_name, str) else repr(class_name)  # named in the refusal below
        if tuneavideo.is_tuneavideo_unet(path):
            class_name = "TuneAVideoUNet"
        if class_name in BY_DENOISER_CLASS:
            return _from_bare_denoiser(path, spec, class_name, dtype)
        raise F3Error(
            f"{path}/config.json describes a {class_name}; a bare denoiser must be one of "
            f"{', '.join(sorted(BY_DENOISER_CLASS))}"
        )
    raise F3Error(f"{path} has neither model_index.json (pipeline) nor config.json (denoiser); pass a diffusers model directory")


def _meta_pipeline(path: Path):
    """The pipeline of the directory `path` built from its configs on the meta device: no weight file
    is read (a 14B checkpoint is counted in seconds); tokenizers and the scheduler are read as they are."""
    import importlib

    import diffusers
    import transformers

    from . import tuneavideo

    index = read_json(path / "model_index.json", "re-save the pipeline")
    class_name = index.get("_class_name") if isinstance(index, dict) else None
    if class_name not in BY_PIPELINE_CLASS or tuneavideo.is_tuneavideo_unet(path / "unet"):
        raise F3Error(f"{path} holds a {class_name} pipeline; the meta device builds "
                      f"{', '.join(sorted(BY_PIPELINE_CLASS))} directories")
    components = {}
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, list) or len(value) != 2:
            continue
        library, cls_name = value
        if library is None or cls_name is None:
            components[name] = None
            continue
        try:
            cls = getattr(importlib.import_module(library), cls_name)
        except (ImportError, AttributeError):
            raise F3Error(f"{path}/model_index.json names {library}.{cls_name} for {name}, which is not installed") from None
        where = path / name
        if isinstance(cls, type) and issubclass(cls, diffusers.ModelMixin):
            with _empty_weights():
                components[name] = cls.from_config(cls.load_config(where))
        elif isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            config = cls.config_class.from_pretrained(where)
            with _empty_weights():
                components[name] = cls(config)
        else:  # tokenizers, schedulers, image processors: small files, read as they are
            components[name] = cls.from_pretrained(where)
    pipe = getattr(diffusers, class_name)(**components)
    _buffers_to_meta(pipe)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _empty_weights():
    """Modules built inside get their parameters on the meta device (no memory, no initialisation);
    buffers and plain tensors, such as a scheduler's, stay real until `_buffers_to_meta`."""
    from accelerate import init_empty_weights

    return init_empty_weights(include_buffers=False)


def _buffers_to_meta(pipe) -> None:
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.to("meta")
            if hasattr(component, "tie_weights"):  # built empty, a transformers model's tied embeddings come apart
                component.tie_weights()


def build_builtin(name: str, seed: int = 0, meta: bool = False):
    """(pipeline, default (frames, height, width)) of the diffusion builtin `NAME[,width-scale=S]`, its
    weights drawn from `seed` (deterministic: the global RNG is restored afterwards). `meta`: built on
    the meta device, shapes without weights (instant at any size: for counting FLOPs)."""
    from contextlib import nullcontext

    entry, scale = registry.parse_builtin(name)
    if entry.kind != "diffusion":
        raise F3Error(f"builtin:{entry.name} is an {entry.kind} model, not a diffusion pipeline")
    builder = registry.resolve(entry.builder)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        with _empty_weights() if meta else nullcontext():
            pipe = builder(scale, **entry.options) if entry.scalable else builder(**entry.options)
        if meta:
            _buffers_to_meta(pipe)
    finally:
        torch.random.set_rng_state(state)
    pipe.set_progress_bar_config(disable=True)
    return pipe, entry.shapes


def _resolve_hub_id(spec: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec, local_files_only=True))
    except Exception:
        cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
        raise F3Error(
            f"model '{spec}' is neither a local directory nor in the local Hugging Face cache ({cache}); "
            "download it where there is network access, or pass a local directory or builtin:NAME"
        ) from None


def load_model(spec: str, meta: bool = False, precision: str | None = None) -> VideoModel:
    """Load a text-to-video model from `spec` and normalize it as a `VideoModel`.

    `spec` is ``builtin:NAME``, a local diffusers pipeline directory (``model_index.json``),
    a bare denoiser directory (``config.json``), or a Hugging Face id already in the local cache
    (never fetched from the network). `meta` (builtins and pipeline directories): the architecture on the meta device,
    no weights; its fingerprint is that of its configuration (`meta:sha256:…`). `precision`
    (fp32, bf16, fp16; default fp32): the dtype the denoiser(s) and text encoder are loaded in.
    """
    from ..devices import PRECISION_DTYPES, resolve_precision

    quiet_libraries()
    spec = str(spec)
    precision = resolve_precision(precision)
    # read in bf16 where asked (never widened to fp32 on the way); fp16 is read in fp32 and cast once
    # fingerprinted, as fp16 rounding would give the weights another fingerprint (`fingerprint_modules`)
    dtype = torch.bfloat16 if precision == "bf16" else None
    model = _load(spec, meta, dtype)
    if precision == "fp16":
        model.cast(PRECISION_DTYPES["fp16"])
    return model


def _load(spec: str, meta: bool, dtype: torch.dtype | None) -> VideoModel:
    kind = registry.kind_of_spec(spec).name
    if kind != "diffusion":
        raise F3Error(f"{spec} is an {kind} model: load_model takes diffusion models; load it with f3compile.load "
                      "(the CLI's verbs take either)")
    if spec.startswith("builtin:"):
        pipe, shapes = build_builtin(spec.split(":", 1)[1], meta=meta)
        if dtype is not None:
            cast_pipeline(pipe, dtype)
        return from_pipeline(pipe, spec, shapes, meta=meta)
    path = Path(spec).expanduser()
    if meta:
        if not (path / "model_index.json").is_file():
            raise F3Error(f"only builtins and pipeline directories (model_index.json) are built on the meta device, "
                          f"not {spec}")
        pipe = _meta_pipeline(path)
        if dtype is not None:
            cast_pipeline(pipe, dtype)
        return from_pipeline(pipe, spec, meta=True)
    if path.is_dir():
        return _load_directory(path, spec, dtype)
    if path.exists():
        raise F3Error(f"model spec '{spec}' is a file; pass a diffusers model directory, a cached hub id or builtin:NAME")
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return _load_directory(_resolve_hub_id(spec), spec, dtype)
    raise F3Error(f"model '{spec}' does not exist; pass a diffusers model directory, a cached hub id or builtin:NAME")


__all__ = ["load_model", "from_pipeline", "build_builtin", "FAMILIES"]
