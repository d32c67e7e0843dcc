"""`compile`: capture the denoiser with torch.export, run the passes per plan stage, save.

capture (non-strict torch.export at fixed shapes, CFG-doubled batch) → unlifted graph →
pass pipeline (`passes.PassManager`, driven by a `RewriteSpec` built here from the plan stage) →
re-export (the pruned graph is traced again, which re-checks every shape and lifts only the
weights still used) → a `CompiledModel`, which `save` writes as `stageK/denoiser.pt2` +
`manifest.json` and which `export` and `bench` consume without capturing again.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch

from .._io import atomic_dir, sha256_file
from ..devices import PRECISION_DTYPES, check_device  # noqa: F401 - PRECISION_DTYPES: the verbs import it from here
from ..tracing import meta_copy
from ..errors import F3Error
from ..manifest import INPUT_NAMES, OUTPUT_NAMES
from .. import memo
from ..memo import program_bytes
from ..models.base import DenoiseModule, TemporalUnit, VideoModel, VideoShapes, resolve_shapes, weights_state
from ..models.discovery import find_temporal_units
from ..passes import BlockRewrite, PassManager, RewriteSpec, UnitRewrite
from ..planning.plan import PruningPlan, Stage
from ..runtime.components import save_components



@dataclass
class ReuseProgram:
    """A program of a stage with temporal reuse that takes the residuals of `reused` as inputs."""

    reused: tuple[str, ...]
    program: torch.export.ExportedProgram
    passes: dict[str, bool]


@dataclass
class CompiledStage:
    """One plan stage as a pruned, static torch.export program (with temporal reuse: the program
    that computes every block and returns the reused blocks' residuals, plus one program per
    pattern of reused blocks)."""

    stage: Stage
    program: torch.export.ExportedProgram
    passes: dict[str, bool]
    reuse_programs: list[ReuseProgram] = dataclasses.field(default_factory=list)

    @property
    def parameters(self) -> int:
        return program_parameters(self.program)

    @property
    def residual_bytes(self) -> int:
        """Bytes of the residuals temporal reuse carries between steps (at the example batch)."""
        return int(sum(math.prod(_hint(d) for d in value.shape) * value.element_size()
                       for value in output_values(self.program)[1:]))


@dataclass
class CompiledModel:
    """What `compile` produced: one pruned program per plan stage, and what they were made from.

    Iterating it gives the `CompiledStage`s. `save` writes the build directory; `export` and
    `bench` take it as it is, so a plan is captured once however many artifacts are made of it.
    """

    model: VideoModel
    plan: PruningPlan | None  # None: the dense model
    shapes: VideoShapes  # resolved; batch = prompts per call (the programs take twice as many rows)
    dtype: torch.dtype
    device: torch.device
    batch_range: tuple[int, int] | None  # the symbolic CFG batch, or None (fixed)
    units: list[TemporalUnit]
    stages: list[CompiledStage]
    seconds: float = 0.0  # capture, passes and re-export
    manifest: dict | None = None  # what `save` wrote last

    def __iter__(self):
        return iter(self.stages)

    def __len__(self) -> int:
        return len(self.stages)

    def __getitem__(self, index: int) -> CompiledStage:
        return self.stages[index]

    @property
    def precision(self) -> str:
        return next(name for name, dtype in PRECISION_DTYPES.items() if dtype == self.dtype)

    def inputs(self, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """Example inputs of the programs' signature (sample, timestep, encoder_hidden_states)."""
        return export_inputs(self.model, self.shapes, seed=seed, dtype=self.dtype, device=self.device)

    def save(self, output_dir: str | Path, plan_path: str | Path | None = None) -> dict:
        """Write `stageK/denoiser.pt2` (and reuse programs), the pipeline components and
        `manifest.json` atomically; returns the manifest."""
        from ..manifest import write_manifest

        started = time.perf_counter() - self.seconds  # the manifest's `seconds` count the compilation too
        with atomic_dir(output_dir) as tmp:
            stages = stage_entries(self.model, self.stages, tmp, self.shapes, precision=self.precision)
            manifest = build_manifest(self.model, self.plan, plan_path, self.shapes, stages, started,
                                      device=self.device.type, components=save_components(self.model, tmp / "pipeline"))
            write_manifest(tmp, manifest)
        self.manifest = manifest
        return manifest


