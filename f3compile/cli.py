"""The `f3compile` command line: a thin layer over the Python API of the same verbs."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from ._io import Terminated, interrupts_unwind
from .errors import F3Error


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error convention: one line `error: …`, exit status 2."""

    def error(self, message: str) -> None:  # noqa: D401 - argparse API
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def _done(started: float, what: str) -> None:
    print(f"{what} in {time.perf_counter() - started:.1f}s")


def cmd_calibrate(args) -> None:
    """Run the real sampling loop on prompts and record aggregate temporal attention.

    example: f3compile calibrate builtin:tiny-unet3d --prompts examples/prompts.txt -o calib
    """
    from ._io import sha256_file
    from .calibration import CalibrationConfig, calibrate, read_prompts
    from .models import load_model
    from .sampling import read_latents

    started = time.perf_counter()
    prompts = read_prompts(args.prompts)
    if _autoregressive(args.model):
        from .autoregressive.calibrate import calibrate_cogvideo
        from .models.cogvideo import load_cogvideo

        if args.latents or args.frames or args.height or args.width:
            raise F3Error("CogVideo generates its own frames from tokens: drop --latents/--frames/--height/--width")
        model = load_cogvideo(args.model)
        key_model = load_cogvideo(args.key_model) if args.key_model else None
        stats = calibrate_cogvideo(model, prompts, seed=args.seed, batch_size=args.batch_size, output_dir=args.output,
                                   prompts_sha256=sha256_file(args.prompts), progress=True, key_model=key_model)
        _done(started, f"calibrated {len(stats.units)} plus channels on {len(prompts)} prompts x "
                       f"{stats.meta['tokens_per_video']} tokens -> {args.output}")
        return
    if args.key_model:
        raise F3Error("--key-model is for CogVideo stage-2 models")
    config = CalibrationConfig(
        steps=args.steps, frames=args.frames, height=args.height, width=args.width,
        guidance_scale=args.guidance_scale, seed=args.seed, batch_size=args.batch_size, heatmaps=not args.no_heatmaps,
    )
    latents = read_latents(args.latents) if args.latents else None
    model = load_model(args.model)
    stats = calibrate(model, prompts, config, output_dir=args.output, prompts_sha256=sha256_file(args.prompts),
                      progress=True, latents=latents)
    _done(started, f"calibrated {len(stats.units)} temporal attention units on {len(prompts)} prompts x "
                   f"{config.steps} steps -> {args.output}")


def cmd_plan(args) -> None:
    """Rank temporal units by their calibration scores and write a pruning plan.

    example: f3compile plan calib --ratio 0.5 --granularity head --stages 2 -o plan.json
    schedule: f3compile plan calib --ratio 0,0.5,1 --stages 3 --granularity block -o plan.json
    budget:   f3compile plan calib --target-speedup 1.3 --stages 3 --granularity block -o plan.json
    search:   f3compile plan calib --search --prompts examples/prompts.txt --max-error 0.05 --stages 2 -o plan.json
              (--target-speedup 1.3 --reuse-periods 2,3,4: reach a speed with the least measured error)
    reuse:    f3compile plan calib --ratio 0.5 --granularity block --reuse 2 --stages 2 -o plan.json
    """
    from .calibration import CalibrationStats
    from .planning import make_plan

    started = time.perf_counter()
    if args.search:
        if args.ratio is not None:
            raise F3Error("--search chooses what to prune itself; drop --ratio (bound it with --max-error/--target-speedup)")
        if args.prompts is None:
            raise F3Error("--search runs the model on prompts: pass --prompts (the calibration prompts)")
    elif (args.ratio is None) == (args.target_speedup is None):
        raise F3Error("give exactly one of --ratio R (or R1,R2,... one per stage) and --target-speedup S, or --search")
    elif args.max_error is not None or args.prompts is not None or args.reuse_periods is not None:
        raise F3Error("--max-error, --prompts and --reuse-periods belong to --search")
    if args.search and args.reuse is not None and args.reuse_periods is not None:
        raise F3Error("give --search one of --reuse K and --reuse-periods K1,K2,...")
    if args.criterion is None:
        from .planning.criteria import DEFAULT_CRITERION

        args.criterion = "residual_change" if args.reuse is not None and not args.search else DEFAULT_CRITERION
    stats = CalibrationStats.load(args.calibration)
    if stats.meta.get("kind") == "autoregressive" and (args.search or args.target_speedup is not None
                                                       or args.reuse is not None or args.stages != 1):
        raise F3Error("an autoregressive calibration takes --ratio plans of one stage (no --search, "
                      "--target-speedup, --reuse or --stages)")
    if args.search or args.target_speedup is not None:
        from .models import find_temporal_units, load_model
        from .planning.cost import ModelCost

        model = load_model(args.model or stats.meta["model"]["spec"])
        if model.fingerprint != stats.meta["model"]["fingerprint"]:
            raise F3Error(f"{args.calibration} was recorded on another model than {model.spec}; pass --model with "
                          "the calibrated model")
        units = find_temporal_units(model)
        cost = ModelCost.measure(model, units)
    if args.search:
        from .calibration import read_prompts
        from .planning.search import search_plan

        actions = tuple(a for a in args.actions.split(",") if a)
        plan, steps = search_plan(model, stats, read_prompts(args.prompts), cost, units, max_error=args.max_error,
                                  target_speedup=args.target_speedup, stages=args.stages, criterion=args.criterion,
                                  actions=actions, reuse_period=2 if args.reuse is None else args.reuse,
                                  reuse_periods=_parse_periods(args.reuse_periods), log=print)
        what = (f"searched, {len(steps)} accepted step(s), error {plan.search['error']:.4f}, "
                f"FLOP-predicted {plan.search['predicted_speedup']:.3f}x")
    elif args.target_speedup is not None:
        from .planning.schedule import make_target_plan

        plan = make_target_plan(stats, cost, args.target_speedup, args.granularity, args.criterion, args.stages,
                                seed=args.seed, reuse=args.reuse)
        what = f"ratios {plan.ratio_text()}, FLOP-predicted {plan.budget['predicted_speedup']:.3f}x"
    else:
        plan = make_plan(stats, _parse_ratios(args.ratio), args.granularity, args.criterion, args.stages, seed=args.seed,
                         reuse=args.reuse)
        what = f"ratio {plan.ratio_text()}" + (f", reuse every {args.reuse} steps" if args.reuse else "")
    plan.save(args.output)
    _done(started, f"wrote {args.output}: {plan.granularity} plan, {what}, {len(plan.stages)} stage(s)")


