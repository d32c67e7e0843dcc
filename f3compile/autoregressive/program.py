"""CogVideo step programs: `prefill` and `decode_step` with a static key/value cache as named I/O,
pruned structurally, and the masking reference they must equal.

I/O names: `tokens` → `logits`, `present.*` (prefill, the caches filled); `token`, `position`,
`past.*` → `logits`, `new.*` (decode step): the caches are only read, and `new.X` is the token's
entry, which the runtime writes into cache X at its slot (`Session`, `slot_tables`) — so no
program copies a cache per token, only the new entries leave it.

Token index s runs over the whole sequence: text slots [0, T), then frame f's grid² tokens
[T + f·P, T + (f+1)·P). Per layer the programs carry two caches:

    base_kv.{l}  (B, 2, heads, T + P, head_dim)        text + the current frame (slot T + j)
    plus_kv.{l}  (B, 2, kept_heads, T + kept·P + 1, head_dim)
                 text + every kept frame's tokens, and one always-masked slot where tokens of
                 frames without a slot are written

A layer whose plus channel is dropped has no plus cache at all, so pruning frees cache memory.
Masks come from the token index alone: base keys are all the text and the query's own frame up to
the query (causal), plus keys every cached token up to the query.

Stage 2 (interpolation, `config.stage == 2`) keeps the caches and changes what is attended: the
prefill runs the text and three key frames (slots 0-2, times 0, 2, 4), whose base keys are their
whole frame and whose plus keys are the key frames' tokens in the same window of side `window`
after a cyclic shift of window // 2 on odd layers (windows wrap at the edges); a decode step
(slots 3-4, times 1 and 3) gathers from the plus cache only the text and the token's window in
every kept frame, cut at the frame's edges, up to itself — as the published code selects them.
Every frame slot of stage 2 uses the plus term.

Logits cover the image tokens
only (the published inference ties them to the first 20,000 rows of the word embeddings). The gate
σ(attn_distribution) mixes the two channels for frame tokens of frames ≥ 1 (stage 1; every frame in
stage 2); text and stage 1's first frame take the base term alone.

Pruning semantics (per layer l, the plus channel is the temporal unit):
  drop       frame tokens of frames ≥ 1 get σ(a)·dense(ctx_base) — the σ-scaled base term kept,
             as the published mixing leaves it — or, with `renormalise`, dense(ctx_base)
  heads      the pruned heads' rows of the plus query/key/value projection and columns of its
             output projection are deleted (= their context zeroed before dense_plus)
  frames     plus keys/values come only from the text and the kept frames
"""

from __future__ import annotations

from dataclasses import dataclass, field
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import F3Error
from ..models.cogvideo import CogVideoConfig, CogVideoTransformer

NEVER = 1 << 40  # token index of the dummy plus slot: no query ever reaches it


@dataclass(frozen=True)
class PlusPrune:
    """What is pruned in one layer's plus channel."""

    drop: bool = False  # the whole plus term removed for frame tokens
    pruned_heads: tuple[int, ...] = ()  # plus heads removed
    kept_frames: tuple[int, ...] | None = None  # frames whose tokens stay plus keys (None: all)


