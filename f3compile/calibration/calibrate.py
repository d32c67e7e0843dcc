"""`calibrate`: run the real sampling loop over prompts and record temporal attention.

The data loop (prompts → encoded batches → `denoise_loop`) is kept apart from the statistics
(`AttentionRecorder`); the denoiser's train/eval state is restored afterwards.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import option
from ..errors import F3Error
from ..manifest import library_versions
from ..models.base import Prompt, VideoModel, resolve_shapes
from ..models.discovery import find_temporal_units, temporal_blocks
from ..parallel import Part, Sums
from ..sampling import check_latents, denoise_loop, set_timesteps, start_latents
from .recorder import CHANGE_MODES, SKETCH_WIDTH, AttentionRecorder
from .parts import conclude, work_split
from .stats import SCHEMA, CalibrationStats


@dataclass
class CalibrationConfig:
    """How the calibration sampling runs."""

    steps: int = option(25, "denoising steps per prompt")
    frames: int | None = option(None, "frames per video (default: the model's)")
    height: int | None = option(None, "video height in pixels (default: the model's)")
    width: int | None = option(None, "video width in pixels (default: the model's)")
    guidance_scale: float = option(7.5, "classifier-free guidance scale (<= 1 disables CFG)")
    seed: int = option(0, "seed of the initial latents (prompt i starts from seed + i)")
    batch_size: int = option(1, "prompts per sampling call")
    heatmaps: bool = option(True, "write heatmap PNGs")
    query_fraction: float | None = option(None, "share of each frame's query positions recorded in full 3-D attention "
                                          "(seeded; default: `auto_query_fraction`)")
    device: str = option("cpu", "cpu or cuda: where the model samples (under torchrun with cuda: each rank's own GPU)")
    residual_change: str = option("sketch", "how each block's step-to-step residual change is recorded: sketch "
                                  "(a 96-direction projection per row), exact (the whole residual) or off (no reuse)")
    precision: str | None = option(None, "fp32, bf16 or fp16: the dtype the denoiser and text encoder are loaded and run in (default: bf16 on cuda, fp32 on the cpu)")


# The recorder's work per recorded query against the plain model's per FLOP: its probabilities are
# an unfused fp32 softmax over every key plus per-frame sums, where the model runs a fused attention.
# Measured on a 2-core CPU (arch-wan2.1-1.3b at width-scale 0.0625, 2,100 and 4,725 tokens, every
# query recorded): 9.2x and 10.4x its FLOPs' share of the plain calls' time (docs/BENCHMARKS.md).
RECORDER_SLOWDOWN = 10.0
# The recorder's share of the plain sampling loop that `auto_query_fraction` aims at.
RECORDER_SHARE = 0.25
# Fewest query positions recorded per frame by default: on ref-wan, recording 8 of 16 positions moved
# its per-head scores by 1.8% on average, 1 of 16 by 6.6% (docs/BENCHMARKS.md).
MIN_QUERIES = 64


def recorder_flops(units, batch: int) -> int:
    """FLOPs of the recorder's probabilities with every query recorded, one denoiser call of `batch`
    rows: per full 3-D attention unit B·H·N² scores of 2d FLOPs each, plus softmax and sums (8)."""
    return sum(batch * unit.heads * unit.sequence ** 2 * (2 * unit.head_dim + 8) for unit in units if unit.spatiotemporal)


def auto_query_fraction(model: VideoModel, units, shapes) -> tuple[float, float | None]:
    """The default `--query-fraction` and the recorder's predicted share of the plain loop at it.

    The largest fraction whose recorder work (`recorder_flops` × `RECORDER_SLOWDOWN` × fraction)
    stays within `RECORDER_SHARE` of one plain denoiser call's counted FLOPs, but never fewer than
    `MIN_QUERIES` positions per frame: 1 where frames have at most that many tokens (the share is
    then not counted: None)."""
    full = [unit for unit in units if unit.spatiotemporal]
    if not full or max(unit.tokens for unit in full) <= MIN_QUERIES:
        return 1.0, None
    from ..models.flops import call_flops

    batch = 2 * shapes.batch  # the CFG batch `call_flops` counts
    plain = call_flops(model, shapes)[0]
    per_query = RECORDER_SLOWDOWN * recorder_flops(full, batch) / max(plain, 1)
    floor = MIN_QUERIES / min(unit.tokens for unit in full)
    fraction = min(1.0, max(RECORDER_SHARE / per_query, floor))
    return fraction, fraction * per_query


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a text file (one per line, '#' comments) or JSON lines with a "prompt" key and,
    for image-to-video models, an "image" path (relative to the file): those come back as `Prompt`s."""
    path = Path(path)
    if not path.is_file():
        raise F3Error(f"prompts file {path} does not exist; pass a text file with one prompt per line")
    prompts = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise F3Error(f"{path}:{number} starts with '{{' but is not valid JSON; fix the line or quote the prompt") from None
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
                raise F3Error(f"{path}:{number}: a JSON line needs a string \"prompt\" field")
            line = record["prompt"]
            if record.get("image") is not None:
                if not isinstance(record["image"], str) or not record["image"]:
                    raise F3Error(f"{path}:{number}: \"image\" must be a path (relative to the prompts file)")
                image = path.parent / record["image"]
                if not image.is_file():
                    raise F3Error(f"{path}:{number}: image {image} does not exist; give a path relative to the prompts file")
                line = Prompt(line, image)
        prompts.append(line)
    if not prompts:
        raise F3Error(f"prompts file {path} has no prompts; add one prompt per line")
    return prompts


