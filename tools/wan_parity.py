#!/usr/bin/env python
"""Parity of f3compile's dense builds with each Wan pipeline of diffusers, per sampler.

    python tools/wan_parity.py

For each tiny Wan builtin (text-to-video, 2.1 I2V, 2.2 I2V-A14B, 2.2 TI2V-5B) and each sampler the
pipelines take (UniPC as published, FlowMatchEuler, DPM-Solver++ in flow mode): the pipeline written
with save_pretrained and loaded from its directory, a dense build compiled from it, and the relative
L2 error of the build's final latents against the pipeline's own from the same start latents and
image (fp32, 4 steps, guidance 5). Prints a markdown table.
"""
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from PIL import Image  # noqa: E402
import diffusers  # noqa: E402
from f3compile import api  # noqa: E402
from f3compile.models import load_model  # noqa: E402
from f3compile.models.loading import build_builtin  # noqa: E402
from f3compile.options import CompileOptions, Shapes  # noqa: E402

work = Path(tempfile.mkdtemp())
img = str(work / "first-frame.png")
pixels = (torch.rand(40, 56, 3, generator=torch.Generator().manual_seed(3)) * 255).to(torch.uint8).numpy()
Image.fromarray(pixels).save(img)


def sched(kind):
    if kind == "UniPC (published)":
        return None
    if kind == "FlowMatchEuler":
        return diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    if kind == "DPM-Solver++ (flow)":
        return diffusers.DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                     flow_shift=3.0)


print("| builtin | sampler | build vs pipeline, rel. L2 |\n|---|---|---:|")
rows = []
BUILTINS = [("tiny-wan", (9, 32, 32), False), ("tiny-wan-i2v", (9, 32, 32), True), ("tiny-wan2.2-i2v", (9, 32, 32), True),
            ("tiny-wan2.2-ti2v", (9, 64, 64), True)]
for name, shape, image in BUILTINS:
    for kind in ["UniPC (published)", "FlowMatchEuler", "DPM-Solver++ (flow)"]:
        pipe, _ = build_builtin(name)
        s = sched(kind)
        if s is not None:
            pipe.register_modules(scheduler=s)
        d = Path(tempfile.mkdtemp(dir=work))
        pipe.save_pretrained(d / "p")
        model = load_model(str(d / "p"))
        F, H, W = shape
        lat = ((F - 1) // 4 + 1, H // model.vae_scale_factor, W // model.vae_scale_factor)
        start = torch.randn(1, model.latent_channels, *lat, generator=torch.Generator().manual_seed(1))
        kw = {"image": Image.open(img).convert("RGB")} if image else {}
        ref = pipe(**kw, prompt="a red circle", negative_prompt="", latents=start.clone(), num_inference_steps=4,
                   guidance_scale=5.0, output_type="latent", num_frames=F, height=H, width=W).frames
        api.compile(model, None, CompileOptions(shapes=Shapes(*shape)), output_dir=d / "b")
        ours = api.Runtime(d / "b").generate("a red circle", steps=4, guidance_scale=5.0, latents=start, image=img if image else None)
        rows.append((name, kind, ((ours - ref).norm() / ref.norm()).item()))
        print(f"| {name} | {kind} | {rows[-1][2]:.1e} |", flush=True)
        shutil.rmtree(d)
shutil.rmtree(work)
