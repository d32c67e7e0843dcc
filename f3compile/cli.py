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
    on 8 GPUs: torchrun --nproc-per-node 8 -m f3compile calibrate MODEL --prompts p.txt --device cuda -o calib
    array job: f3compile calibrate MODEL --prompts p.txt --shard 3/16 -o part3   (then: f3compile merge part* -o calib)
    Prompt i starts from seed + i (CogVideo: batch b from seed + b), so ranks and shards give the
    one-process calibration.
    """
    from . import api, parallel
    from .api import CalibrationConfig

    started = time.perf_counter()
    if parallel.launched():  # join the other ranks first: a rank refused below then stops them at once
        parallel.group(args.device)
    config = CalibrationConfig(
        steps=args.steps, frames=args.frames, height=args.height, width=args.width,
        guidance_scale=args.guidance_scale, seed=args.seed, batch_size=args.batch_size, heatmaps=not args.no_heatmaps,
        query_fraction=args.query_fraction, device=args.device, residual_change=args.residual_change,
        precision=args.precision,
    )
    stats = api.calibrate(args.model, args.prompts, config, latents=args.latents, key_model=args.key_model,
                          output_dir=args.output, progress=True, shard=args.shard)
    if "shard" in stats.meta:
        shard = stats.meta["shard"]
        what = f"shard {shard['index']}/{shard['count']} (prompt batches {shard['batches'][0]}..{shard['batches'][1] - 1})"
        _done(started, f"calibrated {what} -> {args.output}; join all shards with `f3compile merge`")
        return
    _say(started, f"{api.kind_of(args.model).summary_of_calibration(stats)} -> {args.output}")
    share = stats.meta.get("recorder_share")
    if share is not None and stats.meta["query_fraction"] < 1:
        print(f"recorded a share {stats.meta['query_fraction']:.4g} of each frame's query positions (the default at "
              f"this length: recording predicted at {share:.0%} of the plain calls; --query-fraction 1 records all)")


def _say(started: float, what: str) -> None:
    """The final line, printed once: by rank 0 under torchrun."""
    from . import parallel

    if not parallel.launched() or parallel.group().writer:
        _done(started, what)


def cmd_merge(args) -> None:
    """Join the shards of `calibrate --shard K/N` into the calibration one process would have written.

    example: f3compile merge part0 part1 part2 part3 -o calib
    Checks that the shards belong together (model fingerprint, prompts, shapes, steps, seed and
    settings) and that all N are given once; the statistics are summed exactly in shard order.
    """
    from . import api

    started = time.perf_counter()
    stats = api.merge(args.shards, args.output, heatmaps=not args.no_heatmaps)
    _done(started, f"merged {len(args.shards)} shards: {api.kind_of(stats).summary_of_calibration(stats)} -> {args.output}")


def cmd_plan(args) -> None:
    """Rank temporal units by their calibration scores and write a pruning plan.

    example: f3compile plan calib --ratio 0.5 --granularity head --stages 2 -o plan.json
    schedule: f3compile plan calib --ratio 0,0.5,1 --stages 3 --granularity block -o plan.json
    budget:   f3compile plan calib --target-speedup 1.3 --stages 3 --granularity block -o plan.json
    search:   f3compile plan calib --search --prompts examples/prompts.txt --max-error 0.05 --stages 2 -o plan.json
              (--target-speedup 1.3 --reuse-periods 2,3,4: reach a speed with the least measured error)
              on 8 GPUs: torchrun --nproc-per-node 8 -m f3compile plan calib --search ... --device cuda -o plan.json
    reuse:    f3compile plan calib --ratio 0.5 --granularity block --reuse 2 --stages 2 -o plan.json
    """
    from . import api
    from .options import PlanOptions

    started = time.perf_counter()
    options = PlanOptions(
        ratio=None if args.ratio is None else _parse_ratios(args.ratio), target_speedup=args.target_speedup,
        search=args.search, max_error=args.max_error,
        actions=None if args.actions is None else tuple(a for a in args.actions.split(",") if a),
        windows=_parse_windows(args.windows),
        reuse=args.reuse, reuse_periods=_parse_periods(args.reuse_periods), search_budget=args.search_budget,
        granularity=args.granularity,
        criterion=args.criterion, stages=args.stages, seed=args.seed, window=args.window, keep_mass=args.keep_mass,
        device=args.device, precision=args.precision,
    )
    from . import parallel

    writer = not parallel.launched() or parallel.group(args.device).writer  # joined before any input is read
    plan = api.plan(args.calibration, options, model=args.model, prompts=args.prompts,
                    log=print if writer else None)
    if plan.search is not None:
        accepted = plan.search["accepted"]
        moves = sum(1 for step in accepted if not step.get("exchange"))
        kept = sum(1 for step in accepted if step.get("exchange") and step["error"] is not None)  # one per exchange
        what = (f"searched, {moves} accepted step(s)" + (f", {kept} exchange(s) kept" if kept else "")
                + f", error {plan.search['error']:.4f}, "
                f"FLOP-predicted {plan.search['predicted_speedup']:.3f}x, "
                f"{plan.search['calls'] / plan.search['loop_calls']:.1f} sampling loops of denoiser calls per prompt")
    elif plan.budget is not None:
        what = f"ratios {plan.ratio_text()}, FLOP-predicted {plan.budget['predicted_speedup']:.3f}x"
    else:
        what = f"ratio {plan.ratio_text()}" + (f", reuse every {args.reuse} steps" if args.reuse else "")
    if writer:  # under torchrun every rank has the same plan; rank 0 writes it
        plan.save(args.output)
    if parallel.launched():
        parallel.group().barrier("rank 0 wrote the plan", outcome=f"{args.output} was written" if writer
                                 else f"rank 0 says whether {args.output} was written")
    _say(started, f"wrote {args.output}: {plan.granularity} plan, {what}, {len(plan.stages)} stage(s)")


def _parse_periods(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise F3Error(f"--reuse-periods {text!r} must be comma-separated integers, e.g. 2,3,4") from None


def _parse_windows(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise F3Error(f"--windows {text!r} must be comma-separated frame distances, e.g. 0,1,2") from None


def _parse_ratios(text: str) -> float | list[float]:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise F3Error(f"--ratio {text!r} must be a number or comma-separated numbers in [0, 1], e.g. 0,0.5,1") from None
    return values[0] if len(values) == 1 else values


def cmd_inspect(args) -> None:
    """Print what a plan keeps and prunes per stage, and (with --model) what it saves.

    example: f3compile inspect plan.json --model builtin:tiny-unet3d
    at a published size (a preset, counted on the meta device; the plan carried over by depth):
             f3compile inspect plan.json --model builtin:arch-wan2.1-1.3b --frames 81 --height 480 --width 832
    """
    from . import api
    from .options import Shapes

    shapes = Shapes(args.frames, args.height, args.width)
    if args.memory or args.json:
        _inspect_memory(args, shapes)
        return
    if args.precision:
        raise F3Error("--precision belongs to --memory (what the verbs hold in that precision); drop it or add --memory")
    print(api.inspect(args.plan, args.model, shapes))


def _inspect_memory(args, shapes) -> None:
    import json

    from . import api

    if not args.model:
        raise F3Error("--memory needs --model (the model whose verbs are counted)")
    precision = args.precision or "bf16"
    budget = args.budget * 2**30 if args.budget else None
    predictions, context = api.memory_report(args.plan, args.model, shapes, precision=precision,
                                             device=args.device, target=args.target, budget=budget)
    if args.json:
        print(json.dumps({**context, "budget_bytes": budget, "verbs": [p.to_dict() for p in predictions]}, indent=1))
        return
    where = "one GPU" if args.device != "cpu" else "a CPU-only machine (one memory)"
    build = "compile (torch programs)" if args.target == "torch" else f"export --target {args.target}"
    title = (f"predicted peak memory of each verb: {context['model']} at {context['frames']}x{context['height']}x"
             f"{context['width']}, {precision}, {context['stages']} stage(s), {build}, on {where}"
             + (f"; plan carried over from {context['carried_over_from']}" if context["carried_over_from"] else "")
             + ("; the published text encoder and VAE" if context["published_components"] else ""))
    print(api.memory_text(predictions, title, budget))


def _compile_options(args):
    from .options import CompileOptions, Shapes

    return CompileOptions(shapes=Shapes(args.frames, args.height, args.width, args.batch), precision=args.precision,
                          device=args.device)


def cmd_compile(args) -> None:
    """Rewrite the exported denoiser graph per plan stage into pruned, static torch.export programs.

    example: f3compile compile builtin:tiny-unet3d --plan plan.json -o build
    on a GPU: f3compile compile builtin:arch-latte --plan plan.json --device cuda --precision fp16 -o build
    Writes BUILD_DIR/stageK/denoiser.pt2 per plan stage and BUILD_DIR/manifest.json.
    Without --plan the dense model is compiled (one stage). --list-passes prints the pipeline.
    """
    from . import api

    if args.list_passes:
        print(api.list_passes())
        return
    if not args.model or not args.output:
        raise F3Error("compile needs MODEL and -o BUILD_DIR (or --list-passes)")
    started = time.perf_counter()
    compiled = api.compile(args.model, args.plan, _compile_options(args), output_dir=args.output, plan_path=args.plan)
    _report_build(args.model, compiled.manifest, args.output, "compile", started, plan_path=args.plan)


def _report_build(model, manifest: dict, output: Path, verb: str, started: float, config=None,
                  plan_path: Path | None = None) -> None:
    from . import api

    kind = api.kind_of(model)
    shapes = manifest.get("shapes") or {}
    if plan_path is not None and {"frames", "height", "width"} <= set(shapes):
        note = api.shape_note(plan_path, shapes["frames"], shapes["height"], shapes["width"])
        if note:
            print(f"built {note}")
    for line in kind.describe_build(manifest, output, verb):
        print(line)
    _done(started, kind.build_summary(manifest, output, verb, config))


def cmd_export(args) -> None:
    """Export pruned stages as ONNX (and TensorRT engines), verified numerically, with a manifest.

    example: f3compile export builtin:tiny-unet3d --plan plan.json --target onnx -o build
    compiled engine: f3compile export builtin:tiny-unet3d --plan plan.json --target aoti --device cuda --precision fp16 -o build
    Omit --plan to export the dense baseline. --target aoti builds an AOTInductor package for --device
    (needs a C++ compiler); --target trt needs the [trt] extra and a GPU.
    """
    from . import api
    from .api import ExportConfig, parse_batch_profile

    started = time.perf_counter()
    config = ExportConfig(
        target=args.target, precision=args.precision, opset=args.opset, device=args.device,
        dynamic_batch=parse_batch_profile(args.dynamic_batch), verify=not args.no_verify,
        triton_repo=args.triton_repo,
    )
    manifest = api.export(args.model, args.plan, config, options=_compile_options(args), output_dir=args.output,
                          plan_path=args.plan, progress=True)
    _report_build(args.model, manifest, args.output, "export", started, config, plan_path=args.plan)


def cmd_generate(args) -> None:
    """Generate a video from built artifacts, as a deployment would (manifest + stage artifacts).

    example: f3compile generate build --prompt "a red circle moving left" -o video.gif
    --backend torch runs the .pt2 programs (from compile or export) on --device, aoti the AOTInductor
    packages, onnxruntime the .onnx files, tensorrt the engines. The output is .gif, .mp4 or .png
    (frames side by side). A CogVideo build generates its 5 frames; --interpolate BUILD2 (a stage-2
    build) fills frames between them: f3compile generate s1 --interpolate s2 --prompt "..." -o v.gif
    """
    from . import api
    from .options import GenerateOptions

    started = time.perf_counter()
    suffix = args.output.suffix.lower()
    if suffix not in (".gif", ".mp4", ".png"):
        raise F3Error(f"-o {args.output}: the output must end in .gif, .mp4 or .png")
    options = GenerateOptions(seed=args.seed, steps=args.steps, guidance_scale=args.guidance_scale,
                              backend=args.backend, device=args.device, latents=args.latents,
                              save_latents=args.save_latents is not None, interpolate=args.interpolate,
                              rounds=args.rounds, progress=True, image=args.image)
    video = api.generate(args.build, args.prompt, options)
    video.save(args.output, args.fps)
    if args.save_latents:
        video.save_latents(args.save_latents)
    _done(started, f"wrote {args.output} ({video.summary})")


def cmd_bench(args) -> None:
    """Time dense vs pruned artifacts side by side (interleaved, medians) and compare with FLOPs.

    example: f3compile bench builtin:tiny-unet3d --plan plan.json --backend onnxruntime --repeat 20
    on a GPU: f3compile bench builtin:arch-latte --plan plan.json --device cuda --precision fp16 --backend torch aoti
    sweep:   f3compile bench MODEL --calibration calib --sweep 0,0.25,0.5,0.75,1 --granularity block --plot s.png
    """
    from . import api
    from .options import BenchOptions

    started = time.perf_counter()
    spec = args.model
    if args.width_scale is not None:
        if not spec.startswith("builtin:arch-"):
            raise F3Error("--width-scale applies to the builtin:arch-* presets only")
        spec = f"{spec},width-scale={args.width_scale}"
    sweep = None
    if args.sweep is not None:
        try:
            sweep = [float(x) for x in args.sweep.split(",")]
        except ValueError:
            raise F3Error(f"--sweep {args.sweep!r} must be comma-separated ratios, e.g. 0,0.5,1") from None
    options = BenchOptions(backends=tuple(args.backend), device=args.device, precision=args.precision, shape=args.shape,
                           repeat=args.repeat, videos=args.videos, plot=args.plot, sweep=sweep,
                           calibration=args.calibration, granularity=args.granularity, criterion=args.criterion,
                           stages=args.stages)
    result = api.bench(spec, args.plan, options)
    print(result.text, flush=True)
    if args.json:
        from ._io import write_json_atomic

        write_json_atomic(args.json, result.to_json(spec))
    _done(started, result.summary)


def cmd_eval(args) -> None:
    """Score dense vs pruned videos: probe accuracy, Fréchet distance, PSNR, SSIM, consistency, speedup.

    example: f3compile eval builtin:ref-latte --plan plan.json -o eval
    any model: f3compile eval MODEL_DIR --plan plan.json --prompts prompts.txt -o eval   (fidelity to dense)
    sweep:   f3compile eval builtin:ref-latte --calibration calib --sweep --random 5 -o eval-sweep
    Writes eval.json, eval.md and grid.png (and sweep.png with --sweep) to the output directory.
    Prompts are JSON lines {"prompt", "color", "shape", "direction"}; by default every label
    combination once, in held-out wording.
    """
    from . import api
    from .api import EvalConfig, eval_comparison, eval_markdown
    from .options import SweepOptions

    started = time.perf_counter()
    sweep = None
    if args.sweep or args.random:
        sweep = SweepOptions(ratios=tuple(_floats(args.ratios, "ratios")),
                             granularities=tuple(args.granularities.split(",")),
                             stages=tuple(int(x) for x in _floats(args.stages, "stages")),
                             criteria=tuple(args.criteria.split(",")), random=args.random)
    config = EvalConfig(samples=args.samples, steps=args.steps, guidance_scale=args.guidance_scale, seed=args.seed,
                        batch=args.batch, real_per_prompt=args.real, repeat=args.repeat, device=args.device,
                        precision=args.precision)
    result = api.evaluate(args.model, args.plan or [], args.prompts, config, measures=args.measures, limit=args.limit,
                          sweep=sweep, calibration=args.calibration, output_dir=args.output,
                          plot=args.sweep or args.plot, log=lambda line: print(line, flush=True))
    print(eval_markdown(result))
    print(eval_comparison(result))
    _done(started, f"evaluated {len(result['results'])} variant(s) -> {args.output}")


def _query_fraction(text: str) -> float | None:
    """`--query-fraction`: a share in (0, 1] or auto (None: `calibration.calibrate.auto_query_fraction`)."""
    if text == "auto":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number in (0, 1] or auto") from None


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise F3Error(f"--{what} {text!r} must be comma-separated numbers, e.g. 0.5,1") from None


def cmd_convert(args) -> None:
    """Convert a SAT CogVideo checkpoint (mp_rank_00_model_states.pt) into a model directory.

    example: f3compile convert cogvideo-stage1/1/mp_rank_00_model_states.pt -o cogvideo-stage1
    Reads the .pt with torch.load(weights_only=True) (no code in it runs), checks every key and
    shape against the published layout and writes DIR/{cogvideo.json, model.safetensors}; the
    directory is then a MODEL for every other command. Sizes come from the tensors' shapes;
    --start-of-image and --pad-token give the tokenizer's special ids. The interpolation checkpoint
    (cogvideo-stage2) has the same names: convert it with --stage 2.
    """
    from . import api

    started = time.perf_counter()
    overrides = {k: v for k, v in (("start_of_image", args.start_of_image), ("pad_token", args.pad_token),
                                   ("text_length", args.text_length), ("stage", args.stage)) if v is not None}
    config = api.convert(args.checkpoint, args.output, family="cogvideo", **overrides)
    _done(started, f"converted {config.num_layers} layers, hidden {config.hidden_size}, vocabulary "
                   f"{config.vocab_size} -> {args.output}")


def build_parser() -> argparse.ArgumentParser:
    from .api import CRITERIA, DEFAULT_CRITERION, GRANULARITIES

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
    p.add_argument("--query-fraction", type=_query_fraction, default=None, metavar="Q", help="full 3-D attention: "
                   "record the queries of this share of each frame's positions (seeded by --seed). Default auto: "
                   "all of them, or at long sequences the share whose recording costs about a quarter of the plain "
                   "sampling calls, at least 64 positions per frame (calibration.json records it)")
    p.add_argument("--residual-change", choices=("sketch", "exact", "off"), default="sketch",
                   help="each block's step-to-step residual change, what reuse plans rank by: sketch keeps a "
                   "96-direction random projection of every residual row (default), exact the whole residual "
                   "(one activation per block), off records none (plans then take no reuse)")
    p.add_argument("--latents", type=Path, help="start every prompt from these latents instead of noise (.pt or "
                   "one-tensor .safetensors, e.g. Tune-A-Video's DDIM-inverted inv_latents/*.pt)")
    p.add_argument("--device", default="cpu", help="cpu or cuda: where the model samples (under torchrun with cuda, "
                   "rank r on GPU LOCAL_RANK; default cpu)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="fp32, bf16 or fp16: the dtype the denoiser and text encoder are loaded and run in (default: bf16 with --device cuda, fp32 on the cpu)")
    p.add_argument("--shard", metavar="K/N", help="sample only the K-th of N parts of the prompt batches (0 <= K < N) "
                   "and write its partial sums; join the N outputs with `f3compile merge`")

    p = add("merge", cmd_merge)
    p.add_argument("shards", nargs="+", type=Path, help="the N directories written by `calibrate --shard K/N`")
    p.add_argument("-o", "--output", required=True, type=Path, help="calibration directory to write")
    p.add_argument("--no-heatmaps", action="store_true", help="skip the heatmap PNGs")

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
    p.add_argument("--actions", help="with --search: actions to try, among drop, reuse, heads, window (default: "
                   "drop,reuse,heads; full 3-D attention: drop,reuse,window)")
    p.add_argument("--windows", default="0,1,2", metavar="W1,W2,...", help="with --search: one window action per "
                   "frame distance (every head of a block within ±W frames; default 0,1,2)")
    p.add_argument("--reuse", type=int, metavar="K", help="temporal reuse: the selected blocks (--granularity block) "
                   "are computed at every K-th step of their stage and reuse their residual in between, instead of "
                   "being dropped (--granularity window: every transformer block, on top of the windows); with --search: the period of the reuse action (default 2)")
    p.add_argument("--search-budget", type=float, metavar="LOOPS", help="with --search: denoiser calls per prompt, "
                   "counted in sampling loops (default 20): the dense loop, each candidate's estimate on its trajectory "
                   "and the plans measured whole")
    p.add_argument("--reuse-periods", metavar="K1,K2,...", help="with --search: try reuse at each of these periods "
                   "(one action each; a target speedup upgrades to longer periods before dropping)")
    p.add_argument("--granularity", choices=GRANULARITIES, default="head", help="unit level (default head)")
    p.add_argument("--criterion", choices=CRITERIA, help=f"score (default {DEFAULT_CRITERION}; with --reuse: "
                   "residual_change, how much a block's residual changes from step to step)")
    p.add_argument("--stages", type=int, default=1, help="timestep stages, each ranked on its own steps (default 1)")
    p.add_argument("--window", type=int, metavar="W", help="--granularity window: windowed heads attend within ±W "
                   "frames of the query's frame (0: its own frame only)")
    p.add_argument("--keep-mass", type=float, metavar="M", help="--granularity window, instead of --ratio: window every "
                   "head that keeps at least M of its attention inside the window")
    p.add_argument("--seed", type=int, default=0, help="seed of --criterion random (a control plan)")
    p.add_argument("--device", default="cpu", help="with --search: where the model samples (cpu or cuda; under "
                   "torchrun with cuda, rank r on GPU LOCAL_RANK)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="with --search: fp32, bf16 or fp16, the dtype "
                   "the model is loaded and run in (default: bf16 with --device cuda, fp32 on the cpu)")
    p.add_argument("-o", "--output", required=True, type=Path, help="plan.json to write")

    p = add("compile", cmd_compile)
    p.add_argument("model", nargs="?", help="builtin:NAME, a diffusers directory or a cached hub id")
    p.add_argument("--plan", type=Path, help="plan.json (default: no pruning, the dense baseline)")
    p.add_argument("-o", "--output", type=Path, help="build directory")
    p.add_argument("--batch", type=int, default=1, help="prompts per call; the program's batch is twice this (CFG)")
    p.add_argument("--frames", type=int, help="frames (default: the plan's calibration, else the model's)")
    p.add_argument("--height", type=int, help="height in pixels (default: the plan's calibration, else the model's)")
    p.add_argument("--width", type=int, help="width in pixels (default: the plan's calibration, else the model's)")
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
    p.add_argument("--frames", type=int, help="frames (default: the plan's calibration, else the model's)")
    p.add_argument("--height", type=int, help="height in pixels (default: the plan's calibration, else the model's)")
    p.add_argument("--width", type=int, help="width in pixels (default: the plan's calibration, else the model's)")
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
    p.add_argument("--image", type=Path, help="image-to-video builds (Wan I2V): the image the video starts from, "
                   "encoded with the build's own VAE and image encoder")
    p.add_argument("-o", "--output", required=True, type=Path, help="OUT.gif, OUT.mp4 or OUT.png")

    p = add("bench", cmd_bench)
    p.add_argument("model", help="builtin:NAME (e.g. builtin:arch-modelscope), a diffusers directory or a cached hub id")
    p.add_argument("--plan", type=Path, help="plan.json to compare with the dense model")
    p.add_argument("--backend", nargs="+", choices=("torch", "eager", "aoti", "onnxruntime", "tensorrt"), default=["torch"],
                   help="one or more backends (eager: the model's own modules with the plan applied in place)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (CUDA events, peak device memory)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="fp32, bf16 or fp16: the dtype the model is "
                   "loaded in and its programs run in (default: bf16 with --device cuda, fp32 on the cpu)")
    p.add_argument("--shape", help="FRAMESxHEIGHTxWIDTH in pixels (default: the plan's calibration, else the model's)")
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
    p.add_argument("model", help="builtin:ref-latte, builtin:ref-unet3d, builtin:ref-wan (probe metrics), or any model (fidelity)")
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
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="fp32, bf16 or fp16: the dtype the model is "
                   "loaded in and its programs run in (default: bf16 with --device cuda, fp32 on the cpu)")
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
    p.add_argument("--frames", type=int, help="with --model: frames (default: the model's)")
    p.add_argument("--height", type=int, help="with --model: height in pixels (default: the model's)")
    p.add_argument("--width", type=int, help="with --model: width in pixels (default: the model's)")
    p.add_argument("--memory", action="store_true", help="with --model: predict each verb's peak memory (calibrate, "
                   "plan --search, export, generate) from the meta device, before running anything")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="with --memory: the run's precision (default bf16)")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="with --memory: cuda counts what one GPU "
                   "holds (default); cpu, what a CPU-only process holds")
    p.add_argument("--target", choices=("aoti", "onnx", "torch"), default="aoti", help="with --memory: the build "
                   "counted, exported and then run by generate (torch: `compile`'s programs, whose stages share "
                   "the weights they have in common)")
    p.add_argument("--budget", type=float, metavar="GIB", help="with --memory: say whether each verb fits in this many GiB")
    p.add_argument("--json", action="store_true", help="with --memory: the report as JSON")
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
    from . import parallel

    try:
        with interrupts_unwind():
            try:
                args.func(args)
            finally:
                parallel.stop()
    except F3Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        return parallel.finish(2)
    except Terminated:
        print("error: terminated", file=sys.stderr)
        return parallel.finish(128 + signal.SIGTERM)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return parallel.finish(128 + signal.SIGINT)
    return parallel.finish(0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