@dataclass(frozen=True)
class StepPrune:
    """Pruning of every layer (absent layers are dense) and how a dropped channel is replaced."""

    layers: dict[int, PlusPrune] = field(default_factory=dict)
    renormalise: bool = False  # dropped channel: dense(ctx_base) instead of σ(a)·dense(ctx_base)

    def of(self, layer: int) -> PlusPrune:
        return self.layers.get(layer, PlusPrune())

    @classmethod
    def from_stage(cls, stage, config: CogVideoConfig, renormalise: bool = False) -> "StepPrune":
        """From one stage of a `PruningPlan` whose unit ids are `mixins.attention_plus.N`."""
        from ..models.cogvideo import layer_of

        layers: dict[int, dict] = {}
        for unit in list(stage.drop_blocks) + list(stage.drop_attention):
            layers.setdefault(layer_of(unit), {})["drop"] = True
        for unit, heads in stage.prune_heads.items():
            layers.setdefault(layer_of(unit), {})["pruned_heads"] = tuple(sorted(int(h) for h in heads))
        for unit, frames in stage.keep_frames.items():
            layers.setdefault(layer_of(unit), {})["kept_frames"] = tuple(sorted(int(f) for f in frames))
        if getattr(stage, "reuse", None):
            raise F3Error("reuse plans do not apply to autoregressive models; plan with --granularity block, head or frame")
        prune = cls({layer: PlusPrune(**values) for layer, values in layers.items()}, renormalise)
        prune.check(config)
        return prune

    def check(self, config: CogVideoConfig) -> None:
        for layer, item in self.layers.items():
            if not 0 <= layer < config.num_layers:
                raise F3Error(f"layer {layer} is outside 0..{config.num_layers - 1}")
            if any(not 0 <= h < config.num_heads for h in item.pruned_heads) or len(set(item.pruned_heads)) != len(item.pruned_heads):
                raise F3Error(f"layer {layer}: pruned heads must be distinct heads of 0..{config.num_heads - 1}")
            if item.kept_frames is not None and any(not 0 <= f < config.frames for f in item.kept_frames):
                raise F3Error(f"layer {layer}: kept frames must lie in 0..{config.frames - 1}")

    def plus_layers(self, config: CogVideoConfig) -> list[int]:
        return [layer for layer in range(config.num_layers) if not self.of(layer).drop]


# ---------------------------------------------------------------------------------------------
# token-index tables (constants of a program)

