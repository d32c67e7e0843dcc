"""`bench`: dense vs pruned, in one process, interleaved, after warm-up.

Per stage the dense and the pruned artifact run alternately on the same random inputs, so both
see the same clocks and neighbours; medians and p90 are reported. A whole denoising loop is
estimated from the per-stage medians weighted by each stage's share of the steps. FLOPs are
counted on the torch programs (`torch.utils.flop_counter`), parameters on the programs' weights;
efficiency = measured speedup / FLOP-predicted speedup; gain_efficiency = (measured − 1) /
(predicted − 1), the share of the predicted *saving* that turned into time (stricter).

On CUDA every call is timed with CUDA events (recorded around the call on the current stream,
synchronised after it), and each variant's peak device memory is its weights plus the most the
call allocates on top of what was allocated before it (`torch.cuda.max_memory_allocated`).
"""

from __future__ import annotations

import dataclasses
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from .errors import F3Error

BACKENDS = ("torch", "eager", "aoti", "onnxruntime", "tensorrt")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _timed(fn: Callable, inputs: tuple, device: torch.device) -> float:
    """Milliseconds of one call: wall clock on the CPU, CUDA events on a GPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*inputs)
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    start = time.perf_counter()
    fn(*inputs)
    return (time.perf_counter() - start) * 1e3


def time_interleaved(dense: Callable, pruned: Callable, inputs: tuple, repeat: int, warmup: int = 2,
                     device: torch.device | str = "cpu") -> dict:
    """Alternate dense and pruned calls; returns per-variant lists of milliseconds."""
    return time_rotating({"dense": dense, "pruned": pruned}, inputs, repeat, warmup, device)


def time_rotating(fns: dict[str, Callable], inputs: tuple, repeat: int, warmup: int = 2,
                  device: torch.device | str = "cpu") -> dict[str, list[float]]:
    """Call every variant once per round, the order rotating each round (with two variants:
    A B, B A, …); returns per-variant lists of milliseconds."""
    device = torch.device(device)
    for _ in range(warmup):
        for fn in fns.values():
            fn(*inputs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for index in range(repeat):
        order = names[index % len(names):] + names[:index % len(names)]
        for name in order:
            times[name].append(_timed(fns[name], inputs, device))
    return times


def peak_device_mb(fn: Callable, inputs: tuple, weight_bytes: int, device: torch.device) -> float | None:
    """Weights + the most one call allocates beyond what was allocated before it (MiB); None off CUDA."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn(*inputs)
    torch.cuda.synchronize(device)
    return (weight_bytes + torch.cuda.max_memory_allocated(device) - before) / 2**20


def _callables(backend: str, dense, pruned, work: Path):
    """(dense stages, pruned stages) as callables on `backend`: per dense stage a callable, per pruned
    stage a dict from tuples of reused blocks to callables (() computes every block). The torch
    backend runs the compiled programs; eager the model's own modules, dense and with the plan applied
    in place (`f3compile.apply`); the others run artifacts exported from the programs."""
    if backend == "eager":
        return _eager_callables(dense, pruned)
    if backend == "torch":
        def wrap(program):
            module = program.module()

            def call(*args):
                with torch.no_grad():
                    return module(*args)
            return call
        return ([wrap(stage.program) for stage in dense],
                [{(): wrap(stage.program)} | {v.reused: wrap(v.program) for v in stage.reuse_programs} for stage in pruned])
    from .exporters import ExportConfig, export
    from .runtime.backends import WeightPool, make_backend

    target = {"tensorrt": "trt", "aoti": "aoti"}.get(backend, "onnx")
    precision = pruned.precision
    if backend == "tensorrt" and precision == "fp32":
        precision = "fp16"  # strongly typed engines run in the ONNX's own precision; fp16 is what deploys
    config = ExportConfig(target=target, verify=False, precision=precision, device=pruned.device.type)
    manifests = {}
    for name, compiled in (("dense", dense), ("pruned", pruned)):
        if precision == compiled.precision:  # export what was compiled: no second capture
            manifests[name] = export(compiled, output_dir=work / name, config=config)
        else:
            manifests[name] = export(compiled.model, compiled.plan, work / name, compiled.shapes, config)
    device = pruned.device
    pools = {"dense": WeightPool(), "pruned": WeightPool()}  # as the runtime loads each build
    dense_calls = [make_backend(backend, work / "dense", s, device, pool=pools["dense"])
                   for s in manifests["dense"]["stages"]]
    pruned_calls = [{(): make_backend(backend, work / "pruned", s, device, pool=pools["pruned"]).run}
                    | {tuple(p["reused"]): make_backend(backend, work / "pruned", p, device, pool=pools["pruned"]).run
                       for p in s.get("reuse", {}).get("programs", [])}
                    for s in manifests["pruned"]["stages"]]
    return dense_calls, pruned_calls


