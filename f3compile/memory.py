"""What each verb holds at its peak, predicted from the meta device in seconds (`inspect --memory`).

Weights are counted from the modules as they would be loaded (the run's precision, the modules a
class keeps in fp32 kept so). The transient memory of one denoiser call and of one VAE decode is
*traced*: the call runs on the meta device under a dispatch mode that adds up the bytes of the
tensors its operators make and frees them when they die (weights and inputs excluded), and
attention runs as a fused kernel would (its output, never the N×N matrix), as the CPU and CUDA
kernels do. What the calibration recorder adds is the model of `calibration.recorder`. Each verb's
parts are the things alive at once at its peak, on the device it runs on and on the host beside it.

An architecture preset (`builtin:arch-…` at full width) is counted with its published text encoder
and VAE (its runnable stand-ins are small), so its numbers are those of the published model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from .runtime.pipeline import decode_bytes
from .tracing import traced_peak

GIB = 2**30
# the verbs a report covers, in the order a user runs them
VERBS = ("calibrate", "plan --search", "export", "generate")  # with --target torch, "compile" for "export"


@dataclass
class Prediction:
    """One verb's peak: the parts alive at once on the device and on the host, in bytes."""

    verb: str
    device: dict[str, int] = field(default_factory=dict)
    host: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def device_total(self) -> int:
        return sum(self.device.values())

    @property
    def host_total(self) -> int:
        return sum(self.host.values())

    def to_dict(self) -> dict[str, Any]:
        return {"verb": self.verb, "device_bytes": self.device_total, "host_bytes": self.host_total,
                "device": dict(self.device), "host": dict(self.host), "notes": list(self.notes)}


def weight_bytes(module: torch.nn.Module | None) -> int:
    if module is None:
        return 0
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def call_peak(model, shapes, cfg: bool = True) -> int:
    """Transient bytes of one denoiser call at `shapes` (batch doubled with classifier-free guidance)."""
    inputs = model.example_inputs(shapes, cfg=cfg)
    modules = [model.denoiser[name] for name in model.experts] if model.experts else [model.denoiser]
    if model.experts:  # one call runs one expert: the larger peak
        return max(traced_peak(lambda m=m: model.expert_call(model.expert_holder(name), *inputs), [m], list(inputs))[0]
                   for name, m in zip(model.experts, modules))
    return traced_peak(lambda: model.denoise_call(model.denoiser, *inputs), modules, list(inputs))[0]


def decode_peak(vae: torch.nn.Module | None, model, shapes, tiled: bool = False) -> int | None:
    """Transient bytes of decoding one video at `shapes` with `vae` (0 without one; `tiled`: with the
    VAE's own tiling, None where it has none)."""
    if vae is None:
        return 0
    if tiled and not hasattr(vae, "enable_tiling"):
        return None
    return decode_bytes(vae, model.latent_shape(dataclasses.replace(shapes, batch=1)), tiled)


def trajectory_step_bytes(model, shapes) -> int:
    """Host bytes `plan --search` keeps per prompt and sampled step of the dense loop, where it measures
    candidates: the loop's state before the step (the latents, and a copy of the scheduler: its fixed
    tables and a multistep sampler's history of `solver_order` earlier outputs; its last sample is the
    latents) and the latents after it, in fp32."""
    import numpy as np

    latent = 4 * int(torch.Size(model.latent_shape(dataclasses.replace(shapes, batch=1))).numel())
    scheduler = model.scheduler
    history = int(scheduler.config.get("solver_order", 1)) if hasattr(scheduler, "model_outputs") else 0
    fixed = sum(value.numel() * value.element_size() if isinstance(value, torch.Tensor) else value.nbytes
                for value in vars(scheduler).values() if isinstance(value, (torch.Tensor, np.ndarray)))
    return (2 + history) * latent + fixed