class ProgramLoop:
    """Compiled stages run as the runtime runs them: `denoise_for()` gives a fresh `denoise_for(t)`
    for one denoising loop that switches stages by timestep and, within a stage with temporal
    reuse, runs each step's program and carries the residuals."""

    def __init__(self, compiled: CompiledModel | list[CompiledStage]):
        self.stages = [c.stage for c in compiled]
        self.modules = [{(): c.program.module()} | {v.reused: v.program.module() for v in c.reuse_programs}
                        for c in compiled]
        self.dtype = sample_dtype(compiled[0].program) if len(self.stages) else torch.float32

    def denoise_for(self):
        from ..reuse import sequenced

        top = max((stage.timesteps[0] for stage in self.stages), default=0)

        def stage_index(timestep: int) -> int:  # above every range (t = 1000 of flow matching): the first stage
            timestep = min(int(timestep), top)
            index = next((i for i, stage in enumerate(self.stages) if stage.contains(timestep)), None)
            if index is None:
                raise F3Error(f"timestep {timestep} is outside every stage of the plan")
            return index
        return sequenced(stage_index, [stage.reuse for stage in self.stages],
                         [{reused: _listed(module, self.dtype) for reused, module in modules.items()}
                          for modules in self.modules])


def sample_dtype(program: torch.export.ExportedProgram) -> torch.dtype:
    """The dtype a program takes its sample (and text states) in: the dtype it was compiled in."""
    name = program.graph_signature.user_inputs[0]
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == name)
    return node.meta["val"].dtype


def _listed(module, dtype: torch.dtype = torch.float32):
    """`module`'s outputs as a list (a program without residual outputs returns noise_pred alone);
    the sample and text states go in as `dtype` and noise_pred comes back in float32, as the
    runtime's backends do, while residuals stay in the program's own dtype for the next step."""
    def call(*args):
        if dtype != torch.float32:
            args = (args[0].to(dtype), args[1], args[2].to(dtype), *args[3:])
        outputs = module(*args)
        outputs = list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]
        outputs[0] = outputs[0].float()
        return outputs
    return call


def save_program(program: torch.export.ExportedProgram, path: Path) -> None:
    """`torch.export.save` of `program` to `path`; a small program saved before is written from its
    bytes (`memo.FILES`) instead of being serialized again."""
    key = ("pt2", id(program))
    saved = memo.FILES.get(key)
    if saved is not None and saved[0] is program:
        Path(path).write_bytes(saved[1])
        return
    torch.export.save(program, str(path))
    nbytes = program_bytes(program)
    if memo.FILES.keeps(nbytes):  # the file is read back only to be kept: never at deployment size
        memo.FILES.put(key, (program, Path(path).read_bytes()), nbytes)


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
    """The denoiser on `device` in `dtype` as diffusers loads it in that dtype (the modules its class
    keeps in fp32 stay fp32): the model's own module when it already is (a model loaded in the
    build's precision is not copied), else a copy (the model itself is never modified, so one loaded
    model can be compiled for several targets)."""
    import copy

    from ..models.base import cast_weights, weights_dtype

    first = next(model.denoiser.parameters())
    if weights_dtype(model.denoiser) == dtype and first.device == device:
        return model.denoiser
    if device.type == "meta":  # shapes only: the copy never holds real weights
        placed = meta_copy(model.denoiser)
    else:
        placed = copy.deepcopy(model.denoiser).to(device=device)
    for module in [placed[name] for name in model.experts] if model.experts else [placed]:
        cast_weights(module, dtype)
    return placed