def _parse_periods(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise F3Error(f"--reuse-periods {text!r} must be comma-separated integers, e.g. 2,3,4") from None


def _parse_ratios(text: str) -> float | list[float]:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise F3Error(f"--ratio {text!r} must be a number or comma-separated numbers in [0, 1], e.g. 0,0.5,1") from None
    return values[0] if len(values) == 1 else values


def cmd_inspect(args) -> None:
    """Print what a plan keeps and prunes per stage, and (with --model) what it saves.

    example: f3compile inspect plan.json --model builtin:tiny-unet3d
    """
    from .planning import PruningPlan
    from .planning.inspect import render

    plan = PruningPlan.load(args.plan)
    model = None
    if args.model and _autoregressive(args.model):
        from .autoregressive.bench import savings
        from .models.cogvideo import load_cogvideo

        print(render(plan, None).replace("pass --model to count the parameters and FLOPs each stage removes", "").rstrip())
        print(savings(load_cogvideo(args.model), plan))
        return
    if args.model:
        from .models import load_model

        model = load_model(args.model)
    print(render(plan, model))


def cmd_compile(args) -> None:
    """Rewrite the exported denoiser graph per plan stage into pruned, static torch.export programs.

    example: f3compile compile builtin:tiny-unet3d --plan plan.json -o build
    on a GPU: f3compile compile builtin:arch-latte --plan plan.json --device cuda --precision fp16 -o build
    Writes BUILD_DIR/stageK/denoiser.pt2 per plan stage and BUILD_DIR/manifest.json.
    Without --plan the dense model is compiled (one stage). --list-passes prints the pipeline.
    """
    from .compiler.pipeline import describe_pipeline

    if args.list_passes:
        print(describe_pipeline())
        return
    if not args.model or not args.output:
        raise F3Error("compile needs MODEL and -o BUILD_DIR (or --list-passes)")
    if _autoregressive(args.model):
        _build_autoregressive(args, "pt2")
        return
    from .calibration.calibrate import resolve_shapes
    from .compiler import compile_to_dir
    from .models import load_model
    from .planning import PruningPlan

    started = time.perf_counter()
    plan = PruningPlan.load(args.plan) if args.plan else None
    model = load_model(args.model)
    shapes = resolve_shapes(model, args.frames, args.height, args.width, args.batch)
    manifest = compile_to_dir(model, plan, args.output, shapes, plan_path=args.plan, precision=args.precision,
                              device=args.device)
    for stage in manifest["stages"]:
        print(f"stage{stage['index']}: timesteps {stage['timesteps'][0]}..{stage['timesteps'][1]}, "
              f"{stage['parameters']:,} parameters -> {args.output}/{stage['files']['pt2']['path']}")
    _done(started, f"compiled {len(manifest['stages'])} stage(s) -> {args.output}/manifest.json")


def cmd_export(args) -> None:
    """Export pruned stages as ONNX (and TensorRT engines), verified numerically, with a manifest.

    example: f3compile export builtin:tiny-unet3d --plan plan.json --target onnx -o build
    compiled engine: f3compile export builtin:tiny-unet3d --plan plan.json --target aoti --device cuda --precision fp16 -o build
    Omit --plan to export the dense baseline. --target aoti builds an AOTInductor package for --device
    (needs a C++ compiler); --target trt needs the [trt] extra and a GPU.
    """
    from .calibration.calibrate import resolve_shapes
    from .exporters import ExportConfig, export
    from .exporters.export import parse_batch_profile
    from .models import load_model
    from .planning import PruningPlan

    if _autoregressive(args.model):
        if args.target != "onnx":
            raise F3Error(f"--target {args.target} does not take autoregressive models yet; use --target onnx")
        _build_autoregressive(args, "onnx")
        return
    started = time.perf_counter()
    config = ExportConfig(
        target=args.target, precision=args.precision, opset=args.opset, device=args.device,
        dynamic_batch=parse_batch_profile(args.dynamic_batch), verify=not args.no_verify,
        triton_repo=args.triton_repo,
    )
    config.check()
    if config.target == "trt":
        from .exporters.tensorrt import require_tensorrt

        require_tensorrt()
    plan = PruningPlan.load(args.plan) if args.plan else None
    model = load_model(args.model)
    shapes = resolve_shapes(model, args.frames, args.height, args.width, args.batch)
    manifest = export(model, plan, args.output, shapes, config, plan_path=args.plan, progress=True)
    for stage in manifest["stages"]:
        checks = [f"{name.replace('_vs_', ' vs ')} rel. L2 {result['relative_l2_error']:.1e}"
                  for name, result in stage.get("verify", {}).items()] or ["not verified"]
        audit = stage.get("audit")
        detail = (f"; {audit['attention_nodes']} attention cores, {audit['initializer_bytes']:,} initializer bytes"
                  if audit else f"; compiled in {stage['aoti']['compile_seconds']:.0f}s for {stage['aoti']['device']}")
        print(f"stage{stage['index']}: {', '.join(sorted(stage['files']))}; {'; '.join(checks)}{detail}")
    _done(started, f"exported {len(manifest['stages'])} stage(s) ({config.target}, {config.precision}) -> {args.output}")


def cmd_generate(args) -> None:
    """Generate a video from built artifacts, as a deployment would (manifest + stage artifacts).

    example: f3compile generate build --prompt "a red circle moving left" -o video.gif
    --backend torch runs the .pt2 programs (from compile or export) on --device, aoti the AOTInductor
    packages, onnxruntime the .onnx files, tensorrt the engines. The output is .gif, .mp4 or .png
    (frames side by side). A CogVideo build generates its 5 frames; --interpolate BUILD2 (a stage-2
    build) fills frames between them: f3compile generate s1 --interpolate s2 --prompt "..." -o v.gif
    """
    from .runtime import Runtime

    started = time.perf_counter()
    suffix = args.output.suffix.lower()
    if suffix not in (".gif", ".mp4", ".png"):
        raise F3Error(f"-o {args.output}: the output must end in .gif, .mp4 or .png")
    from .autoregressive.export import is_ar_build

    if is_ar_build(args.build):
        _generate_autoregressive(args, started)
        return
    if args.interpolate is not None:
        raise F3Error("--interpolate takes a CogVideo stage-2 build and needs a CogVideo stage-1 build to interpolate")
    start = None
    if args.latents:
        from .sampling import read_latents

        start = read_latents(args.latents)
    runtime = Runtime(args.build, backend=args.backend, device=args.device)
    latents = runtime.generate(args.prompt, seed=args.seed, steps=args.steps, guidance_scale=args.guidance_scale,
                               latents=start)
    frames = runtime.decode(latents)[0]
    _write_video(frames, args.output, args.fps)
    if args.save_latents:
        from safetensors.torch import save_file

        save_file({"latents": latents.contiguous()}, str(args.save_latents))
    carried = runtime.residual_bytes
    _done(started, f"wrote {args.output} ({frames.shape[0]} frames {frames.shape[2]}x{frames.shape[1]}, "
                   f"{args.steps} steps, backend {args.backend}"
                   + (f", temporal reuse carried {carried / 2**20:.2f} MiB of residuals" if carried else "") + ")")


def _write_video(frames, output: Path, fps: int) -> None:
    """Write frames to a hidden temporary file next to `output`, then rename it into place."""
    from .runtime import save_video

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.stem}.tmp{output.suffix.lower()}")
    try:
        save_video(frames, tmp, fps=fps)
        tmp.replace(output)
    finally:
        tmp.unlink(missing_ok=True)


