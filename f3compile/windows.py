"""Per-head frame windows of full 3-D attention, defined once for every place that runs them.

The `window_attention` graph pass emits these kernels into an exported program, `f3compile.apply`
runs them on the live modules of a user's pipeline (and `plan --search` measures through it), and the
cost model counts them: all three take the head regrouping, the key-frame index and the edge mask
from here, and the two that compute write the kernel through one function, `grouped_attention`,
over a small set of tensor operations (`Ops`) that the pass turns into graph nodes and `EagerOps`
runs directly.

A spatiotemporal unit's kernel runs on q, k, v (B, H, T + F·S, d): T text tokens first (CogVideoX;
T = 0 for Wan), then F frames of S tokens, frame-major. A head with window W lets a video query of
frame f see the keys of frames g with |f − g| ≤ W, plus every text key; text queries see all keys.

Regrouping: heads are ordered dense first, then by window (W = 0, 1, …), pruned heads last, by
permuting the rows of the q/k/v projections (and of any norm over all heads, which is invariant to
the order) and the columns of the output projection; each group is then a contiguous head range.

Kernels per group (the outputs concatenated over heads):
- dense: the original kernel on the group's heads;
- W = 0: batched per-frame attention, (B, h, F·S, d) → (B·h, F, S, d) (the frame on the kernel's head
  axis: a view, nothing copied), the T text keys prepended to every frame's keys;
- W > 0: each query frame gathers K = min(2W + 1, F) consecutive key frames from f − W (the start
  moved inside 0 … F − K at the edge frames) with a constant index: keys (B·h, F, T + K·S, d) and a
  constant additive mask (1, F, 1, T + K·S), 0 where a key is within ±W frames, the dtype's lowest
  value elsewhere (edge frames only), so masked keys get probability exactly 0;
- text queries (T > 0): one attention over all keys.
A key bias (B, 1, 1, T + F·S), additive, given by the model (HunyuanVideo 1.5's padded text keys at
the dtype's lowest value, 0 elsewhere) goes with its keys: whole to the dense heads and the text
queries, its text part to every frame's text keys.
Softmax over the kept keys equals softmax over all keys with −∞ at the others, so this equals the
model with a block-banded mask. Attention-core FLOPs of a W head fall from (T + F·S)² to
T·(T + F·S) + F·S·(T + K·S).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch


def head_groups(windows: Sequence[int | None]) -> list[tuple[int | None, list[int]]]:
    """[(window, heads)] in program order: dense heads first (None), then by window."""
    groups: dict[int | None, list[int]] = {}
    for head, window in enumerate(windows):
        groups.setdefault(window, []).append(head)
    return sorted(groups.items(), key=lambda item: -1 if item[0] is None else item[0])


def window_slots(frames: int, window: int) -> int:
    """Key frames gathered per query frame: 2W + 1, at most all F."""
    return min(2 * window + 1, frames)


def window_frames(frames: int, window: int) -> tuple[list[int], list[list[bool]]]:
    """(flat key-frame index, valid[f][j]) for each query frame f and slot j.

    Query frame f gathers K = `window_slots` consecutive frames starting at f − W, the start moved
    inside 0 … F − K at the edges (so no frame is gathered twice); a gathered frame farther than W
    from f is masked (`valid` False)."""
    slots = window_slots(frames, window)
    index, valid = [], []
    for frame in range(frames):
        start = min(max(frame - window, 0), frames - slots)
        index += [start + slot for slot in range(slots)]
        valid.append([abs(start + slot - frame) <= window for slot in range(slots)])
    return index, valid


def core_share(text: int, frames: int, tokens: int, window: int) -> float:
    """Share of a head's attention-core FLOPs left when it attends within ±`window` frames."""
    if window >= frames - 1:
        return 1.0
    length = text + frames * tokens
    return (text * length + frames * tokens * (text + window_slots(frames, window) * tokens)) / (length * length)


@dataclass(frozen=True)
class Regrouping:
    """How one unit's heads run under a set of windows and pruned heads.

    `order`: the heads in weight order after the permutation (dense, then by window, pruned last);
    `groups`: (window or None, number of heads) for the contiguous ranges of the kept heads, in order;
    `kept`: how many heads run (the first `kept` of `order`)."""

    order: tuple[int, ...]
    groups: tuple[tuple[int | None, int], ...]
    kept: int

    @property
    def permuted(self) -> bool:
        return self.order != tuple(range(len(self.order)))


