"""`compile`: capture the denoiser with torch.export, run the passes per plan stage, save.

capture (non-strict torch.export at fixed shapes, CFG-doubled batch) → unlifted graph →
pass pipeline → re-export (the pruned graph is traced again, which re-checks every shape and
lifts only the weights still used) → `stageK/denoiser.pt2` + `manifest.json`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .._io import atomic_dir, sha256_file
from ..devices import check_device
from ..errors import F3Error
from ..manifest import INPUT_NAMES, OUTPUT_NAMES
from ..models.base import DenoiseModule, VideoModel, VideoShapes
from ..models.discovery import find_temporal_units
from ..passes import PassContext
from ..planning.plan import PruningPlan, Stage
from ..runtime.components import save_components
from .pipeline import run_pipeline

PRECISION_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class CompiledStage:
    """One plan stage as a pruned, static torch.export program."""

    stage: Stage
    program: torch.export.ExportedProgram
    passes: dict[str, bool]

    @property
    def parameters(self) -> int:
        return program_parameters(self.program)


def program_parameters(program: torch.export.ExportedProgram) -> int:
    """Number of parameters (buffers such as frame indices or positional tables excluded)."""
    return sum(program.state_dict[name].numel() for name in program.graph_signature.parameters)


def export_inputs(model: VideoModel, shapes: VideoShapes, seed: int = 0, dtype: torch.dtype = torch.float32,
                  device: str | torch.device = "cpu") -> tuple[torch.Tensor, ...]:
    """Example inputs of the exported signature: batch = shapes.batch × 2 (CFG), on `device`.

    `sample` and `encoder_hidden_states` take `dtype`; `timestep` stays float32. The values are
    drawn on the CPU, so every device sees the same numbers.
    """
    sample, timestep, ehs = model.example_inputs(shapes, cfg=True, seed=seed)
    return sample.to(device, dtype), timestep.to(device), ehs.to(device, dtype)


def placed_denoiser(model: VideoModel, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """The denoiser on `device` in `dtype`: the model's own module when it already is, else a copy
    (the model itself is never modified, so one loaded model can be compiled for several targets)."""
    import copy

    first = next(model.denoiser.parameters())
    if first.dtype == dtype and first.device == device:
        return model.denoiser
    if device.type == "meta":  # shapes only: the copy never holds real weights
        return _meta_copy(model.denoiser).to(dtype)
    return copy.deepcopy(model.denoiser).to(device=device, dtype=dtype)


def _meta_copy(module: torch.nn.Module) -> torch.nn.Module:
    import copy

    memo = {id(p): torch.nn.Parameter(p.detach().to("meta"), requires_grad=p.requires_grad) for p in module.parameters()}
    memo.update({id(b): b.detach().to("meta") for b in module.buffers()})
    return copy.deepcopy(module, memo)


def batch_dims(batch_range: tuple[int, int] | None):
    """torch.export dynamic shapes with one symbolic CFG batch over all three inputs (or None)."""
    if batch_range is None:
        return None
    batch = torch.export.Dim("batch", min=batch_range[0], max=batch_range[1])
    return ({0: batch}, {0: batch}, {0: batch})


def _export(module, inputs, batch_range):
    try:
        with torch.no_grad():
            return torch.export.export(module, inputs, dynamic_shapes=batch_dims(batch_range), strict=False)
    except Exception as exc:
        if batch_range is None or "Constraints violated" not in str(exc):
            raise
        hint = next((line.strip() for line in str(exc).splitlines() if "Dim(" in line), "")
        raise F3Error(f"the graph does not support a batch of {batch_range[0]}..{batch_range[1]} ({hint}); "
                      "narrow --dynamic-batch") from None


def capture(model: VideoModel, shapes: VideoShapes, dtype: torch.dtype = torch.float32,
            batch_range: tuple[int, int] | None = None, device: str | torch.device = "cpu") -> torch.export.ExportedProgram:
    """torch.export (non-strict, fixed shapes) of `model.denoise` at `shapes`, weights in `dtype`
    on `device`.

    The graph is captured where it will run and in its final precision (dtype casts and device
    placements inside the model are traced as constants); for another dtype or device a copy of
    the denoiser is captured and the model itself is never modified.
    """
    device = torch.device(device)
    module = DenoiseModule(placed_denoiser(model, dtype, device), model.denoise_call).eval()
    return _export(module, export_inputs(model, shapes, dtype=dtype, device=device), batch_range)


def apply_stage(program: torch.export.ExportedProgram, stage: Stage, units, inputs,
                batch_range: tuple[int, int] | None = None) -> CompiledStage:
    """Run the pass pipeline for `stage` on a copy of `program`'s graph and re-export it."""
    gm = program.module()
    ctx = PassContext(units={u.id: u for u in units}, stage=stage)
    results = run_pipeline(gm, ctx)
    pruned = _export(gm, inputs, batch_range)
    return CompiledStage(stage=stage, program=pruned, passes=results)


def _check_shapes(model: VideoModel, plan: PruningPlan, shapes: VideoShapes) -> None:
    frames = plan.calibration.get("frames")
    uses_frames = any(stage.keep_frames for stage in plan.stages)
    if uses_frames and frames and shapes.frames != frames:
        raise F3Error(f"the plan prunes key frames of a {frames}-frame video; compile with --frames {frames}")