def batch_dims(batch_range: tuple[int, int] | None, factors: tuple[int, ...] = (1, 1, 1)):
    """torch.export dynamic shapes with one symbolic CFG batch (or None): dim 0 of input i is
    factors[i] × batch (residual inputs of temporal reuse can be batch × frames rows)."""
    if batch_range is None:
        return None
    batch = torch.export.Dim("batch", min=batch_range[0], max=batch_range[1])
    return tuple({0: batch if factor == 1 else factor * batch} for factor in factors)


def _export(module, inputs, batch_range, factors: tuple[int, ...] = ()):
    try:
        with torch.no_grad():
            return torch.export.export(module, inputs, dynamic_shapes=batch_dims(batch_range, (1, 1, 1) + tuple(factors)),
                                       strict=False)
    except Exception as exc:
        if batch_range is None or "Constraints violated" not in str(exc):
            raise
        hint = next((line.strip() for line in str(exc).splitlines() if "Dim(" in line), "")
        raise F3Error(f"the graph does not support a batch of {batch_range[0]}..{batch_range[1]} ({hint}); "
                      "narrow --dynamic-batch") from None


def capture(model: VideoModel, shapes: VideoShapes, dtype: torch.dtype = torch.float32,
            batch_range: tuple[int, int] | None = None, device: str | torch.device = "cpu",
            expert: str | None = None) -> torch.export.ExportedProgram:
    """torch.export (non-strict, fixed shapes) of `model.denoise` at `shapes`, weights in `dtype`
    on `device`; of a model with experts (Wan 2.2), of the one named `expert` (default the first).

    The graph is captured where it will run and in its final precision (dtype casts and device
    placements inside the model are traced as constants); for another dtype or device a copy of
    the denoiser is captured and the model itself is never modified.
    """
    device = torch.device(device)
    if model.experts and expert is None:
        expert = next(iter(model.experts))
    key = ("capture", model.cache_key, shapes.batch, shapes.frames, shapes.height, shapes.width, str(dtype),
           str(device), batch_range, expert)
    program = _recall(key) if model.cache_key else None  # captured before at these shapes (`memo`)
    if program is None:
        placed = placed_denoiser(model, dtype, device)
        if expert is None:
            module = DenoiseModule(placed, model.denoise_call).eval()
        else:  # only this expert's weights in the program, at its path in the denoiser
            module = DenoiseModule(model.expert_holder(expert, placed), model.expert_call).eval()
        program = _export(module, export_inputs(model, shapes, dtype=dtype, device=device), batch_range)
        if model.cache_key:
            _remember(key, program, model, program_bytes(program))
    return program


def _remember(key, value, model: VideoModel, nbytes: int) -> None:
    """Keep `value` (programs whose weights are the model's own tensors, not copies) in the memo
    with the state of the weights it was made from."""
    memo.PROGRAMS.put(key, (value, weakref.ref(model.denoiser), weights_state(model.denoiser)), nbytes)


def _recall(key):
    """What `_remember` kept, unless the model it came from was edited since: its programs then
    compute with the edited tensors, whatever model now asks for them by the same fingerprint."""
    entry = memo.PROGRAMS.get(key)
    if entry is None:
        return None
    value, source, state = entry
    denoiser = source()
    return None if denoiser is not None and weights_state(denoiser) != state else value


