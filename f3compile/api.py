"""f3compile's public API: the verbs of the CLI as functions, for every kind of model.

    import f3compile as f3

    model = f3.load("builtin:tiny-unet3d")            # a spec, a directory, or a diffusers pipeline object
    stats = f3.calibrate(model, ["a red circle moving left"], f3.CalibrationConfig(steps=10))
    plan = f3.plan(stats, f3.PlanOptions(ratio=0.5, granularity="block"))
    compiled = f3.compile(model, plan)                 # pruned torch.export programs, one per stage
    f3.export(compiled, output_dir="build")            # ONNX, verified, with a manifest (no second capture)
    video = f3.generate("build", "a red circle moving left")
    print(f3.bench(model, plan).text)
    with f3.apply(pipe, plan):                         # the plan inside a diffusers pipeline object, in place
        video = pipe(prompt).frames

Each verb takes a model spec or a loaded model (diffusion pipelines and CogVideo alike), finds
its kind in `models.registry` and calls that kind's `kinds.base.ModelKind` method; options are
the typed dataclasses of `f3compile.options` and of each stage (`CalibrationConfig`,
`ExportConfig`, `EvalConfig`). Errors the user can fix are `F3Error`s with one-line messages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import F3Error
from .options import BenchOptions, CompileOptions, GenerateOptions, PlanOptions, Shapes, SweepOptions

# what the verbs take, importable from here (imported on first use)
_LAZY = {
    "CalibrationConfig": ("calibration", "CalibrationConfig"),
    "ExportConfig": ("exporters", "ExportConfig"),
    "parse_batch_profile": ("exporters.export", "parse_batch_profile"),
    "EvalConfig": ("evaluation", "EvalConfig"),
    "eval_markdown": ("evaluation.report", "markdown"),
    "eval_comparison": ("evaluation.report", "comparison"),
    "CRITERIA": ("calibration.criteria", "CRITERIA"),
    "DEFAULT_CRITERION": ("calibration.criteria", "DEFAULT_CRITERION"),
    "GRANULARITIES": ("planning.plan", "GRANULARITIES"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        module, attribute = _LAZY[name]
        return getattr(import_module(f".{module}", __package__), attribute)
    raise AttributeError(f"module 'f3compile.api' has no attribute {name!r}")


__all__ = ["load", "kind_of", "calibrate", "merge", "plan", "inspect", "memory_report", "compile", "export", "Runtime", "generate", "bench", "apply",
           "evaluate", "convert", "list_passes", "read_plan", "PlanOptions", "CompileOptions", "GenerateOptions",
           "BenchOptions", "Shapes", "SweepOptions"]


# -- models -------------------------------------------------------------------------------------
def _is_spec(source: Any) -> bool:
    return isinstance(source, (str, Path))


def kind_of(source: Any):
    """The `ModelKind` of a spec, a loaded model, a diffusers pipeline object or a calibration."""
    from .calibration import CalibrationStats
    from .models import registry

    if isinstance(source, CalibrationStats):
        return _calibration_kind(source)
    if _is_spec(source):
        return registry.implementation(registry.kind_of_spec(source))
    for kind in registry.KINDS.values():
        implementation = registry.implementation(kind)
        if implementation.owns(source):
            return implementation
    if _diffusers_pipeline(source):
        return registry.implementation("diffusion")
    raise F3Error(f"f3compile cannot use a {type(source).__name__}; pass a model spec (builtin:NAME or a directory), "
                  "a model from f3compile.load, or a diffusers pipeline")


def _diffusers_pipeline(source: Any) -> bool:
    return any(cls.__name__ == "DiffusionPipeline" for cls in type(source).__mro__)


def _pipeline_spec(pipe: Any) -> str:
    """Where a pipeline object came from, as far as it says: its class and the directory or hub id it
    was loaded from (diffusers records it as `_name_or_path`); never a builtin name it does not have."""
    origin = getattr(getattr(pipe, "config", None), "_name_or_path", None)
    cls = type(pipe)
    return f"pipeline:{cls.__module__}.{cls.__qualname__}" + (f"@{origin}" if origin else "")


def load(source: Any, precision: str | None = None):
    """A model of any kind: from a spec (`builtin:NAME[,width-scale=S]`, a local directory, a cached
    hub id; `precision` fp32, bf16 or fp16 is the dtype its denoiser and text encoder are read in,
    default fp32), from a diffusers pipeline object a caller already has (subclasses of the supported
    pipelines included; the model's spec then records the class and origin, `pipeline:…`), or a
    model `load` returned before (returned as it is). An object runs in the dtype it was loaded in:
    a `precision` it does not have is refused, not cast behind the caller's back."""
    if _is_spec(source):
        return kind_of(source).load(str(source), precision=precision)
    if _diffusers_pipeline(source):
        from .models.loading import from_pipeline, quiet_libraries

        quiet_libraries()
        model = from_pipeline(source, _pipeline_spec(source))
    else:
        kind_of(source)  # refuses what is neither
        model = source
    _check_precision(model, precision)
    return model


def _check_precision(model: Any, precision: str | None) -> None:
    held = getattr(model, "precision", None)
    if precision is not None and held is not None and held != precision:
        raise F3Error(f"the model given is loaded in {held}, not {precision}: load it in {precision} "
                      f"(f3compile.load(spec, precision={precision!r}), or dtype= in diffusers' from_pretrained) "
                      f"or ask for {held}")


def _build_model(source: Any, kind, options: CompileOptions):
    """What `compile` and `export` build from: a spec of a diffusion model read in the build's
    precision (a bf16 checkpoint is not widened to fp32 to be cast back); an object as it is."""
    if _is_spec(source) and kind.name == "diffusion":
        return _model(source, kind, options.precision, options.device)
    return _model(source, kind)


def _model(source: Any, kind=None, precision: str | None = None, device: Any = "cpu"):
    """`source` as a loaded model: a spec read in `precision` (default: bf16 on CUDA, fp32 on the
    CPU, for `device`); an object as it is (a `precision` it lacks refused)."""
    if _is_spec(source):
        from .devices import resolve_precision

        kind = kind or kind_of(source)
        return kind.load(str(source), precision=resolve_precision(precision, device))
    return load(source, precision)


# -- calibrate ----------------------------------------------------------------------------------
def _prompts(prompts: str | Path | Iterable[str]) -> tuple[list[str], str | None]:
    """(prompts, sha256 of the file they came from)."""
    from ._io import sha256_file
    from .calibration import read_prompts

    if _is_spec(prompts):
        return read_prompts(prompts), sha256_file(prompts)
    prompts = list(prompts)
    if not prompts:
        raise F3Error("no prompts to calibrate on; pass at least one prompt")
    return prompts, None


def calibrate(model: Any, prompts: str | Path | Iterable[str], config=None, *, latents: Any = None,
              key_model: Any = None, output_dir: str | Path | None = None, progress: bool = False,
              shard: str | None = None):
    """Run the model's real sampling loop on `prompts` (a list, or a file with one per line) and record
    its attention (`CalibrationStats`; written to `output_dir` when given). `latents`: starting
    latents (a tensor or a file) for diffusion models; `key_model`: the stage-1 model whose frames a
    CogVideo stage-2 model interpolates. Under torchrun every rank calls it with the same arguments:
    the ranks split the prompts and rank 0 writes the result. `shard` "K/N": sample only the K-th of
    N parts of the prompts and write its partial sums, which `merge` joins."""
    from .calibration import CalibrationConfig
    from .parallel import Part

    shard = Part.parse(shard) if shard is not None else None
    prompts, digest = _prompts(prompts)
    config = config or CalibrationConfig()
    kind = kind_of(model)
    kind.check_calibrate(config, latents is not None, key_model is not None)
    if _is_spec(latents):
        from .sampling import read_latents

        latents = read_latents(latents)
    model = _model(model, kind, config.precision, config.device)
    key = None if key_model is None else load(key_model)
    return kind.calibrate(model, prompts, config, latents=latents, key_model=key,
                          output_dir=Path(output_dir) if output_dir is not None else None, prompts_sha256=digest,
                          progress=progress, shard=shard)


def merge(shards: Iterable[str | Path], output_dir: str | Path | None = None, heatmaps: bool = True):
    """The calibration one process would have written, joined from the shard directories of
    `calibrate(..., shard="K/N")` (all N, each once, in any order); refuses shards of another run."""
    from .calibration.parts import merge as merge_shards

    return merge_shards(list(shards), output_dir, heatmaps)


# -- plan ---------------------------------------------------------------------------------------
def read_plan(plan: Any):
    """A `PruningPlan` from a path (validated) or as given."""
    from .planning import PruningPlan

    if plan is None or isinstance(plan, PruningPlan):
        return plan
    return PruningPlan.load(plan)


def _calibration_kind(stats):
    from .models import registry

    return registry.implementation(stats.meta.get("kind", registry.DEFAULT_KIND))


def plan(calibration: Any, options: PlanOptions | None = None, *, model: Any = None,
         prompts: str | Path | Iterable[str] | None = None, log: Callable[[str], None] | None = None):
    """A `PruningPlan` from a calibration (a directory or `CalibrationStats`): the lowest-scored
    `ratio` of units (or one ratio per stage), a `target_speedup` budget over (unit, stage) pairs, or
    a `search` that measures each action's error on `prompts`. A budget or search runs `model`
    (default: the calibrated model's spec)."""
    from .calibration import CalibrationStats
    from .calibration.criteria import DEFAULT_CRITERION
    from .planning import make_plan

    options = options or PlanOptions()
    options.check(with_prompts=prompts is not None)
    criterion = options.criterion
    if criterion is None:
        reuse_plan = options.reuse is not None and not options.search and options.granularity != "window"
        criterion = "residual_change" if reuse_plan else DEFAULT_CRITERION
    stats = calibration if isinstance(calibration, CalibrationStats) else CalibrationStats.load(calibration)
    _calibration_kind(stats).check_plan_options(options)
    if options.kind == "ratio":
        return make_plan(stats, options.ratio, options.granularity, criterion, options.stages, seed=options.seed,
                         reuse=options.reuse, window=options.window, keep_mass=options.keep_mass)
    from .models import find_temporal_units
    from .models.base import resolve_shapes
    from .planning.cost import ModelCost

    if stats.meta.get("experts"):
        raise F3Error("--target-speedup and --search do not take models with experts (Wan 2.2) yet; plan each "
                      "expert's stages with --ratio or --keep-mass")
    recorded = stats.meta["model"]
    if model is None and recorded["spec"].startswith("pipeline:"):
        raise F3Error(f"the calibration was recorded on a pipeline object ({recorded['spec']}); pass that model "
                      "(model=... in Python, --model with its directory on the command line)")
    # the search runs in its precision; a budget only counts FLOPs, in the calibration's own precision
    precision = options.precision if options.search else options.precision or stats.meta.get("precision")
    model = _model(model if model is not None else recorded["spec"], precision=precision, device=options.device)
    if model.fingerprint != recorded["fingerprint"]:
        where = calibration if _is_spec(calibration) else "the calibration"
        raise F3Error(f"{where} was recorded on another model than {model.spec}; pass --model with "
                      "the calibrated model")
    # the calibration's shape, where its units were found and its statistics recorded (not the model's default)
    shapes = resolve_shapes(model, *(stats.meta["shapes"].get(name) for name in ("frames", "height", "width")))
    units = find_temporal_units(model, shapes)
    cost = ModelCost.measure(model, units, shapes)
    if options.kind == "budget":
        from .planning.schedule import make_target_plan

        return make_target_plan(stats, cost, options.target_speedup, options.granularity, criterion, options.stages,
                                seed=options.seed, reuse=options.reuse, window=options.window)
    from . import parallel
    from .planning.search import search_plan

    group = parallel.group(options.device)  # torchrun's ranks split the prompts (the device is checked there)
    prompts = _prompts(prompts)[0]
    group.check_same(f"{stats.meta.get('stats_sha256')}|{model.fingerprint}|{prompts}|{options}",
                     "calibrations, models, prompts or options")
    with model.placed(group.device):
        plan, _ = search_plan(model, stats, prompts, cost, units, max_error=options.max_error,
                              target_speedup=options.target_speedup, stages=options.stages, criterion=criterion,
                              actions=None if options.actions is None else tuple(options.actions),
                              reuse_period=2 if options.reuse is None else options.reuse,
                              reuse_periods=options.reuse_periods, log=log, windows=tuple(options.windows), group=group,
                              **({} if options.search_budget is None else {"search_budget": options.search_budget}))
    return plan


def inspect(plan: Any, model: Any = None, shapes: Shapes | None = None) -> str:
    """What a plan keeps and prunes per stage and unit; with `model`, what it saves on it (at
    `shapes`; default the model's). An architecture preset (`builtin:arch-…`) is built on the meta
    device, so its FLOPs at published shapes are counted in seconds, and a plan made on another
    model is carried over to it by relative depth."""
    from .models import registry

    plan = read_plan(plan)
    if model is None:  # the plan alone: the same table for every kind
        return registry.implementation(registry.DEFAULT_KIND).inspect(plan, None)
    kind = kind_of(model)
    if _is_spec(model) and str(model).startswith("builtin:") and kind.name == "diffusion" \
            and registry.parse_builtin(str(model)[8:])[0].group == "preset":
        from .models.loading import load_model

        model = load_model(str(model), meta=True)
    return kind.inspect(plan, _model(model, kind), shapes)


def memory_report(plan: Any, model: Any, shapes: Shapes | None = None, *, precision: str = "bf16",
                  device: str = "cuda", target: str = "aoti", budget: float | None = None):
    """(predictions, context): each verb's predicted peak memory (`memory.Prediction`) for `plan` on
    `model` at `shapes` in `precision`, counted on the meta device in seconds (`inspect --memory`;
    `budget`: the device's bytes, where `generate` decodes tile by tile if untiled would not fit).
    `model` is a builtin (an architecture preset at its published size, or a width-scaled one) or a
    pipeline directory, built from its configs without reading its weights."""
    from .devices import resolve_precision
    from .models import registry
    from .models.base import resolve_shapes
    from .models.loading import load_model
    from . import memory

    precision = resolve_precision(precision)
    builtin = _is_spec(model) and str(model).startswith("builtin:")
    directory = _is_spec(model) and not builtin and (Path(str(model)).expanduser() / "model_index.json").is_file()
    if not (builtin or directory) or kind_of(model).name != "diffusion":
        raise F3Error("--memory counts diffusion builtins and pipeline directories on the meta device (e.g. "
                      f"builtin:arch-wan2.1-14b, or a Wan2.1-T2V-14B-Diffusers directory); {model} is neither")
    if builtin:
        registry.parse_builtin(str(model)[8:])
    meta = load_model(str(model), meta=True, precision=precision)  # a directory: its configs, no weights read
    shapes = shapes or Shapes()
    resolved = resolve_shapes(meta, shapes.frames, shapes.height, shapes.width)
    return memory.report(read_plan(plan), meta, resolved, precision=precision, device=device, target=target,
                         budget=None if budget is None else int(budget))


def memory_text(predictions, title: str, budget: float | None = None) -> str:
    """The table `inspect --memory` prints for `memory_report`'s predictions (`budget` in bytes:
    whether each verb fits)."""
    from .memory import render

    return render(predictions, title, budget)


def shape_note(plan: Any, frames: int, height: int, width: int) -> str | None:
    """One line when a build of `plan` at frames×height×width is not at the plan's calibration
    shape (None when it is)."""
    from .models.base import VideoShapes, shape_note as note

    return note(read_plan(plan), VideoShapes(1, frames, height, width))


# -- compile and export -------------------------------------------------------------------------
def list_passes() -> str:
    """The pass pipeline, one line per pass (what `compile --list-passes` prints)."""
    from .passes import PassManager

    return PassManager().describe()


def compile(model: Any, plan: Any = None, options: CompileOptions | None = None, *,
            output_dir: str | Path | None = None, plan_path: str | Path | None = None):
    """Compile `plan` (a path or `PruningPlan`; None: the dense model) into static programs, one per
    stage; with `output_dir`, also write the build (programs, pipeline components, manifest).
    Returns the compiled model (for diffusion, a `compiler.CompiledModel` that `export` and `bench`
    take as it is; for CogVideo, the build's manifest)."""
    options = options or CompileOptions()
    kind = kind_of(model)
    kind.check_compile(options)
    if plan_path is None and _is_spec(plan):
        plan_path = plan
    plan = read_plan(plan)
    model = _build_model(model, kind, options)
    return kind.compile(model, plan, options, plan_path=plan_path,
                        output_dir=Path(output_dir) if output_dir is not None else None)


def export(source: Any, plan: Any = None, config=None, *, options: CompileOptions | None = None,
           output_dir: str | Path, plan_path: str | Path | None = None, progress: bool = False) -> dict:
    """Export `source` — a model (compiled here with `plan`) or what `compile` returned (not
    captured again) — as verified artifacts of `config.target` (`ExportConfig`) with a manifest in
    `output_dir`; returns the manifest."""
    from .exporters import ExportConfig

    config = config or ExportConfig()
    options = options or CompileOptions(precision=config.precision, device=config.device)
    kind = kind_of_compiled(source) or kind_of(source)
    kind.check_export(options, config)
    if plan_path is None and _is_spec(plan):
        plan_path = plan
    plan = read_plan(plan)
    if kind_of_compiled(source) is None:
        source = _build_model(source, kind, options)
    return kind.export(source, plan, options, config, Path(output_dir), plan_path=plan_path, progress=progress)


def kind_of_compiled(source: Any):
    """The kind of what `compile` returned, or None for anything else."""
    from .compiler.compile import CompiledModel
    from .models import registry

    return registry.implementation("diffusion") if isinstance(source, CompiledModel) else None


# -- apply --------------------------------------------------------------------------------------
def apply(target: Any, plan: Any):
    """Run `plan` (a path or `PruningPlan`) inside `target` — a diffusers pipeline object (Wan,
    CogVideoX, Latte, AnimateDiff, ModelScope, Tune-A-Video), its denoiser module, or a model from
    `load` — by rewriting its modules in place: the pipeline's own call then runs the plan. Returns an
    `inplace.Applied` whose `remove()` (or the end of a `with` block) restores the object exactly.
    A plan that does not fit the object is refused in one line before anything changes."""
    from torch import nn

    from .inplace import install
    from .models import find_temporal_units
    from .models.base import VideoModel, VideoShapes

    from .inplace.apply import MARK

    plan = read_plan(plan)
    if plan is None:
        raise F3Error("apply needs a plan (a plan.json path or a PruningPlan)")
    modules = [getattr(target, "denoiser", target)]
    if _diffusers_pipeline(target):
        modules = [m for m in target.components.values() if isinstance(m, nn.Module)]
    modules = [module for module in modules if isinstance(module, nn.Module)]
    if any(getattr(m, MARK, False) for module in modules for m in module.modules()):
        raise F3Error("a plan is applied to this model already; remove() it before applying another")
    if any(p.is_meta for module in modules for p in module.parameters()):
        raise F3Error("some weights are offloaded to the meta device (sequential or group offloading); apply regroups "
                      "heads in the weights and fingerprints them: keep them in memory (model CPU offload is fine)")
    pipeline, check_fingerprint = None, True
    if _diffusers_pipeline(target):
        progress = dict(getattr(target, "_progress_bar_config", {}))
        try:
            pipeline, model = target, load(target)
        finally:  # loading silences the pipeline's progress bar; the user's pipeline keeps its own
            target._progress_bar_config = progress
    elif isinstance(target, VideoModel):
        pipeline, model = target.pipeline, target
    elif isinstance(target, nn.Module):
        from .models.loading import from_denoiser

        model, check_fingerprint = from_denoiser(target, f"module:{type(target).__name__}"), False
    else:
        kind = kind_of(target)  # refuses what f3compile cannot use at all
        raise F3Error(f"apply runs plans inside diffusion pipelines; a {kind.name} model runs through its build "
                      "(f3compile export, then generate)")
    if kind_of(model).name != "diffusion":
        raise F3Error(f"apply runs plans inside diffusion pipelines; {model.spec} runs through its build "
                      "(f3compile export, then generate)")
    recorded = plan.calibration  # the units at the calibration's shape (a plan before heights were recorded: the model's)
    shapes = VideoShapes(1, *(int(recorded.get(name) or getattr(model.shapes, name)) for name in ("frames", "height", "width")))
    units = find_temporal_units(model, shapes)
    plan.check_model(model, units, fingerprint=check_fingerprint)
    return install(model, plan, units, pipeline=pipeline)


# -- run ----------------------------------------------------------------------------------------
def _build_kind(build: str | Path):
    from .manifest import build_kind
    from .models import registry

    return registry.implementation(build_kind(build))


def Runtime(build: str | Path, backend: str = "torch", device: str = "cpu"):  # noqa: N802 - a factory of runtimes
    """The runtime of a build directory, whatever its kind: `runtime.Runtime` (diffusion:
    `generate(prompt)` → latents, `decode(latents)` → frames) or `autoregressive.runtime.ARRuntime`
    (`generate(prompt)` → tokens, `frames(tokens)`)."""
    return _build_kind(build).runtime(Path(build), backend, device)


def generate(build: str | Path, prompt: str, options: GenerateOptions | None = None):
    """A `kinds.base.Video` (frames, a summary, the final latents where kept) generated from a build
    directory as a deployment would run it."""
    options = options or GenerateOptions()
    kind = _build_kind(build)
    kind.check_generate(options)
    return kind.generate(Path(build), prompt, options)


def bench(model: Any, plan: Any = None, options: BenchOptions | None = None):
    """Dense vs pruned side by side (interleaved, medians) on each backend: a `kinds.base.BenchResult`
    (rows, text). `plan` is a path or `PruningPlan`; with `options.sweep` the plans are made from
    `options.calibration` at each ratio instead."""
    options = options or BenchOptions()
    kind = kind_of(model)
    kind.check_bench(options)
    if (plan is None) == (options.sweep is None):
        raise F3Error("pass either --plan PLAN or --sweep RATIOS with --calibration DIR")
    if options.sweep is not None:
        from .calibration import CalibrationStats
        from .planning import make_plan

        if options.calibration is None:
            raise F3Error("--sweep needs --calibration DIR (the plans are made from it)")
        stats = CalibrationStats.load(options.calibration)
        plans = [(r, make_plan(stats, r, options.granularity, options.criterion, options.stages)) for r in options.sweep]
    else:
        plans = [(None, read_plan(plan))]
    model = _model(model, kind, options.precision, options.device)
    return kind.bench(model, plans, options)


def evaluate(model: Any, plans: Iterable[Any] = (), prompts: Any = None, config=None, *, measures: str = "auto",
             limit: int | None = None, sweep: SweepOptions | None = None, calibration: Any = None,
             output_dir: str | Path | None = None, plot: bool = False, log: Callable[[str], None] = print) -> dict:
    """Score the dense model and each plan (paths or `PruningPlan`s; with `sweep`, also the plans made
    from `calibration`) on `prompts` from the same seeds: probe accuracy and Fréchet distance on the
    moving-shapes domain (`measures="probe"`; prompts are JSON lines with labels, default every
    label combination once), fidelity to the dense videos (PSNR, SSIM, latents; `"fidelity"`, any
    model, a prompt file or list), and the measured speedup. With `output_dir`, writes eval.json,
    eval.md and grid.png (and sweep.png with `plot`). Returns eval.json's content."""
    from .evaluation import EvalConfig, default_prompts, read_eval_prompts, write_report

    config = config or EvalConfig()
    kind = kind_of(model)
    kind.check_evaluate(str(model) if _is_spec(model) else model.spec)
    if limit is not None and limit < 1:
        raise F3Error(f"--limit must be at least 1, got {limit}")
    variants = _eval_variants(plans, sweep, calibration)
    spec = str(model) if _is_spec(model) else model.spec
    if measures == "auto":  # the probe knows the moving-shapes domain of the reference models only
        measures = "probe" if spec.startswith("builtin:ref-") else "fidelity"
    if measures == "fidelity":
        if prompts is None:
            raise F3Error("fidelity evaluation needs --prompts (a text file, one prompt per line)")
        records = [{"prompt": p, **({"image": p.image} if getattr(p, "image", None) is not None else {})}
                   for p in _prompts(prompts)[0]]
        if not records:
            raise F3Error(f"prompts file {prompts} has no prompts")
    elif _is_spec(prompts):
        records = read_eval_prompts(prompts)
    else:
        records = list(prompts) if prompts is not None else default_prompts(config.seed)
    if limit is not None:
        records = records[:limit]
    model = _model(model, kind, config.precision, config.device)
    result = kind.evaluate(model, variants, records, config, measures, log)
    if output_dir is not None:
        write_report(result, output_dir, sweep=plot)
    return result


def _eval_variants(plans: Iterable[Any], sweep: SweepOptions | None, calibration: Any) -> list:
    """The dense model, each plan, and with a sweep the plans made from `calibration`."""
    from .evaluation import Variant
    from .planning import make_plan

    def meta(plan, **extra):
        kind = ("search" if plan.search else "budget" if plan.budget
                else "reuse" if any(stage.reused_blocks for stage in plan.stages)
                else "schedule" if isinstance(plan.ratio, list) else "criterion")
        return {"granularity": plan.granularity, "ratio": plan.ratio, "stages": len(plan.stages),
                "criterion": plan.criterion, "kind": kind, **extra}

    variants = [Variant("dense")]
    for source in plans:
        plan = read_plan(source)
        name = Path(source).stem if _is_spec(source) else f"plan{len(variants)}"
        variants.append(Variant(name, plan, meta(plan, **({"file": str(source)} if _is_spec(source) else {}))))
    if sweep is not None:
        from .calibration import CalibrationStats

        if calibration is None:
            raise F3Error("--sweep and --random make plans: pass --calibration DIR")
        stats = calibration if isinstance(calibration, CalibrationStats) else CalibrationStats.load(calibration)
        for granularity in sweep.granularities:
            for ratio in sweep.ratios:
                for stages in sweep.stages:
                    for criterion in sweep.criteria:
                        plan = make_plan(stats, ratio, granularity, criterion, stages)
                        suffix = "" if criterion == "cross_frame_mass" else f"-{criterion}"
                        variants.append(Variant(f"{granularity}-{ratio:g}-s{stages}{suffix}", plan, meta(plan)))
                    for seed in range(sweep.random):
                        plan = make_plan(stats, ratio, granularity, "random", stages, seed=seed)
                        variants.append(Variant(f"{granularity}-{ratio:g}-s{stages}-random{seed}", plan, meta(plan)))
    if len(variants) == 1:
        raise F3Error("nothing to compare with the dense model: pass --plan PLAN, or --calibration DIR with --sweep")
    return variants


def convert(checkpoint: str | Path, output: str | Path, family: str = "cogvideo", **overrides: Any):
    """Convert a published checkpoint into a model directory (CogVideo: SAT `mp_rank_00_model_states.pt`
    → cogvideo.json + model.safetensors); returns the model's config."""
    if family != "cogvideo":
        raise F3Error(f"convert reads CogVideo SAT checkpoints; there is no converter for {family!r}")
    from .models.cogvideo import convert as convert_cogvideo

    return convert_cogvideo(checkpoint, output, **overrides)