def images_digest(prompts: list[str]) -> dict:
    """{"count", "sha256"} of the prompts' images in order: the files' bytes (a PIL image's pixels)."""
    digest = hashlib.sha256()
    for prompt in prompts:
        image = getattr(prompt, "image", None)
        if isinstance(image, (str, Path)):
            digest.update(Path(image).read_bytes())
        elif image is not None:
            digest.update(image.tobytes())
    return {"count": sum(getattr(p, "image", None) is not None for p in prompts), "sha256": "sha256:" + digest.hexdigest()}


def _unit_record(unit) -> dict:
    """A unit as calibration.json lists it (a temporal unit without the spatiotemporal fields)."""
    record = dataclasses.asdict(unit)
    if not unit.spatiotemporal:
        del record["tokens"], record["text_tokens"]
    return record


def prompt_generator(seed: int, index: int) -> torch.Generator:
    """The generator of prompt `index` (0-based, in the prompts file): its start latents are drawn
    from it, so they depend on the seed and the prompt's place only, never on the process or shard
    that samples it. With batch 1, prompt i starts from the noise `generate --seed SEED+i` starts from."""
    return torch.Generator().manual_seed(seed + index)


def batch_start(latents: torch.Tensor | None, model: VideoModel, shapes, first: int, count: int,
                seed: int) -> tuple[torch.Tensor, torch.Generator]:
    """(start latents of the prompts first..first+count-1, the generator their loop steps with: the
    first prompt's, after its draw)."""
    generators = [prompt_generator(seed, first + i) for i in range(count)]
    one = model.latent_shape(dataclasses.replace(shapes, batch=1))
    starts = [start_latents(latents, one, model.scheduler, g, model.native_layout) for g in generators]
    return torch.cat(starts), generators[0]


def _meta_for(model: VideoModel, prompts: list[str], config: CalibrationConfig, shapes, timesteps: list[int], units,
              latents: torch.Tensor | None, prompts_sha256: str | None) -> dict:
    prompt_digest = prompts_sha256 or "sha256:" + hashlib.sha256("\n".join(prompts).encode()).hexdigest()
    scheduler = model.scheduler
    meta = {
        "schema": SCHEMA,
        "model": {"spec": model.spec, "fingerprint": model.fingerprint, "family": model.family},
        "prompts": {"count": len(prompts), "sha256": prompt_digest},
        **({"images": images_digest(prompts)} if model.conditioning is not None else {}),
        "seed": config.seed,
        "seeds": "per prompt: SEED + index",
        "latents": None if latents is None else {
            "shape": list(latents.shape),
            "sha256": "sha256:" + hashlib.sha256(latents.float().contiguous().numpy().tobytes()).hexdigest()},
        "shapes": dataclasses.replace(shapes, batch=config.batch_size).to_dict(),
        "steps": config.steps,
        "guidance_scale": config.guidance_scale,
        "scheduler": type(scheduler).__name__,
        "num_train_timesteps": int(scheduler.config.num_train_timesteps),
        "timesteps": timesteps,
        "units": [_unit_record(unit) for unit in units],
        "versions": library_versions(),
        "device": torch.device(config.device).type,
        "precision": model.precision,
    }
    if any(unit.spatiotemporal for unit in units):
        meta["query_fraction"] = config.query_fraction
    meta["residual_change"] = config.residual_change if config.residual_change != "sketch" else \
        {"sketch": SKETCH_WIDTH}
    if model.experts:  # Wan 2.2: which expert ran which timesteps (plans stage each expert on its own)
        meta["experts"] = {name: list(span) for name, span in model.experts.items()}  # the sampled positions follow from it and `seed`
    return meta


