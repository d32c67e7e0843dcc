#!/usr/bin/env python
"""Does a reference model use the direction words of its caption at all?

    python tools/direction_drift.py f3compile/models/reference/weights/ref-unet3d.safetensors [MORE.safetensors]
    python tools/direction_drift.py --model ref-wan runs/ref-wan/checkpoint.safetensors

Two measurements, for a shipped weights file or a training checkpoint (its `ema.*` tensors):

1. Drift. For "a red circle moving left/right/up/down" (4 noise draws each, seed 0), the x0
   prediction from pure noise scaled to timestep T (900 and 700; guidance 5) is unpacked to
   frames. The foreground centroid's shift from the first frame to the last is printed in pixels:
   left should be negative dx, up negative dy. The mean clip of each direction shifts by 7 px.
2. Caption swap. The v-prediction loss on 160 rendered clips (noise seed 0) is taken with their own
   training captions, then with the direction swapped (left and right, up and down, static to left),
   then with the colour swapped. A model that ignores the direction words loses nothing when they
   are swapped. At pure noise the best possible loss is the clip's variance given the caption:
   `floor` prints it with and without the direction (over 3,000 rendered clips).
"""

from __future__ import annotations

import argparse
import collections
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from f3compile.models.reference import domain  # noqa: E402
from f3compile.models.reference import models as ref  # noqa: E402

DIRECTIONS = ("left", "right", "up", "down")
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up", "static": "left"}


def load(name: str, path: str):
    from safetensors.torch import load_file

    from f3compile.models.loading import from_pipeline

    tensors = load_file(path)
    state = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")} or tensors
    denoiser = ref.DENOISERS[name]()
    denoiser.load_state_dict(state, strict=False)  # older files lack the position tables (constants)
    return denoiser.eval(), from_pipeline(ref.build_pipeline(name, denoiser.eval()), f"builtin:{name}")


@torch.no_grad()
def drift(denoiser, model, label: str) -> None:
    prompts = [f"a red circle moving {d}" for d in DIRECTIONS] * 4
    cond, uncond = model.encode_prompts(prompts)
    alphas = model.scheduler.alphas_cumprod
    noise = torch.randn(len(prompts), ref.CHANNELS, ref.FRAMES, ref.SIZE // ref.PACK, ref.SIZE // ref.PACK,
                        generator=torch.Generator().manual_seed(0))
    ys, xs = torch.meshgrid(torch.arange(float(ref.SIZE)), torch.arange(float(ref.SIZE)), indexing="ij")
    for t in (900, 700):
        a = alphas[t]
        x = noise * (1 - a).sqrt()
        steps = torch.full((len(prompts),), float(t))
        v_cond = model.denoise_call(denoiser, x, steps, cond)
        v_uncond = model.denoise_call(denoiser, x, steps, uncond)
        v = v_uncond + 5 * (v_cond - v_uncond)
        frames = ref.unpack(a.sqrt() * x - (1 - a).sqrt() * v)  # (B, F, H, W, 3)
        weight = (frames - torch.tensor(domain.BACKGROUND)).clamp(min=0).sum(-1)
        mass = weight.sum((2, 3)) + 1e-6
        cx, cy = (weight * xs).sum((2, 3)) / mass, (weight * ys).sum((2, 3)) / mass
        dx = (cx[:, -1] - cx[:, 0]).view(4, 4).mean(0)
        dy = (cy[:, -1] - cy[:, 0]).view(4, 4).mean(0)
        shifts = ", ".join(f"{d}: dx {x_:+.1f} dy {y_:+.1f}" for d, x_, y_ in zip(DIRECTIONS, dx.tolist(), dy.tolist()))
        print(f"{label} drift t={t}: {shifts}")


def conditional_variance(x: torch.Tensor, labels, key) -> float:
    groups = collections.defaultdict(list)
    for index, item in enumerate(labels):
        groups[key(item)].append(index)
    return sum(((x[i] - x[i].mean(0)) ** 2).sum().item() for i in groups.values()) / x.numel()


@torch.no_grad()
def caption_swap(denoiser, model, label: str, count: int = 160) -> None:
    clips, _, labels = domain.make_clips(count, seed=11)
    x0 = ref.pack(torch.from_numpy(clips))
    colours = list(domain.COLORS)
    variants = {
        "own": labels,
        "direction swapped": [replace(item, direction=OPPOSITE[item.direction]) for item in labels],
        "colour swapped": [replace(item, color=colours[(colours.index(item.color) + 1) % 4]) for item in labels],
    }
    contexts = {}
    for name, items in variants.items():
        rng = np.random.default_rng(5)  # the same sentence frame and words for every variant
        contexts[name] = model.encode_prompts([domain.caption(item, rng, "train") for item in items])[0]
    alphas = model.scheduler.alphas_cumprod.float()
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(x0.shape, generator=generator)
    for low, high in ((900, 1000), (700, 900), (400, 700)):
        t = torch.randint(low, high, (count,), generator=generator)
        a = alphas[t].view(-1, 1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = a.sqrt() * noise - (1 - a).sqrt() * x0
        losses = []
        for name, context in contexts.items():
            prediction = torch.cat([model.denoise_call(denoiser, noisy[i:i + 40], t[i:i + 40].float(), context[i:i + 40])
                                    for i in range(0, count, 40)]).float()
            losses.append(f"{name} {((prediction - target) ** 2).mean():.4f}")
        print(f"{label} loss t in [{low}, {high}): " + ", ".join(losses))


def floor() -> None:
    """The best loss at pure noise: the clips' variance given the caption, with and without direction."""
    clips, _, labels = domain.make_clips(3000, seed=21)  # enough clips for 60 group means
    x0 = ref.pack(torch.from_numpy(clips))
    with_direction = conditional_variance(x0, labels, lambda item: (item.color, item.shape, item.direction))
    without = conditional_variance(x0, labels, lambda item: (item.color, item.shape))
    print(f"floor at pure noise: {with_direction:.4f} knowing the direction, {without:.4f} without")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", nargs="+", help="safetensors weights or a training checkpoint")
    parser.add_argument("--model", choices=sorted(ref.DENOISERS), default="ref-unet3d")
    parser.add_argument("--no-swap", action="store_true", help="only the drift")
    args = parser.parse_args()
    for path in args.weights:
        denoiser, model = load(args.model, path)
        drift(denoiser, model, Path(path).name)
        if not args.no_swap:
            caption_swap(denoiser, model, Path(path).name)
    if not args.no_swap:
        floor()  # a property of the data: once, whatever the weights


if __name__ == "__main__":
    main()