def rewrite_spec(stage: Stage, units: list[TemporalUnit], reused: tuple[str, ...] = ()) -> RewriteSpec:
    """The passes' neutral description of `stage` for the program that takes the residuals of
    `reused` as inputs (the other blocks with a reuse period > 1 return theirs)."""
    unit_rewrites: dict[str, UnitRewrite] = {}
    for unit_id in stage.drop_attention:
        unit_rewrites[unit_id] = UnitRewrite(drop=True)
    for unit_id, heads in stage.prune_heads.items():
        unit_rewrites[unit_id] = dataclasses.replace(unit_rewrites.get(unit_id, UnitRewrite()), pruned_heads=tuple(heads))
    for unit_id, frames in stage.keep_frames.items():
        unit_rewrites[unit_id] = dataclasses.replace(unit_rewrites.get(unit_id, UnitRewrite()), kept_frames=tuple(frames))
    for unit_id, windows in stage.windows.items():
        unit_rewrites[unit_id] = dataclasses.replace(unit_rewrites.get(unit_id, UnitRewrite()), windows=tuple(windows))
    block_rewrites = {block: BlockRewrite(drop=True) for block in stage.drop_blocks}
    for block in stage.reused_blocks:
        block_rewrites[block] = BlockRewrite(residual="given" if block in reused else "returned")
    return RewriteSpec(units={u.id: u for u in units}, unit_rewrites=unit_rewrites, block_rewrites=block_rewrites)