def _parse_shape(text: str | None):
    from .models.base import VideoShapes

    if text is None:
        return None
    try:
        frames, height, width = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise F3Error(f"--shape {text!r} must be FRAMESxHEIGHTxWIDTH in pixels, e.g. 16x128x128") from None
    return VideoShapes(1, frames, height, width)


def cmd_bench(args) -> None:
    """Time dense vs pruned artifacts side by side (interleaved, medians) and compare with FLOPs.

    example: f3compile bench builtin:tiny-unet3d --plan plan.json --backend onnxruntime --repeat 20
    on a GPU: f3compile bench builtin:arch-latte --plan plan.json --device cuda --precision fp16 --backend torch aoti
    sweep:   f3compile bench MODEL --calibration calib --sweep 0,0.25,0.5,0.75,1 --granularity block --plot s.png
    """
    from .bench import bench, format_table, plot
    from .models import load_model
    from .planning import PruningPlan, make_plan

    started = time.perf_counter()
    spec = args.model
    if args.width_scale is not None:
        if not spec.startswith("builtin:arch-"):
            raise F3Error("--width-scale applies to the builtin:arch-* presets only")
        spec = f"{spec},width-scale={args.width_scale}"
    if (args.plan is None) == (args.sweep is None):
        raise F3Error("pass either --plan PLAN or --sweep RATIOS with --calibration DIR")
    if _autoregressive(spec):
        _bench_autoregressive(args, spec, started)
        return
    plans = []
    if args.sweep is not None:
        from .calibration import CalibrationStats

        if args.calibration is None:
            raise F3Error("--sweep needs --calibration DIR (the plans are made from it)")
        try:
            ratios = [float(x) for x in args.sweep.split(",")]
        except ValueError:
            raise F3Error(f"--sweep {args.sweep!r} must be comma-separated ratios, e.g. 0,0.5,1") from None
        stats = CalibrationStats.load(args.calibration)
        plans = [(r, make_plan(stats, r, args.granularity, args.criterion, args.stages)) for r in ratios]
    else:
        plans = [(None, PruningPlan.load(args.plan))]
    model = load_model(spec)
    shapes = _parse_shape(args.shape)
    results = []
    for ratio, plan in plans:
        for backend in args.backend:
            rows = bench(model, plan, backend, shapes, repeat=args.repeat, device=args.device, precision=args.precision)
            for row in rows:
                if ratio is not None:
                    row["ratio"] = ratio
            results += rows
            if ratio is not None:
                print(f"ratio {ratio:g}:")
            print(format_table(rows), flush=True)
    if args.json:
        from ._io import write_json_atomic

        write_json_atomic(args.json, {"model": spec, "shape": args.shape, "results": results})
    if args.plot:
        plot(results, args.plot)
    _done(started, f"benchmarked {len(plans)} plan(s) on {', '.join(args.backend)}")


