#!/usr/bin/env python
"""Parity of f3compile's dense builds with diffusers' HunyuanVideo 1.5 pipelines.

    python tools/hunyuan_parity.py

For tiny-hunyuanvideo1.5 (`HunyuanVideo15Pipeline`) and tiny-hunyuanvideo1.5-i2v
(`HunyuanVideo15ImageToVideoPipeline`): the pipeline written with save_pretrained and loaded from its
directory, a dense build compiled from it and run by the runtime, and the relative L2 error of the
build's final latents against the pipeline's own from the same start latents (and image), fp32,
4 steps, guidance 6 — with a prompt that quotes glyph text (ByT5 states present) and one that does
not (all ByT5 rows padding), and the scheduler as published (FlowMatchEuler, shift 7) or shifted 3.
Then a two-stage window plan (every head at W = 0 in the second stage) applied inside the user's
pipeline against its compiled build. Prints a markdown table.
"""
import copy
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from PIL import Image  # noqa: E402

from f3compile import api  # noqa: E402
from f3compile.models import load_model  # noqa: E402
from f3compile.models.loading import build_builtin  # noqa: E402
from f3compile.options import CompileOptions, Shapes  # noqa: E402

PROMPTS = {"glyph text": 'a sign that reads "open"', "no glyph text": "a red circle moving left"}
work = Path(tempfile.mkdtemp())


def relative(a, b) -> float:
    return float((a - b).norm() / b.norm())


def pipeline_latents(pipe, prompt, start, image=None):
    pipe = copy.copy(pipe)
    pipe.guider = pipe.guider.new(guidance_scale=6.0)
    given = {"image": image} if image is not None else {"height": 64, "width": 64}
    return pipe(prompt=prompt, negative_prompt="", latents=start.clone(), num_frames=17, num_inference_steps=4,
                output_type="latent", **given).frames


def main() -> None:
    import diffusers

    image = Image.fromarray((torch.rand(64, 64, 3, generator=torch.Generator().manual_seed(3)) * 255)
                            .to(torch.uint8).numpy())
    print("| builtin | pipeline | sampler | prompt | build vs pipeline, rel. L2 |\n|---|---|---|---|---:|")
    for name in ("tiny-hunyuanvideo1.5", "tiny-hunyuanvideo1.5-i2v"):
        for sampler in ("FlowMatchEuler, shift 7 (published)", "FlowMatchEuler, shift 3"):
            pipe, _ = build_builtin(name)
            if "shift 3" in sampler:
                pipe.register_modules(scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0))
            directory = Path(tempfile.mkdtemp(dir=work))
            pipe.save_pretrained(directory / "pipeline")
            model = load_model(str(directory / "pipeline"))
            api.compile(model, None, CompileOptions(shapes=Shapes(17, 64, 64)), output_dir=directory / "build")
            runtime = api.Runtime(directory / "build")
            start = torch.randn(1, model.latent_channels, 5, 4, 4, generator=torch.Generator().manual_seed(1))
            given = image if "i2v" in name else None
            for label, prompt in PROMPTS.items():
                reference = pipeline_latents(pipe, prompt, start, given)
                ours = runtime.generate(prompt, steps=4, guidance_scale=6.0, latents=start, image=given)
                print(f"| `{name}` | `{type(pipe).__name__}` | {sampler} | {label} | {relative(ours, reference):.1e} |",
                      flush=True)
    import f3compile as f3
    from f3compile.calibration import CalibrationConfig, calibrate
    from f3compile.planning import make_plan

    for name in ("tiny-hunyuanvideo1.5", "tiny-hunyuanvideo1.5-i2v"):
        pipe, _ = build_builtin(name)
        directory = Path(tempfile.mkdtemp(dir=work))
        pipe.save_pretrained(directory / "pipeline")
        model = load_model(str(directory / "pipeline"))
        prompt = f3.Prompt(PROMPTS["glyph text"], image if "i2v" in name else None)
        stats = calibrate(model, [prompt], CalibrationConfig(steps=4, frames=17, height=64, width=64, heatmaps=False))
        plan = make_plan(stats, [0.0, 1.0], "window", window=0, stages=2)
        api.compile(model, plan, CompileOptions(shapes=Shapes(17, 64, 64)), output_dir=directory / "windowed")
        start = torch.randn(1, model.latent_channels, 5, 4, 4, generator=torch.Generator().manual_seed(2))
        given = image if "i2v" in name else None
        built = api.Runtime(directory / "windowed").generate(prompt, steps=4, guidance_scale=6.0, latents=start,
                                                             image=given)
        applied = f3.apply(pipe, plan)
        try:
            inside = pipeline_latents(pipe, prompt, start, given)
        finally:
            applied.remove()
        dense = pipeline_latents(pipe, prompt, start, given)
        print(f"\n`{name}`, window plan applied inside the pipeline vs its build: {relative(built, inside):.1e} "
              f"(vs the dense pipeline: {relative(built, dense):.1e})")


if __name__ == "__main__":
    main()