def frame_of(config: CogVideoConfig) -> torch.Tensor:
    """(N,) frame of each token index; -1 for text."""
    s = torch.arange(config.sequence_length)
    return torch.where(s < config.text_length, -1, (s - config.text_length) // config.frame_tokens)


def position_ids(config: CogVideoConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(base_id, extra_id, use_extra), each (N,): text uses rows 0..T-1 of the base table, a frame
    at time 0 rows from `frame_position_offset`, a frame at time t >= 1 the extra table from row
    (t - 1)·P (a slot's time is `config.slot_times`: stage 2 stores frames out of time order)."""
    c = config
    s = torch.arange(c.sequence_length)
    frame = frame_of(c)
    time = torch.where(frame < 0, -1, torch.tensor(c.slot_times)[frame.clamp_min(0)])
    within = (s - c.text_length).clamp_min(0) % c.frame_tokens
    base_id = torch.where(frame < 0, s, c.frame_position_offset + within)
    use_extra = time >= 1
    extra_id = torch.where(use_extra, (time - 1).clamp_min(0) * c.frame_tokens + within, 0)
    return torch.where(use_extra, 0, base_id), extra_id, use_extra


def window_ids(config: CogVideoConfig, tokens: torch.Tensor, shift: int) -> torch.Tensor:
    """Stage 2, key frames: the window of each frame token index after the published cyclic shift
    (`torch.roll` by −shift, then windows of side `window`; cells that roll over an edge share a
    window with the opposite edge)."""
    c = config
    cell = (tokens - c.text_length).clamp_min(0) % c.frame_tokens
    row, column = cell // c.grid, cell % c.grid
    across = c.grid // c.window
    return ((row - shift) % c.grid // c.window) * across + (column - shift) % c.grid // c.window


def window_cells(config: CogVideoConfig, position: torch.Tensor, shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 2, one generated token: (cells (w²,), inside (w²,)) of the window around the token at
    `position` (1,), as the published decoding selects them: the shifted window is cut at the frame's
    edges (no wrap-around), so `inside` marks the cells that exist."""
    c = config
    cell = (position - c.text_length) % c.frame_tokens
    row, column = cell // c.grid, cell % c.grid
    offsets = torch.arange(c.window, device=position.device)
    rows = ((row + shift) // c.window) * c.window - shift + offsets  # (w,)
    columns = ((column + shift) // c.window) * c.window - shift + offsets
    inside = ((rows >= 0) & (rows < c.grid)).view(-1, 1) & ((columns >= 0) & (columns < c.grid)).view(1, -1)
    cells = rows.clamp(0, c.grid - 1).view(-1, 1) * c.grid + columns.clamp(0, c.grid - 1).view(1, -1)
    return cells.reshape(-1), inside.reshape(-1)


def plus_slots(config: CogVideoConfig, kept_frames: tuple[int, ...] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(slot_of_token (N,), token_of_slot (S,)) of a plus cache keeping `kept_frames`; tokens of
    other frames map to the last slot, whose token index is NEVER."""
    c = config
    kept = list(range(c.frames)) if kept_frames is None else sorted(kept_frames)
    size = c.text_length + len(kept) * c.frame_tokens + 1
    slot_of = torch.full((c.sequence_length,), size - 1, dtype=torch.int64)
    token_of = torch.full((size,), NEVER, dtype=torch.int64)
    slot_of[: c.text_length] = torch.arange(c.text_length)
    token_of[: c.text_length] = torch.arange(c.text_length)
    for rank, frame in enumerate(kept):
        start = c.text_length + frame * c.frame_tokens
        slots = c.text_length + rank * c.frame_tokens + torch.arange(c.frame_tokens)
        slot_of[start:start + c.frame_tokens] = slots
        token_of[slots] = torch.arange(start, start + c.frame_tokens)
    return slot_of, token_of


# ---------------------------------------------------------------------------------------------
# the programs

def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, n, width = x.shape  # (B, n, h·d) -> (B, h, n, d)
    return x.view(batch, n, heads, width // heads).transpose(1, 2)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ / sqrt(d)) v over keys where `valid` (n, S); q (B, h, n, d) -> (B, n, h·d)."""
    scores = torch.matmul(q, k.transpose(-1, -2)) / (q.shape[-1] ** 0.5)
    scores = scores.masked_fill(~valid, torch.finfo(scores.dtype).min)
    context = torch.matmul(torch.softmax(scores, dim=-1), v)
    batch, heads, n, dim = context.shape
    return context.transpose(1, 2).reshape(batch, n, heads * dim)


def _attend_appended(q: torch.Tensor, cache: torch.Tensor, new: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """`_attend` over the cache's slots followed by the new entries, without concatenating the
    cache (which would copy it every token): the scores are joined, the values summed in two parts.
    cache (B, 2, h, S, d), new (B, 2, h, n, d), valid (n, S + n)."""
    scale = q.shape[-1] ** 0.5
    slots = cache.shape[3]
    scores = torch.cat([torch.matmul(q, cache[:, 0].transpose(-1, -2)), torch.matmul(q, new[:, 0].transpose(-1, -2))], dim=-1) / scale
    probs = torch.softmax(scores.masked_fill(~valid, torch.finfo(scores.dtype).min), dim=-1)
    context = torch.matmul(probs[..., :slots], cache[:, 1]) + torch.matmul(probs[..., slots:], new[:, 1])
    batch, heads, n, dim = context.shape
    return context.transpose(1, 2).reshape(batch, n, heads * dim)


class _PlusWeights(nn.Module):
    """One layer's plus channel with pruned heads removed, and its cache tables."""

    def __init__(self, model: CogVideoTransformer, layer: int, item: PlusPrune):
        super().__init__()
        c = model.config
        qkv, dense, gate = model.plus(layer)
        kept = [h for h in range(c.num_heads) if h not in item.pruned_heads]
        d, width = c.head_dim, c.hidden_size
        columns = torch.cat([torch.arange(h * d, (h + 1) * d) for h in kept] + [torch.zeros(0, dtype=torch.int64)])
        rows = torch.cat([columns + part * width for part in range(3)])  # q, k, v are contiguous thirds
        self.heads = len(kept)
        self.qkv_weight = nn.Parameter(qkv.weight.detach()[rows].clone(), requires_grad=False)
        self.qkv_bias = nn.Parameter(qkv.bias.detach()[rows].clone(), requires_grad=False)
        self.dense_weight = nn.Parameter(dense.weight.detach()[:, columns].clone(), requires_grad=False)
        self.dense_bias = nn.Parameter(dense.bias.detach().clone(), requires_grad=False)
        slot_of, token_of = plus_slots(c, item.kept_frames)
        self.register_buffer("slot_of", slot_of)
        self.register_buffer("token_of", token_of)
        self.slots = int(token_of.shape[0]) if kept else 0  # every head pruned: no cache, the bias alone
        self.kept_frames = list(range(c.frames)) if item.kept_frames is None else sorted(item.kept_frames)
        self.shift = c.shift(layer)
        # keys one decode step attends over: the whole cache (stage 1), or the text and one window of
        # every kept frame (stage 2), and the token itself
        self.decode_keys = (self.slots if c.stage == 1 else c.text_length + len(self.kept_frames) * c.window ** 2 + 1) if kept else 0


class StepCore(nn.Module):
    """The layers of a (pruned) CogVideo run on a chunk of tokens against static caches."""

    def __init__(self, model: CogVideoTransformer, prune: StepPrune | None = None):
        super().__init__()
        prune = prune or StepPrune()
        prune.check(model.config)
        self.config = c = model.config
        self.prune = prune
        t = model.transformer
        self.word_embeddings = t.word_embeddings
        self.position_embeddings = t.position_embeddings
        self.extra_positions = model.mixins["extra_position_embedding"].position_embeddings
        self.layers = t.layers
        self.final_layernorm = t.final_layernorm
        self.gates = nn.ParameterList(nn.Parameter(model.plus(l)[2].detach().clone(), requires_grad=False)
                                      for l in range(c.num_layers))
        self.plus = nn.ModuleDict({str(l): _PlusWeights(model, l, prune.of(l)) for l in prune.plus_layers(c)})
        base_id, extra_id, use_extra = position_ids(c)
        for name, value in (("base_id", base_id), ("extra_id", extra_id), ("use_extra", use_extra), ("frame", frame_of(c))):
            self.register_buffer(name, value)

    # cache layout -----------------------------------------------------------------------------
    def cache_specs(self, batch: int) -> list[tuple[str, tuple[int, ...]]]:
        """Names and shapes of the caches, in I/O order."""
        c = self.config
        specs = [(f"base_kv.{l}", (batch, 2, c.num_heads, c.text_length + c.frame_tokens, c.head_dim))
                 for l in range(c.num_layers)]
        specs += [(f"plus_kv.{l}", (batch, 2, p.heads, p.slots, c.head_dim)) for l, p in
                  ((int(k), v) for k, v in self.plus.items()) if p.heads]
        return specs

    def cache_bytes(self, batch: int, dtype: torch.dtype = torch.float32) -> int:
        size = torch.empty((), dtype=dtype).element_size()
        return sum(size * int(torch.Size(shape).numel()) for _, shape in self.cache_specs(batch))

    # compute ----------------------------------------------------------------------------------
    def run(self, tokens: torch.Tensor, positions: torch.Tensor, caches: list[torch.Tensor],
            recorder=None, append: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """tokens (B, n) at token indices `positions` (n,) → (image logits of the last token (B, image_tokens), caches).

        Without `append` (prefill) the new keys/values are written into the caches, which come back
        whole. With `append` (one decode token) the caches are only read: attention runs over the
        cache's earlier slots and the new entry, and the new entries (B, 2, h, 1, d) come back for
        the caller to write at their slots (`slot_tables`) — no copy of the cache per token.
        `recorder(layer, probs, token_of, positions, context, weight, hidden, plus)` (calibration
        only, never exported) sees each plus channel's probabilities over its keys."""
        c = self.config
        T, P = c.text_length, c.frame_tokens
        hidden = self.word_embeddings(tokens)
        pos_base = self.position_embeddings(self.base_id[positions])
        pos_extra = self.extra_positions(self.extra_id[positions])
        hidden = hidden + torch.where(self.use_extra[positions].view(1, -1, 1), pos_extra, pos_base)
        frame = self.frame[positions]  # (n,)
        use_plus = (frame >= c.plus_from).view(1, -1, 1)
        within = (positions - T).clamp_min(0) % P
        base_slots = torch.where(positions < T, positions, T + within)  # (n,)
        if append:  # the cache's text, the current frame's earlier tokens, the token itself
            slot = torch.arange(T + P, device=tokens.device)
            earlier_in_frame = (slot - T).view(1, -1) < within.view(-1, 1)
            base_valid = (slot < T).view(1, -1) | ((slot >= T).view(1, -1) & (positions >= T).view(-1, 1) & earlier_in_frame)
            base_valid = torch.cat([base_valid, torch.ones((positions.shape[0], 1), dtype=torch.bool, device=tokens.device)], dim=1)
        else:  # prefill (positions 0..n-1): over its own tokens; key frames (stage 2) see all of their frame
            same_frame = (frame.view(1, -1) == frame.view(-1, 1)) & (frame.view(-1, 1) >= 0)
            forward = (positions.view(1, -1) <= positions.view(-1, 1)) | (frame.view(-1, 1) < c.given_frames)
            base_valid = (frame < 0).view(1, -1) | (same_frame & forward)
            n = tokens.shape[1]
            last = min(n, T + max(0, (n - 1 - T) // P) * P) if n > T else n  # the chunk's last frame starts here
            base_write = torch.cat([base_slots[:T], base_slots[last:]])  # text + last frame: what decoding reads
        heads = c.num_heads
        windows: dict = {}  # stage-2 decode: gather indices per (shift, kept frames), shared by the layers alike
        base_caches, plus_caches = caches[: c.num_layers], caches[c.num_layers:]
        new_base, new_plus, plus_index = [], [], 0
        for number, layer in enumerate(self.layers):
            x = layer.input_layernorm(hidden)
            q, k, v = layer.attention.query_key_value(x).chunk(3, dim=-1)
            kv = torch.stack([_heads(k, heads), _heads(v, heads)], dim=1)  # (B, 2, h, n, d)
            if append:
                new_base.append(kv)
                base_context = _attend_appended(_heads(q, heads), base_caches[number], kv, base_valid)
            else:
                new_base.append(base_caches[number].index_copy(
                    3, base_write, torch.cat([kv[:, :, :, :T], kv[:, :, :, last:]], dim=3)))
                base_context = _attend(_heads(q, heads), kv[:, 0], kv[:, 1], base_valid)
            base_out = layer.attention.dense(base_context)
            gate = torch.sigmoid(self.gates[number])
            plus = self.plus[str(number)] if str(number) in self.plus else None
            if plus is not None and not plus.heads:  # every head pruned: the output projection's bias remains
                mixed = gate * base_out + (1 - gate) * plus.dense_bias
            elif plus is not None:
                pq, pk, pv = F.linear(x, plus.qkv_weight, plus.qkv_bias).chunk(3, dim=-1)
                pkv = torch.stack([_heads(pk, plus.heads), _heads(pv, plus.heads)], dim=1)
                if append:
                    pkeys = plus_caches[plus_index]
                    kept_itself = (plus.slot_of[positions] < plus.slots - 1).view(-1, 1)  # its frame has slots
                    if c.stage == 2:  # the text and the token's window in every kept frame, gathered
                        index, token_of, valid = self._window_keys(plus, positions, windows)
                        pkeys = pkeys.index_select(3, index)
                    else:
                        token_of = torch.cat([plus.token_of, positions])
                        valid = plus.token_of.view(1, -1) < positions.view(-1, 1)
                    valid = torch.cat([valid, kept_itself], dim=1)
                    new_plus.append(pkv)
                    plus_context = _attend_appended(_heads(pq, plus.heads), pkeys, pkv, valid)
                else:
                    pkeys = plus_caches[plus_index].index_copy(3, plus.slot_of[positions], pkv)
                    token_of = plus.token_of
                    if c.stage == 2:  # key frames: the text and the same shifted window of the three frames
                        key_frame = (token_of >= T) & (token_of < c.prefill_length)
                        same = window_ids(c, token_of, plus.shift).view(1, -1) == window_ids(c, positions, plus.shift).view(-1, 1)
                        valid = (token_of < T).view(1, -1) | (key_frame.view(1, -1) & same & (positions >= T).view(-1, 1))
                    else:
                        valid = plus.token_of.view(1, -1) <= positions.view(-1, 1)
                    new_plus.append(pkeys)
                    plus_context = _attend(_heads(pq, plus.heads), pkeys[:, 0], pkeys[:, 1], valid)
                plus_index += 1
                plus_out = F.linear(plus_context, plus.dense_weight, plus.dense_bias)
                mixed = gate * base_out + (1 - gate) * plus_out
                if recorder is not None:
                    all_keys = torch.cat([pkeys[:, 0], pkv[:, 0]], dim=2) if append else pkeys[:, 0]
                    scores = torch.matmul(_heads(pq, plus.heads), all_keys.transpose(-1, -2)) / (c.head_dim ** 0.5)
                    probs = torch.softmax(scores.float().masked_fill(~valid, float("-inf")), dim=-1)
                    recorder(number, probs, token_of, positions, plus_context, (1 - gate), hidden, plus)
            else:
                mixed = base_out if self.prune.renormalise else gate * base_out
            out = torch.where(use_plus, mixed, base_out)
            hidden = hidden + layer.third_layernorm(out)
            y = layer.mlp.dense_4h_to_h(F.gelu(layer.mlp.dense_h_to_4h(layer.post_attention_layernorm(hidden)), approximate="tanh"))
            hidden = hidden + layer.fourth_layernorm(y)
        last = self.final_layernorm(hidden[:, -1])
        return F.linear(last, self.word_embeddings.weight[: c.image_tokens]), new_base + new_plus

    def _window_keys(self, plus: _PlusWeights, positions: torch.Tensor, windows: dict) -> tuple[torch.Tensor, ...]:
        """Stage-2 decode step of one plus channel: (cache slots to gather: the text, then the token's
        window in every kept frame; their token indices, with NEVER where masked, and the token itself;
        validity (1, slots + 1)). Computed once per (shift, kept frames) and step."""
        key = (plus.shift, tuple(plus.kept_frames))
        if key not in windows:
            c = self.config
            T, P = c.text_length, c.frame_tokens
            cells, inside = window_cells(c, positions, plus.shift)
            window = torch.cat([T + g * P + cells for g in plus.kept_frames])
            window_valid = inside.repeat(len(plus.kept_frames)) & (window < positions)
            text_slots = torch.arange(T, device=positions.device)
            windows[key] = (torch.cat([text_slots, plus.slot_of[window]]),
                            torch.cat([text_slots, torch.where(window_valid, window, NEVER), positions]),
                            torch.cat([torch.ones_like(text_slots, dtype=torch.bool), window_valid]).view(1, -1))
        return windows[key]

    def slot_tables(self) -> list[torch.Tensor]:
        """Per cache (I/O order), the slot (N,) where each token index's entry is written."""
        return slot_tables(self.config, self.cache_layout(1))

    def cache_layout(self, batch: int) -> list[dict]:
        """Per cache (I/O order): name, shape, channel and (plus) the frames with slots."""
        out = []
        for name, shape in self.cache_specs(batch):
            layer = name.split(".")[1]
            kept = self.prune.of(int(layer)).kept_frames if name.startswith("plus") else None
            out.append({"name": name, "shape": list(shape), "channel": name.split("_")[0],
                        "kept_frames": None if kept is None else list(kept)})
        return out


def slot_tables(config: CogVideoConfig, layout: list[dict]) -> list[torch.Tensor]:
    """Per cache of `layout` (`cache_layout`, or a manifest's), the slot (N,) of every token index:
    base caches hold the text and the current frame (T + j), plus caches the text and their kept
    frames (other frames' entries go to the always-masked last slot)."""
    c = config
    s = torch.arange(c.sequence_length)
    base = torch.where(s < c.text_length, s, c.text_length + (s - c.text_length).clamp_min(0) % c.frame_tokens)
    return [base if spec["channel"] == "base" else
            plus_slots(c, None if spec["kept_frames"] is None else tuple(spec["kept_frames"]))[0] for spec in layout]


class Session:
    """The caches of one generation: `start` runs the prefill, each `step` runs one decode token and
    writes its new entries into the caches at their slots, in place (the runtime's job, so that
    no program copies a cache per token)."""

    def __init__(self, prefill, decode, tables: list[torch.Tensor]):
        self.prefill, self.decode, self.tables = prefill, decode, tables
        self.caches: list[torch.Tensor] = []

    def start(self, tokens: torch.Tensor) -> torch.Tensor:
        outputs = self.prefill(tokens)
        self.caches = [torch.as_tensor(o).clone() for o in outputs[1:]]
        return outputs[0]

    def step(self, token: torch.Tensor, position: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(logits, new entries) of the token at index `position`."""
        outputs = self.decode(token, torch.tensor([position], device=token.device), *self.caches)
        new = list(outputs[1:])
        for cache, entry, table in zip(self.caches, new, self.tables):
            cache[:, :, :, int(table[position])] = torch.as_tensor(entry)[:, :, :, 0].to(cache.device)
        return outputs[0], new


class PrefillProgram(nn.Module):
    """`prefill(tokens (B, n)) -> (logits (B, V), *caches)`: the first n tokens (text slots and the
    first frame's `<start_of_image>`), caches created inside."""

    def __init__(self, core: StepCore, batch: int, length: int | None = None):
        super().__init__()
        self.core, self.batch = core, batch
        self.length = length or core.config.prefill_length

    def forward(self, tokens: torch.Tensor):
        specs = self.core.cache_specs(tokens.shape[0])
        caches = [torch.zeros(shape, dtype=self.core.word_embeddings.weight.dtype, device=tokens.device) for _, shape in specs]
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        logits, caches = self.core.run(tokens, positions, caches)
        return (logits, *caches)

    def example_inputs(self) -> tuple[torch.Tensor]:
        c = self.core.config
        return (torch.full((self.batch, self.length), c.pad_token, dtype=torch.int64),)

    def input_names(self) -> list[str]:
        return ["tokens"]

    def output_names(self) -> list[str]:
        return ["logits"] + [f"present.{name}" for name, _ in self.core.cache_specs(self.batch)]


class DecodeProgram(nn.Module):
    """`decode_step(token (B, 1), position (1,), *past) -> (logits (B, image_tokens), *new)`: the caches
    are read only; `new.X` (B, 2, h, 1, d) is the token's entry for cache X, which the caller
    writes at its slot (`Session`)."""

    def __init__(self, core: StepCore, batch: int):
        super().__init__()
        self.core, self.batch = core, batch

    def forward(self, token: torch.Tensor, position: torch.Tensor, *caches: torch.Tensor):
        logits, new = self.core.run(token, position, list(caches), append=True)
        return (logits, *new)

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        c = self.core.config
        dtype = self.core.word_embeddings.weight.dtype
        caches = tuple(torch.zeros(shape, dtype=dtype) for _, shape in self.core.cache_specs(self.batch))
        return (torch.full((self.batch, 1), c.start_of_image, dtype=torch.int64),
                torch.tensor([c.prefill_length], dtype=torch.int64), *caches)

    def input_names(self) -> list[str]:
        return ["token", "position"] + [f"past.{name}" for name, _ in self.core.cache_specs(self.batch)]

    def output_names(self) -> list[str]:
        return ["logits"] + [f"new.{name}" for name, _ in self.core.cache_specs(self.batch)]


def programs(model: CogVideoTransformer, prune: StepPrune | None = None, batch: int = 1) -> tuple[PrefillProgram, DecodeProgram]:
    core = StepCore(model, prune).eval()
    return PrefillProgram(core, batch).eval(), DecodeProgram(core, batch).eval()


# ---------------------------------------------------------------------------------------------
# the masking reference: dense weights, the whole sequence at once, pruning as masks

@torch.no_grad()
def reference_logits(model: CogVideoTransformer, tokens: torch.Tensor, prune: StepPrune | None = None,
                     record=None) -> torch.Tensor:
    """(B, n, image_tokens) logits of every position of `tokens` (B, n) by teacher forcing, with no cache:
    a dropped channel multiplies its plus term by 0 (and, with `renormalise`, divides the base
    term's gate out), pruned heads' plus context is zeroed, and plus keys of frames that are not
    kept are masked out."""
    prune = prune or StepPrune()
    c, t = model.config, model.transformer
    n = tokens.shape[1]
    s = torch.arange(n)
    frame = torch.where(s < c.text_length, -1, (s - c.text_length) // c.frame_tokens)
    within = (s - c.text_length).clamp_min(0) % c.frame_tokens
    extra = model.mixins["extra_position_embedding"].position_embeddings.weight
    time = [c.slot_times[int(f)] if f >= 0 else -1 for f in frame]
    positions = torch.stack([
        t.position_embeddings.weight[int(s_)] if frame[s_] < 0 else
        t.position_embeddings.weight[c.frame_position_offset + int(within[s_])] if time[s_] == 0 else
        extra[(time[s_] - 1) * c.frame_tokens + int(within[s_])]
        for s_ in range(n)])
    hidden = t.word_embeddings.weight[tokens] + positions
    causal = s.view(1, -1) <= s.view(-1, 1)
    key_frame_query = (frame < c.given_frames).view(-1, 1)  # stage 2: key frames see all of their frame
    base_mask = (frame.view(1, -1) < 0) | ((causal | key_frame_query) & (frame.view(1, -1) == frame.view(-1, 1))
                                           & (frame >= 0).view(-1, 1))
    frame_query = (frame >= c.plus_from).view(1, -1, 1)
    d, heads = c.head_dim, c.num_heads

    def attention(x, weight, bias, mask, zero_heads=(), channel="", number=0):
        q, k, v = F.linear(x, weight, bias).split(c.hidden_size, dim=-1)
        q, k, v = (y.view(y.shape[0], n, heads, d).transpose(1, 2) for y in (q, k, v))
        scores = (q @ k.transpose(-1, -2)) / d ** 0.5
        probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        if record is not None:
            record(channel, number, probs)
        context = probs @ v  # (B, h, n, d)
        if zero_heads:
            keep = torch.ones(heads)
            keep[list(zero_heads)] = 0
            context = context * keep.view(1, -1, 1, 1)
        return context.transpose(1, 2).reshape(x.shape[0], n, c.hidden_size)

    for number, layer in enumerate(t.layers):
        item = prune.of(number)
        x = layer.input_layernorm(hidden)
        base = layer.attention.dense(attention(x, layer.attention.query_key_value.weight, layer.attention.query_key_value.bias, base_mask,
                                               channel="base", number=number))
        qkv, dense, gate = model.plus(number)
        gate = torch.sigmoid(gate)
        kept = torch.ones(n, dtype=torch.bool) if item.kept_frames is None else (
            (frame < 0) | torch.isin(frame, torch.tensor(list(item.kept_frames), dtype=torch.int64)))
        plus_mask = causal if c.stage == 1 else stage2_plus_mask(c, number, n)
        plus = dense(attention(x, qkv.weight, qkv.bias, plus_mask & kept.view(1, -1), item.pruned_heads,
                               channel="plus", number=number))
        plus_weight = 0.0 if item.drop else 1.0
        base_weight = 1.0 if (item.drop and prune.renormalise) else gate
        mixed = base_weight * base + plus_weight * (1 - gate) * plus
        out = torch.where(frame_query, mixed, base)
        hidden = hidden + layer.third_layernorm(out)
        y = layer.mlp.dense_4h_to_h(F.gelu(layer.mlp.dense_h_to_4h(layer.post_attention_layernorm(hidden)), approximate="tanh"))
        hidden = hidden + layer.fourth_layernorm(y)
    return F.linear(t.final_layernorm(hidden), t.word_embeddings.weight[: c.image_tokens])


def stage2_plus_mask(config: CogVideoConfig, layer: int, n: int) -> torch.Tensor:
    """(n, n) keys of the stage-2 plus channel of `layer` for the first n token indices, written
    after the published code one query at a time: text sees the text; a key-frame token (slots
    0-2, run at once) the text and the three key frames' tokens in its window of the grid rolled by
    −shift (windows wrap around the edges); a generated token the text, its window cut at the edges
    in every earlier frame slot, and the cells of that window in its own slot up to itself."""
    c = config
    T, P, R, w, shift = c.text_length, c.frame_tokens, c.grid, c.window, c.shift(layer)
    mask = torch.zeros((n, n), dtype=torch.bool)
    mask[:, : min(T, n)] = True
    for query in range(T, n):
        f, cell = divmod(query - T, P)
        x, y = divmod(cell, R)
        if f < c.given_frames:
            for key in range(T, min(n, T + c.given_frames * P)):
                kx, ky = divmod((key - T) % P, R)
                if ((x - shift) % R) // w == ((kx - shift) % R) // w and ((y - shift) % R) // w == ((ky - shift) % R) // w:
                    mask[query, key] = True
            continue
        x0, y0 = (x + shift) // w * w - shift, (y + shift) // w * w - shift
        rows, columns = range(max(0, x0), min(R, x0 + w)), range(max(0, y0), min(R, y0 + w))
        for g in range(f + 1):
            for kx in rows:
                for ky in columns:
                    key = T + g * P + kx * R + ky
                    if key <= query:
                        mask[query, key] = True
    return mask


def run_teacher_forced(prefill: PrefillProgram, decode: DecodeProgram, tokens: torch.Tensor) -> torch.Tensor:
    """(B, n - prefill.length + 1, image_tokens): the programs' logits at every position from the
    prefill's last one on, feeding `tokens` (the test harness of the programs)."""
    session = Session(prefill, decode, prefill.core.slot_tables())
    logits = [session.start(tokens[:, : prefill.length])]
    for index in range(prefill.length, tokens.shape[1]):
        logits.append(session.step(tokens[:, index:index + 1], index)[0])
    return torch.stack(logits, dim=1)