def apply_stage(program: torch.export.ExportedProgram, stage: Stage, units, inputs,
                batch_range: tuple[int, int] | None = None, passes: PassManager | None = None) -> CompiledStage:
    """Run the pass pipeline for `stage` on a copy of `program`'s graph and re-export it; with
    temporal reuse, once more per pattern of reused blocks (`reuse_patterns`)."""
    from ..planning.plan import reuse_patterns

    manager = passes or PassManager()

    def build(reused: tuple[str, ...], example, factors) -> tuple[torch.export.ExportedProgram, dict[str, bool]]:
        gm = program.module()
        results = manager(gm, rewrite_spec(stage, units, reused))
        if not any(modified for graph_pass, modified in zip(manager.passes, results.values())
                   if not getattr(graph_pass, "annotates_only", False)):
            return program, results  # nothing rewritten (only tagged): the captured program is this one
        return _export(gm, tuple(inputs) + example, batch_range, factors), results

    pruned, results = build((), (), ())
    compiled = CompiledStage(stage=stage, program=pruned, passes=results)
    patterns = reuse_patterns(stage.reuse)[1:]
    if patterns:
        batch = inputs[0].shape[0]
        residuals = dict(zip(stage.reused_blocks, output_values(pruned)[1:]))
        shapes = {b: [_hint(d) for d in value.shape] for b, value in residuals.items()}
        for pattern in patterns:
            example = tuple(torch.zeros(shapes[b], dtype=residuals[b].dtype, device=inputs[0].device) for b in pattern)
            factors = tuple(shapes[b][0] // batch for b in pattern)
            variant, passes = build(pattern, example, factors)
            compiled.reuse_programs.append(ReuseProgram(reused=pattern, program=variant, passes=passes))
    return compiled


def _hint(dim) -> int:
    """A traced dimension as the integer it had for the example inputs."""
    return int(dim.node.hint) if isinstance(dim, torch.SymInt) else int(dim)


def output_values(program: torch.export.ExportedProgram) -> list:
    """The traced values (shape, dtype) of a program's outputs, in order."""
    output_node = next(n for n in reversed(program.graph.nodes) if n.op == "output")
    return [node.meta["val"] for node in output_node.args[0]]


def _check_shapes(model: VideoModel, plan: PruningPlan, shapes: VideoShapes) -> None:
    frames = plan.calibration.get("frames")
    uses_frames = any(stage.keep_frames for stage in plan.stages)
    if uses_frames and frames and shapes.frames != frames:
        raise F3Error(f"the plan prunes key frames of a {frames}-frame video; compile with --frames {frames}")


def compile(model: VideoModel, plan: PruningPlan | None, shapes: VideoShapes | None = None,
            dtype: torch.dtype = torch.float32, batch_range: tuple[int, int] | None = None,
            device: str | torch.device = "cpu", captured: torch.export.ExportedProgram | None = None,
            passes: PassManager | None = None) -> CompiledModel:
    """One pruned program per plan stage (the dense model when `plan` is None), weights in `dtype`
    on `device` (every tensor the passes create goes there too).

    With `batch_range` (min, max) the CFG batch dimension stays symbolic in the programs.
    `captured`: the denoiser already captured at these shapes, dtype, batch range and device (as
    `capture` returns it), so that several plans share one capture."""
    started = time.perf_counter()
    shapes = shapes or model.shapes
    shapes = resolve_shapes(model, shapes.frames, shapes.height, shapes.width, shapes.batch)
    units = find_temporal_units(model, shapes)
    dense = plan is None
    plan = plan or PruningPlan.dense(model, units)
    _check_shapes(model, plan, shapes)
    plan.check_model(model, units)
    device = check_device(device, allow_meta=True)
    cache_key = model.cache_key  # None: the weights were edited since loading, nothing is reused
    key = (cache_key, shapes.batch, shapes.frames, shapes.height, shapes.width, str(dtype), str(device),
           batch_range)
    programs = {}
    if not model.experts:
        programs[None] = captured if captured is not None else capture(model, shapes, dtype, batch_range, device=device)
    inputs = export_inputs(model, shapes, dtype=dtype, device=device)
    stages = []
    cached = passes is None and cache_key is not None
    for stage in plan.stages:
        expert = model.expert_for(stage.timesteps)  # Wan 2.2: the expert that runs this stage's steps
        if expert not in programs:
            programs[expert] = capture(model, shapes, dtype, batch_range, device=device, expert=expert)
        program = programs[expert]
        # what the passes read, not the steps it runs at: stages that prune alike share one program
        # (and the exporters then write its files from memory)
        rewrites = {k: v for k, v in stage.to_dict().items() if k != "timesteps"}
        stage_key = ("stage", key, expert, json.dumps(rewrites, sort_keys=True), tuple(units))
        built = _recall(stage_key) if cached else None
        if built is None:
            built = apply_stage(program, stage, units, inputs, batch_range, passes)
            if cached:
                _remember(stage_key, built, model,
                          sum(program_bytes(p) for p in [built.program] + [v.program for v in built.reuse_programs]))
        stages.append(dataclasses.replace(built, stage=stage))
    return CompiledModel(model=model, plan=None if dense else plan, shapes=shapes, dtype=dtype, device=device,
                         batch_range=batch_range, units=units, stages=stages, seconds=time.perf_counter() - started)


def _io_spec(model: VideoModel, shapes: VideoShapes, dtype: torch.dtype, program: torch.export.ExportedProgram) -> dict:
    """I/O names, shapes and dtypes; the output's from the program's traced metadata (no compute)."""
    inputs = export_inputs(model, shapes, dtype=dtype, device="meta")
    output = output_values(program)[0]
    return {
        "inputs": [_tensor_spec(n, t.shape, t.dtype) for n, t in zip(INPUT_NAMES, inputs)],
        "outputs": [_tensor_spec(OUTPUT_NAMES[0], [inputs[0].shape[0]] + list(output.shape[1:]), output.dtype)],
    }


def _tensor_spec(name: str, shape, dtype: torch.dtype) -> dict:
    return {"name": name, "shape": [_hint(d) for d in shape], "dtype": str(dtype).replace("torch.", "")}


def residual_name(block: str) -> str:
    """The I/O name of a block's cached residual in every artifact and the manifest."""
    from ..manifest import RESIDUAL_PREFIX

    return RESIDUAL_PREFIX + block


def _reuse_entries(stage: CompiledStage, io: dict, number: int, stage_dir: Path) -> tuple[dict, dict]:
    """(the compute program's residual outputs, the stage's `reuse` manifest entry)."""
    residuals = {block: _tensor_spec(residual_name(block), value.shape, value.dtype)
                 for block, value in zip(stage.stage.reused_blocks, output_values(stage.program)[1:])}
    programs = []
    for index, variant in enumerate(stage.reuse_programs, 1):
        path = stage_dir / f"denoiser.reuse{index}.pt2"
        save_program(variant.program, path)
        programs.append({
            "reused": list(variant.reused),
            "files": {"pt2": {"path": f"stage{number}/{path.name}", "sha256": sha256_file(path)}},
            "parameters": program_parameters(variant.program),
            "passes": variant.passes,
            "inputs": io["inputs"] + [residuals[b] for b in variant.reused],
            "outputs": io["outputs"] + [residuals[b] for b in stage.stage.reused_blocks if b not in variant.reused],
        })
    entry = {
        "periods": {block: int(stage.stage.reuse[block]) for block in stage.stage.reused_blocks},
        "programs": programs,
        "residual_bytes": stage.residual_bytes,
    }
    return {"outputs": io["outputs"] + list(residuals.values())}, entry


def stage_entries(model: VideoModel, compiled: list[CompiledStage], directory: Path, shapes: VideoShapes,
                  precision: str = "fp32") -> list[dict]:
    """Save each stage's programs under `directory/stageK/` and describe them for the manifest."""
    io = _io_spec(model, shapes, PRECISION_DTYPES[precision], compiled[0].program)
    entries = []
    for number, stage in enumerate(compiled):
        stage_dir = directory / f"stage{number}"
        stage_dir.mkdir(exist_ok=True)
        path = stage_dir / "denoiser.pt2"
        save_program(stage.program, path)
        entry = {
            "index": number,
            "timesteps": list(stage.stage.timesteps),
            **({"expert": model.expert_for(stage.stage.timesteps)} if model.experts else {}),
            "plan": stage.stage.to_dict(),
            "files": {"pt2": {"path": f"stage{number}/denoiser.pt2", "sha256": sha256_file(path)}},
            "parameters": stage.parameters,
            "passes": stage.passes,
            "precision": precision,
            **io,
        }
        if stage.stage.reused_blocks:
            outputs, entry["reuse"] = _reuse_entries(stage, io, number, stage_dir)
            entry.update(outputs)
        entries.append(entry)
    return entries


def build_manifest(model: VideoModel, plan: PruningPlan | None, plan_path, shapes: VideoShapes, stages: list[dict],
                   started: float, **extra) -> dict:
    from ..manifest import SCHEMA, library_versions, text_encoder_info

    return {
        "schema": SCHEMA,
        "kind": "diffusion",
        "model": {"spec": model.spec, "fingerprint": model.fingerprint, "family": model.family, **model.info_public()},
        "plan": {"path": str(plan_path) if plan_path else None,
                 "fingerprint": sha256_file(plan_path) if plan_path else None,
                 "granularity": plan.granularity if plan else None, "ratio": plan.ratio if plan else 0.0},
        "shapes": {**shapes.to_dict(), "cfg_batch": shapes.batch * 2},
        "sample_layout": model.sample_layout,
        "native_layout": model.native_layout,
        "scheduler": {"class": type(model.scheduler).__name__, "config": json_safe(dict(model.scheduler.config))},
        "text_encoder": text_encoder_info(model),
        **({"conditioning": model.conditioning.to_dict()} if model.conditioning is not None else {}),
        **decoder_info(model),
        "versions": library_versions(),
        "stages": stages,
        **extra,
        "seconds": round(time.perf_counter() - started, 3),
    }


def decoder_info(model: VideoModel) -> dict:
    """How samples become frames where it is not a 2-D VAE frame by frame: Wan's video VAE
    (de-normalized latents, decoded as a whole video), or no VAE (RGB pixels packed space-to-depth)."""
    pipe = model.pipeline
    if model.temporal_scale > 1 and getattr(pipe, "vae", None) is not None:
        return {"decoder": {"kind": "video_vae", "class": type(pipe.vae).__name__, "temporal_scale": model.temporal_scale}}
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
    `manifest.json` atomically (`compile` then `CompiledModel.save`)."""
    if precision not in PRECISION_DTYPES:
        raise F3Error(f"--precision {precision!r} is unknown; use one of {', '.join(PRECISION_DTYPES)}")
    device = check_device(device)
    return compile(model, plan, shapes, dtype=PRECISION_DTYPES[precision], device=device).save(output_dir, plan_path)
