"""The autoregressive loops of CogVideo (stage 1, and stage 2's interpolation) over step programs, with cluster top-k sampling.

Token layout of one video (T text slots, F frames of P tokens): inputs at token index s are the
text, then for every frame `<start_of_image>` followed by the frame's first P − 1 image tokens;
the logits at index T + f·P + j predict image token j of frame f. One prefill runs the text and
the first `<start_of_image>`, then F·P − 1 decode steps follow.

Stage 2 (interpolation) runs the text and three key frames (slots 0-2, times 0, 2, 4) in the
prefill, then decodes slots 3 and 4 (times 1 and 3) token by token; `interpolate_video` repeats it
to fill 5 → 9 → 17 → 33 frames.

Cluster top-k (CogView2's strategy): the image tokens are grouped in clusters; per token the
softmax(logits / temperature) mass is summed per cluster, one of the top-k clusters is drawn by
its mass, and the token is drawn inside it from softmax(logits / (temperature · temperature2)).
The first frame uses temperature 1.0 and k 16, later frames 1.05 and 12, both temperature2 0.89.
The published 500 clusters (a label file) are not shipped: the builtins use token id mod 500 (mod
8 for tiny-cogvideo), which keeps the procedure and its cost but not the published grouping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import F3Error
from ..models.cogvideo import CogVideoConfig


@dataclass(frozen=True)
class Strategy:
    """Cluster top-k sampling settings (defaults: the published stage-1 script)."""

    first_temperature: float = 1.0  # first frame
    first_top_k: int = 16
    temperature: float = 1.05  # frames 2..
    top_k: int = 12
    temperature2: float = 0.89  # inside the chosen cluster (multiplies temperature)

    def for_frame(self, frame: int) -> tuple[float, int]:
        return (self.first_temperature, self.first_top_k) if frame == 0 else (self.temperature, self.top_k)


def cluster_labels(config: CogVideoConfig) -> torch.Tensor:
    clusters = 8 if config.image_tokens < 500 * 8 else 500
    return torch.arange(config.image_tokens) % clusters


def sample_cluster_topk(logits: torch.Tensor, labels: torch.Tensor, temperature: float, top_k: int,
                        temperature2: float, generator: torch.Generator) -> torch.Tensor:
    """(B, image_tokens) logits → (B,) sampled ids."""
    clusters = int(labels.max()) + 1
    scaled = logits.float().cpu() / temperature
    probs = torch.softmax(scaled, dim=-1)
    mass = torch.zeros(probs.shape[0], clusters).scatter_add_(1, labels.expand(probs.shape[0], -1), probs)
    top_mass, top_index = mass.topk(min(top_k, clusters), dim=-1)
    chosen = top_index.gather(1, torch.multinomial(top_mass / top_mass.sum(-1, keepdim=True), 1, generator=generator))
    inside = scaled.masked_fill(labels.view(1, -1) != chosen, float("-inf"))
    return torch.multinomial(torch.softmax(inside / temperature2, dim=-1), 1, generator=generator).squeeze(1)


def generate_tokens(config: CogVideoConfig, session, text: torch.Tensor, seed: int = 0,
                    strategy: Strategy | None = None, device: str | torch.device = "cpu",
                    on_token: Callable[[int], None] | None = None, count: int | None = None) -> torch.Tensor:
    """Image tokens (B, frames, P) of one video per text row (B, T), through a `program.Session`
    (eager modules, loaded torch.export programs or ONNX sessions alike). With `count`, only the
    first `count` tokens are generated (the rest of the returned grid is 0)."""
    strategy = strategy or Strategy()
    c = config
    if c.stage != 1:
        raise F3Error("a stage-2 model interpolates between key frames; generate them with a stage-1 model")
    T, P = c.text_length, c.frame_tokens
    generator = torch.Generator().manual_seed(seed)
    labels = cluster_labels(c)
    batch = text.shape[0]
    start = torch.full((batch, 1), c.start_of_image, dtype=torch.int64)
    logits = session.start(torch.cat([text, start], dim=1).to(device))
    images = torch.zeros((batch, c.frames * P), dtype=torch.int64)
    last = c.sequence_length if count is None else min(c.sequence_length, T + count)
    for index in range(T, last):
        frame = (index - T) // P
        temperature, top_k = strategy.for_frame(frame)
        images[:, index - T] = sample_cluster_topk(torch.as_tensor(logits), labels, temperature, top_k,
                                                   strategy.temperature2, generator)
        if on_token is not None:
            on_token(index)
        following = index + 1
        if following == last:
            break
        token = start if (following - T) % P == 0 else images[:, index - T:index - T + 1]
        logits, _ = session.step(token.to(device), following)
    return images.view(batch, c.frames, P)


def teacher_tokens(config: CogVideoConfig, text: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """The input sequence (B, N) that generated `images` (B, frames, P) after `text` (B, T)."""
    c = config
    inputs = images.reshape(images.shape[0], -1).roll(1, dims=1)
    inputs[:, :: c.frame_tokens] = c.start_of_image
    return torch.cat([text, inputs], dim=1)


def interpolation_text(prompt: str, duration: float) -> str:
    """The text of a stage-2 run: the frame spacing in seconds, a line break, the prompt (the published
    pipeline prefixes "<duration>秒" and `<n>`; the stand-in tokenizer writes it as "2.0s\\n")."""
    return f"{float(duration)}s\n{prompt}"


def interpolate_tokens(config: CogVideoConfig, session, text: torch.Tensor, given: torch.Tensor, seed: int = 0,
                       strategy: Strategy | None = None, device: str | torch.device = "cpu",
                       on_token: Callable[[int], None] | None = None, count: int | None = None) -> torch.Tensor:
    """Stage 2: the two frames (B, 2, P) between three key frames `given` (B, 3, P) (times 0, 2, 4 →
    1, 3). The prefill runs the text and the key frames; each generated frame starts with
    `<start_of_image>`. With `count`, only the first `count` tokens are generated."""
    strategy = strategy or Strategy()
    c = config
    if c.stage != 2:
        raise F3Error("interpolation needs a stage-2 model (builtin:*-cogvideo-stage2 or a stage-2 checkpoint)")
    P, start_index = c.frame_tokens, c.prefill_length
    generator = torch.Generator().manual_seed(seed)
    labels = cluster_labels(c)
    batch = text.shape[0]
    made = torch.zeros((batch, (c.frames - c.given_frames) * P), dtype=torch.int64)
    inputs = teacher_tokens(c, text, torch.cat([given, made.view(batch, -1, P)], dim=1))
    session.start(inputs[:, :start_index].to(device))
    last = c.sequence_length if count is None else min(c.sequence_length, start_index + count)
    for index in range(start_index, last):
        generated = index - start_index
        token = (torch.full((batch, 1), c.start_of_image, dtype=torch.int64) if (index - c.text_length) % P == 0
                 else made[:, generated - 1:generated])
        logits, _ = session.step(token.to(device), index)
        temperature, top_k = strategy.for_frame((index - c.text_length) // P)
        made[:, generated] = sample_cluster_topk(torch.as_tensor(logits), labels, temperature, top_k,
                                                 strategy.temperature2, generator)
        if on_token is not None:
            on_token(index)
    return made.view(batch, -1, P)


def interpolate_video(config: CogVideoConfig, session_factory: Callable[[], object], text_for: Callable[[float], torch.Tensor],
                      frames: torch.Tensor, rounds: int = 3, duration: float = 2.0, seed: int = 0,
                      strategy: Strategy | None = None, on_token: Callable[[int], None] | None = None) -> torch.Tensor:
    """Stage 2 repeated: every round fills a frame between each pair of neighbours, K → 2K − 1 frames
    (5 → 9 → 17 → 33 in three rounds), on key-frame triples (2i, 2i+1, 2i+2) as the published pipeline
    groups them, with the spacing halving from `duration`. `frames` (B, K, P), K odd >= 3;
    `text_for(duration)` gives the tokenized text rows (B, T) of a round, `session_factory()` a fresh
    `Session`."""
    if frames.shape[1] < 3 or frames.shape[1] % 2 == 0:
        raise F3Error(f"interpolation takes an odd number (>= 3) of key frames, not {frames.shape[1]}")
    for number in range(rounds):
        text = text_for(duration)
        merged = []
        for group in range((frames.shape[1] - 1) // 2):
            given = frames[:, 2 * group:2 * group + 3]
            made = interpolate_tokens(config, session_factory(), text, given, seed=seed + 1000 * number + group,
                                      strategy=strategy, on_token=on_token)
            merged += [given[:, 0], made[:, 0], given[:, 1], made[:, 1]]
        frames = torch.stack(merged + [frames[:, -1]], dim=1)
        duration /= 2
    return frames
