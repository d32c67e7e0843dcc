#!/usr/bin/env python
"""Which way does a reference UNet push motion at the step that decides it?

    python tools/direction_drift.py f3compile/models/reference/weights/ref-unet3d.safetensors [MORE.safetensors]

For "a red circle moving left/right/up/down" (4 noise draws each, seed 0) the model's x0
prediction from pure noise scaled to timestep T (900 and 700; guidance 5) is unpacked to frames,
and the foreground centroid's shift from the first to the last frame is printed (pixels; left
should be negative dx, up negative dy). Weights: a shipped file, or a training checkpoint
(its `ema.*` tensors are used).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(paths: list[str]) -> None:
    from safetensors.torch import load_file

    from f3compile.models.loading import from_pipeline
    from f3compile.models.reference import domain
    from f3compile.models.reference import models as ref

    directions = ("left", "right", "up", "down")
    for path in paths:
        tensors = load_file(path)
        state = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")} or tensors
        denoiser = ref.DENOISERS["ref-unet3d"]()
        denoiser.load_state_dict(state, strict=False)  # older files lack the position tables (constants)
        model = from_pipeline(ref.build_pipeline("ref-unet3d", denoiser.eval()), "builtin:ref-unet3d")
        prompts = [f"a red circle moving {d}" for d in directions] * 4
        cond, uncond = model.encode_prompts(prompts)
        alphas = model.scheduler.alphas_cumprod
        noise = torch.randn(len(prompts), ref.CHANNELS, ref.FRAMES, ref.SIZE // ref.PACK, ref.SIZE // ref.PACK,
                            generator=torch.Generator().manual_seed(0))
        ys, xs = torch.meshgrid(torch.arange(float(ref.SIZE)), torch.arange(float(ref.SIZE)), indexing="ij")
        for t in (900, 700):
            a = alphas[t]
            x = noise * (1 - a).sqrt()
            steps = torch.full((len(prompts),), float(t))
            with torch.no_grad():
                v_cond = model.denoise_call(denoiser, x, steps, cond)
                v_uncond = model.denoise_call(denoiser, x, steps, uncond)
            v = v_uncond + 5 * (v_cond - v_uncond)
            frames = ref.unpack(a.sqrt() * x - (1 - a).sqrt() * v)  # (B, F, H, W, 3)
            weight = (frames - torch.tensor(domain.BACKGROUND)).clamp(min=0).sum(-1)
            mass = weight.sum((2, 3)) + 1e-6
            cx, cy = (weight * xs).sum((2, 3)) / mass, (weight * ys).sum((2, 3)) / mass
            dx = (cx[:, -1] - cx[:, 0]).view(4, 4).mean(0)
            dy = (cy[:, -1] - cy[:, 0]).view(4, 4).mean(0)
            shifts = ", ".join(f"{d}: dx {x_:+.1f} dy {y_:+.1f}" for d, x_, y_ in zip(directions, dx.tolist(), dy.tolist()))
            print(f"{Path(path).name} t={t}: {shifts}")


if __name__ == "__main__":
    main(sys.argv[1:])