def _eager_callables(dense, pruned):
    """The eager modules: the dense denoiser, and a copy with the plan applied in place. Each pruned
    callable pins its stage and pattern of reused blocks (the residuals it is given are the reused
    ones), so a call measures one step of that kind, as the programs do."""
    import copy

    from .compiler.compile import placed_denoiser
    from .inplace import install

    model, device, dtype = pruned.model, pruned.device, pruned.dtype
    dense_model = dataclasses.replace(model, denoiser=placed_denoiser(model, dtype, device))
    applied_model = dataclasses.replace(model, denoiser=copy.deepcopy(dense_model.denoiser))
    handle = install(applied_model, pruned.plan, pruned.units)

    def denoise_of(m, stage):
        expert = m.expert_for(stage.timesteps)
        if expert is None:
            return m.denoise
        return lambda *args: m.info["_expert_call"](m.denoiser[expert], *args)

    def dense_call(stage):
        fn = denoise_of(dense_model, stage)

        def call(*args):
            with torch.no_grad():
                return fn(*args)
        return call

    def pruned_call(index, stage, pattern):
        fn = denoise_of(applied_model, stage)

        def call(sample, timestep, context, *residuals):
            handle.state.pin(index, pattern, dict(zip(pattern, residuals)))
            with torch.no_grad():
                return fn(sample, timestep, context)
        return call

    dense_calls = [dense_call(stage.stage) for stage in dense]
    pruned_calls = [{pattern: pruned_call(index, built.stage, pattern)
                     for pattern in [()] + [v.reused for v in built.reuse_programs]}
                    for index, built in enumerate(pruned)]
    return dense_calls, pruned_calls


def bench(model, plan, backend: str | Sequence[str] = "torch", shapes=None, repeat: int = 10, warmup: int = 2,
          device: str | torch.device = "cpu", precision: str | None = None) -> list[dict]:
    """Benchmark `plan` against the dense model on `device` in `precision` (default: bf16 on CUDA,
    fp32 on the CPU), on each backend; per
    backend one row per stage plus a `loop` row. The denoiser is captured once: the dense and the
    pruned programs are compiled from that capture, and every backend runs (artifacts of) them."""
    from .compiler.compile import PRECISION_DTYPES, capture, compile
    from .devices import check_device, resolve_precision
    from .models.base import plan_shapes
    from .models.discovery import find_temporal_units

    backends = [backend] if isinstance(backend, str) else list(backend)
    for name in backends:
        if name not in BACKENDS:
            raise F3Error(f"--backend {name!r} is unknown; use one of {', '.join(BACKENDS)}")
    if repeat < 1:
        raise F3Error("--repeat must be at least 1")
    precision = resolve_precision(precision, device)
    device = check_device(device)
    if "tensorrt" in backends:
        from .exporters.tensorrt import require_tensorrt

        require_tensorrt()
    shapes = plan_shapes(model, plan, *(dataclasses.astuple(shapes)[1:] if shapes else (None, None, None)))
    plan.check_model(model, find_temporal_units(model, shapes))  # before any heavy work
    dtype = PRECISION_DTYPES[precision]
    captured = capture(model, shapes, dtype, device=device)
    dense = compile(model, None, shapes, dtype=dtype, device=device, captured=captured)
    pruned = compile(model, plan, shapes, dtype=dtype, device=device, captured=captured)
    return measure(dense, pruned, backends, repeat=repeat, warmup=warmup)


def measure(dense, pruned, backends: Sequence[str] = ("torch",), repeat: int = 10, warmup: int = 2) -> list[dict]:
    """Time compiled models `dense` and `pruned` (`compiler.CompiledModel`s of one model, shapes,
    precision and device) side by side on each backend; the rows `bench` returns."""
    from .planning.cost import count_flops
    from .planning.plan import split_steps

    plan, device = pruned.plan, pruned.device
    inputs = pruned.inputs(seed=3)
    dense_flops = [count_flops(stage.program.module(), inputs)[0] for stage in dense]
    steps = split_steps(max(plan.calibration.get("steps") or len(plan.stages), len(plan.stages)), len(plan.stages))
    stage_flops = []
    for stage, built, group in zip(plan.stages, pruned, steps):
        variants = _reuse_variants(stage, built, None, len(group), device)
        stage_flops.append(sum(count_flops(program.module(), inputs + extra)[0] * share
                               for _, extra, share, program in variants.values()))
    rows = []
    for backend in backends:
        rows += _measure_backend(backend, dense, pruned, inputs, dense_flops, stage_flops, steps, repeat, warmup)
    return rows


