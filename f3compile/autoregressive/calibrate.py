"""Calibration of CogVideo on the real autoregressive loops (stage 1, and stage 2's interpolation).

Each prompt is generated token by token with cluster top-k sampling through the dense step
programs; at every token the recorder reads the plus channel's probabilities over its keys
(stage 1: text + every earlier frame token, up to T + F·P keys; stage 2: text + the token's window
in every frame, and in the prefill the key frames' windows) and sums, per layer and head, the mass
each query frame (slot) pays to each key frame. A stage-2 model interpolates between key frames that
a stage-1 model (`key_model`, dense) generates for the same prompt. The result has the diffusion
calibrations' format (`f3compile.calibration/1`, one "step"), so `plan` and `inspect` work on it:

  unit/{id}/attn        (1, H, F, F)  Σ over query tokens of the frame-key mass, renormalised over
                                      frame keys (the text keys' share is kept apart)
  unit/{id}/text_mass   (1, H)        Σ over frame-query tokens of the mass on text keys
  unit/{id}/rows        (1,)          query tokens per (head, query frame)
  unit/{id}/branch      (1,)          Σ ‖(1 − σ(a))·dense_plus(ctx_plus)‖ / ‖hidden‖ over tokens that use it
  unit/{id}/head_branch (1, H)        the same per head
  unit/{id}/calls       (1,)          tokens summed into branch
  block/{id}/ratio, calls              = branch, calls (the channel is its own block)
  layer/{l}/gate        (hidden,)     σ(attn_distribution[l])
In stage 1, frame 0's queries attend (within their frame) like every other, though their plus term
is not used at inference: their row says they do no cross-frame work. In stage 2 every slot uses it.
Each batch of prompts is recorded on its own and added to the others compensated in fp64
(`parallel.Sums`), so torchrun ranks and `--shard` parts give the one-process result.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

from ..calibration.stats import SCHEMA, CalibrationStats
from ..errors import F3Error
from ..models.cogvideo import CogVideoModel, unit_id
from .program import Session, StepCore
from .sampling import Strategy, generate_tokens


class PlusRecorder:
    """Sums the plus channel's frame-to-frame attention and branch norms over calls."""

    def __init__(self, core: StepCore):
        c = self.config = core.config
        self.layers = [int(k) for k in core.plus]
        heads = {layer: core.plus[str(layer)].heads for layer in self.layers}
        self.attn = {l: torch.zeros(heads[l], c.frames, c.frames, dtype=torch.float64) for l in self.layers}
        self.text_mass = {l: torch.zeros(heads[l], dtype=torch.float64) for l in self.layers}
        self.branch = {l: 0.0 for l in self.layers}
        self.head_branch = {l: torch.zeros(heads[l], dtype=torch.float64) for l in self.layers}
        self.calls = {l: 0 for l in self.layers}
        self.frame_queries = 0

    def __call__(self, layer, probs, token_of, positions, plus_context, weight, hidden, plus) -> None:
        c = self.config
        T, P = c.text_length, c.frame_tokens
        if not torch.isfinite(probs).all():
            raise F3Error(f"calibration saw NaN/inf attention in {unit_id(layer)}; check the model weights")
        query_frame = torch.where(positions < T, -1, (positions - T) // P)
        key_frame = torch.where(token_of < T, -1, (token_of - T) // P).clamp_max(c.frames)  # dummy slot -> frames
        one_hot = torch.nn.functional.one_hot(key_frame + 1, c.frames + 2).double()  # (S, F + 2): text, frames, dummy
        mass = probs.double() @ one_hot  # (B, h, n, F + 2)
        text = mass[..., 0]
        frames = mass[..., 1:c.frames + 1] / (1 - text).clamp_min(1e-12).unsqueeze(-1)
        for row in range(positions.shape[0]):
            f = int(query_frame[row])
            if f < 0:
                continue
            self.attn[layer][:, f] += frames[:, :, row].sum(0)
            self.text_mass[layer] += text[:, :, row].sum(0)
            if layer == self.layers[0]:
                self.frame_queries += probs.shape[0]
            if f >= c.plus_from:  # where the plus term is used
                norm = hidden[:, row].double().norm(dim=-1).clamp_min(1e-12)  # (B,)
                heads, d = plus.heads, c.head_dim
                context = plus_context[:, row].double().view(-1, heads, d)  # (B, h, d)
                columns = plus.dense_weight.double().view(-1, heads, d)  # (H, h, d)
                per_head = (weight.double().view(1, 1, -1) * torch.einsum("bhd,khd->bhk", context, columns)).norm(dim=-1)
                whole = (weight.double() * (plus_context[:, row].double() @ plus.dense_weight.double().T
                                            + plus.dense_bias.double())).norm(dim=-1)
                self.branch[layer] += float((whole / norm).sum())
                self.head_branch[layer] += (per_head / norm.unsqueeze(-1)).sum(0)
                self.calls[layer] += probs.shape[0]

    def terms(self) -> dict[str, torch.Tensor]:
        """What this recorder summed (fp64), under the names of the calibration's tensors."""
        rows = self.frame_queries / self.config.frames
        out: dict[str, torch.Tensor] = {}
        for layer in self.layers:
            uid = unit_id(layer)
            branch = torch.tensor([self.branch[layer]], dtype=torch.float64)
            calls = torch.tensor([float(self.calls[layer])], dtype=torch.float64)
            out |= {f"unit/{uid}/attn": self.attn[layer].unsqueeze(0),
                    f"unit/{uid}/text_mass": self.text_mass[layer].unsqueeze(0),
                    f"unit/{uid}/rows": torch.tensor([rows], dtype=torch.float64),
                    f"unit/{uid}/branch": branch, f"unit/{uid}/head_branch": self.head_branch[layer].unsqueeze(0),
                    f"unit/{uid}/calls": calls, f"block/{uid}/ratio": branch, f"block/{uid}/calls": calls}
        return out

    def fixed(self, core: StepCore) -> dict[str, torch.Tensor]:
        """The tensors that do not depend on the prompts: each layer's gate."""
        return {f"layer/{layer}/gate": torch.sigmoid(core.gates[layer].detach().float()) for layer in self.layers}


CROSS_FRAME_THRESHOLD = 1e-3  # mean attention mass a frame query pays to other frames' keys


@torch.no_grad()
def cross_frame_mass(model: CogVideoModel, seed: int = 0) -> dict[tuple[str, int], float]:
    """(channel, layer) → mean mass that frame tokens' queries pay to keys of *other* frames, on one
    random token sequence through the reference forward (no names involved: what attends across
    frames is found by running it)."""
    from .program import frame_of, reference_logits

    c = model.config
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, c.image_tokens, (1, c.sequence_length), generator=generator)
    frame = frame_of(c)
    other = (frame.view(-1, 1) >= 0) & (frame.view(1, -1) >= 0) & (frame.view(-1, 1) != frame.view(1, -1))
    queries = int((frame >= 0).sum())
    found: dict[tuple[str, int], float] = {}

    def record(channel, layer, probs):
        found[(channel, layer)] = float((probs.double() * other).sum() / (probs.shape[0] * probs.shape[1] * queries))

    reference_logits(model.module, tokens, record=record)
    return found


def find_temporal_units(model: CogVideoModel) -> list[dict]:
    """The attention channels whose keys span other frames, as calibration units: in CogVideo the
    plus channel of every layer (the base channel sees only the text and its own frame)."""
    c = model.config
    mass = cross_frame_mass(model)
    units = []
    for (channel, layer), value in sorted(mass.items(), key=lambda item: (item[0][1], item[0][0])):
        if value <= CROSS_FRAME_THRESHOLD:
            continue
        if channel != "plus":
            raise F3Error(f"the {channel} channel of layer {layer} attends across frames ({value:.3f}); "
                          "only plus channels are temporal units")
        units.append(dict(id=unit_id(layer), block=unit_id(layer), heads=c.num_heads, head_dim=c.head_dim,
                          frames=c.frames, channels=c.hidden_size))
    if not units:
        raise F3Error(f"{model.spec}: no attention channel attends across frames; nothing to prune")
    return units


def check_key_model(model: CogVideoModel, key_model: CogVideoModel | None) -> None:
    """A stage-2 model needs a stage-1 model of the same frame grid and image vocabulary for its key frames."""
    c = model.config
    if c.stage == 1:
        if key_model is not None:
            raise F3Error("--key-model is for stage-2 models; a stage-1 model makes its own frames")
        return
    if key_model is None:
        raise F3Error(f"{model.spec} is a stage-2 (interpolation) model: pass --key-model with the stage-1 model "
                      "that makes its key frames")
    k = key_model.config
    if k.stage != 1 or (k.grid, k.image_tokens, k.frames) != (c.grid, c.image_tokens, c.frames):
        raise F3Error(f"--key-model {key_model.spec} must be a stage-1 model with {c.frames} frames of {c.grid}x{c.grid} "
                      f"tokens over {c.image_tokens} image tokens, like {model.spec}")


@torch.no_grad()
def calibrate_cogvideo(model: CogVideoModel, prompts: list[str], seed: int = 0, batch_size: int = 1,
                       output_dir: Path | None = None, prompts_sha256: str | None = None, progress: bool = False,
                       strategy: Strategy | None = None, key_model: CogVideoModel | None = None,
                       shard=None) -> CalibrationStats:
    """Generate every prompt with the dense programs while recording the plus channels. A stage-2
    model interpolates between key frames that `key_model` (stage 1, dense) generates for the same
    prompt: both of the first round's triples, with the published first spacing (2.0 s). Batch b
    samples with seed + b. Under torchrun the ranks split the batches; `shard` K/N records only the
    K-th part, for `merge`."""
    from ..calibration.calibrate import library_versions
    from ..calibration.parts import conclude, work_split
    from ..parallel import Sums
    from .program import programs
    from .sampling import interpolate_tokens, interpolation_text

    started = time.perf_counter()
    c = model.config
    check_key_model(model, key_model)
    units = find_temporal_units(model)
    if len(units) != c.num_layers:
        raise F3Error(f"{model.spec}: {c.num_layers - len(units)} plus channel(s) attend to no other frame; "
                      "calibration expects one temporal unit per layer")
    core = StepCore(model.module).eval()
    recorder = None

    def prefill(tokens):
        caches = [torch.zeros(shape) for _, shape in core.cache_specs(tokens.shape[0])]
        logits, caches = core.run(tokens, torch.arange(tokens.shape[1]), caches, recorder=recorder)
        return (logits, *caches)

    def decode(token, position, *caches):
        logits, new = core.run(token, position, list(caches), recorder=recorder, append=True)
        return (logits, *new)

    tables = core.slot_tables()
    if key_model is not None:  # dense programs run any batch size
        key_prefill, key_decode = programs(key_model.module)
    batches = [prompts[i:i + batch_size] for i in range(0, len(prompts), batch_size)]
    group, part = work_split("cpu", shard, len(batches))
    mine = part.span(len(batches))
    groups = (c.frames - 1) // 2  # stage 2: key-frame triples of a 5-frame stage-1 video
    tokens_per_video = c.frames * c.frame_tokens if c.stage == 1 else groups * (c.frames - c.given_frames) * c.frame_tokens
    digest = prompts_sha256 or "sha256:" + hashlib.sha256("\n".join(prompts).encode()).hexdigest()
    meta = {
        "schema": SCHEMA,
        "model": {"spec": model.spec, "fingerprint": model.fingerprint, "family": model.family},
        "kind": "autoregressive",
        "prompts": {"count": len(prompts), "sha256": digest},
        "seed": seed,
        "shapes": {"batch": batch_size, "frames": c.frames, "height": c.grid * c.patch, "width": c.grid * c.patch},
        "steps": 1,
        "num_train_timesteps": 1,
        "timesteps": [0],
        "tokens_per_video": tokens_per_video,
        "stage": c.stage,
        "key_model": None if key_model is None else {"spec": key_model.spec, "fingerprint": key_model.fingerprint},
        "sampling": (strategy or Strategy()).__dict__,
        "units": units,
        "versions": library_versions(),
    }
    group.check_same(json.dumps(meta, sort_keys=True, default=str), "models, prompts or settings")
    bar = None
    if progress and group.writer:
        from tqdm import tqdm

        bar = tqdm(total=len(mine) * tokens_per_video, desc="calibrate", unit="token", leave=False)
    tick = (lambda _: bar.update(1)) if bar is not None else None
    sums = Sums()
    try:
        for number in mine:
            batch = batches[number]
            recorder = PlusRecorder(core)  # one batch's sums, added compensated below
            if c.stage == 1:
                generate_tokens(c, Session(prefill, decode, tables), model.tokenizer(batch), seed=seed + number,
                                strategy=strategy, on_token=tick)
            else:
                key_frames = generate_tokens(key_model.config,
                                             Session(key_prefill, key_decode, key_prefill.core.slot_tables()),
                                             key_model.tokenizer(batch), seed=seed + number, strategy=strategy)
                text = model.tokenizer([interpolation_text(prompt, 2.0) for prompt in batch])
                for group_number in range(groups):
                    interpolate_tokens(c, Session(prefill, decode, tables), text,
                                       key_frames[:, 2 * group_number:2 * group_number + 3],
                                       seed=seed + number, strategy=strategy, on_token=tick)
            sums.add(recorder.terms())
    finally:
        if bar is not None:
            bar.close()
    meta["seconds"] = round(time.perf_counter() - started, 3)
    fixed = PlusRecorder(core).fixed(core) | {"timesteps": torch.tensor([0.0])}
    return conclude(meta, sums, fixed, output_dir, False, group, part, mine)
