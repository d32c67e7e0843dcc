"""The diffusion kind: a denoiser called in a sampling loop, pruned per timestep stage.

Loading (`models.loading`), discovery, calibration on the sampling loop, plans, the pass pipeline,
exporters, the runtime, `bench` and `eval` of the diffusion families (unet3d, animatediff, latte,
tuneavideo) behind the `ModelKind` verbs.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import F3Error
from .base import BenchResult, ModelKind, Video


class DiffusionKind(ModelKind):
    name = "diffusion"

    def load(self, spec: str, precision: str | None = None):
        from ..models.loading import load_model

        return load_model(spec, precision=precision)

    def owns(self, model) -> bool:
        from ..models.base import VideoModel

        return isinstance(model, VideoModel)

    # -- upfront checks -----------------------------------------------------------------------
    def check_calibrate(self, config, latents, key_model) -> None:
        if key_model:
            raise F3Error("--key-model is for CogVideo stage-2 models")

    def check_export(self, options, config) -> None:
        config.check()
        if config.target == "trt":
            from ..exporters.tensorrt import require_tensorrt

            require_tensorrt()

    def check_generate(self, options) -> None:
        if options.interpolate is not None:
            raise F3Error("--interpolate takes a CogVideo stage-2 build and needs a CogVideo stage-1 build to interpolate")

    # -- calibrate ----------------------------------------------------------------------------
    def calibrate(self, model, prompts, config, *, latents=None, key_model=None, output_dir=None, prompts_sha256=None,
                  progress=False, shard=None):
        from ..calibration import calibrate

        return calibrate(model, prompts, config, output_dir=output_dir, prompts_sha256=prompts_sha256,
                         progress=progress, latents=latents, shard=shard)

    def summary_of_calibration(self, stats) -> str:
        return f"calibrated {len(stats.units)} temporal attention units on {stats.meta['prompts']['count']} prompts x {stats.meta['steps']} steps"

    # -- plan ---------------------------------------------------------------------------------
    def inspect(self, plan, model=None, shapes=None) -> str:
        from ..models.base import resolve_shapes
        from ..planning.inspect import render

        if model is not None and shapes is not None and shapes.given:
            shapes = resolve_shapes(model, shapes.frames, shapes.height, shapes.width)
        else:
            shapes = None
        return render(plan, model, shapes)

    # -- compile and export ------------------------------------------------------------------
    def compile(self, model, plan, options, *, plan_path=None, output_dir=None):
        from ..compiler.compile import PRECISION_DTYPES, compile
        from ..devices import check_device

        if options.precision not in PRECISION_DTYPES:
            raise F3Error(f"--precision {options.precision!r} is unknown; use one of {', '.join(PRECISION_DTYPES)}")
        shapes = _plan_shapes(model, plan, options.shapes)
        device = check_device(options.device, allow_meta=output_dir is None)
        compiled = compile(model, plan, shapes, dtype=PRECISION_DTYPES[options.precision], device=device)
        if output_dir is not None:
            compiled.save(output_dir, plan_path)
        return compiled

    def export(self, source, plan, options, config, output_dir, *, plan_path=None, progress=False) -> dict:
        from ..compiler.compile import CompiledModel
        from ..exporters import export

        if isinstance(source, CompiledModel):
            return export(source, None, output_dir, None, config, plan_path=plan_path, progress=progress)
        shapes = _plan_shapes(source, plan, options.shapes)
        return export(source, plan, output_dir, shapes, config, plan_path=plan_path, progress=progress)

    def build_summary(self, manifest, output, verb, config=None) -> str:
        if verb == "compile":
            return f"compiled {len(manifest['stages'])} stage(s) -> {output}/manifest.json"
        return f"exported {len(manifest['stages'])} stage(s) ({config.target}, {config.precision}) -> {output}"

    def describe_build(self, manifest: dict, output: Path, verb: str) -> list[str]:
        lines = []
        for stage in manifest["stages"]:
            if verb == "compile":  # the torch.export programs
                lines.append(f"stage{stage['index']}: timesteps {stage['timesteps'][0]}..{stage['timesteps'][1]}, "
                             f"{stage['parameters']:,} parameters -> {output}/{stage['files']['pt2']['path']}")
                continue
            checks = [f"{name.replace('_vs_', ' vs ')} " + ("skipped (not enough memory: see verify.json)"
                                                            if "skipped" in result else
                                                            f"rel. L2 {result['relative_l2_error']:.1e}")
                      for name, result in stage.get("verify", {}).items()] or ["not verified"]
            audit = stage.get("audit")
            detail = (f"; {audit['attention_nodes']} attention cores, {audit['initializer_bytes']:,} initializer bytes"
                      if audit else f"; compiled in {stage['aoti']['compile_seconds']:.0f}s for {stage['aoti']['device']}")
            lines.append(f"stage{stage['index']}: {', '.join(sorted(stage['files']))}; {'; '.join(checks)}{detail}")
        return lines

    # -- run ----------------------------------------------------------------------------------
    def runtime(self, build, backend="torch", device="cpu"):
        from ..runtime import Runtime

        return Runtime(build, backend=backend, device=device)

    def generate(self, build, prompt, options) -> Video:
        start = None
        if options.latents:
            from ..sampling import read_latents

            start = read_latents(options.latents)
        runtime = self.runtime(build, options.backend, options.device)
        latents = runtime.generate(prompt, seed=options.seed, steps=options.steps, guidance_scale=options.guidance_scale,
                                   latents=start, progress=options.progress, image=options.image)
        frames = runtime.decode(latents)[0]
        carried = runtime.residual_bytes
        summary = (f"{frames.shape[0]} frames {frames.shape[2]}x{frames.shape[1]}, {options.steps} steps, backend "
                   f"{options.backend}" + (f", temporal reuse carried {carried / 2**20:.2f} MiB of residuals" if carried else "")
                   + (", the VAE decoded tile by tile" if runtime.tiled else ""))
        return Video(frames, summary, latents if options.save_latents else None)

    def bench(self, model, plans, options) -> BenchResult:
        from ..benchmark import bench, format_table, plot

        from ..models.base import plan_shapes, shape_note

        shapes = parse_shape(options.shape)
        results, texts = [], []
        for ratio, plan in plans:
            given = (shapes.frames, shapes.height, shapes.width) if shapes else ()
            ran = plan_shapes(model, plan, *given)
            note = shape_note(plan, ran)
            if note:
                texts.append(note)
            rows = bench(model, plan, list(options.backends), shapes, repeat=options.repeat, device=options.device,
                         precision=options.precision)
            for backend in options.backends:
                mine = [row for row in rows if row["backend"] == backend]
                for row in mine:
                    if ratio is not None:
                        row["ratio"] = ratio
                texts.append((f"ratio {ratio:g}:\n" if ratio is not None else "") + format_table(mine))
                results += mine
        if options.plot:
            plot(results, options.plot)
        return BenchResult(results, "\n".join(texts), f"benchmarked {len(plans)} plan(s) on {', '.join(options.backends)}",
                           {"shape": f"{ran.frames}x{ran.height}x{ran.width}"})

    def evaluate(self, model, variants, prompts, config, measures, log) -> dict:
        from ..evaluation import evaluate

        return evaluate(model, variants, prompts, config, log=log, measures=measures)


def parse_shape(text: str | None):
    from ..models.base import VideoShapes

    if text is None:
        return None
    try:
        frames, height, width = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise F3Error(f"--shape {text!r} must be FRAMESxHEIGHTxWIDTH in pixels, e.g. 16x128x128") from None
    return VideoShapes(1, frames, height, width)


KIND = DiffusionKind()


def _plan_shapes(model, plan, given):
    """The shapes a build runs at (`models.base.plan_shapes`): each one given, else the plan's calibration's."""
    from ..models.base import plan_shapes

    return plan_shapes(model, plan, given.frames, given.height, given.width, given.batch)