def regroup(windows: Sequence[int | None] | None, pruned: Sequence[int], heads: int, frames: int) -> Regrouping:
    """The regrouping of a unit with `heads` heads over `frames` frames: a window W ≥ F − 1 covers
    every frame, so its head stays dense."""
    pruned_set = set(pruned)
    windows = list(windows) if windows is not None else [None] * heads
    kept_heads = [h for h in range(heads) if h not in pruned_set]
    kept = tuple(None if windows[h] is not None and windows[h] >= frames - 1 else windows[h] for h in kept_heads)
    groups = [(w, [kept_heads[i] for i in members]) for w, members in head_groups(kept)]
    order = tuple(head for _, members in groups for head in members) + tuple(sorted(pruned_set))
    return Regrouping(order, tuple((w, len(members)) for w, members in groups), len(kept_heads))


def head_rows(order: Sequence[int], head_dim: int) -> torch.Tensor:
    """Row (or column) index that moves heads into `order`: block i of the result is head order[i]."""
    return torch.tensor([head * head_dim + i for head in order for i in range(head_dim)], dtype=torch.long)


class Ops:
    """The tensor operations `grouped_attention` is written in (shapes as lists, constants by name)."""

    def reshape(self, x, shape): raise NotImplementedError
    def permute(self, x, dims): raise NotImplementedError
    def slice(self, x, dim: int, start: int, end: int): raise NotImplementedError
    def index_select(self, x, dim: int, index): raise NotImplementedError
    def expand(self, x, shape): raise NotImplementedError
    def unsqueeze(self, x, dim: int): raise NotImplementedError
    def cat(self, xs, dim: int): raise NotImplementedError
    def pad(self, x, right: int):
        """`x` with `right` zeros appended along its last dimension."""
        raise NotImplementedError
    def add(self, x, y): raise NotImplementedError
    def sdpa(self, q, k, v, mask=None, scale=None): raise NotImplementedError
    def device(self, x) -> torch.device: raise NotImplementedError
    def dtype(self, x) -> torch.dtype: raise NotImplementedError
    def constant(self, kind: str, key: tuple, make: Callable[[], torch.Tensor]):
        """The constant tensor `make()` of this kind and key: one per (kind, key), shared by every unit."""
        raise NotImplementedError


class EagerOps(Ops):
    """`Ops` on tensors: what `apply` runs. Constants are made once per kind and key (geometry,
    window, device, dtype) and kept: one instance serves every processor of an install."""

    def __init__(self) -> None:
        self.constants: dict[tuple, torch.Tensor] = {}

    def reshape(self, x, shape):
        return x.reshape(shape)

    def permute(self, x, dims):
        return x.permute(dims)

    def slice(self, x, dim, start, end):
        return x.narrow(dim, start, end - start)

    def index_select(self, x, dim, index):
        return x.index_select(dim, index)

    def expand(self, x, shape):
        return x.expand(shape)

    def unsqueeze(self, x, dim):
        return x.unsqueeze(dim)

    def cat(self, xs, dim):
        return torch.cat(xs, dim)

    def pad(self, x, right):
        return torch.nn.functional.pad(x, (0, right))

    def add(self, x, y):
        return x + y

    def sdpa(self, q, k, v, mask=None, scale=None):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)

    def device(self, x):
        return x.device

    def dtype(self, x):
        return x.dtype

    def constant(self, kind, key, make):
        found = self.constants.get((kind, key))
        if found is None:
            found = self.constants[(kind, key)] = make()
        return found


@dataclass(frozen=True)
class Geometry:
    """The sequence a spatiotemporal kernel sees: `text` text tokens, then `frames` × `tokens`."""

    text: int
    frames: int
    tokens: int
    head_dim: int


def _video(ops: Ops, x, g: Geometry):
    return x if g.text == 0 else ops.slice(x, 2, g.text, g.text + g.frames * g.tokens)


def _per_frame(ops: Ops, x, g: Geometry):
    """(B, h, F·S, d) → (B·h, F, S, d): frames on the kernel's head axis, a view of a contiguous input."""
    return ops.reshape(x, [-1, g.frames, g.tokens, g.head_dim])


def _with_text(ops: Ops, keys, source, g: Geometry):
    """Prepend the T text keys (B, h, T, d) of `source` to every frame's keys (B·h, F, ·, d)."""
    if g.text == 0:
        return keys
    text_keys = ops.reshape(ops.slice(source, 2, 0, g.text), [-1, 1, g.text, g.head_dim])
    return ops.cat([ops.expand(text_keys, [-1, g.frames, -1, -1]), keys], 2)


