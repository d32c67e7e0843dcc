"""The autoregressive kind: CogVideo's prefill and decode-step programs with a static key/value cache.

Loading (`models.cogvideo`), calibration on the token-by-token loop, one-stage plans, the step
programs (pruned before torch.export), their ONNX export and verification, the runtime (generation
and stage-2 interpolation) and the dense-vs-pruned benchmark behind the `ModelKind` verbs.
"""

from __future__ import annotations

from ..errors import F3Error
from .base import BenchResult, ModelKind, Video


class Built:
    """What `compile` returns for an autoregressive model: the build directory's manifest."""

    def __init__(self, manifest: dict):
        self.manifest = manifest


class AutoregressiveKind(ModelKind):
    name = "autoregressive"

    def load(self, spec: str, precision: str | None = None):
        from ..models.cogvideo import load_cogvideo

        if precision not in (None, "fp32"):
            raise F3Error(f"CogVideo runs in fp32 on the CPU; drop --precision {precision}")
        return load_cogvideo(spec)

    # -- upfront checks -----------------------------------------------------------------------
    def check_calibrate(self, config, latents, key_model) -> None:
        if latents or config.frames or config.height or config.width:
            raise F3Error("CogVideo generates its own frames from tokens: drop --latents/--frames/--height/--width")
        if config.device != "cpu":
            raise F3Error("CogVideo calibrates on the CPU; drop --device")

    def check_compile(self, options) -> None:
        if options.precision != "fp32" or options.device != "cpu" or options.shapes.given:
            raise F3Error("autoregressive builds are fp32 on the CPU at the model's own frames; drop --precision, "
                          "--device, --frames, --height and --width")

    def check_export(self, options, config) -> None:
        if config.target != "onnx":
            raise F3Error(f"--target {config.target} does not take autoregressive models yet; use --target onnx")
        self.check_compile(options)
        if config.dynamic_batch or config.triton_repo or config.opset != 20:
            raise F3Error("--dynamic-batch, --triton-repo and --opset do not apply to autoregressive builds yet")

    def check_generate(self, options) -> None:
        if (options.backend not in ("torch", "onnxruntime") or options.device != "cpu" or options.latents
                or options.save_latents):
            raise F3Error("an autoregressive build generates on the CPU with --backend torch or onnxruntime "
                          "(no --latents/--save-latents)")
        if options.image is not None:
            raise F3Error("CogVideo builds are text-to-video and take no --image")

    def check_bench(self, options) -> None:
        if (options.sweep is not None or list(options.backends) != ["torch"] or options.device != "cpu"
                or options.precision not in (None, "fp32") or options.shape or options.plot):
            raise F3Error("autoregressive bench takes --plan with the torch backend, fp32 on the CPU "
                          "(no --sweep, --shape, --device, --precision or --plot)")

    def check_evaluate(self, spec) -> None:
        raise F3Error(f"{spec} is autoregressive (CogVideo): eval scores diffusion models; "
                      "measure CogVideo plans with `f3compile bench`")

    # -- calibrate ----------------------------------------------------------------------------
    def calibrate(self, model, prompts, config, *, latents=None, key_model=None, output_dir=None, prompts_sha256=None,
                  progress=False, shard=None):
        from ..autoregressive.calibrate import calibrate_cogvideo

        if key_model is not None and not self.owns(key_model):
            raise F3Error(f"--key-model {key_model.spec} is not a CogVideo model")
        return calibrate_cogvideo(model, prompts, seed=config.seed, batch_size=config.batch_size, output_dir=output_dir,
                                  prompts_sha256=prompts_sha256, progress=progress, key_model=key_model, shard=shard)

    def summary_of_calibration(self, stats) -> str:
        return (f"calibrated {len(stats.units)} plus channels on {stats.meta['prompts']['count']} prompts x "
                f"{stats.meta['tokens_per_video']} tokens")

    # -- plan ---------------------------------------------------------------------------------
    def check_plan_options(self, options) -> None:
        if options.search or options.target_speedup is not None or options.reuse is not None or options.stages != 1:
            raise F3Error("an autoregressive calibration takes --ratio plans of one stage (no --search, "
                          "--target-speedup, --reuse or --stages)")

    def inspect(self, plan, model=None, shapes=None) -> str:
        from ..autoregressive.bench import savings
        from ..planning.inspect import render

        text = render(plan, None)
        if model is None:
            return text
        return (text.replace("pass --model to count the parameters and FLOPs each stage removes", "").rstrip()
                + "\n" + savings(model, plan))

    # -- compile and export ------------------------------------------------------------------
    def _build(self, model, plan, options, output_dir, target, plan_path, verify=True):
        from ..autoregressive.export import build

        return build(model, plan, output_dir, target=target, batch=options.shapes.batch, plan_path=plan_path,
                     verify=verify)

    def compile(self, model, plan, options, *, plan_path=None, output_dir=None):
        if output_dir is None:
            raise F3Error("autoregressive models are compiled into a build directory; pass -o BUILD_DIR")
        return Built(self._build(model, plan, options, output_dir, "pt2", plan_path))

    def export(self, source, plan, options, config, output_dir, *, plan_path=None, progress=False) -> dict:
        return self._build(source, plan, options, output_dir, "onnx", plan_path, verify=config.verify)

    def describe_build(self, manifest, output, verb) -> list[str]:
        lines = [f"{name}: {', '.join(sorted(f['path'] for f in entry['files'].values()))}; {len(entry['inputs'])} inputs, "
                 f"{len(entry['outputs'])} outputs" for name, entry in manifest["programs"].items()]
        for kind, result in manifest.get("verify", {}).items():
            lines.append(f"verify {kind} vs eager over {result['calls']} calls: logits rel. L2 "
                         f"{result['logits_relative_l2']:.1e}, caches {result['caches_relative_l2']:.1e}")
        return lines

    def build_summary(self, manifest, output, verb, config=None) -> str:
        return (f"built prefill + decode step ({len(manifest['plus_layers'])} plus channels, cache "
                f"{manifest['cache']['bytes'] / 2**20:.2f} MiB at batch {manifest['batch']}) -> {output}")

    # -- run ----------------------------------------------------------------------------------
    def runtime(self, build, backend="torch", device="cpu"):
        from ..autoregressive.runtime import ARRuntime

        return ARRuntime(build, backend=backend)

    def generate(self, build, prompt, options) -> Video:
        runtime = self.runtime(build, options.backend)
        if runtime.stage != 1:
            raise F3Error(f"{build} is a stage-2 (interpolation) build: generate with a stage-1 build and pass "
                          "this one as --interpolate")
        interpolator = None
        if options.interpolate is not None:
            if options.rounds < 1:
                raise F3Error("--rounds must be at least 1 (each doubles the frame rate)")
            interpolator = self.runtime(options.interpolate, options.backend)
            if interpolator.stage != 2:
                raise F3Error(f"--interpolate {options.interpolate} is a stage-1 build; pass a stage-2 build")
            k, c = runtime.config, interpolator.config
            if (k.grid, k.image_tokens, k.frames) != (c.grid, c.image_tokens, c.frames):
                raise F3Error(f"--interpolate {options.interpolate} takes {c.frames} frames of {c.grid}x{c.grid} tokens "
                              f"over {c.image_tokens} image tokens; {build} makes {k.frames} of {k.grid}x{k.grid} over "
                              f"{k.image_tokens}")
        tokens = runtime.generate(prompt, seed=options.seed)
        what = f"backend {options.backend}, cache {runtime.cache_bytes / 2**20:.2f} MiB"
        if interpolator is not None:
            key_frames = tokens.shape[0]
            tokens = interpolator.interpolate(prompt, tokens, rounds=options.rounds, seed=options.seed)
            what += (f"; interpolated {key_frames} -> {tokens.shape[0]} frames in {options.rounds} round(s), cache "
                     f"{interpolator.cache_bytes / 2**20:.2f} MiB")
        frames = runtime.frames(tokens)
        return Video(frames, f"{frames.shape[0]} frames {frames.shape[2]}x{frames.shape[1]} from {tokens.numel()} "
                             f"tokens, {what}")

    def bench(self, model, plans, options) -> BenchResult:
        from ..autoregressive.bench import bench_ar, format_rows

        if len(plans) != 1:
            raise F3Error("autoregressive bench takes one --plan")
        rows = bench_ar(model, plans[0][1], repeat=options.repeat, videos=options.videos)
        return BenchResult(rows, format_rows(rows), "benchmarked dense vs pruned step programs")

    def evaluate(self, model, variants, prompts, config, measures, log) -> dict:
        self.check_evaluate(model.spec)  # refuses


KIND = AutoregressiveKind()