def _eval_variants(args) -> list:
    """The dense model, each --plan, and with --sweep/--random the plans made from --calibration."""
    from .evaluation import Variant
    from .planning import PruningPlan, make_plan

    def meta(plan, **extra):
        kind = ("search" if plan.search else "budget" if plan.budget
                else "reuse" if any(stage.reused_blocks for stage in plan.stages)
                else "schedule" if isinstance(plan.ratio, list) else "criterion")
        return {"granularity": plan.granularity, "ratio": plan.ratio, "stages": len(plan.stages),
                "criterion": plan.criterion, "kind": kind, **extra}

    variants = [Variant("dense")]
    for path in args.plan or []:
        plan = PruningPlan.load(path)
        variants.append(Variant(path.stem, plan, meta(plan, file=str(path))))
    if args.sweep or args.random:
        from .calibration import CalibrationStats

        if args.calibration is None:
            raise F3Error("--sweep and --random make plans: pass --calibration DIR")
        stats = CalibrationStats.load(args.calibration)

        def floats(text, what):
            try:
                return [float(x) for x in text.split(",")]
            except ValueError:
                raise F3Error(f"--{what} {text!r} must be comma-separated numbers, e.g. 0.5,1") from None

        ratios = floats(args.ratios, "ratios")
        stage_counts = [int(x) for x in floats(args.stages, "stages")]
        granularities = args.granularities.split(",")
        criteria = args.criteria.split(",")
        for granularity in granularities:
            for ratio in ratios:
                for stages in stage_counts:
                    for criterion in criteria:
                        plan = make_plan(stats, ratio, granularity, criterion, stages)
                        suffix = "" if criterion == "cross_frame_mass" else f"-{criterion}"
                        variants.append(Variant(f"{granularity}-{ratio:g}-s{stages}{suffix}", plan, meta(plan)))
                    for seed in range(args.random):
                        plan = make_plan(stats, ratio, granularity, "random", stages, seed=seed)
                        variants.append(Variant(f"{granularity}-{ratio:g}-s{stages}-random{seed}", plan, meta(plan)))
    if len(variants) == 1:
        raise F3Error("nothing to compare with the dense model: pass --plan PLAN, or --calibration DIR with --sweep")
    return variants


