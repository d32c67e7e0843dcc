#!/usr/bin/env python
"""Train the moving-shapes probe and reference models from a fixed seed, on a CPU or a GPU.

    python tools/train_reference.py probe                      # the classifier (minutes)
    python tools/train_reference.py ref-latte --steps 3000     # a denoiser (about 80 minutes on a CPU)
    python tools/train_reference.py ref-unet3d --init OLD.safetensors --steps 1400 --high-noise-share 0.5
    python tools/train_reference.py ref-wan --steps 4000 --high-noise-share 0.5 --threads 1

    # a machine without the text encoder (or a GPU machine without a registry): prepare the bank
    # where MiniLM is installed, carry the file, train from it
    python tools/train_reference.py prepare ref-unet3d -o bank.safetensors
    python tools/train_reference.py ref-unet3d --data bank.safetensors --device cuda

Denoisers: v-prediction MSE on a bank of real clips, captions embedded once by MiniLM (10% of
them dropped to "" for classifier-free guidance), AdamW with warm-up and cosine decay, EMA
weights. The bank (packed clips, caption embeddings, the in-training evaluation prompts'
embeddings and labels) is built in memory, or read from a safetensors file written by `prepare`
(`--data`), whose metadata must match the run's model, --clips, --seed and --eval-prompts.
`--device auto|cpu|cuda`: on CUDA the forward runs under bf16 autocast (weights, optimizer and EMA
in fp32); every random draw comes from a CPU generator seeded by the step, so the same seed gives
the same weights on the same device, and a resumed run continues exactly. `--high-noise-share P`
draws that share of each batch's timesteps from the noisiest 30% of the schedule (where only the
caption decides the direction of motion). `--init` starts from earlier weights (buffers the file
lacks keep their constructed values). Every --eval-every steps the EMA model samples held-out
paraphrase prompts and the probe scores colour, shape and direction, so the log shows whether
motion is being learned. Resumable: the state is checkpointed to --work every --checkpoint-every
steps (safetensors and JSON) and a rerun with the same arguments continues from it; `--stop-at`
ends a longer schedule early. At the end the EMA weights are written to
f3compile/models/reference/weights/NAME.safetensors with their sha256 and the command (and the
init file's sha256), and the log and loss curve to docs/reference/ (`--out DIR` writes all of it
to DIR instead, for trial runs).
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

DOCS = ROOT / "docs" / "reference"  # logs and curves (--out replaces this and WEIGHTS)
WEIGHTS = ref.WEIGHTS


def log_line(path: Path, record: dict) -> None:
    print(json.dumps(record), flush=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def write_weights(name: str, state: dict[str, torch.Tensor], record: dict) -> None:
    from safetensors.torch import save_file

    WEIGHTS.mkdir(parents=True, exist_ok=True)
    file = WEIGHTS / f"{name}.safetensors"
    save_file({k: v.detach().contiguous().float() for k, v in state.items()}, str(file))
    record = {"sha256": sha256_file(file), **record}
    (WEIGHTS / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
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


BANK_SCHEMA = "f3compile.training-bank/1"


def build_bank(name: str, clips: int, seed: int, eval_count: int,
               device: torch.device = torch.device("cpu")) -> dict[str, torch.Tensor]:
    """Everything training needs from the text encoder and the renderer, as tensors:
    x (N, C, F, h, w) packed clips (fp16), embeddings (U, L, D) of the U distinct captions (fp16),
    caption_index (N,), empty (1, L, D) = the unconditional embedding, and the in-training evaluation
    set (eval_cond, eval_uncond, eval_labels as class indices). The captions are embedded on
    `device` (a GPU embeds 16,000 captions in seconds), the tensors returned on the CPU."""
    pipe = ref.build_pipeline(name, ref.DENOISERS[name]())
    pipe.text_encoder.to(device)
    from f3compile.models.loading import from_pipeline

    model = from_pipeline(pipe, f"builtin:{name}")
    print("rendering clips and embedding captions ...", flush=True)
    frames, captions, _ = domain.make_clips(clips, seed=seed)
    unique = sorted(set(captions))
    lookup = {caption: index for index, caption in enumerate(unique)}
    embeddings, empty = [], None
    for start in range(0, len(unique), 256):
        cond, uncond = model.encode_prompts(unique[start:start + 256])
        embeddings.append(cond.half())
        empty = uncond[:1].float()
    prompts, labels = evaluation_prompts(eval_count, seed + 7)
    eval_cond, eval_uncond = model.encode_prompts(prompts)
    return {
        "x": ref.pack(torch.from_numpy(frames)).half(),
        "embeddings": torch.cat(embeddings),
        "caption_index": torch.tensor([lookup[c] for c in captions]),
        "empty": empty,
        "eval_cond": eval_cond.float(), "eval_uncond": eval_uncond.float(),
        "eval_labels": torch.tensor([[HEADS[k].index(getattr(item, k)) for k in HEADS] for item in labels]),
    }


def bank_metadata(args) -> dict[str, str]:
    return {"schema": BANK_SCHEMA, "model": args.model, "clips": str(args.clips), "seed": str(args.seed),
            "eval_prompts": str(args.eval_prompts)}


def prepare(args) -> None:
    """Write the training bank of `args.model` to `args.output` (safetensors, metadata says what it holds)."""
    from safetensors.torch import save_file

    bank = build_bank(args.model, args.clips, args.seed, args.eval_prompts, pick_device(args.device))
    output = Path(args.output)
    temporary = output.with_name(output.name + ".tmp")
    save_file({k: v.contiguous() for k, v in bank.items()}, str(temporary), metadata=bank_metadata(args))
    temporary.replace(output)
    print(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB)")


def load_bank(args, tensors: bool = True) -> dict[str, torch.Tensor]:
    """The bank's tensors (with `tensors=False`: only check that it was prepared with these settings)."""
    from safetensors import safe_open

    if not Path(args.data).is_file():
        raise SystemExit(f"error: {args.data} does not exist; write it with `prepare {args.model} -o FILE`")
    with safe_open(args.data, "pt") as handle:
        metadata = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()} if tensors else {}
    expected = bank_metadata(args)
    wrong = {k: (metadata.get(k), v) for k, v in expected.items() if metadata.get(k) != v}
    if wrong:
        raise SystemExit(f"error: {args.data} was prepared with other settings {wrong} (found, asked); "
                         "prepare it again with the same model, --clips, --seed and --eval-prompts")
    return tensors


