"""Moving shapes: one shape (circle, square, triangle) in one colour (red, green, blue, yellow)
moving left, right, up, down, or standing still, over a dark background.

Clips are deterministic functions of their labels and a seed (start position), rendered with 4×4
supersampling so edges are smooth. Captions come from training templates with synonyms; a
disjoint set of held-out paraphrase templates is used only for evaluation, so an evaluator can
ask whether a model follows wording it never saw.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

SHAPES = ("circle", "square", "triangle")
COLORS = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.8, 0.2), "blue": (0.15, 0.25, 0.95), "yellow": (0.95, 0.85, 0.1)}
DIRECTIONS = ("left", "right", "up", "down", "static")
BACKGROUND = (0.08, 0.08, 0.08)
_STEP = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "static": (0, 0)}  # (dx, dy) per frame unit

# Training wording: many words and sentence frames per concept, so a model learns what a caption
# means rather than which token it contains. None of the held-out words or frames below appears here
# (tests/models/test_reference_domain.py checks it).
_SHAPE_WORDS = {
    "circle": ("circle", "disk", "ball", "orb", "sphere", "ring", "blob", "spot", "bubble", "coin"),
    "square": ("square", "box", "block", "tile", "rectangle", "crate", "brick", "quadrilateral",
               "dice", "squared tile"),
    "triangle": ("triangle", "wedge", "pyramid", "tri-cornered figure", "trigon", "arrowhead", "delta",
                 "cone", "triangular form"),
}
_DIRECTION_WORDS = {
    "left": ("moving left", "sliding to the left", "drifting leftward", "going left", "travelling to the left",
             "gliding left", "shifting left", "rolling leftwards", "moving westward"),
    "right": ("moving right", "sliding to the right", "drifting rightward", "going right", "travelling to the right",
              "gliding right", "shifting right", "rolling rightwards", "moving eastward"),
    "up": ("moving up", "rising", "drifting upward", "going up", "ascending", "floating upward", "lifting",
           "soaring", "travelling upwards", "flying up"),
    "down": ("moving down", "falling", "drifting downward", "going down", "descending", "dropping", "plunging",
             "travelling downwards", "tumbling down", "dipping", "settling downward", "diving"),
    "static": ("standing still", "not moving", "resting in place", "motionless", "stationary", "frozen", "idle",
               "remaining still", "at rest", "holding still"),
}
TRAIN_TEMPLATES = (
    "a {color} {shape} {motion}", "{color} {shape}, {motion}", "a video of a {color} {shape} {motion}",
    "the {color} {shape} is {motion}", "a clip showing a {color} {shape} that is {motion}",
    "a lone {color} {shape} {motion} across a dark background", "look at this {color} {shape}: it is {motion}",
    "here a {color} {shape} is seen {motion}", "footage of a single {color} {shape} {motion}",
)
# held-out paraphrases: other sentence frames and other words for shape and motion
HELDOUT_TEMPLATES = ("there is one {color} {shape} and it keeps {motion}", "watch the {color} {shape} as it is {motion}")
_HELDOUT_SHAPE_WORDS = {"circle": ("round dot",), "square": ("cube",), "triangle": ("three-sided shape",)}
_HELDOUT_DIRECTION_WORDS = {
    "left": ("heading left",), "right": ("heading right",), "up": ("climbing",), "down": ("sinking",),
    "static": ("staying put",),
}


@dataclass(frozen=True)
class Labels:
    shape: str
    color: str
    direction: str


def _mask(shape: str, cx: float, cy: float, radius: float, size: int, supersample: int = 4) -> np.ndarray:
    """Coverage in [0, 1] of `shape` centred at (cx, cy) on a size×size grid."""
    offsets = (np.arange(supersample) + 0.5) / supersample
    grid = np.arange(size)[:, None] + offsets[None, :]  # (size, s) sub-pixel coordinates
    ys = grid.reshape(-1)[:, None]
    xs = grid.reshape(-1)[None, :]
    dx, dy = xs - cx, ys - cy
    if shape == "circle":
        inside = dx**2 + dy**2 <= radius**2
    elif shape == "square":
        inside = (np.abs(dx) <= radius * 0.85) & (np.abs(dy) <= radius * 0.85)
    elif shape == "triangle":  # apex up, base at the bottom
        top, bottom = cy - radius, cy + radius
        half_width = (ys - top) / (2 * radius) * radius
        inside = (ys >= top) & (ys <= bottom) & (np.abs(dx) <= half_width)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return inside.reshape(size, supersample, size, supersample).mean(axis=(1, 3))


def render_clip(labels: Labels, frames: int = 8, size: int = 16, seed: int = 0, speed: float | None = None) -> np.ndarray:
    """(frames, size, size, 3) float32 RGB in [0, 1]; the shape stays fully inside the frame."""
    rng = np.random.default_rng(seed)
    radius = size / 5
    speed = size / (2 * frames) if speed is None else speed  # crosses half the frame over the clip
    dx, dy = _STEP[labels.direction]
    travel_x, travel_y = dx * speed * (frames - 1), dy * speed * (frames - 1)
    low, high = radius + 0.5, size - radius - 0.5

    def start(travel: float) -> float:
        lo, hi = max(low, low - travel), min(high, high - travel)
        return float(rng.uniform(lo, hi)) if hi > lo else (lo + hi) / 2

    x0, y0 = start(travel_x), start(travel_y)
    colour = np.array(COLORS[labels.color], dtype=np.float32)
    background = np.array(BACKGROUND, dtype=np.float32)
    clip = np.empty((frames, size, size, 3), dtype=np.float32)
    for t in range(frames):
        coverage = _mask(labels.shape, x0 + dx * speed * t, y0 + dy * speed * t, radius, size)[..., None]
        clip[t] = background * (1 - coverage) + colour * coverage
    return clip


def caption(labels: Labels, rng: np.random.Generator, split: str = "train") -> str:
    """A caption of `labels` from the training templates or the held-out paraphrases."""
    if split == "train":
        templates, shapes, motions = TRAIN_TEMPLATES, _SHAPE_WORDS, _DIRECTION_WORDS
    elif split == "heldout":
        templates, shapes, motions = HELDOUT_TEMPLATES, _HELDOUT_SHAPE_WORDS, _HELDOUT_DIRECTION_WORDS
    else:
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    template = templates[rng.integers(len(templates))]
    shape_word = shapes[labels.shape][rng.integers(len(shapes[labels.shape]))]
    motion = motions[labels.direction][rng.integers(len(motions[labels.direction]))]
    return template.format(color=labels.color, shape=shape_word, motion=motion)


def random_labels(rng: np.random.Generator) -> Labels:
    return Labels(SHAPES[rng.integers(len(SHAPES))], list(COLORS)[rng.integers(len(COLORS))],
                  DIRECTIONS[rng.integers(len(DIRECTIONS))])


def make_clips(count: int, seed: int = 0, frames: int = 8, size: int = 16, split: str = "train"):
    """(clips (N, F, H, W, 3), captions, labels) drawn deterministically from `seed`."""
    rng = np.random.default_rng(seed)
    clips, captions, labels = [], [], []
    for index in range(count):
        item = random_labels(rng)
        clips.append(render_clip(item, frames, size, seed=int(rng.integers(2**31))))
        captions.append(caption(item, rng, split))
        labels.append(item)
    return np.stack(clips), captions, labels


def write_prompts_jsonl(path: str | Path, count: int, seed: int = 0, split: str = "heldout") -> None:
    """An evaluation prompt file: JSON lines {"prompt", "color", "shape", "direction"}."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(count):
        item = random_labels(rng)
        lines.append(json.dumps({"prompt": caption(item, rng, split), **asdict(item)}))
    Path(path).write_text("\n".join(lines) + "\n")