def cmd_eval(args) -> None:
    """Score dense vs pruned videos: probe accuracy, Fréchet distance, PSNR, SSIM, consistency, speedup.

    example: f3compile eval builtin:ref-latte --plan plan.json -o eval
    any model: f3compile eval MODEL_DIR --plan plan.json --prompts prompts.txt -o eval   (fidelity to dense)
    sweep:   f3compile eval builtin:ref-latte --calibration calib --sweep --random 5 -o eval-sweep
    Writes eval.json, eval.md and grid.png (and sweep.png with --sweep) to the output directory.
    Prompts are JSON lines {"prompt", "color", "shape", "direction"}; by default every label
    combination once, in held-out wording.
    """
    if _autoregressive(args.model):
        raise F3Error(f"{args.model} is autoregressive (CogVideo): eval scores diffusion models; "
                      "measure CogVideo plans with `f3compile bench`")
    from .evaluation import EvalConfig, default_prompts, evaluate, markdown, read_eval_prompts, write_report
    from .models import load_model

    started = time.perf_counter()
    if args.limit is not None and args.limit < 1:
        raise F3Error(f"--limit must be at least 1, got {args.limit}")
    variants = _eval_variants(args)
    measures = args.measures
    if measures == "auto":  # the probe knows the moving-shapes domain of the reference models only
        measures = "probe" if str(args.model).startswith("builtin:ref-") else "fidelity"
    if measures == "fidelity":
        from .calibration import read_prompts

        if not args.prompts:
            raise F3Error("fidelity evaluation needs --prompts (a text file, one prompt per line)")
        prompts = [{"prompt": p} for p in read_prompts(args.prompts)]
        if not prompts:
            raise F3Error(f"prompts file {args.prompts} has no prompts")
    else:
        prompts = read_eval_prompts(args.prompts) if args.prompts else default_prompts(args.seed)
    if args.limit is not None:
        prompts = prompts[: args.limit]
    config = EvalConfig(samples=args.samples, steps=args.steps, guidance_scale=args.guidance_scale, seed=args.seed,
                        batch=args.batch, real_per_prompt=args.real, repeat=args.repeat, device=args.device)
    model = load_model(args.model)
    result = evaluate(model, variants, prompts, config, log=lambda line: print(line, flush=True), measures=measures)
    write_report(result, args.output, sweep=args.sweep or args.plot)
    print(markdown(result))
    _done(started, f"evaluated {len(variants)} variant(s) -> {args.output}")


def _autoregressive(spec: str) -> bool:
    from .models.cogvideo import is_cogvideo_spec

    return is_cogvideo_spec(str(spec))


def _build_autoregressive(args, target: str) -> None:
    """compile (torch.export programs) and export (+ ONNX) for CogVideo: prefill and decode step."""
    from .autoregressive.export import build
    from .models.cogvideo import load_cogvideo
    from .planning import PruningPlan

    started = time.perf_counter()
    if args.precision != "fp32" or args.device != "cpu" or args.frames or args.height or args.width:
        raise F3Error("autoregressive builds are fp32 on the CPU at the model's own frames; drop --precision, "
                      "--device, --frames, --height and --width")
    if target == "onnx" and (args.dynamic_batch or args.triton_repo or args.opset != 20):
        raise F3Error("--dynamic-batch, --triton-repo and --opset do not apply to autoregressive builds yet")
    plan = PruningPlan.load(args.plan) if args.plan else None
    model = load_cogvideo(args.model)
    manifest = build(model, plan, args.output, target=target, batch=args.batch, plan_path=args.plan,
                     verify=not getattr(args, "no_verify", False))
    for name, entry in manifest["programs"].items():
        print(f"{name}: {', '.join(sorted(entry['files'].values()))}; {len(entry['inputs'])} inputs, "
              f"{len(entry['outputs'])} outputs")
    for kind, result in manifest.get("verify", {}).items():
        print(f"verify {kind} vs eager over {result['calls']} calls: logits rel. L2 {result['logits_relative_l2']:.1e}, "
              f"caches {result['caches_relative_l2']:.1e}")
    _done(started, f"built prefill + decode step ({len(manifest['plus_layers'])} plus channels, cache "
                   f"{manifest['cache']['bytes'] / 2**20:.2f} MiB at batch {args.batch}) -> {args.output}")


def _generate_autoregressive(args, started: float) -> None:
    from .autoregressive.runtime import ARRuntime

    if args.backend not in ("torch", "onnxruntime") or args.device != "cpu" or args.latents or args.save_latents:
        raise F3Error("an autoregressive build generates on the CPU with --backend torch or onnxruntime "
                      "(no --latents/--save-latents)")
    runtime = ARRuntime(args.build, backend=args.backend)
    if runtime.stage != 1:
        raise F3Error(f"{args.build} is a stage-2 (interpolation) build: generate with a stage-1 build and pass "
                      "this one as --interpolate")
    interpolator = None
    if args.interpolate is not None:
        if args.rounds < 1:
            raise F3Error("--rounds must be at least 1 (each doubles the frame rate)")
        interpolator = ARRuntime(args.interpolate, backend=args.backend)
        if interpolator.stage != 2:
            raise F3Error(f"--interpolate {args.interpolate} is a stage-1 build; pass a stage-2 build")
        k, c = runtime.config, interpolator.config
        if (k.grid, k.image_tokens, k.frames) != (c.grid, c.image_tokens, c.frames):
            raise F3Error(f"--interpolate {args.interpolate} takes {c.frames} frames of {c.grid}x{c.grid} tokens over "
                          f"{c.image_tokens} image tokens; {args.build} makes {k.frames} of {k.grid}x{k.grid} over {k.image_tokens}")
    tokens = runtime.generate(args.prompt, seed=args.seed)
    what = f"backend {args.backend}, cache {runtime.cache_bytes / 2**20:.2f} MiB"
    if interpolator is not None:
        key_frames = tokens.shape[0]
        tokens = interpolator.interpolate(args.prompt, tokens, rounds=args.rounds, seed=args.seed)
        what += (f"; interpolated {key_frames} -> {tokens.shape[0]} frames in {args.rounds} round(s), cache "
                 f"{interpolator.cache_bytes / 2**20:.2f} MiB")
    frames = runtime.frames(tokens)
    _write_video(frames, args.output, args.fps)
    _done(started, f"wrote {args.output} ({frames.shape[0]} frames {frames.shape[2]}x{frames.shape[1]} from "
                   f"{tokens.numel()} tokens, {what})")