def calibrate(
    model: VideoModel,
    prompts: list[str],
    config: CalibrationConfig | None = None,
    output_dir: str | Path | None = None,
    prompts_sha256: str | None = None,
    progress: bool = False,
    latents: torch.Tensor | None = None,
    shard: Part | None = None,
) -> CalibrationStats:
    """Sample every prompt with the model's scheduler and CFG, recording temporal attention.

    `latents` (batch 1): every prompt starts from them instead of noise (Tune-A-Video edits a
    video from its DDIM-inverted latents). With `output_dir`, writes stats.safetensors,
    calibration.json and heatmaps/ atomically. Under torchrun the ranks split the prompt batches
    and rank 0 writes the result; `shard` K/N samples only the K-th part and writes its partial
    sums, for `merge` (`parallel`).
    """
    config = config or CalibrationConfig()
    if config.steps < 1:
        raise F3Error(f"--steps must be at least 1, got {config.steps}")
    if config.batch_size < 1:
        raise F3Error(f"--batch-size must be at least 1, got {config.batch_size}")
    if not prompts:
        raise F3Error("no prompts to calibrate on; pass at least one prompt")
    if config.query_fraction is not None and not 0.0 < config.query_fraction <= 1.0:
        raise F3Error(f"--query-fraction must be in (0, 1], got {config.query_fraction}")
    if config.residual_change not in CHANGE_MODES:
        raise F3Error(f"--residual-change {config.residual_change!r} is unknown; use one of {', '.join(CHANGE_MODES)}")
    shapes = resolve_shapes(model, config.frames, config.height, config.width, config.batch_size)
    if latents is not None:
        check_latents(latents, model.latent_shape(dataclasses.replace(shapes, batch=1)))
    model.check_images(prompts)
    units = find_temporal_units(model, shapes)
    blocks = temporal_blocks(units)
    recorder_share = None
    if config.query_fraction is None:
        fraction, recorder_share = auto_query_fraction(model, units, shapes)
        config = dataclasses.replace(config, query_fraction=fraction)
    scheduler = model.scheduler
    set_timesteps(scheduler, config.steps, family=model.family)
    total = int(scheduler.config.num_train_timesteps)  # a flow-matching sampler starts at t = total: the top step
    timesteps = [min(int(t), total - 1) for t in scheduler.timesteps]
    batches = [prompts[i : i + config.batch_size] for i in range(0, len(prompts), config.batch_size)]
    group, part = work_split(config.device, shard, len(batches))
    meta = _meta_for(model, prompts, config, shapes, timesteps, units, latents, prompts_sha256)
    if recorder_share is not None:
        meta["recorder_share"] = round(recorder_share, 4)  # predicted, of the plain loop, at the default fraction
    group.check_same(json.dumps(meta, sort_keys=True, default=str), "models, prompts or settings")
    mine = part.span(len(batches))

    started = time.perf_counter()
    was_training = model.denoiser.training
    model.denoiser.eval()
    bar = None
    if progress and group.writer:
        from tqdm import tqdm

        bar = tqdm(total=len(mine) * config.steps, desc="calibrate", unit="step", leave=False)
    recorder = AttentionRecorder(model.denoiser, units, blocks, len(timesteps), query_fraction=config.query_fraction,
                                 seed=config.seed, change=config.residual_change)
    sums = Sums()

    def on_step(index: int, t) -> None:
        recorder.step = index
        if bar is not None and index:
            bar.update(1)

    try:
        with model.placed(group.device), recorder, torch.no_grad():
            for number in mine:
                batch = batches[number]
                cond, uncond, condition = model.encode_conditioned(batch, shapes)
                start, generator = batch_start(latents, model, shapes, number * config.batch_size, len(batch),
                                               config.seed)
                device = group.device
                denoise_loop(model.denoise, scheduler, start.to(device), cond.to(device), uncond.to(device),
                             config.steps, config.guidance_scale, generator, on_step=on_step,
                             layout=model.native_layout, condition=condition, family=model.family)
                sums.add(recorder.tensors())  # this batch's sums, in fp32 as recorded; added compensated
                recorder.clear()
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        model.denoiser.train(was_training)
    meta["seconds"] = round(time.perf_counter() - started, 3)
    fixed = {"timesteps": torch.tensor(timesteps, dtype=torch.float32)}
    return conclude(meta, sums, fixed, output_dir, config.heatmaps, group, part, mine)
