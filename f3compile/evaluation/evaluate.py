"""`eval`: generate with the dense and each pruned model from the same seeds and score the videos.

Per variant (the dense model and every plan): probe accuracy of the generated videos against the
prompts' labels (colour, shape, direction, all three — the CLIPSIM analogue), Fréchet distance of
probe features against real clips of the same labels (the FVD analogue, with its spread over
seeds), PSNR against the dense videos of the same seeds, temporal consistency, and the measured
denoising-loop speedup of the pruned programs over the dense program (interleaved, medians), timed
on the very programs that generated the videos (at the evaluation's batch).

Pruned variants run the compiled, pruned torch.export programs — the artifacts that get exported —
switched by timestep exactly as the deployed runtime switches stages.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..config import option
from ..errors import F3Error
from . import metrics

SCHEMA = "f3compile.eval/1"
LABEL_KEYS = ("color", "shape", "direction")


@dataclass
class EvalConfig:
    samples: int = option(2, "videos per prompt, each from its own seed")
    steps: int = option(20, "denoising steps")
    guidance_scale: float = option(5.0, "classifier-free guidance scale")
    seed: int = option(0, "first seed; sample s of every prompt uses the same noise in every variant")
    batch: int = option(20, "prompts per sampling call (the programs' batch; CFG doubles it)")
    real_per_prompt: int = option(10, "real clips per prompt for the Fréchet reference")
    repeat: int = option(5, "timed calls per variant for the speedup (bench's machinery on the programs that "
                              "generate the videos: at `batch`, interleaved, medians)")
    device: str = option("cpu", "cpu or cuda: where the programs are compiled and the videos sampled")
    precision: str | None = option(None, "fp32, bf16 or fp16: the dtype the model is loaded in and its programs run in "
                                         "(default: bf16 on cuda, fp32 on the cpu)")


@dataclass
class Variant:
    """One model to evaluate: `plan` None is the dense model."""

    name: str
    plan: Any = None
    meta: dict = dataclasses.field(default_factory=dict)


def read_eval_prompts(path: str | Path) -> list[dict]:
    """JSON lines {"prompt", "color", "shape", "direction"} (labels from the moving-shapes domain)."""
    from ..models.reference.domain import COLORS, DIRECTIONS, SHAPES

    allowed = {"color": tuple(COLORS), "shape": SHAPES, "direction": DIRECTIONS}
    path = Path(path)
    if not path.is_file():
        raise F3Error(f"prompts file {path} does not exist; pass a JSON-lines file with prompt, color, shape, direction")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise F3Error(f"{path}:{number} is not JSON; each line must be "
                          '{"prompt": ..., "color": ..., "shape": ..., "direction": ...}') from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise F3Error(f"{path}:{number} needs a \"prompt\" string")
        for key, values in allowed.items():
            if record.get(key) not in values:
                raise F3Error(f"{path}:{number}: \"{key}\" must be one of {', '.join(values)}, got {record.get(key)!r}")
        records.append({"prompt": record["prompt"], **{k: record[k] for k in LABEL_KEYS}})
    if not records:
        raise F3Error(f"prompts file {path} is empty; add JSON lines with prompt, color, shape, direction")
    return records


def default_prompts(seed: int = 0) -> list[dict]:
    """Every label combination once (60 prompts), worded with the held-out paraphrase templates."""
    from ..models.reference.domain import COLORS, DIRECTIONS, SHAPES, Labels, caption

    rng = np.random.default_rng(seed)
    records = []
    for shape in SHAPES:
        for color in COLORS:
            for direction in DIRECTIONS:
                labels = Labels(shape, color, direction)
                records.append({"prompt": caption(labels, rng, "heldout"), "color": color, "shape": shape,
                                "direction": direction})
    return records


def decode(model, latents: torch.Tensor) -> torch.Tensor:
    """(B, F, H, W, 3) frames in [0, 1]: pixel unpacking for VAE-less models, else the VAE."""
    vae = getattr(model.pipeline, "vae", None) if model.pipeline is not None else None
    if vae is None:
        from ..models.reference.models import unpack

        return unpack(latents, model.vae_scale_factor)
    from ..runtime.pipeline import vae_decode

    return vae_decode(vae, latents)


def _shapes(model, variants: list[Variant], log: Callable[[str], None]):
    """Where every variant samples: the first plan's calibration shape (the model's own without
    one); a plan calibrated elsewhere runs there too when its units apply, and says so."""
    from ..models.base import plan_shapes, shape_note

    plans = [variant.plan for variant in variants if variant.plan is not None]
    shapes = plan_shapes(model, plans[0] if plans else None)
    for variant in variants:
        note = shape_note(variant.plan, shapes)
        if note:
            log(f"{variant.name}: {note}")
    return shapes


def _capture(model, shapes, device):
    """The denoiser captured once at `shapes` on `device` in the dtype it was loaded in, shared by
    every variant's compile."""
    from ..compiler.compile import capture

    return capture(model, shapes, model.dtype, device=device)


