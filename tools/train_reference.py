#!/usr/bin/env python
"""Train the moving-shapes probe and reference models from a fixed seed, on a CPU.

    python tools/train_reference.py probe                      # the classifier (minutes)
    python tools/train_reference.py ref-latte --steps 3000     # a denoiser (about 80 minutes)
    python tools/train_reference.py ref-unet3d --steps 1500

Denoisers: v-prediction MSE on a bank of real clips, captions embedded once by MiniLM (10% of
them dropped to "" for classifier-free guidance), AdamW with warm-up and cosine decay, EMA
weights. Every --eval-every steps the EMA model samples held-out paraphrase prompts and the probe
scores colour, shape and direction, so the log shows whether motion is being learned.
Resumable: the state is checkpointed to --work every --checkpoint-every steps (safetensors and
JSON) and a rerun with the same arguments continues from it. At the end the EMA weights are
written to f3compile/models/reference/weights/NAME.safetensors with their sha256, and the log
and loss curve to docs/reference/.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from f3compile._io import sha256_file  # noqa: E402
from f3compile.evaluation import metrics  # noqa: E402
from f3compile.models.reference import domain  # noqa: E402
from f3compile.models.reference import models as ref  # noqa: E402
from f3compile.models.reference.probe import HEADS, Probe  # noqa: E402

DOCS = ROOT / "docs" / "reference"


def log_line(path: Path, record: dict) -> None:
    print(json.dumps(record), flush=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def write_weights(name: str, state: dict[str, torch.Tensor], record: dict) -> None:
    from safetensors.torch import save_file

    ref.WEIGHTS.mkdir(exist_ok=True)
    file = ref.weights_file(name)
    save_file({k: v.detach().contiguous().float() for k, v in state.items()}, str(file))
    record = {"sha256": sha256_file(file), **record}
    (ref.WEIGHTS / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {file} ({file.stat().st_size / 1e6:.1f} MB)")


def labels_tensor(labels) -> dict[str, torch.Tensor]:
    return {name: torch.tensor([classes.index(getattr(item, name)) for item in labels]) for name, classes in HEADS.items()}


# -- probe -------------------------------------------------------------------------------------
def train_probe(args) -> None:
    torch.manual_seed(args.seed)
    clips, _, labels = domain.make_clips(args.clips, seed=args.seed)
    val_clips, _, val_labels = domain.make_clips(2000, seed=args.seed + 1)
    x, y = torch.from_numpy(clips), labels_tensor(labels)
    vx = torch.from_numpy(val_clips)
    probe = Probe()
    optimizer = torch.optim.AdamW(probe.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = args.steps or 2500
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(args.seed)
    log = DOCS / "probe-train.log"
    log.write_text("")
    start = time.time()
    for step in range(1, steps + 1):
        index = torch.randint(0, len(x), (args.batch,), generator=generator)
        batch = x[index]
        # robustness to what generators produce: additive noise, slight blur and colour drift
        sigma = torch.rand(len(batch), 1, 1, 1, 1, generator=generator) * 0.15
        batch = batch + sigma * torch.randn(batch.shape, generator=generator)
        batch = batch * (1 + 0.1 * (torch.rand(len(batch), 1, 1, 1, 3, generator=generator) - 0.5))
        if step % 4 == 0:
            blurred = torch.nn.functional.avg_pool2d(batch.permute(0, 1, 4, 2, 3).flatten(0, 1), 3, 1, 1,
                                                     count_include_pad=False)
            batch = blurred.reshape(len(batch), -1, 3, *batch.shape[2:4]).permute(0, 1, 3, 4, 2)
        _, logits = probe(batch.clamp(0, 1))
        loss = sum(torch.nn.functional.cross_entropy(logits[n], y[n][index]) for n in HEADS)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps:
            probe.eval()
            _, predicted = probe.classify(vx)
            probe.train()
            accuracy = metrics.accuracy(predicted, [asdict(item) for item in val_labels])
            log_line(log, {"step": step, "loss": round(loss.item(), 5), "val_accuracy": accuracy,
                           "seconds": round(time.time() - start, 1)})
    probe.eval()
    held_clips, _, held_labels = domain.make_clips(3000, seed=args.seed + 2)
    _, predicted = probe.classify(torch.from_numpy(held_clips))
    accuracy = metrics.accuracy(predicted, [asdict(item) for item in held_labels])
    print("held-out real clips:", accuracy)
    write_weights("probe", probe.state_dict(), {
        "command": "python tools/train_reference.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "seed": args.seed, "steps": steps, "heldout_real_accuracy": accuracy,
        "seconds": round(time.time() - start, 1)})


# -- denoisers ---------------------------------------------------------------------------------
def evaluation_prompts(count: int, seed: int) -> tuple[list[str], list[domain.Labels]]:
    rng = np.random.default_rng(seed)
    prompts, labels = [], []
    for index in range(count):  # cycle through every direction and colour, shapes at random
        item = domain.Labels(domain.SHAPES[rng.integers(3)], list(domain.COLORS)[index % 4],
                             domain.DIRECTIONS[index % 5])
        prompts.append(domain.caption(item, rng, "heldout"))
        labels.append(item)
    return prompts, labels


@torch.no_grad()
def sample_and_score(model, denoiser, probe, prompts, labels, steps: int = 20, guidance: float = 5.0) -> dict:
    from f3compile.sampling import denoise_loop, initial_latents

    cond, uncond = model.encode_prompts(prompts)
    shape = (len(prompts), ref.CHANNELS, ref.FRAMES, ref.SIZE // ref.PACK, ref.SIZE // ref.PACK)
    generator = torch.Generator().manual_seed(1234)
    scheduler = type(model.scheduler).from_config(model.scheduler.config)
    latents = initial_latents(shape, scheduler, generator)
    latents = denoise_loop(lambda s, t, e: model.denoise_call(denoiser, s, t, e), scheduler, latents, cond, uncond,
                           steps, guidance, generator)
    _, predicted = probe.classify(ref.unpack(latents))
    return metrics.accuracy(predicted, [asdict(item) for item in labels])


def save_checkpoint(work: Path, step: int, denoiser, ema, optimizer, history: list) -> None:
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.contiguous() for k, v in denoiser.state_dict().items()}
    tensors.update({f"ema.{k}": v.contiguous() for k, v in ema.items()})
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"opt.{index}.{key}"] = value.reshape(-1) if key == "step" else value.contiguous()
    save_file(tensors, str(work / "checkpoint.tmp"))
    (work / "checkpoint.tmp").replace(work / "checkpoint.safetensors")
    (work / "checkpoint.json").write_text(json.dumps({"step": step, "history": history}))


def load_checkpoint(work: Path, denoiser, ema, optimizer) -> tuple[int, list]:
    from safetensors.torch import load_file

    if not (work / "checkpoint.json").is_file():
        return 0, []
    meta = json.loads((work / "checkpoint.json").read_text())
    tensors = load_file(str(work / "checkpoint.safetensors"))
    denoiser.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    for k in ema:
        ema[k].copy_(tensors[f"ema.{k}"])
    state = optimizer.state_dict()
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, index, name = key.split(".", 2)
            state["state"].setdefault(int(index), {})[name] = value.reshape(()) if name == "step" else value
    optimizer.load_state_dict(state)
    print(f"resumed from step {meta['step']}")
    return meta["step"], meta["history"]


def train_denoiser(args) -> None:
    from f3compile.models.loading import from_pipeline
    from f3compile.models.reference.probe import load_probe

    name = args.model
    torch.manual_seed(args.seed)
    denoiser = ref.DENOISERS[name]().train()
    pipe = ref.build_pipeline(name, denoiser)
    model = from_pipeline(pipe, f"builtin:{name}")
    denoiser.train()
    probe = load_probe()
    scheduler = model.scheduler
    alphas = scheduler.alphas_cumprod.float()

    work = Path(args.work or ROOT / "runs" / name)
    work.mkdir(parents=True, exist_ok=True)
    DOCS.mkdir(parents=True, exist_ok=True)
    log = DOCS / f"{name}-train.log"

    params = [p for p in denoiser.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    ema = {k: v.detach().clone().float() for k, v in denoiser.state_dict().items()}
    step, history = load_checkpoint(work, denoiser, ema, optimizer) if not args.restart else (0, [])
    if step == 0:
        log.write_text("")
    stop = min(args.steps, args.stop_at or args.steps)
    if step < stop:
        print("rendering clips and embedding captions ...", flush=True)
        clips, captions, _ = domain.make_clips(args.clips, seed=args.seed)
        x_bank = ref.pack(torch.from_numpy(clips)).half()
        unique = sorted(set(captions))
        caption_index = torch.tensor([unique.index(c) for c in captions])
        embeddings, empty = [], None
        for start in range(0, len(unique), 256):
            cond, uncond = model.encode_prompts(unique[start:start + 256])
            embeddings.append(cond.half())
            empty = uncond[:1]
        embeddings = torch.cat(embeddings)
        eval_prompts, eval_labels = evaluation_prompts(args.eval_prompts, args.seed + 7)

    def lr_at(s: int) -> float:
        if s < args.warmup:
            return args.lr * (s + 1) / args.warmup
        progress = (s - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))

    start, losses = time.time(), []
    while step < stop:
        generator = torch.Generator().manual_seed(args.seed * 1_000_003 + step)  # resumable: per-step stream
        index = torch.randint(0, len(x_bank), (args.batch,), generator=generator)
        x0 = x_bank[index].float()
        context = embeddings[caption_index[index]].float()
        drop = torch.rand(args.batch, generator=generator) < 0.1
        context[drop] = empty.float()
        t = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        a = alphas[t].view(-1, 1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = a.sqrt() * noise - (1 - a).sqrt() * x0  # v
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        prediction = model.denoise_call(denoiser, noisy, t.float(), context)
        loss = torch.nn.functional.mse_loss(prediction, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        step += 1
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, v in denoiser.state_dict().items():
                ema[k].mul_(decay).add_(v.float(), alpha=1 - decay) if v.is_floating_point() else ema[k].copy_(v)
        losses.append(loss.item())
        if step % args.log_every == 0:
            record = {"step": step, "loss": round(float(np.mean(losses)), 5), "lr": round(lr_at(step), 6),
                      "seconds": round(time.time() - start, 1)}
            losses = []
            if step % args.eval_every == 0 or step == stop:
                evaluator = ref.DENOISERS[name]().eval()
                evaluator.load_state_dict(ema)
                record["sample_accuracy"] = sample_and_score(model, evaluator, probe, eval_prompts, eval_labels)
            history.append(record)
            log_line(log, record)
        if step % args.checkpoint_every == 0 or step == stop:
            save_checkpoint(work, step, denoiser, ema, optimizer, history)

    plot_history(name, history)
    last = next((h["sample_accuracy"] for h in reversed(history) if "sample_accuracy" in h), None)
    write_weights(name, ema, {
        "command": "python tools/train_reference.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "seed": args.seed, "steps": step, "schedule_steps": args.steps, "batch": args.batch, "lr": args.lr,
        "parameters": sum(p.numel() for p in denoiser.parameters()),
        "final_sample_accuracy": last})


def plot_history(name: str, history: list) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    steps = [h["step"] for h in history]
    left.plot(steps, [h["loss"] for h in history])
    left.set_yscale("log")
    left.set_xlabel("step")
    left.set_title(f"{name}: v-prediction loss")
    scored = [h for h in history if "sample_accuracy" in h]
    for key in ("color", "shape", "direction", "all"):
        right.plot([h["step"] for h in scored], [h["sample_accuracy"][key] for h in scored], marker="o", label=key)
    right.set_ylim(0, 1.02)
    right.set_xlabel("step")
    right.set_title("probe accuracy of EMA samples (held-out prompts)")
    right.legend()
    fig.tight_layout()
    fig.savefig(DOCS / f"{name}-loss.png", dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=["probe", "ref-unet3d", "ref-latte"])
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--ema", type=float, default=0.995)
    parser.add_argument("--clips", type=int, default=16000)
    parser.add_argument("--stop-at", type=int, help="stop after this step (the schedule still spans --steps)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--work", help="checkpoint directory (default runs/NAME)")
    parser.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--eval-prompts", type=int, default=40)
    parser.add_argument("--checkpoint-every", type=int, default=100)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model == "probe":
        args.batch = 128 if args.batch == 32 else args.batch
        args.clips = 12000 if args.clips == 16000 else args.clips
        train_probe(args)
    else:
        args.steps = args.steps or 2000
        train_denoiser(args)


if __name__ == "__main__":
    main()
