"""Dense vs pruned CogVideo step programs, timed side by side.

Per variant: prefill latency, per-token decode latency (the static programs cost the same at every
position: attention runs over the whole static cache, or in stage 2 over a gathered window, under a
mask), a whole video (stage 1: one prefill and frames·grid² − 1 decode steps with sampling; stage 2:
one interpolation, the prefill of three key frames and 2·grid² decode steps), and the cache memory. Prefill and decode calls are
interleaved dense/pruned and reported as medians; the videos alternate too. The FLOP prediction
counts one decode step from the programs' own structure.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from ..models.cogvideo import CogVideoModel
from .export import prune_of
from .program import Session, StepCore, StepPrune, programs
from .sampling import generate_tokens, interpolate_tokens, interpolation_text, teacher_tokens


def decode_flops(core: StepCore) -> float:
    """Multiply-adds of one decode step of `core`: per layer base qkv + dense + MLP (12H²) and base
    attention over its T + P slots; per plus channel its kept heads' share of qkv + dense (4H²)
    and attention over the keys a step reads (stage 1: its cache; stage 2: the text and one window
    per kept frame); the tied image logits."""
    c = core.config
    h, d = c.hidden_size, c.head_dim
    base_slots = c.text_length + c.frame_tokens
    total = c.num_layers * (12 * h * h + 2 * base_slots * h) + c.image_tokens * h
    for plus in core.plus.values():
        width = plus.heads * d
        total += 3 * h * width + h * width + 2 * plus.decode_keys * width
    return float(total)


def savings(model: CogVideoModel, plan) -> str:
    """What a plan removes from `model`'s step programs: parameters, decode-step FLOPs, cache bytes."""
    dense, _ = programs(model.module, None, 1)
    pruned, _ = programs(model.module, prune_of(model, plan), 1)

    def parameters(core: StepCore) -> int:
        return sum(p.numel() for p in core.parameters())

    dp, pp = parameters(dense.core), parameters(pruned.core)
    df, pf = decode_flops(dense.core), decode_flops(pruned.core)
    dc, pc = dense.core.cache_bytes(1), pruned.core.cache_bytes(1)
    return (f"on {model.spec}: parameters {dp:,} -> {pp:,} (-{100 * (1 - pp / dp):.1f}%), decode-step "
            f"multiply-adds {df:,.0f} -> {pf:,.0f} (FLOP-predicted {df / pf:.3f}x), key/value cache at batch 1 "
            f"{dc / 2**20:.2f} -> {pc / 2**20:.2f} MiB (-{100 * (1 - pc / dc):.1f}%)")


def _time(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


@torch.no_grad()
def bench_ar(model: CogVideoModel, plan=None, repeat: int = 20, videos: int = 1, batch: int = 1,
             renormalise: bool = False, export: bool = True, prune: StepPrune | None = None) -> list[dict[str, Any]]:
    """One row per variant (dense, pruned: `plan`, or `prune` given directly) with medians in ms and
    the ratios dense/pruned."""
    import torch.export

    c = model.config
    variants = {"dense": programs(model.module, None, batch),
                "pruned": programs(model.module, prune if prune is not None else prune_of(model, plan, renormalise), batch)}
    callables, cores = {}, {}
    for name, (prefill, decode) in variants.items():
        cores[name] = prefill.core
        if export:  # what a deployment runs: the torch.export programs
            callables[name] = (torch.export.export(prefill, prefill.example_inputs(), strict=False).module(),
                               torch.export.export(decode, decode.example_inputs(), strict=False).module())
        else:
            callables[name] = (prefill, decode)
    if c.stage == 1:
        text = model.tokenizer(["a red square moves to the left"] * batch)
        prefix = torch.cat([text, torch.full((batch, 1), c.start_of_image)], dim=1)
    else:  # the text and three seeded random key frames
        text = model.tokenizer([interpolation_text("a red square moves to the left", 2.0)] * batch)
        given = torch.randint(0, c.image_tokens, (batch, c.given_frames, c.frame_tokens), generator=torch.Generator().manual_seed(0))
        prefix = teacher_tokens(c, text, given)

    def video(session, seed):
        if c.stage == 1:
            return generate_tokens(c, session, text, seed)
        return interpolate_tokens(c, session, text, given, seed)
    decode_inputs = {}
    for name, (prefill, decode) in callables.items():
        outputs = prefill(prefix)
        decode_inputs[name] = (torch.full((batch, 1), 1, dtype=torch.int64),
                               torch.tensor([c.sequence_length - 1]), *outputs[1:])
    tables = {name: cores[name].slot_tables() for name in callables}
    times: dict[str, dict[str, list[float]]] = {n: {"prefill": [], "decode": [], "video": []} for n in callables}
    for name, (prefill, decode) in callables.items():  # warm-up
        prefill(prefix)
        decode(*decode_inputs[name])
    for _ in range(repeat):
        for name, (prefill, decode) in callables.items():
            times[name]["prefill"].append(_time(prefill, prefix))
            times[name]["decode"].append(_time(decode, *decode_inputs[name]))
    for number in range(videos):
        for name, (prefill, decode) in callables.items():
            session = Session(prefill, decode, tables[name])
            times[name]["video"].append(_time(video, session, number))
    rows = []
    for name in callables:
        row = {"variant": name, "prefill_ms": 1e3 * statistics.median(times[name]["prefill"]),
               "decode_ms": 1e3 * statistics.median(times[name]["decode"]),
               "video_s": statistics.median(times[name]["video"]) if videos else None,
               "cache_bytes": cores[name].cache_bytes(batch), "decode_flops": decode_flops(cores[name]),
               "plus_layers": sum(1 for p in cores[name].plus.values() if p.heads), "repeat": repeat, "videos": videos}
        rows.append(row)
    dense, pruned = rows
    pruned["decode_speedup"] = dense["decode_ms"] / pruned["decode_ms"]
    pruned["prefill_speedup"] = dense["prefill_ms"] / pruned["prefill_ms"]
    pruned["video_speedup"] = dense["video_s"] / pruned["video_s"] if videos else None
    pruned["predicted_decode_speedup"] = dense["decode_flops"] / pruned["decode_flops"]
    pruned["cache_saving"] = 1 - pruned["cache_bytes"] / dense["cache_bytes"]
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    lines = []
    for row in rows:
        line = (f"{row['variant']:<7} prefill {row['prefill_ms']:9.2f} ms  decode {row['decode_ms']:8.3f} ms/token"
                + (f"  video {row['video_s']:8.2f} s" if row["video_s"] is not None else "")
                + f"  cache {row['cache_bytes'] / 2**20:8.2f} MiB  plus channels {row['plus_layers']}")
        if "decode_speedup" in row:
            line += (f"\n        decode {row['decode_speedup']:.3f}x (FLOP-pred. {row['predicted_decode_speedup']:.3f}x), "
                     f"prefill {row['prefill_speedup']:.3f}x"
                     + (f", video {row['video_speedup']:.3f}x" if row["video_speedup"] is not None else "")
                     + f", cache -{100 * row['cache_saving']:.1f}%")
        lines.append(line)
    return "\n".join(lines)