def pick_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch sees no CUDA device; use --device cpu")
    return torch.device(choice)


@torch.no_grad()
def sample_and_score(denoise, probe, cond, uncond, labels: torch.Tensor, device: torch.device,
                     steps: int = 20, guidance: float = 5.0) -> dict:
    """Probe accuracy of videos sampled for the evaluation embeddings (DDIM, CFG), seed 1234."""
    from f3compile.sampling import denoise_loop, initial_latents

    shape = (len(cond), ref.CHANNELS, ref.FRAMES, ref.SIZE // ref.PACK, ref.SIZE // ref.PACK)
    generator = torch.Generator().manual_seed(1234)
    scheduler = ref.scheduler()
    latents = initial_latents(shape, scheduler, generator).to(device)
    latents = denoise_loop(denoise, scheduler, latents, cond.to(device), uncond.to(device), steps, guidance, generator)
    _, predicted = probe.classify(ref.unpack(latents.float().cpu()))
    truth = [{k: HEADS[k][int(row[i])] for i, k in enumerate(HEADS)} for row in labels]
    return metrics.accuracy(predicted, truth)


def save_checkpoint(work: Path, step: int, denoiser, ema, optimizer, history: list) -> None:
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in denoiser.state_dict().items()}
    tensors.update({f"ema.{k}": v.cpu().contiguous() for k, v in ema.items()})
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            value = value.detach().cpu()
            tensors[f"opt.{index}.{key}"] = value.reshape(-1) if key == "step" else value.contiguous()
    save_file(tensors, str(work / "checkpoint.tmp"))
    (work / "checkpoint.tmp").replace(work / "checkpoint.safetensors")
    (work / "checkpoint.json").write_text(json.dumps({"step": step, "history": history}))


def load_checkpoint(work: Path, denoiser, ema, optimizer) -> tuple[int, list]:
    from safetensors.torch import load_file

    if not (work / "checkpoint.json").is_file():
        return 0, []
    meta = json.loads((work / "checkpoint.json").read_text())
    device = next(denoiser.parameters()).device
    tensors = load_file(str(work / "checkpoint.safetensors"), device=str(device))
    denoiser.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    for k in ema:
        ema[k].copy_(tensors[f"ema.{k}"])
    state = optimizer.state_dict()
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, index, name = key.split(".", 2)
            state["state"].setdefault(int(index), {})[name] = value.reshape(()).cpu() if name == "step" else value
    optimizer.load_state_dict(state)
    print(f"resumed from step {meta['step']}")
    return meta["step"], meta["history"]