def compile(model: VideoModel, plan: PruningPlan | None, shapes: VideoShapes | None = None,
            dtype: torch.dtype = torch.float32, batch_range: tuple[int, int] | None = None,
            device: str | torch.device = "cpu") -> list[CompiledStage]:
    """One pruned program per plan stage (the dense model when `plan` is None), weights in `dtype`
    on `device` (every tensor the passes create goes there too).

    With `batch_range` (min, max) the CFG batch dimension stays symbolic in the programs."""
    from ..calibration.calibrate import resolve_shapes

    shapes = shapes or model.shapes
    shapes = resolve_shapes(model, shapes.frames, shapes.height, shapes.width, shapes.batch)
    if shapes.frames != model.shapes.frames or (shapes.height, shapes.width) != (model.shapes.height, model.shapes.width):
        model.shapes = dataclasses.replace(shapes, batch=1)
        model.info.pop("_temporal_units", None)
    units = find_temporal_units(model)
    plan = plan or PruningPlan.dense(model, units)
    _check_shapes(model, plan, shapes)
    plan.check_model(model, units)
    device = check_device(device, allow_meta=True)
    program = capture(model, shapes, dtype, batch_range, device=device)
    inputs = export_inputs(model, shapes, dtype=dtype, device=device)
    return [apply_stage(program, stage, units, inputs, batch_range) for stage in plan.stages]


def _io_spec(model: VideoModel, shapes: VideoShapes, dtype: torch.dtype, program: torch.export.ExportedProgram) -> dict:
    """I/O names, shapes and dtypes; the output's from the program's traced metadata (no compute)."""
    inputs = export_inputs(model, shapes, dtype=dtype, device="meta")
    output_node = next(n for n in reversed(program.graph.nodes) if n.op == "output")
    output = output_node.args[0][0].meta["val"]
    return {
        "inputs": [{"name": n, "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")} for n, t in zip(INPUT_NAMES, inputs)],
        "outputs": [{"name": OUTPUT_NAMES[0], "shape": [inputs[0].shape[0]] + [int(d) for d in output.shape[1:]],
                     "dtype": str(output.dtype).replace("torch.", "")}],
    }


def stage_entries(model: VideoModel, compiled: list[CompiledStage], directory: Path, shapes: VideoShapes,
                  precision: str = "fp32") -> list[dict]:
    """Save each stage's program under `directory/stageK/` and describe it for the manifest."""
    io = _io_spec(model, shapes, PRECISION_DTYPES[precision], compiled[0].program)
    entries = []
    for number, stage in enumerate(compiled):
        stage_dir = directory / f"stage{number}"
        stage_dir.mkdir(exist_ok=True)
        path = stage_dir / "denoiser.pt2"
        torch.export.save(stage.program, str(path))
        entries.append({
            "index": number,
            "timesteps": list(stage.stage.timesteps),
            "plan": stage.stage.to_dict(),
            "files": {"pt2": {"path": f"stage{number}/denoiser.pt2", "sha256": sha256_file(path)}},
            "parameters": stage.parameters,
            "passes": stage.passes,
            "precision": precision,
            **io,
        })
    return entries


def build_manifest(model: VideoModel, plan: PruningPlan | None, plan_path, shapes: VideoShapes, stages: list[dict],
                   started: float, **extra) -> dict:
    from ..manifest import SCHEMA, library_versions, text_encoder_info

    return {
        "schema": SCHEMA,
        "model": {"spec": model.spec, "fingerprint": model.fingerprint, "family": model.family, **model.info_public()},
        "plan": {"path": str(plan_path) if plan_path else None,
                 "fingerprint": sha256_file(plan_path) if plan_path else None,
                 "granularity": plan.granularity if plan else None, "ratio": plan.ratio if plan else 0.0},
        "shapes": {**shapes.to_dict(), "cfg_batch": shapes.batch * 2},
        "sample_layout": model.sample_layout,
        "scheduler": {"class": type(model.scheduler).__name__, "config": json_safe(dict(model.scheduler.config))},
        "text_encoder": text_encoder_info(model),
        **decoder_info(model),
        "versions": library_versions(),
        "stages": stages,
        **extra,
        "seconds": round(time.perf_counter() - started, 3),
    }


def decoder_info(model: VideoModel) -> dict:
    """How samples become frames when the pipeline has no VAE: RGB pixels packed space-to-depth."""
    pipe = model.pipeline
    if pipe is None or getattr(pipe, "vae", None) is not None:
        return {}
    return {"decoder": {"kind": "pixel_shuffle", "factor": model.vae_scale_factor, "range": [-1, 1]}}


def json_safe(value):
    """Scheduler configs hold tuples and numpy scalars; make them plain JSON."""
    import json

    return json.loads(json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def compile_to_dir(model: VideoModel, plan: PruningPlan | None, output_dir: str | Path,
                   shapes: VideoShapes | None = None, plan_path: str | Path | None = None,
                   precision: str = "fp32", device: str | torch.device = "cpu") -> dict:
    """Compile every stage on `device` in `precision` and write `stageK/denoiser.pt2` and
    `manifest.json` atomically."""
    from ..manifest import write_manifest

    if precision not in PRECISION_DTYPES:
        raise F3Error(f"--precision {precision!r} is unknown; use one of {', '.join(PRECISION_DTYPES)}")
    started = time.perf_counter()
    device = check_device(device)
    compiled = compile(model, plan, shapes, dtype=PRECISION_DTYPES[precision], device=device)
    shapes = dataclasses.replace(model.shapes, batch=(shapes or model.shapes).batch)
    with atomic_dir(output_dir) as tmp:
        stages = stage_entries(model, compiled, tmp, shapes, precision=precision)
        manifest = build_manifest(model, plan, plan_path, shapes, stages, started, device=device.type,
                                  components=save_components(model, tmp / "pipeline"))
        write_manifest(tmp, manifest)
    return manifest