def _bench_autoregressive(args, spec: str, started: float) -> None:
    from .autoregressive.bench import bench_ar, format_rows
    from .models.cogvideo import load_cogvideo
    from .planning import PruningPlan

    if (args.sweep is not None or args.backend != ["torch"] or args.device != "cpu" or args.precision != "fp32"
            or args.shape or args.plot):
        raise F3Error("autoregressive bench takes --plan with the torch backend, fp32 on the CPU "
                      "(no --sweep, --shape, --device, --precision or --plot)")
    model = load_cogvideo(spec)
    rows = bench_ar(model, PruningPlan.load(args.plan), repeat=args.repeat, videos=args.videos)
    print(format_rows(rows), flush=True)
    if args.json:
        from ._io import write_json_atomic

        write_json_atomic(args.json, {"model": spec, "results": rows})
    _done(started, "benchmarked dense vs pruned step programs")


def cmd_convert(args) -> None:
    """Convert a SAT CogVideo checkpoint (mp_rank_00_model_states.pt) into a model directory.

    example: f3compile convert cogvideo-stage1/1/mp_rank_00_model_states.pt -o cogvideo-stage1
    Reads the .pt with torch.load(weights_only=True) (no code in it runs), checks every key and
    shape against the published layout and writes DIR/{cogvideo.json, model.safetensors}; the
    directory is then a MODEL for every other command. Sizes come from the tensors' shapes;
    --start-of-image and --pad-token give the tokenizer's special ids. The interpolation checkpoint
    (cogvideo-stage2) has the same names: convert it with --stage 2.
    """
    from .models.cogvideo import convert

    started = time.perf_counter()
    overrides = {k: v for k, v in (("start_of_image", args.start_of_image), ("pad_token", args.pad_token),
                                   ("text_length", args.text_length), ("stage", args.stage)) if v is not None}
    config = convert(args.checkpoint, args.output, **overrides)
    _done(started, f"converted {config.num_layers} layers, hidden {config.hidden_size}, vocabulary "
                   f"{config.vocab_size} -> {args.output}")