def initial_weights(denoiser, path: str) -> None:
    """Start from `path` (safetensors). Buffers the file lacks (a constant the architecture gained,
    such as a sinusoidal position table) keep their constructed values; anything else must match."""
    from safetensors.torch import load_file

    state = load_file(path)
    missing, unexpected = denoiser.load_state_dict(state, strict=False)
    buffers = {name for name, _ in denoiser.named_buffers()}
    if unexpected or set(missing) - buffers:
        raise SystemExit(f"error: {path} does not fit {type(denoiser).__name__}: missing "
                         f"{sorted(set(missing) - buffers)[:5]}, unexpected {sorted(unexpected)[:5]}")


def train_denoiser(args) -> None:
    from f3compile.models.families import FAMILIES
    from f3compile.models.registry import BUILTINS
    from f3compile.models.reference.probe import load_probe

    name = args.model
    device = pick_device(args.device)
    if args.data:
        load_bank(args, tensors=False)  # refuse a mismatched bank before anything is written
    torch.manual_seed(args.seed)
    denoiser = ref.DENOISERS[name]()
    if args.init:
        initial_weights(denoiser, args.init)
    denoiser = denoiser.to(device).train()
    family = FAMILIES[BUILTINS[name].family]  # the family the registry gives builtin:NAME
    # bf16 autocast on CUDA (parameters, optimizer and EMA stay fp32); exact fp32 on the CPU
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    def denoise_with(module):
        def denoise(sample, timestep, context):
            with autocast:
                return family.denoise(module, sample, timestep, context).float()
        return denoise

    denoise = denoise_with(denoiser)
    probe = load_probe()  # scores decoded clips on the CPU (sample_and_score brings them back)
    alphas = ref.scheduler().alphas_cumprod.float().to(device)
    train_steps = ref.scheduler().config.num_train_timesteps

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
    elif args.time_budget:
        raise SystemExit(f"error: {work} holds a run at step {step}; --time-budget only starts a run "
                         "(resume it with the --steps N it printed, or pass --restart)")
    stop = min(args.steps, args.stop_at or args.steps)
    if step < stop:
        bank = load_bank(args) if args.data else build_bank(name, args.clips, args.seed, args.eval_prompts, device)
        x_bank, embeddings = bank["x"].to(device), bank["embeddings"].to(device)
        caption_index, empty = bank["caption_index"].to(device), bank["empty"].to(device)

    def lr_at(s: int) -> float:
        if s < args.warmup:
            return args.lr * (s + 1) / args.warmup
        progress = (s - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))

    start, losses = time.time(), []
    floating = [k for k, v in ema.items() if v.is_floating_point()]
    ema_floats = [ema[k] for k in floating]
    rate_from = step + 10  # --time-budget: the step rate is measured over steps rate_from..rate_from+50
    while step < stop:
        if args.time_budget and step == rate_from:
            clock = time.time()
        if args.time_budget and step == rate_from + 50:
            # the schedule's length is fixed here, inside the warm-up (whose learning rates do not
            # depend on it), so the run equals one with `--steps N` for the N it chose
            rate = 50 / (time.time() - clock)
            evals = 1 + args.steps // args.eval_every
            left = args.time_budget - (time.time() - start) - evals * 4.0
            args.steps = max(step + 1, int(step + 0.95 * rate * left))
            stop = min(args.steps, args.stop_at or args.steps)
            print(f"{rate:.1f} steps/s: the schedule is --steps {args.steps}", flush=True)
        # every random draw comes from a CPU stream seeded by the step, so a resumed run and a run on
        # another device see the same batches, timesteps and noise
        generator = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        index = torch.randint(0, len(x_bank), (args.batch,), generator=generator)
        drop = torch.rand(args.batch, generator=generator) < 0.1
        t = torch.randint(0, train_steps, (args.batch,), generator=generator)
        if args.high_noise_share > 0:
            # direction is decided at the noisiest steps, where only the caption can tell left from
            # right (later steps follow whatever trajectory the noise began): train there more often
            high = torch.rand(args.batch, generator=generator) < args.high_noise_share
            top = torch.randint(int(0.7 * train_steps), train_steps, (args.batch,), generator=generator)
            t = torch.where(high, top, t)
        noise = torch.randn((args.batch,) + tuple(x_bank.shape[1:]), generator=generator).to(device)
        index, drop, t = index.to(device), drop.to(device), t.to(device)
        x0 = x_bank[index].float()
        context = torch.where(drop.view(-1, 1, 1), empty, embeddings[caption_index[index]].float())
        a = alphas[t].view(-1, 1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = a.sqrt() * noise - (1 - a).sqrt() * x0  # v
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        prediction = denoise(noisy, t.float(), context)
        loss = torch.nn.functional.mse_loss(prediction, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        step += 1
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            state = denoiser.state_dict()
            torch._foreach_mul_(ema_floats, decay)  # one kernel per group, not two per tensor
            torch._foreach_add_(ema_floats, [state[k].float() for k in floating], alpha=1 - decay)
            for k, v in state.items():
                if not v.is_floating_point():
                    ema[k].copy_(v)
        losses.append(loss.detach())  # read back only when logged: no device sync per step
        if step % args.log_every == 0 or step == stop:  # the last step is always logged and scored
            record = {"step": step, "loss": round(float(torch.stack(losses).float().mean()), 5), "lr": round(lr_at(step), 6),
                      "seconds": round(time.time() - start, 1)}
            losses = []
            if step % args.eval_every == 0 or step == stop:
                evaluator = ref.DENOISERS[name]().to(device).eval()
                evaluator.load_state_dict(ema)
                record["sample_accuracy"] = sample_and_score(denoise_with(evaluator), probe, bank["eval_cond"], bank["eval_uncond"],
                                                             bank["eval_labels"], device)
            history.append(record)
            log_line(log, record)
        if step % args.checkpoint_every == 0 or step == stop:
            save_checkpoint(work, step, denoiser, ema, optimizer, history)

    plot_history(name, history)
    last = next((h["sample_accuracy"] for h in reversed(history) if "sample_accuracy" in h), None)
    command = sys.argv[1:]
    if args.time_budget:  # the equivalent fixed-length command: --time-budget T (and --steps) become --steps N
        pairs = {"--time-budget", "--steps"}
        command = [c for i, c in enumerate(command) if c not in pairs and (i == 0 or command[i - 1] not in pairs)]
        command += ["--steps", str(args.steps)]
    record = {
        "command": "python tools/train_reference.py " + " ".join(shlex.quote(a) for a in command),
        "seed": args.seed, "steps": step, "schedule_steps": args.steps, "batch": args.batch, "lr": args.lr,
        "device": str(device), "parameters": sum(p.numel() for p in denoiser.parameters()),
        "final_sample_accuracy": last}
    if args.init:
        record["init"] = {"file": args.init, "sha256": sha256_file(Path(args.init))}
    write_weights(name, {k: v.cpu() for k, v in ema.items()}, record)


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
    parser.add_argument("model", choices=["probe", *ref.DENOISERS, "prepare"])
    parser.add_argument("prepare_model", nargs="?", choices=list(ref.DENOISERS),
                        help="with `prepare`: the model whose training bank to write to -o")
    parser.add_argument("-o", "--output", help="with `prepare`: the bank file to write (safetensors)")
    parser.add_argument("--data", help="train from a bank written by `prepare` (no text encoder needed)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--init", help="start from these weights (safetensors) instead of random ones")
    parser.add_argument("--out", help="write weights, log and curve here instead of the shipped locations")
    parser.add_argument("--high-noise-share", type=float, default=0.0,
                        help="share of each batch whose timestep is drawn from the noisiest 30%% of the schedule")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds of training: the schedule's length (--steps) is chosen from the step rate "
                             "measured during the warm-up; the weights record the equivalent --steps N")
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
    if args.out:  # a trial run: weights, log and curve go here, the shipped ones stay untouched
        global DOCS, WEIGHTS
        DOCS = WEIGHTS = Path(args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model == "prepare":
        if not args.prepare_model or not args.output:
            parser.error("prepare needs a model and -o FILE: prepare ref-unet3d -o bank.safetensors")
        args.model = args.prepare_model
        prepare(args)
    elif args.model == "probe":
        args.batch = 128 if args.batch == 32 else args.batch
        args.clips = 12000 if args.clips == 16000 else args.clips
        train_probe(args)
    else:
        args.steps = args.steps or 2000
        if args.time_budget and args.warmup <= 60:
            parser.error("--time-budget measures the step rate over steps 10-60 and fixes the schedule there, "
                         "inside the warm-up: use --warmup 61 or more")
        train_denoiser(args)


if __name__ == "__main__":
    main()