def _dense_stage(dense, stage) -> int:
    """The dense stage that runs `stage`'s timesteps: the one dense program, or with experts (Wan
    2.2) the dense program of the stage's expert."""
    high, low = stage.timesteps
    return next(i for i, d in enumerate(dense) if d.stage.timesteps[0] >= high and d.stage.timesteps[1] <= low)


def _measure_backend(backend, dense, pruned, inputs, dense_flops_by_stage, stage_flops, steps, repeat,
                     warmup) -> list[dict]:
    from .compiler.compile import program_parameters

    plan, device, precision = pruned.plan, pruned.device, pruned.precision
    with tempfile.TemporaryDirectory(prefix="f3bench-") as work:
        dense_calls, pruned_calls = _callables(backend, dense, pruned, Path(work))
        rows = []
        for index, (stage, built) in enumerate(zip(plan.stages, pruned)):
            reference = _dense_stage(dense, stage)
            dense_program, dense_flops = dense[reference].program, dense_flops_by_stage[reference]
            variants = _reuse_variants(stage, built, pruned_calls[index], len(steps[index]), device)
            fns = {"dense": dense_calls[reference]} | {name: fn for name, (fn, _, _, _) in variants.items()}
            times = time_rotating(fns, inputs, repeat, warmup, device)
            share = {name: weight for name, (_, _, weight, _) in variants.items()}
            flops = stage_flops[index]
            dense_ms = statistics.median(times["dense"])
            pruned_ms = sum(statistics.median(times[name]) * share[name] for name in variants)
            pruned_p90 = sum(_percentile(times[name], 0.9) * share[name] for name in variants)
            speedup, predicted = dense_ms / pruned_ms, dense_flops / max(flops, 1)
            compute_fn, compute_extra, _, program = variants["pruned"]
            rows.append({
                "backend": backend, "stage": index, "timesteps": list(stage.timesteps), "steps": len(steps[index]),
                "dense_ms": dense_ms, "pruned_ms": pruned_ms,
                "dense_p90_ms": _percentile(times["dense"], 0.9), "pruned_p90_ms": pruned_p90,
                "speedup": speedup, "predicted_speedup": predicted,
                "efficiency": speedup / predicted,
                "gain_efficiency": (speedup - 1) / (predicted - 1) if predicted > 1.0005 else None,
                "dense_params": program_parameters(dense_program), "pruned_params": program_parameters(program),
                "dense_flops": dense_flops, "pruned_flops": flops, "repeat": repeat,
                "device": device.type, "precision": precision,
                "dense_peak_mb": peak_device_mb(dense_calls[reference], inputs, _weight_bytes(dense_program), device),
                "pruned_peak_mb": peak_device_mb(compute_fn, inputs, _weight_bytes(program), device),
                **({"reuse": {name: {"median_ms": statistics.median(times[name]), "share": share[name]}
                              for name in variants},
                    "residual_mb": built.residual_bytes / 2**20} if built.reuse_programs else {}),
            })
    total_steps = sum(r["steps"] for r in rows)
    loop_dense = sum(r["dense_ms"] * r["steps"] for r in rows)
    loop_pruned = sum(r["pruned_ms"] * r["steps"] for r in rows)
    loop_flops = sum(r["pruned_flops"] * r["steps"] for r in rows) / total_steps
    predicted = sum(r["dense_flops"] * r["steps"] for r in rows) / total_steps / loop_flops
    speedup = loop_dense / loop_pruned
    rows.append({
        "backend": backend, "stage": "loop", "steps": total_steps, "device": device.type, "precision": precision, "dense_ms": loop_dense, "pruned_ms": loop_pruned,
        "speedup": speedup, "predicted_speedup": predicted,
        "efficiency": speedup / predicted,
        "gain_efficiency": (speedup - 1) / (predicted - 1) if predicted > 1.0005 else None,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "dense_peak_mb": max((r["dense_peak_mb"] for r in rows if r["dense_peak_mb"] is not None), default=None),
        "pruned_peak_mb": max((r["pruned_peak_mb"] for r in rows if r["pruned_peak_mb"] is not None), default=None),
    })
    return rows


