"""Dense vs pruned CogVideo step programs on one model, the `f3compile bench` machinery.

    python tools/cogvideo_bench.py "builtin:arch-cogvideo,width-scale=0.25" --plans block-0.5 block-1.0 \
        --repeat 10 --videos 0 --json docs/bench/arch-cogvideo.json

Plans need no calibration (speed depends on how much is pruned, not on which units):
  block-0.5   the plus channel dropped in every other layer (1, 3, 5, ...)
  block-1.0   the plus channel dropped in every layer
  head-0.5    the first half of every plus channel's heads pruned
  frame-0.5   plus keys/values from frames 0, 2, 4, ... only, in every layer
`--fidelity N` instead measures, for block-0.5 and block-1.0, how far each way of dropping the plus
term moves the next-token distributions (σ-scaled base term kept, or renormalised to the base
term): mean KL(dense ‖ pruned) and top-1 agreement over every image position of N dense
generations, teacher-forced through the masking reference.

Each plan is timed against the dense programs, interleaved (torch.export programs, medians): the
prefill, one decode step (the static programs cost the same at every position), optionally whole
videos, the cache memory and the FLOP-predicted decode speedup.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from f3compile.autoregressive.bench import bench_ar, format_rows
from f3compile.autoregressive.program import PlusPrune, StepPrune
from f3compile.errors import F3Error
from f3compile.models.cogvideo import load_cogvideo


def structural_prune(name: str, layers: int, heads: int, frames: int) -> StepPrune:
    if name == "block-0.5":
        return StepPrune({l: PlusPrune(drop=True) for l in range(1, layers, 2)})
    if name == "block-1.0":
        return StepPrune({l: PlusPrune(drop=True) for l in range(layers)})
    if name == "head-0.5":
        return StepPrune({l: PlusPrune(pruned_heads=tuple(range(heads // 2))) for l in range(layers)})
    if name == "frame-0.5":
        return StepPrune({l: PlusPrune(kept_frames=tuple(range(0, frames, 2))) for l in range(layers)})
    raise F3Error(f"unknown plan {name!r}; use block-0.5, block-1.0, head-0.5 or frame-0.5")


@torch.no_grad()
def fidelity(model, count: int) -> dict:
    from f3compile.autoregressive.program import Session, programs, reference_logits
    from f3compile.autoregressive.sampling import generate_tokens, teacher_tokens

    c = model.config
    prompts = ["a red square moves to the left", "a blue circle moves up", "two green triangles", "a yellow ball falls"]
    prefill, decode = programs(model.module, None, 1)
    sequences = []
    for number in range(count):
        text = model.tokenizer([prompts[number % len(prompts)]])
        images = generate_tokens(c, Session(prefill, decode, prefill.core.slot_tables()), text, seed=number)
        sequences.append(teacher_tokens(c, text, images))
    dense = [torch.log_softmax(reference_logits(model.module, s)[:, c.text_length:].double(), -1) for s in sequences]
    out = {}
    for name in ("block-0.5", "block-1.0"):
        for renormalise in (False, True):
            prune = structural_prune(name, c.num_layers, c.num_heads, c.frames)
            prune = StepPrune(prune.layers, renormalise=renormalise)
            kl, agree, count_ = 0.0, 0.0, 0
            for sequence, reference in zip(sequences, dense):
                pruned = torch.log_softmax(reference_logits(model.module, sequence, prune)[:, c.text_length:].double(), -1)
                # frames 2.. only: the first frame runs without the plus channel
                ref, got = reference[:, c.frame_tokens:], pruned[:, c.frame_tokens:]
                kl += float((ref.exp() * (ref - got)).sum(-1).sum())
                agree += float((ref.argmax(-1) == got.argmax(-1)).double().sum())
                count_ += ref.shape[0] * ref.shape[1]
            key = f"{name} {'renormalised' if renormalise else 'scaled'}"
            out[key] = {"mean_kl": kl / count_, "top1_agreement": agree / count_, "positions": count_}
            print(f"{key:<24} mean KL {kl / count_:.4f} nats, top-1 agreement {100 * agree / count_:.1f}% "
                  f"over {count_} positions", flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--plans", nargs="+", default=["block-0.5", "block-1.0"])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--videos", type=int, default=0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--fidelity", type=int, metavar="N", help="measure the two drop modes on N generations instead")
    args = parser.parse_args()
    try:
        started = time.perf_counter()
        model = load_cogvideo(args.model)
        c = model.config
        print(f"{args.model}: {c.num_layers} layers, hidden {c.hidden_size}, {c.num_heads} heads, "
              f"{sum(p.numel() for p in model.module.parameters()) / 1e6:.0f} M parameters, "
              f"{c.sequence_length} tokens; loaded in {time.perf_counter() - started:.1f}s", flush=True)
        results = {}
        if args.fidelity:
            results = fidelity(model, args.fidelity)
            args.plans = []
        for name in args.plans:
            started = time.perf_counter()
            rows = bench_ar(model, repeat=args.repeat, videos=args.videos,
                            prune=structural_prune(name, c.num_layers, c.num_heads, c.frames))
            print(f"{name}:\n{format_rows(rows)}  [{time.perf_counter() - started:.0f}s]", flush=True)
            results[name] = rows
    except F3Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        args.json.write_text(json.dumps({
            "model": args.model, "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