def _compiled(model, plan, shapes, device, captured):
    """The compiled programs of `plan` (None: dense) at `shapes`, from the shared capture."""
    from ..compiler.compile import compile

    return compile(model, plan, shapes, dtype=model.dtype, device=device, captured=captured)


def _generate(model, compiled, prompts: list[dict], config: EvalConfig, cond, uncond,
              device: torch.device, condition: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(final latents, frames (samples × prompts, F, H, W, 3)), sample-major; identical noise for
    every variant. `condition`: an image-to-video model's condition latents, one row per prompt."""
    from ..compiler.compile import ProgramLoop
    from ..sampling import denoise_loop, initial_latents

    programs = ProgramLoop(compiled)
    shape = model.latent_shape(dataclasses.replace(compiled.shapes, batch=config.batch))
    videos, finals = [], []
    for sample in range(config.samples):
        for start in range(0, len(prompts), config.batch):
            rows = list(range(start, min(start + config.batch, len(prompts))))
            pad = config.batch - len(rows)
            index = torch.tensor(rows + [rows[-1]] * pad)  # static programs: pad the last call
            generator = torch.Generator().manual_seed(config.seed * 1_000_003 + sample * 1009 + start)
            scheduler = type(model.scheduler).from_config(model.scheduler.config)
            # CPU noise: the same on every device
            latents = initial_latents(shape, scheduler, generator, model.native_layout).to(device)
            latents = denoise_loop(None, scheduler, latents, cond[index].to(device), uncond[index].to(device),
                                   config.steps, config.guidance_scale, generator, denoise_for=programs.denoise_for(),
                                   layout=model.native_layout,
                                   condition=None if condition is None else condition[index].to(device),
                                   family=model.family)
            finals.append(latents[: len(rows)].float().cpu())
            videos.append(decode(model, finals[-1]))
    return torch.cat(finals), torch.cat(videos)


def _real_clips(prompts: list[dict], per_prompt: int, frames: int, size: int, seed: int) -> torch.Tensor:
    """`per_prompt` real clips of every prompt's labels, (N, F, H, W, 3) in [0, 1]."""
    from ..models.reference.domain import Labels, render_clip

    rng = np.random.default_rng(seed + 99)
    clips = [render_clip(Labels(p["shape"], p["color"], p["direction"]), frames, size, seed=int(rng.integers(2**31)))
             for p in prompts for _ in range(per_prompt)]
    return torch.from_numpy(np.stack(clips))


def _speedup(dense, pruned, config: EvalConfig) -> float:
    """The denoising-loop speedup of the compiled programs that generated the videos, measured by
    `f3compile bench`'s machinery (dense and pruned interleaved, medians per stage, stages weighted
    by their steps) at the evaluation's batch: each variant is captured once, for both."""
    from ..benchmark import measure

    rows = measure(dense, pruned, ["torch"], repeat=config.repeat, warmup=1)
    return float(next(row for row in rows if row["stage"] == "loop")["speedup"])


def _fidelity(latents, frames, dense_latents, dense_frames) -> dict:
    """Pruned vs dense from the same noise: decoded frames (PSNR, SSIM) and final latents (rel. L2)."""
    if dense_frames is None:
        return {"psnr_vs_dense": None, "ssim_vs_dense": None, "latents_rel_l2_vs_dense": None}
    return {"psnr_vs_dense": float(metrics.psnr(frames, dense_frames).mean()),
            "ssim_vs_dense": float(metrics.ssim(frames, dense_frames).mean()),
            "latents_rel_l2_vs_dense": float(metrics.relative_l2(latents, dense_latents).mean())}


def evaluate(model, variants: list[Variant], prompts: list[dict], config: EvalConfig | None = None,
             log: Callable[[str], None] = print, measures: str = "probe") -> dict:
    """Score every variant (the first must be the dense model) on `prompts`; returns eval.json's dict.

    `measures="probe"`: the moving-shapes probe's accuracy and Fréchet distance plus fidelity to
    the dense model; `"fidelity"` (any model, prompts without labels): fidelity only — PSNR and
    SSIM of the decoded frames and relative L2 of the final latents against the dense model's
    from the same noise, and the measured speedup."""
    config = config or EvalConfig()
    if measures not in ("probe", "fidelity"):
        raise F3Error(f"measures must be probe or fidelity, got {measures!r}")
    for name in ("samples", "steps", "batch", "real_per_prompt", "repeat"):
        if getattr(config, name) < 1:
            raise F3Error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
    if config.guidance_scale <= 1.0:
        raise F3Error("--guidance-scale must be > 1: the programs take the CFG-doubled batch")
    if not variants or variants[0].plan is not None:
        raise F3Error("the first variant must be the dense model")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise F3Error(f"variant names must be unique, got {names}")
    # the precision the model was loaded in is the one recorded (and the one its programs run in)
    config = dataclasses.replace(config, batch=min(config.batch, len(prompts)), precision=model.precision)
    from ..devices import check_device

    device = check_device(config.device)
    shapes = _shapes(model, variants, log)
    if measures == "fidelity":
        return _evaluate_fidelity(model, variants, prompts, config, device, log, shapes)
    from ..models.reference.probe import load_probe

    probe = load_probe()
    cond, uncond = model.encode_prompts([p["prompt"] for p in prompts])
    real = _real_clips(prompts, config.real_per_prompt, shapes.frames, shapes.height, config.seed)
    real_features, real_predicted = probe.classify(real)
    real_truth = [p for p in prompts for _ in range(config.real_per_prompt)]
    truth = [p for _ in range(config.samples) for p in prompts]
    groups = [index for _ in range(config.samples) for index in range(len(prompts))]  # video -> its prompt
    reference = {
        "accuracy": metrics.accuracy(real_predicted, real_truth),
        # the floor: two disjoint real sets with the same labels (every prompt in both halves)
        "frechet_real_halves": metrics.frechet_distance(real_features[0::2].numpy(), real_features[1::2].numpy()),
        "temporal_consistency": float(metrics.temporal_consistency(real).mean()),
        "clips": len(real),
    }
    batch_shapes = dataclasses.replace(shapes, batch=config.batch)
    captured = _capture(model, batch_shapes, device)
    dense = _compiled(model, None, batch_shapes, device, captured)
    results, dense_frames, dense_latents, grid = {}, None, None, {}
    for variant in variants:
        started = time.perf_counter()
        compiled = dense if variant.plan is None else _compiled(model, variant.plan, batch_shapes, device, captured)
        latents, frames = _generate(model, compiled, prompts, config, cond, uncond, device)
        features, predicted = probe.classify(frames)
        per_seed = [metrics.frechet_distance(features[s * len(prompts):(s + 1) * len(prompts)].numpy(),
                                             real_features.numpy()) for s in range(config.samples)]
        entry = {
            **variant.meta,
            "accuracy": metrics.accuracy(predicted, truth),
            "accuracy_ci95": metrics.bootstrap_accuracy(predicted, truth, groups),
            "frechet": metrics.frechet_distance(features.numpy(), real_features.numpy()),
            "frechet_by_seed": per_seed,
            "frechet_seed_mean": float(np.mean(per_seed)),
            "frechet_spread": float(np.std(per_seed)),
            **_fidelity(latents, frames, dense_latents, dense_frames),
            "temporal_consistency": float(metrics.temporal_consistency(frames).mean()),
            "speedup": 1.0 if variant.plan is None else _speedup(dense, compiled, config),
        }
        if dense_frames is None:
            dense_frames, dense_latents = frames, latents
        results[variant.name] = entry
        grid[variant.name] = frames[: min(6, len(prompts))]
        acc = entry["accuracy"]
        log(f"{variant.name}: colour {acc['color']:.0%} shape {acc['shape']:.0%} direction {acc['direction']:.0%} "
            f"all {acc['all']:.0%}  Fréchet {entry['frechet']:.2f}  speedup {entry['speedup']:.2f}x "
            f"({time.perf_counter() - started:.0f}s)")
    return {
        "schema": SCHEMA, "measures": "probe", "model": {"spec": model.spec, "fingerprint": model.fingerprint},
        "config": dataclasses.asdict(config), "prompts": len(prompts), "videos_per_variant": len(truth),
        "reference": reference, "results": results, "_grid": grid,
        "_grid_prompts": [p["prompt"] for p in prompts[: min(6, len(prompts))]],
    }


def _evaluate_fidelity(model, variants: list[Variant], prompts: list[dict], config: EvalConfig, device,
                       log: Callable[[str], None], shapes) -> dict:
    """Fidelity to the dense model only: usable on any model, no labels and no probe (an image-to-video
    model's prompts carry their images)."""
    from ..models.base import Prompt

    cond, uncond, condition = model.encode_conditioned([Prompt(p["prompt"], p.get("image")) for p in prompts], shapes)
    batch_shapes = dataclasses.replace(shapes, batch=config.batch)
    captured = _capture(model, batch_shapes, device)
    dense_compiled = _compiled(model, None, batch_shapes, device, captured)
    results, dense, grid = {}, None, {}
    for variant in variants:
        started = time.perf_counter()
        compiled = dense_compiled if variant.plan is None else _compiled(model, variant.plan, batch_shapes, device,
                                                                          captured)
        latents, frames = _generate(model, compiled, prompts, config, cond, uncond, device, condition)
        entry = {**variant.meta, **_fidelity(latents, frames, *(dense or (None, None))),
                 "speedup": 1.0 if variant.plan is None else _speedup(dense_compiled, compiled, config)}
        if dense is None:
            dense = (latents, frames)
        results[variant.name] = entry
        grid[variant.name] = frames[: min(6, len(prompts))]
        if variant.plan is not None:
            log(f"{variant.name}: PSNR {entry['psnr_vs_dense']:.2f} dB  SSIM {entry['ssim_vs_dense']:.4f}  latents "
                f"rel. L2 {entry['latents_rel_l2_vs_dense']:.4f}  speedup {entry['speedup']:.2f}x "
                f"({time.perf_counter() - started:.0f}s)")
    return {
        "schema": SCHEMA, "measures": "fidelity", "model": {"spec": model.spec, "fingerprint": model.fingerprint},
        "config": dataclasses.asdict(config), "prompts": len(prompts),
        "videos_per_variant": len(prompts) * config.samples, "reference": None, "results": results, "_grid": grid,
        "_grid_prompts": [p["prompt"] for p in prompts[: min(6, len(prompts))]],
    }