def build_parser() -> argparse.ArgumentParser:
    from .planning.criteria import CRITERIA, DEFAULT_CRITERION
    from .planning.plan import GRANULARITIES

    parser = _Parser(prog="f3compile", description="Training-free temporal-attention pruning compiler for text-to-video models.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(name, fn):
        doc = fn.__doc__.strip()
        p = sub.add_parser(name, help=doc.splitlines()[0], description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=fn)
        return p

    p = add("calibrate", cmd_calibrate)
    p.add_argument("model", help="builtin:NAME, a diffusers directory or a cached hub id")
    p.add_argument("--prompts", required=True, help="text file, one prompt per line (or JSON lines with \"prompt\")")
    p.add_argument("-o", "--output", required=True, type=Path, help="output directory")
    p.add_argument("--steps", type=int, default=25, help="denoising steps (default 25)")
    p.add_argument("--frames", type=int, help="frames (default: the model's)")
    p.add_argument("--height", type=int, help="height in pixels (default: the model's)")
    p.add_argument("--width", type=int, help="width in pixels (default: the model's)")
    p.add_argument("--guidance-scale", type=float, default=7.5, help="CFG scale (default 7.5)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--batch-size", type=int, default=1, help="prompts per sampling call (default 1)")
    p.add_argument("--key-model", help="CogVideo stage-2 models: the stage-1 model whose frames it interpolates")
    p.add_argument("--no-heatmaps", action="store_true", help="skip the heatmap PNGs")
    p.add_argument("--latents", type=Path, help="start every prompt from these latents instead of noise (.pt or "
                   "one-tensor .safetensors, e.g. Tune-A-Video's DDIM-inverted inv_latents/*.pt)")

    p = add("plan", cmd_plan)
    p.add_argument("calibration", type=Path, help="directory written by `f3compile calibrate`")
    p.add_argument("--ratio", help="fraction of units to prune, in [0, 1]; or one per stage: 0,0.5,1")
    p.add_argument("--target-speedup", type=float, help="instead of --ratio: prune the lowest-scored (unit, stage) "
                   "pairs until the trajectory's FLOP-predicted speedup reaches S")
    p.add_argument("--model", help="with --target-speedup or --search: the calibrated model (default: the "
                   "calibration's spec)")
    p.add_argument("--search", action="store_true", help="choose per (stage, block) the action with the least "
                   "measured error of the final latents (runs the model; see --max-error, --target-speedup)")
    p.add_argument("--max-error", type=float, help="with --search: bound on the final latents' relative L2 error vs dense")
    p.add_argument("--prompts", help="with --search: prompts to measure on (the calibration prompts)")
    p.add_argument("--actions", default="drop,reuse,heads",
                   help="with --search: actions to try, among drop, reuse, heads (default: all three)")
    p.add_argument("--reuse", type=int, metavar="K", help="temporal reuse: the selected blocks (--granularity block) "
                   "are computed at every K-th step of their stage and reuse their residual in between, instead of "
                   "being dropped; with --search: the period of the reuse action (default 2)")
    p.add_argument("--reuse-periods", metavar="K1,K2,...", help="with --search: try reuse at each of these periods "
                   "(one action each; a target speedup upgrades to longer periods before dropping)")
    p.add_argument("--granularity", choices=GRANULARITIES, default="head", help="unit level (default head)")
    p.add_argument("--criterion", choices=CRITERIA, help=f"score (default {DEFAULT_CRITERION}; with --reuse: "
                   "residual_change, how much a block's residual changes from step to step)")
    p.add_argument("--stages", type=int, default=1, help="timestep stages, each ranked on its own steps (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of --criterion random (a control plan)")
    p.add_argument("-o", "--output", required=True, type=Path, help="plan.json to write")

    p = add("compile", cmd_compile)
    p.add_argument("model", nargs="?", help="builtin:NAME, a diffusers directory or a cached hub id")
    p.add_argument("--plan", type=Path, help="plan.json (default: no pruning, the dense baseline)")
    p.add_argument("-o", "--output", type=Path, help="build directory")
    p.add_argument("--batch", type=int, default=1, help="prompts per call; the program's batch is twice this (CFG)")
    p.add_argument("--frames", type=int, help="frames (default: the model's)")
    p.add_argument("--height", type=int, help="height in pixels (default: the model's)")
    p.add_argument("--width", type=int, help="width in pixels (default: the model's)")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32", help="dtype of the program's weights")
    p.add_argument("--device", default="cpu", help="cpu or cuda: capture and compile where the program will run")
    p.add_argument("--list-passes", action="store_true", help="print the pass pipeline and exit")

    p = add("export", cmd_export)
    p.add_argument("model", help="builtin:NAME, a diffusers directory or a cached hub id")
    p.add_argument("--plan", type=Path, help="plan.json (default: the dense baseline)")
    p.add_argument("--target", choices=("onnx", "aoti", "trt"), default="onnx",
                   help="onnx; aoti (AOTInductor package for --device); trt (needs TensorRT and a GPU)")
    p.add_argument("--device", default="cpu", help="cpu or cuda: capture, compile and verify on this device")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32", help="dtype of the exported graph")
    p.add_argument("--batch", type=int, default=1, help="prompts per call; the graph's batch is twice this (CFG)")
    p.add_argument("--frames", type=int, help="frames (default: the model's)")
    p.add_argument("--height", type=int, help="height in pixels (default: the model's)")
    p.add_argument("--width", type=int, help="width in pixels (default: the model's)")
    p.add_argument("--dynamic-batch", metavar="MIN:OPT:MAX", help="TensorRT optimization profile over the CFG batch")
    p.add_argument("--opset", type=int, default=20, help="ONNX opset (default 20)")
    p.add_argument("--triton-repo", type=Path, help="also write a Triton model repository")
    p.add_argument("--no-verify", action="store_true", help="skip the numerical verification")
    p.add_argument("-o", "--output", required=True, type=Path, help="build directory")

    p = add("generate", cmd_generate)
    p.add_argument("build", type=Path, help="build directory with manifest.json")
    p.add_argument("--prompt", required=True, help="text prompt")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--steps", type=int, default=25, help="denoising steps (default 25)")
    p.add_argument("--guidance-scale", type=float, default=7.5, help="CFG scale (default 7.5)")
    p.add_argument("--backend", choices=("torch", "aoti", "onnxruntime", "tensorrt"), default="torch", help="artifact runtime")
    p.add_argument("--device", default="cpu", help="cpu or cuda: where the torch/aoti programs and the loop run")
    p.add_argument("--fps", type=int, default=8, help="frames per second of .gif/.mp4 (default 8)")
    p.add_argument("--latents", type=Path, help="start from these latents instead of noise (.pt or one-tensor "
                   ".safetensors, e.g. Tune-A-Video's DDIM-inverted inv_latents/*.pt)")
    p.add_argument("--save-latents", type=Path, help="also write the final latents (safetensors)")
    p.add_argument("--interpolate", type=Path, help="CogVideo: a stage-2 build that fills frames between the "
                   "stage-1 build's (5 -> 9 -> 17 -> 33)")
    p.add_argument("--rounds", type=int, default=3, help="with --interpolate: rounds, each doubling the frame rate (default 3)")
    p.add_argument("-o", "--output", required=True, type=Path, help="OUT.gif, OUT.mp4 or OUT.png")

    p = add("bench", cmd_bench)
    p.add_argument("model", help="builtin:NAME (e.g. builtin:arch-modelscope), a diffusers directory or a cached hub id")
    p.add_argument("--plan", type=Path, help="plan.json to compare with the dense model")
    p.add_argument("--backend", nargs="+", choices=("torch", "aoti", "onnxruntime", "tensorrt"), default=["torch"], help="one or more backends")
    p.add_argument("--device", default="cpu", help="cpu or cuda (CUDA events, peak device memory)")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32", help="dtype of the programs")
    p.add_argument("--shape", help="FRAMESxHEIGHTxWIDTH in pixels (default: the model's)")
    p.add_argument("--width-scale", type=float, help="channel multiplier for builtin:arch-* presets")
    p.add_argument("--repeat", type=int, default=10, help="timed calls per variant (default 10)")
    p.add_argument("--sweep", help="comma-separated ratios to plan and bench (needs --calibration)")
    p.add_argument("--calibration", type=Path, help="calibration directory for --sweep")
    p.add_argument("--granularity", choices=("block", "attention", "head", "frame"), default="block", help="for --sweep")
    p.add_argument("--criterion", choices=("cross_frame_mass", "output_norm"), default="cross_frame_mass", help="for --sweep")
    p.add_argument("--stages", type=int, default=1, help="for --sweep")
    p.add_argument("--json", type=Path, help="write the results as JSON")
    p.add_argument("--plot", type=Path, help="write a speedup plot (PNG)")
    p.add_argument("--videos", type=int, default=1, help="autoregressive models: whole videos per variant (default 1)")

    p = add("eval", cmd_eval)
    p.add_argument("model", help="builtin:ref-latte, builtin:ref-unet3d (probe metrics), or any model (fidelity)")
    p.add_argument("--measures", choices=("auto", "probe", "fidelity"), default="auto",
                   help="probe: accuracy and Fréchet on the moving-shapes domain (+ fidelity); fidelity: PSNR, SSIM "
                        "and latents rel. L2 vs dense, for any model (default auto: probe for builtin:ref-*)")
    p.add_argument("--plan", type=Path, nargs="+", help="plan.json file(s) to compare with the dense model")
    p.add_argument("--prompts", type=Path, help="probe: JSON lines {prompt, color, shape, direction} (default: 60 "
                   "held-out); fidelity: one prompt per line")
    p.add_argument("--limit", type=int, help="use only the first N prompts")
    p.add_argument("--samples", type=int, default=2, help="videos per prompt, one seed each (default 2)")
    p.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    p.add_argument("--guidance-scale", type=float, default=5.0, help="CFG scale (default 5)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--batch", type=int, default=20, help="prompts per sampling call (default 20)")
    p.add_argument("--real", type=int, default=10, help="real clips per prompt for the Fréchet reference (default 10)")
    p.add_argument("--repeat", type=int, default=5, help="timed calls per variant for the speedup (default 5)")
    p.add_argument("--device", default="cpu", help="cpu or cuda: where the programs run")
    p.add_argument("--calibration", type=Path, help="calibration directory for --sweep / --random")
    p.add_argument("--sweep", action="store_true", help="plans for every ratio x granularity x stages x criterion")
    p.add_argument("--ratios", default="0.25,0.5,0.75,1", help="for --sweep/--random (default 0.25,0.5,0.75,1)")
    p.add_argument("--granularities", default="block,attention,head", help="for --sweep/--random")
    p.add_argument("--stages", default="1,2", help="stage counts for --sweep/--random (default 1,2)")
    p.add_argument("--criteria", default="cross_frame_mass", help="for --sweep, e.g. cross_frame_mass,output_norm")
    p.add_argument("--random", type=int, default=0, help="also N random plans per ratio x granularity x stages")
    p.add_argument("--plot", action="store_true", help="also write sweep.png (quality vs speedup) for the given plans")
    p.add_argument("-o", "--output", type=Path, required=True, help="output directory")

    p = add("convert", cmd_convert)
    p.add_argument("checkpoint", type=Path, help="SAT mp_rank_00_model_states.pt (or a .safetensors of the same keys)")
    p.add_argument("--start-of-image", type=int, help="token id of <start_of_image> (default 0)")
    p.add_argument("--pad-token", type=int, help="token id of the text padding (default 0)")
    p.add_argument("--text-length", type=int, help="text slots before the first frame (default 64)")
    p.add_argument("--stage", type=int, choices=(1, 2), help="2 for the interpolation checkpoint (cogvideo-stage2; default 1)")
    p.add_argument("-o", "--output", type=Path, required=True, help="model directory to write")

    p = add("inspect", cmd_inspect)
    p.add_argument("plan", type=Path, help="plan.json")
    p.add_argument("--model", help="count parameters and FLOPs removed on this model")
    return parser


def _version() -> str:
    try:
        import importlib.metadata as md

        return f"f3compile {md.version('f3compile')}"
    except Exception:
        return "f3compile (uninstalled)"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with interrupts_unwind():
            args.func(args)
    except F3Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        print("error: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