def _reuse_variants(stage, built, callables: dict | None, steps: int, device: torch.device) -> dict:
    """name -> (callable taking the standard inputs, its residual inputs, share of the stage's steps,
    torch program). "pruned" computes every block; "reuse:<blocks>" take residuals (zeros of the
    residuals' shapes: the work does not depend on their values). `callables` None: no callables
    (the programs and shares only)."""
    from .compiler.compile import output_values
    from .reuse import pattern_at

    counts: dict[tuple[str, ...], int] = {}
    for step in range(max(steps, 1)):
        pattern = pattern_at(stage.reuse, step)
        counts[pattern] = counts.get(pattern, 0) + 1
    values = dict(zip(stage.reused_blocks, output_values(built.program)[1:]))
    programs = {(): built.program} | {v.reused: v.program for v in built.reuse_programs}
    variants = {}
    for pattern, program in programs.items():
        if pattern not in counts:
            continue  # a pattern this many steps never reach
        extra = tuple(torch.zeros(tuple(int(d) for d in values[b].shape), dtype=values[b].dtype, device=device)
                      for b in pattern)
        name = "pruned" if not pattern else "reuse:" + ",".join(pattern)
        call = None if callables is None else (lambda fn, extra: lambda *args: fn(*args, *extra))(callables[pattern], extra)
        variants[name] = (call, extra, counts[pattern] / max(steps, 1), program)
    return variants


def _weight_bytes(program) -> int:
    return int(sum(t.numel() * t.element_size() for t in program.state_dict.values()))


def format_table(rows: list[dict]) -> str:
    header = f"{'backend':<11} {'stage':>5} {'dense ms':>9} {'pruned ms':>9} {'p90 d':>8} {'p90 p':>8} {'speedup':>8} {'FLOP pred':>9} {'eff':>6} {'params':>12}"
    memory = any(row.get("dense_peak_mb") is not None for row in rows)
    if memory:
        header += f" {'peak MiB d/p':>15}"
    lines = [header]
    for row in rows:
        eff = f"{row['efficiency']:.2f}"
        params = f"{row['pruned_params'] / max(row['dense_params'], 1):.3f}x" if "pruned_params" in row else ""
        lines.append(
            f"{row['backend']:<11} {row['stage']!s:>5} {row['dense_ms']:>9.1f} {row['pruned_ms']:>9.1f} "
            f"{row.get('dense_p90_ms', float('nan')):>8.1f} {row.get('pruned_p90_ms', float('nan')):>8.1f} "
            f"{row['speedup']:>7.3f}x {row['predicted_speedup']:>8.3f}x {eff:>6} {params:>12}"
            + (f" {row['dense_peak_mb']:>7.0f}/{row['pruned_peak_mb']:<7.0f}" if memory and row.get("dense_peak_mb") is not None else "")
        )
    for row in rows:
        if "reuse" in row:  # the stage's pruned time is its programs' medians weighted by their share of steps
            parts = ", ".join(f"{_program_label(name)} {entry['median_ms']:.1f} ms x {entry['share']:.2f}"
                              for name, entry in row["reuse"].items())
            lines.append(f"stage {row['stage']} temporal reuse: {parts}; residuals carried {row['residual_mb']:.2f} MiB")
    return "\n".join(lines)


def _program_label(name: str) -> str:
    """'pruned' (computes every block) or 'reuse N block(s)' for a table line; the JSON keeps the ids."""
    return name if name == "pruned" else f"reuse {name.count(',') + 1} block(s)"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    loops = [r for r in results if r["stage"] == "loop"]
    if any("ratio" in r for r in loops):
        for backend in sorted({r["backend"] for r in loops}):
            points = sorted((r["ratio"], r["speedup"], r["predicted_speedup"]) for r in loops if r["backend"] == backend)
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=f"{backend} measured")
            ax.plot([p[0] for p in points], [p[2] for p in points], "k--", alpha=0.5, label="FLOP-predicted" if backend == sorted({r["backend"] for r in loops})[0] else None)
        ax.set_xlabel("pruning ratio")
    else:
        labels = [f"{r['backend']}:{r['stage']}" for r in results]
        ax.bar(labels, [r["speedup"] for r in results], label="measured")
        ax.plot(labels, [r["predicted_speedup"] for r in results], "k_", markersize=20, label="FLOP-predicted")
    ax.set_ylabel("speedup vs dense")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