def _edge_mask(g: Geometry, window: int, dtype: torch.dtype, device) -> torch.Tensor:
    """(1, F, 1, T + K·S) additive: 0 for a key within ±W frames (and text keys), the lowest value else."""
    slots = window_slots(g.frames, window)
    _, valid = window_frames(g.frames, window)
    allowed = torch.tensor(valid, dtype=torch.bool).repeat_interleave(g.tokens, dim=1)  # (F, K·S)
    additive = torch.zeros(g.frames, g.text + slots * g.tokens, dtype=dtype)
    additive[:, g.text:] = torch.where(allowed, torch.zeros((), dtype=dtype), torch.full((), torch.finfo(dtype).min, dtype=dtype))
    return additive.reshape(1, g.frames, 1, g.text + slots * g.tokens).to(device)


def _text_bias(ops: Ops, bias, g: Geometry, heads: int, slots: int):
    """The key bias's text part (B, 1, 1, T) for every frame's keys: (B·h, 1, 1, T + slots·S), zero on
    the frame keys."""
    text = ops.reshape(ops.slice(bias, 3, 0, g.text), [-1, 1, 1, 1, g.text])
    text = ops.reshape(ops.expand(text, [-1, heads, 1, 1, g.text]), [-1, 1, 1, g.text])
    return ops.pad(text, slots * g.tokens)


def windowed(ops: Ops, q, k, v, g: Geometry, heads: int, window: int, scale, bias=None):
    """Attention of one group of `heads` heads at `window`: (B, h, T + F·S, d) → the same shape
    (`bias`: the model's additive key bias (B, 1, 1, T + F·S), or None).

    Batch and heads share the kernel's batch axis and the query frame is its head axis, so queries,
    the output and (W = 0) keys are views of their inputs; W > 0 gathers each frame's K key frames
    once (B·h, F·K, S, d), itself viewed as (B·h, F, K·S, d)."""
    text, frames, tokens, dim = g.text, g.frames, g.tokens, g.head_dim
    qv, kv, vv = (_video(ops, x, g) for x in (q, k, v))
    queries = _per_frame(ops, qv, g)
    mask = None
    key = (frames, tokens, text)
    if window == 0:
        keys, values = _per_frame(ops, kv, g), _per_frame(ops, vv, g)
    else:
        slots = window_slots(frames, window)
        device, dtype = ops.device(q), ops.dtype(q)
        index = ops.constant("frames", key + (window, str(device)),
                             lambda: torch.tensor(window_frames(frames, window)[0], dtype=torch.long, device=device))

        def gather(x):  # (B, h, F·S, d) → (B·h, F, K·S, d), gathered from a view of the input (no copy first)
            x = ops.index_select(ops.reshape(x, [-1, heads, frames, tokens, dim]), 2, index)  # (B, h, F·K, S, d)
            return ops.reshape(x, [-1, frames, slots * tokens, dim])

        keys, values = gather(kv), gather(vv)
        mask = ops.constant("mask", key + (window, str(device), dtype), lambda: _edge_mask(g, window, dtype, device))
    keys, values = (_with_text(ops, x, source, g) for x, source in ((keys, k), (values, v)))
    if bias is not None and text:
        text_bias = _text_bias(ops, bias, g, heads, 1 if window == 0 else window_slots(frames, window))
        mask = text_bias if mask is None else ops.add(text_bias, mask)
    out = ops.reshape(ops.sdpa(queries, keys, values, mask, scale), [-1, heads, frames * tokens, dim])
    if text:
        text_out = ops.sdpa(ops.slice(q, 2, 0, text), k, v, bias, scale)
        out = ops.cat([text_out, out], 2)
    return out


def grouped_attention(ops: Ops, q, k, v, regrouping: Regrouping, g: Geometry, scale, bias=None) -> Any:
    """The attention of every kept head of a regrouped unit: q, k, v (B, H', N, d) hold at least the
    first `regrouping.kept` heads in regrouped order (`bias`: the model's additive key bias
    (B, 1, 1, N), or None); returns (B, kept, N, d)."""
    outputs, start = [], 0
    whole = len(regrouping.groups) == 1 and regrouping.kept == len(regrouping.order)
    for window, count in regrouping.groups:
        end = start + count
        part = [x if whole else ops.slice(x, 1, start, end) for x in (q, k, v)]
        if window is None:
            outputs.append(ops.sdpa(*part, bias, scale))
        else:
            outputs.append(windowed(ops, *part, g, count, window, scale, bias))
        start = end
    return outputs[0] if len(outputs) == 1 else ops.cat(outputs, 1)