def recorder_extra(units, batch: int, change: str = "sketch", query_fraction: float = 1.0) -> dict[str, int]:
    """What the calibration recorder holds beyond a plain call (`calibration.recorder`): every
    block's residual of the previous step as its sketch (or whole, or none), one unit's fp32
    transients and one chunk of recomputed probabilities."""
    from .calibration.recorder import _CHUNK_BYTES, SKETCH_WIDTH
    from .models.discovery import temporal_blocks

    full = [unit for unit in units if unit.spatiotemporal]
    unit = max(units, key=lambda u: u.sequence * u.channels)
    tokens = unit.sequence if unit.spatiotemporal else unit.frames * max(unit.tokens, 1)
    kept = {"sketch": min(unit.channels, SKETCH_WIDTH), "exact": unit.channels, "off": 0}[change]
    rows = batch * tokens
    parts = {"recorder: residual sketches" if change == "sketch" else "recorder: residuals":
             len(temporal_blocks(units)) * rows * kept * 4,
             "recorder: one unit's fp32 transients": 4 * rows * unit.channels * 4}
    if full:
        recorded = max(1, round(unit.sequence * query_fraction))  # never more queries than are recorded
        queries = max(1, min(1024, recorded, _CHUNK_BYTES // (4 * batch * unit.heads * unit.sequence)))
        parts["recorder: one chunk of probabilities"] = 3 * batch * unit.heads * queries * unit.sequence * 4
    return parts


def has_published_components(model) -> bool:
    """Whether `model` is an unscaled preset counted with its published text encoder and VAE."""
    return model.spec.startswith(("builtin:arch-wan", "builtin:arch-hunyuanvideo")) and "width-scale" not in model.spec


def published_components(model) -> dict[str, torch.nn.Module]:
    """The published text encoder and VAE (and Wan2.1 I2V's CLIP image encoder) of an unscaled
    architecture preset, on the meta device (the preset runs with small stand-ins); {} for anything else."""
    if not has_published_components(model):
        return {}
    if model.family == "hunyuanvideo15":
        return _published_hunyuan15(model)
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLWan
    from transformers import CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

    stand_in = getattr(model.pipeline, "vae", None)
    wan22 = stand_in is not None and int(stand_in.config.z_dim) == 48
    conditioning = model.conditioning
    with init_empty_weights(include_buffers=True):
        # UMT5-XXL, Wan's text encoder, and Wan2.1's VAE (diffusers' defaults are its config) or Wan2.2's
        text = UMT5EncoderModel(UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                                           num_heads=64, feed_forward_proj="gated-gelu"))
        vae = AutoencoderKLWan(base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, in_channels=12,
                               out_channels=12, patch_size=2, scale_factor_spatial=16, latents_mean=[0.0] * 48,
                               latents_std=[1.0] * 48) if wan22 else AutoencoderKLWan()
        components = {"text_encoder": text, "vae": vae}
        if conditioning is not None and conditioning.tokens:  # Wan2.1 I2V: CLIP ViT-H/14's vision tower
            components["image_encoder"] = CLIPVisionModel(CLIPVisionConfig(
                hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16, image_size=224,
                patch_size=14))
    text.tie_weights()  # built empty, the shared embedding and the encoder's come apart
    return {name: module.eval() for name, module in components.items()}


def _published_hunyuan15(model) -> dict[str, torch.nn.Module]:
    """HunyuanVideo 1.5's text encoders (Qwen2.5-VL-7B's language model, ByT5-small's encoder), its
    VAE (diffusers' defaults are the published config) and, for image-to-video, SigLIP so400m's
    vision tower (384 px, patch 14: 729 states), on the meta device."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLHunyuanVideo15
    from transformers import (Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel, SiglipVisionConfig, SiglipVisionModel,
                              T5Config, T5EncoderModel)

    with init_empty_weights(include_buffers=True):
        components = {
            "text_encoder": Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(
                vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                num_attention_heads=28, num_key_value_heads=4,
                rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]})),
            "text_encoder_2": T5EncoderModel(T5Config(vocab_size=384, d_model=1472, d_kv=64, d_ff=3584, num_layers=12,
                                                      num_heads=6, feed_forward_proj="gated-gelu")),
            "vae": AutoencoderKLHunyuanVideo15(),
        }
        if model.conditioning is not None:
            components["image_encoder"] = SiglipVisionModel(SiglipVisionConfig(
                hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16, image_size=384,
                patch_size=14))
    return {name: module.eval() for name, module in components.items()}


def predict(model, shapes, plan=None, precision: str = "bf16", device: str = "cuda", stages: int | None = None,
            change: str = "sketch", target: str = "aoti", budget: int | None = None) -> list[Prediction]:
    """Each verb's peak for `model` (built on the meta device in `precision`) at `shapes`, with
    `plan` (its stages and windowed units; None: a dense one-stage build). `device` cuda: what the
    GPU holds (the text encoder and VAE of `generate` on the host, as it runs them); cpu: everything
    the process holds, as on a CPU-only machine. `budget` (bytes, the device's memory): `generate`
    decodes tile by tile where the untiled decode would not fit beside its programs, as the runtime
    decides on the device (without a budget the untiled decode is counted, and noted)."""
    from .devices import PRECISION_DTYPES
    from .models.discovery import find_temporal_units

    dtype = PRECISION_DTYPES[precision]
    on_gpu = device != "cpu"
    units = find_temporal_units(model, shapes)
    published = published_components(model)
    text = published.get("text_encoder", model.text_encoder)
    # a second text encoder (HunyuanVideo 1.5's ByT5) is loaded and run beside the first
    second = published.get("text_encoder_2", getattr(model.pipeline, "text_encoder_2", None)
                           if model.pipeline is not None else None)
    vae = published.get("vae", getattr(model.pipeline, "vae", None) if model.pipeline is not None else None)
    denoiser = weight_bytes(model.denoiser)
    if "text_encoder" in published:  # built in fp32: loaded in the run's precision
        from .models.base import cast_weights

        for encoder in (text, second):
            if encoder is not None:
                cast_weights(encoder, dtype)
    text_bytes = weight_bytes(text) + (weight_bytes(second) if second is not None else 0)
    vae_bytes = weight_bytes(vae)
    # an image-to-video model's image encoder (CLIP) encodes each image on the host, in fp32
    image_encoder = published.get("image_encoder", getattr(model.pipeline, "image_encoder", None)
                                  if model.conditioning is not None else None)
    image_bytes = weight_bytes(image_encoder) if image_encoder is not None else 0
    call = call_peak(model, shapes)
    latent = 4 * int(torch.Size(model.latent_shape(shapes)).numel())
    # the latents, the CFG-doubled model input, the doubled noise prediction and the scheduler's step
    sampling = {"latents and noise": 6 * latent}
    plan_stages = len(plan.stages) if plan is not None else (stages or 1)
    windowed = _windowed_bytes(model, plan, units)

    calibrate = Prediction("calibrate", {"denoiser weights": denoiser, "text encoder weights": text_bytes,
                                         "one denoiser call": call, **sampling,
                                         **recorder_extra(units, 2 * shapes.batch, change)})
    search = Prediction("plan --search", {"denoiser weights": denoiser, "text encoder weights": text_bytes,
                                          "one denoiser call": call, **sampling})
    search.notes.append(f"on the host besides, the dense trajectory it measures candidates on: "
                        f"{trajectory_step_bytes(model, shapes) / 2**20:.1f} MiB per prompt and sampled step "
                        "(at most every step of one loop)")
    # the torch build is `compile`'s programs (verified against the eager model); the others `export`'s artifacts
    export = Prediction("compile" if target == "torch" else "export", {"denoiser weights (capture and programs)": denoiser,
                                   "windowed units' permuted weights": windowed * plan_stages,
                                   "one denoiser call (verification)": call})
    # the pipeline's other components are loaded with the model (the build ships them), on the host
    export.host["text encoder weights"] = text_bytes
    onnx_attention = _onnxruntime_attention(units, shapes) if target == "onnx" else 0
    if target == "onnx":  # initializers are written one at a time; onnxruntime verifies on the host
        export.host["onnxruntime session weights"] = denoiser
        export.host["onnxruntime attention scores and their softmax"] = onnx_attention
        export.notes.append("onnxruntime on the CPU materialises every attention's scores")
    # the runtime's weight pool: one copy of what the stage programs have in common; an AOTI package
    # computes with its stage program's tensors (exported without weights of its own); onnxruntime's
    # CPU sessions with the build's one weight file, its CUDA sessions each with a copy of their own
    shared = target in ("torch", "aoti") or not on_gpu
    if shared:
        programs = {"stage programs' weights (shared)": denoiser,
                    "windowed units' permuted weights": windowed * plan_stages}
    else:
        programs = {f"{plan_stages} stage program(s)' weights": denoiser * plan_stages}
    # onnxruntime runs attention as MatMul and Softmax: the scores and their softmax of one call at once
    step, step_name = ((call + onnx_attention, "one onnxruntime call (scores and softmax)")
                       if target == "onnx" else (call, "one denoiser call"))
    frames_bytes = 4 * shapes.frames * shapes.height * shapes.width * 3
    untiled = decode_peak(vae, model, shapes)
    decode = untiled + frames_bytes
    for prediction in (calibrate, search, export):
        prediction.host["VAE weights"] = vae_bytes
        if image_bytes:
            prediction.host["image encoder weights"] = image_bytes
    if on_gpu:  # the programs stay loaded; the text encoder, the loop and the VAE take turns beside them
        phases = {step_name: step + sampling["latents and noise"], "the text encoder (while encoding)": text_bytes}
        decoding, tiled_note = "the VAE decoding untiled", None
        free = None if budget is None else budget - sum(programs.values()) - vae_bytes
        tiles = vae is not None and hasattr(vae, "enable_tiling") and vae_bytes + decode > max(phases.values())
        if tiles and free is not None and untiled > 0.9 * free:  # the runtime's own rule (`Runtime.decode`)
            tiled = decode_peak(vae, model, shapes, tiled=True)  # traced only here: a tiled trace takes long
            if tiled < untiled:
                decoding, decode = "the VAE decoding tile by tile (untiled it would not fit)", tiled + frames_bytes
        elif tiles and free is None:
            tiled_note = ("the VAE decodes tile by tile where untiled it would not fit beside the programs "
                          "(pass --budget to count that)")
        phases[decoding] = vae_bytes + decode
        largest = max(phases, key=phases.get)
        generate = Prediction("generate", {**programs, largest: phases[largest]},
                              {"text encoder weights (between turns)": text_bytes, "VAE weights (between turns)": vae_bytes,
                               **({"image encoder weights": image_bytes} if image_bytes else {})})
        generate.notes.append(("the stage programs share their common weights" if shared else
                               "each stage's onnxruntime CUDA session holds its own weights") + "; beside them in turn: "
                              + ", ".join(f"{name} {size / GIB:.2f}" for name, size in phases.items()) + " GiB")
        if tiled_note:
            generate.notes.append(tiled_note)
    else:  # one memory: everything loaded stays, the largest transient on top
        generate = Prediction("generate", {**programs, "text encoder weights": text_bytes, "VAE weights": vae_bytes,
                                           **({"image encoder weights": image_bytes} if image_bytes else {}),
                                           step_name: step, **sampling, "VAE decode": decode})
        for prediction in (calibrate, search, export):
            prediction.device.update(prediction.host)
            prediction.host = {}
    return [calibrate, search, export, generate]


def _windowed_bytes(model, plan, units) -> int:
    """Bytes of the q/k/v/out weights a stage program holds again for the units whose heads the
    window pass regroups (a permuted copy; a unit whose heads keep their order shares the capture's
    weights); the largest stage's."""
    from .windows import regroup

    if plan is None:
        return 0
    modules = dict(model.denoiser.named_modules())
    by_id = {unit.id: unit for unit in units}
    most = 0
    for stage in plan.stages:
        total = 0
        for unit_id, windows in stage.windows.items():
            unit = by_id.get(unit_id)
            if unit is None or unit_id not in modules:
                continue
            if regroup(windows, stage.prune_heads.get(unit_id, []), unit.heads, unit.frames).permuted:
                attention = modules[unit_id]
                total += sum(weight_bytes(getattr(attention, name, None)) for name in ("to_q", "to_k", "to_v"))
                total += weight_bytes(attention.to_out[0])
        most = max(most, total)
    return most


ONNXRUNTIME_SCORE_COPIES = 1.5  # measured, see `_onnxruntime_attention`


def _onnxruntime_attention(units, shapes) -> int:
    """onnxruntime's attention (MatMul, then Softmax) beside one call's other activations: the scores
    of one full 3-D attention call, (B, H, N, N) fp32, and part of their softmax. Counting 2 copies
    over-predicted a verified ONNX export on the CPU at 4,725 tokens by 1.47x; 1.5 copies keep it
    within 0.74-1.13x of the measured peak from 600 to 4,725 tokens (`tools/memory_check.py`,
    docs/BENCHMARKS.md). The export's own guard (`exporters.export._unverifiable`) counts 2, the
    most MatMul and Softmax can hold at once."""
    from .models.base import attention_scores_bytes

    return int(ONNXRUNTIME_SCORE_COPIES * attention_scores_bytes(units, 2 * shapes.batch))


def render(predictions: list[Prediction], title: str, budget: float | None = None) -> str:
    """A table of each verb's peak and what makes it up; `budget` (bytes): say whether it fits."""
    lines = [title, "| verb | device peak | host beside it | fits |" if budget else "| verb | device peak | host beside it |",
             "|---|---:|---:|---|" if budget else "|---|---:|---:|"]
    for prediction in predictions:
        row = f"| {prediction.verb} | {prediction.device_total / GIB:.1f} GiB | {prediction.host_total / GIB:.1f} GiB |"
        if budget:
            row += " yes |" if prediction.device_total <= budget else f" no (over by {(prediction.device_total - budget) / GIB:.1f} GiB) |"
        lines.append(row)
    lines.append("")
    for prediction in predictions:
        parts = ", ".join(f"{name} {size / GIB:.2f}" for name, size in prediction.device.items() if size)
        host = ", ".join(f"{name} {size / GIB:.2f}" for name, size in prediction.host.items() if size)
        lines.append(f"{prediction.verb}: {parts} GiB" + (f"; host: {host} GiB" if host else "")
                     + "".join(f" ({note})" for note in prediction.notes))
    return "\n".join(lines)


def report(plan, model, shapes, precision: str = "bf16", device: str = "cuda", target: str = "aoti",
           change: str = "sketch", budget: int | None = None) -> tuple[list[Prediction], dict[str, Any]]:
    """(predictions, what they were counted for) of `plan` on `model` (built on the meta device in
    `precision`); a plan made on another model is carried over by depth, as `inspect` does."""
    from .models.discovery import find_temporal_units
    from .planning.plan import carry_over

    units = find_temporal_units(model, shapes)
    carried = None
    if plan is not None and plan.model.get("spec") == model.spec:  # the same builtin, built on the meta device
        plan.model["fingerprint"] = model.fingerprint
    elif plan is not None and plan.model.get("fingerprint") != model.fingerprint:
        carried = plan.model.get("spec")
        plan = carry_over(plan, units, model.spec)
    predictions = predict(model, shapes, plan, precision, device, change=change, target=target, budget=budget)
    context = {"model": model.spec, "frames": shapes.frames, "height": shapes.height, "width": shapes.width,
               "precision": precision, "device": device, "target": target, "residual_change": change,
               "stages": len(plan.stages) if plan is not None else 1, "carried_over_from": carried,
               "published_components": has_published_components(model)}
    return predictions, context
