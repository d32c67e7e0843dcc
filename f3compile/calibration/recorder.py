"""Observe temporal attention without changing it.

`AttentionRecorder` only registers forward hooks that *read* tensors: the q/k/v projections'
outputs, the attention's output, the norm in front of it (the residual input) and the enclosing
block's input and output. The attention probabilities are recomputed from q and k in fp32
(SDPA never exposes them), so the model's own computation is untouched and its outputs are
bit-identical with and without recording.

Per unit and denoising step it accumulates:
  attn        (S, H, F, F)  sum over calls, batch rows (prompts, CFG halves, spatial positions)
                            of softmax(q kᵀ / sqrt(d)); each row sums to `rows`
  rows        (S,)          number of summed rows per (head, query frame)
  branch      (S,)          sum over calls of ‖attention output‖ / ‖residual input‖
  head_branch (S, H)        same per head: ‖o_h W_out[:, h]ᵀ‖ / ‖residual input‖
  calls       (S,)
and per block:
  ratio        (S,)  Σ ‖block output − block input‖ / ‖block input‖ (for an attention that is its
                     own block: its branch ratio, what dropping it removes)
  calls        (S,)
  change       (S,)  Σ ‖r_s − r_{s−1}‖ / ‖r_{s−1}‖ over sampling loops, r = the block's residual
                     (output − input; an attention that is its own block: its output), compared
                     with the same block's residual at the previous step of the same loop; 0 at step 0
  change_calls (S,)  number of comparisons summed into `change` (none at step 0)

`change` needs each block's residual from the previous step. Kept whole ("exact") that is one full
activation per block. By default ("sketch") the recorder keeps a random projection instead: the
residual's rows along its last dimension L (channels in a transformer block) are sign-flipped by one
of k random sign patterns (row i by pattern i mod k) and projected onto k = `SKETCH_WIDTH` orthonormal
random directions scaled by √(L/k), the same for every block and step, so ‖sketch(a) − sketch(b)‖
estimates ‖a − b‖ (Johnson–Lindenstrauss; exact when L ≤ k). The sign patterns keep a change that
every row shares (a timestep shift of all tokens) from being estimated by a single projection. The
stored sketch is k/L of the residual, and the residual is formed a chunk of rows at a time, so the
statistic adds no full-size fp32 copy. "off" records no change (plans then take no reuse).

Spatiotemporal units (full 3-D attention) are read at their attention kernel instead: while such a
unit runs, a torch-function mode passes `scaled_dot_product_attention` through untouched and hands
its q and k (after norms and rotary embeddings), its key mask if it has one (HunyuanVideo 1.5's
padded text keys) and its output to the recorder. The probabilities
are recomputed for all heads and batch rows at once, a chunk of query rows at a time in fp32, the chunk
sized so its probabilities stay within `chunk_bytes` (never the N×N matrix), for the video queries of
the sampled spatial positions (`query_fraction`) of every frame; the sums stay on the device (float64)
and finiteness is checked once per call, so nothing waits on the host per chunk:
  attn        (S, H, F, F)  Σ over calls, batch rows and recorded queries of frame f of the mass on
                            the keys of frame g
  text        (S, H, F)     the same for the mass on text keys (units with a text block)
  rows        (S,)          recorded queries per (head, query frame)
and `branch`/`head_branch` from the kernel output as above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import F3Error
from ..models.base import TemporalBlock, TemporalUnit
from ..models.kernels import KernelCalls

CHANGE_MODES = ("sketch", "exact", "off")
SKETCH_WIDTH = 96  # directions per residual row kept by the "sketch" residual-change statistic
_CHUNK_BYTES = 64 * 2**20  # fp32 probabilities of one chunk of recorded queries, all heads and batch rows


def sketch_basis(length: int, width: int, device, seed: int = 0) -> torch.Tensor:
    """(length, width) orthonormal random columns scaled by √(length / width): x ↦ x @ basis keeps
    ‖x‖ in expectation. Seeded, so every block and step projects with the same basis."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + length)
    gaussian = torch.randn(length, width, generator=generator, dtype=torch.float64)
    basis, _ = torch.linalg.qr(gaussian)
    return (basis * (length / width) ** 0.5).to(device=device, dtype=torch.float32)


@dataclass
class _UnitState:
    unit: TemporalUnit
    attn: torch.Tensor
    rows: torch.Tensor
    branch: torch.Tensor
    head_branch: torch.Tensor
    calls: torch.Tensor
    captured: dict = field(default_factory=dict)


def sampled_positions(tokens: int, fraction: float, seed: int, unit_id: str) -> torch.Tensor:
    """The spatial positions (sorted) whose queries are recorded in every frame: all of them at
    fraction 1, else round(fraction × tokens) (at least one) drawn from `seed` and the unit id."""
    if fraction >= 1.0:
        return torch.arange(tokens)
    import hashlib

    count = max(1, round(fraction * tokens))
    digest = hashlib.sha256(f"{seed}|{unit_id}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
    return torch.randperm(tokens, generator=generator)[:count].sort().values


@dataclass
class _Residuals:
    """A block's residuals (fp32, detached) at one denoising step, in call order."""

    step: int = -1
    tensors: list = field(default_factory=list)


class AttentionRecorder:
    """Collects per-step temporal attention statistics while attached to a denoiser."""

    def __init__(self, denoiser: nn.Module, units: list[TemporalUnit], blocks: list[TemporalBlock], steps: int,
                 query_fraction: float = 1.0, seed: int = 0, query_chunk: int = 1024, change: str = "sketch",
                 sketch_width: int = SKETCH_WIDTH, chunk_bytes: int = _CHUNK_BYTES):
        if change not in CHANGE_MODES:
            raise F3Error(f"residual change {change!r} is unknown; use one of {', '.join(CHANGE_MODES)}")
        self.denoiser = denoiser
        self.units = units
        self.blocks = blocks
        self.steps = steps
        self.step = 0
        self.query_fraction, self.seed, self.query_chunk = query_fraction, seed, query_chunk
        self.change, self.sketch_width, self.chunk_bytes = change, sketch_width, chunk_bytes
        self._bases: dict = {}
        self._handles: list = []
        self._modes: list = []
        self.reset()

    # -- lifecycle ---------------------------------------------------------------------------
    def reset(self) -> None:
        steps = self.steps
        self._state = {
            unit.id: _UnitState(
                unit=unit,
                attn=torch.zeros(steps, unit.heads, unit.frames, unit.frames),
                rows=torch.zeros(steps),
                branch=torch.zeros(steps),
                head_branch=torch.zeros(steps, unit.heads),
                calls=torch.zeros(steps),
            )
            for unit in self.units
        }
        self._text = {unit.id: torch.zeros(steps, unit.heads, unit.frames) for unit in self.units if unit.text_tokens}
        self._block_ratio = {block.id: torch.zeros(steps) for block in self.blocks}
        self._block_calls = {block.id: torch.zeros(steps) for block in self.blocks}
        self._change = {block.id: torch.zeros(steps) for block in self.blocks}
        self._change_calls = {block.id: torch.zeros(steps) for block in self.blocks}
        self._forget_residuals()

    def clear(self) -> None:
        """Zero every sum in place (the hooks hold the tensors) and forget the residuals: what one
        batch of prompts recorded has been taken (`tensors`), the next starts from nothing."""
        for state in self._state.values():
            for tensor in (state.attn, state.rows, state.branch, state.head_branch, state.calls):
                tensor.zero_()
        for table in (self._text, self._block_ratio, self._block_calls, self._change, self._change_calls):
            for tensor in table.values():
                tensor.zero_()
        self._forget_residuals()

    def _forget_residuals(self) -> None:
        self._current = {block.id: _Residuals() for block in self.blocks}  # this step's residuals
        self._previous = {block.id: _Residuals() for block in self.blocks}  # the step before it

    def __enter__(self) -> "AttentionRecorder":
        self.attach()
        return self

    def __exit__(self, *exc) -> None:
        self.detach()

    def attach(self) -> None:
        modules = dict(self.denoiser.named_modules())
        for unit in self.units:
            attention = modules[unit.id]
            state = self._state[unit.id]
            if unit.spatiotemporal:
                self._attach_kernel(state, attention, modules)
                continue
            for name in ("to_q", "to_k", "to_v"):
                self._handles.append(getattr(attention, name).register_forward_hook(self._capture(state, name)))
            parent_name, _, attr = unit.id.rpartition(".")
            norm = getattr(modules.get(parent_name), attr.replace("attn", "norm"), None) if attr.startswith("attn") else None
            if isinstance(norm, nn.Module):
                self._handles.append(norm.register_forward_hook(self._capture_residual(state)))
            self._handles.append(attention.register_forward_hook(self._record(state, attention), with_kwargs=True))
        for block in self.blocks:
            if block.id in self._state:  # an attention that is its own block: its branch ratio (below)
                continue
            self._handles.append(modules[block.id].register_forward_hook(self._record_block(block.id), with_kwargs=True))

    def detach(self) -> None:
        while self._modes:  # a forward that raised inside a unit left its mode entered
            self._modes.pop().__exit__(None, None, None)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._forget_residuals()  # kept only to compare consecutive steps while attached

    # -- hooks -------------------------------------------------------------------------------
    @staticmethod
    def _capture(state: _UnitState, name: str):
        def hook(module, args, output):
            state.captured[name] = output.detach()
        return hook

    @staticmethod
    def _capture_residual(state: _UnitState):
        def hook(module, args, output):
            state.captured["residual"] = args[0].detach()
        return hook

    def _record(self, state: _UnitState, attention: nn.Module):
        unit = state.unit

        def hook(module, args, kwargs, output):
            captured = state.captured
            q, k, v = captured.pop("to_q"), captured.pop("to_k"), captured.pop("to_v")
            residual = captured.pop("residual", None)
            if residual is None:
                residual = args[0] if args else kwargs["hidden_states"]
            rows, frames = q.shape[0], q.shape[1]
            # (N, F, H*d) -> (N, H, F, d) in fp32
            def heads(x):
                return x.float().reshape(rows, frames, unit.heads, unit.head_dim).transpose(1, 2)
            q_h, k_h, v_h = heads(q), heads(k), heads(v)
            if getattr(attention, "norm_q", None) is not None:
                q_h = attention.norm_q(q_h)
            if getattr(attention, "norm_k", None) is not None:
                k_h = attention.norm_k(k_h)
            probs = torch.softmax(q_h @ k_h.transpose(-1, -2) * unit.head_dim ** -0.5, dim=-1)  # (N, H, F, F)
            if not torch.isfinite(probs).all():
                raise F3Error(f"calibration saw NaN/inf attention in {unit.id}; check the model weights and inputs")
            step = self.step
            state.attn[step] += probs.sum(dim=0).cpu()
            state.rows[step] += rows
            residual_norm = residual.float().norm().clamp_min(1e-12)
            state.branch[step] += (output.float().norm() / residual_norm).item()
            # per-head contribution through the output projection: (N, H, F, d) @ (H, d, C)
            weight = attention.to_out[0].weight.float()  # (C, H*d)
            per_head_out = probs @ v_h
            w_heads = weight.reshape(weight.shape[0], unit.heads, unit.head_dim).permute(1, 2, 0)
            contribution = torch.einsum("nhfd,hdc->nhfc", per_head_out, w_heads)
            state.head_branch[step] += (contribution.pow(2).sum(dim=(0, 2, 3)).sqrt() / residual_norm).cpu()
            state.calls[step] += 1
            if unit.block == unit.id and unit.id in self._current:  # its own block: the residual is its output
                self._record_change(unit.id, output.detach())

        return hook

    def _attach_kernel(self, state: _UnitState, attention: nn.Module, modules: dict) -> None:
        unit = state.unit
        positions = sampled_positions(unit.tokens, self.query_fraction, self.seed, unit.id)
        # recorded query rows of the sequence, frame by frame, and the frame of each
        rows = torch.cat([unit.text_tokens + frame * unit.tokens + positions for frame in range(unit.frames)])
        frame_of = torch.arange(unit.frames).repeat_interleave(len(positions))
        parent_name, _, attr = unit.id.rpartition(".")
        norm = getattr(modules.get(parent_name), attr.replace("attn", "norm"), None) if attr.startswith("attn") else None
        if isinstance(norm, nn.Module):
            self._handles.append(norm.register_forward_hook(self._capture_residual(state)))

        def on_kernel(arguments, out):
            self._record_kernel(state, attention, arguments["query"], arguments["key"], arguments.get("scale"), out,
                                rows, frame_of, arguments.get("attn_mask"))

        def enter(module, args):
            mode = KernelCalls(after=on_kernel)
            mode.__enter__()
            self._modes.append(mode)

        def leave(module, args, output):
            self._modes.pop().__exit__(None, None, None)
            state.captured.clear()

        self._handles.append(attention.register_forward_pre_hook(enter))
        self._handles.append(attention.register_forward_hook(leave))

    @torch.no_grad()
    def _record_kernel(self, state: _UnitState, attention: nn.Module, query, key, scale, out, rows, frame_of,
                       mask=None) -> None:
        unit, step = state.unit, self.step
        if query.ndim != 4 or query.shape[1] != unit.heads or query.shape[2] != unit.sequence:
            raise F3Error(f"{unit.id} ran an attention kernel on {tuple(query.shape)}, not (B, {unit.heads}, "
                          f"{unit.sequence}, d); calibrate at the shapes it was discovered at")
        bias = None  # a key bias (HunyuanVideo 1.5's padded text: additive, (B, 1, 1, N)) goes with the keys
        if mask is not None:
            if mask.dtype == torch.bool or mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[2] != 1:
                raise F3Error(f"{unit.id} ran its attention kernel with a {tuple(mask.shape)} {mask.dtype} mask; the "
                              "recorder reads kernels without a mask or with an additive key bias (B, 1, 1, N)")
            bias = mask.float()
        scale = unit.head_dim ** -0.5 if scale is None else scale
        text, frames, tokens = unit.text_tokens, unit.frames, unit.tokens
        rows = rows.to(query.device)
        batch, heads, sequence = query.shape[0], query.shape[1], query.shape[2]
        # (R, F) one-hot of each recorded query's frame: per-frame sums as a product, which is deterministic
        # on CUDA too (index_add_ there adds with atomics, in no fixed order)
        select = torch.nn.functional.one_hot(frame_of, frames).to(query.device, torch.float64)
        attn = torch.zeros(heads, frames, frames, dtype=torch.float64, device=query.device)
        text_mass = torch.zeros(heads, frames, dtype=torch.float64, device=query.device)
        finite = torch.ones((), dtype=torch.bool, device=query.device)
        keys = key.float()  # (B, H, N, d)
        chunk = max(1, min(self.query_chunk, self.chunk_bytes // (4 * batch * heads * sequence)))
        for start in range(0, len(rows), chunk):  # (B, H, c, N) at a time, never N x N
            where = select[start:start + chunk]  # (c, F)
            queries = query.index_select(2, rows[start:start + chunk]).float()
            scores = queries @ keys.transpose(-1, -2) * scale
            probs = torch.softmax(scores if bias is None else scores + bias, dim=-1)
            finite &= torch.isfinite(probs).all()
            per_frame = probs[..., text:].unflatten(-1, (frames, tokens)).sum(-1).double()  # (B, H, c, F)
            attn += torch.einsum("cf,bhcg->hfg", where, per_frame)
            if text:
                text_mass += torch.einsum("cf,bhc->hf", where, probs[..., :text].sum(-1).double())
            del probs, per_frame
        if not bool(finite):
            raise F3Error(f"calibration saw NaN/inf attention in {unit.id}; check the model weights and inputs")
        state.attn[step] += attn.float().cpu()
        if text:
            self._text[unit.id][step] += text_mass.float().cpu()
        state.rows[step] += query.shape[0] * len(rows) // frames
        residual = state.captured.pop("residual", None)
        if residual is not None:  # ‖branch‖ / ‖residual input‖, per head through the output projection
            residual_norm = residual.float().norm().clamp_min(1e-12)
            projection = attention.to_out[0]
            full = projection(out.transpose(1, 2).flatten(2).to(projection.weight.dtype)).float()
            state.branch[step] += float(full.norm() / residual_norm)
            # per head ‖o_h W_hᵀ‖ through W_h's d×d Gram matrix: ‖o_h W_hᵀ‖² = Σ_rows o_h (W_hᵀ W_h) o_hᵀ,
            # one (B, H, N, d) product instead of H products of (B, N, C)
            weight = projection.weight.float()  # (C, H·d)
            d = unit.head_dim
            per_head = weight.unflatten(1, (unit.heads, d)).permute(1, 0, 2)  # (H, C, d)
            gram = per_head.transpose(1, 2) @ per_head  # (H, d, d)
            values = out.float()  # (B, H, N, d)
            squares = ((values @ gram.unsqueeze(0)) * values).sum(dim=(0, 2, 3), dtype=torch.float64)
            state.head_branch[step] += (squares.clamp_min(0).sqrt() / residual_norm).float().cpu()
        state.calls[step] += 1

    def _record_block(self, block_id: str):
        def hook(module, args, kwargs, output):
            hidden = args[0] if args else kwargs.get("hidden_states")
            out = output[0] if isinstance(output, (tuple, list)) else getattr(output, "sample", output)
            hidden, out = hidden.detach(), out.detach()
            length = out.shape[-1] if out.ndim else 1
            flat_in, flat_out = hidden.reshape(-1, length), out.reshape(-1, length)
            squares = torch.zeros(2, dtype=torch.float64, device=out.device)  # ‖residual‖², ‖input‖²
            kept, step = [], self._rows(length)
            for start in range(0, flat_out.shape[0], step):  # fp32 a chunk of rows at a time
                rows = flat_in[start:start + step].float()
                residual = flat_out[start:start + step].float() - rows  # a new tensor: kept as it is
                squares += torch.stack([residual.square().sum(dtype=torch.float64), rows.square().sum(dtype=torch.float64)])
                if self.change != "off":
                    kept.append(self._kept_rows(residual, start))
                del rows, residual
            ratio = float(squares[0].sqrt() / squares[1].sqrt().clamp_min(1e-12))
            if not math.isfinite(ratio):
                raise F3Error(f"calibration saw NaN/inf in block {block_id}; check the model weights and inputs")
            self._block_ratio[block_id][self.step] += ratio
            self._block_calls[block_id][self.step] += 1
            if kept:
                self._record_change(block_id, torch.cat(kept) if len(kept) > 1 else kept[0], kept=True)

        return hook

    def _rows(self, length: int) -> int:
        """Rows of a residual handled at once: about 64 MiB of fp32."""
        return max(1, (64 * 2**20) // (4 * length))

    def _kept_rows(self, rows: torch.Tensor, start: int) -> torch.Tensor:
        """What is kept until the next step of residual rows `start`, `start + 1`, … (a new fp32 (r, L)
        tensor the caller no longer uses): the rows themselves ("exact", or rows no longer than the
        sketch) or their sketch (r, k). Row i is flipped
        by sign pattern i mod k before the shared basis, so directions common to many rows (a shift
        every token shares) are estimated from k independent projections, not one."""
        length = rows.shape[-1]
        if self.change == "exact" or length <= self.sketch_width:
            return rows
        key = (length, rows.device)
        found = self._bases.get(key)
        if found is None:
            basis = sketch_basis(length, self.sketch_width, rows.device, self.seed)
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + length + 1)
            signs = torch.randint(0, 2, (self.sketch_width, length), generator=generator).float().mul_(2).sub_(1)
            found = self._bases[key] = (basis, signs.to(rows.device))
        basis, signs = found
        pattern = torch.arange(start, start + rows.shape[0], device=rows.device) % self.sketch_width
        return (rows * signs.index_select(0, pattern)) @ basis

    def _kept(self, residual: torch.Tensor) -> torch.Tensor:
        """`_kept_rows` of a whole residual, a chunk of rows at a time."""
        length = residual.shape[-1] if residual.ndim else 1
        flat = residual.reshape(-1, length)
        step = self._rows(length)
        parts = [self._kept_rows(flat[start:start + step].to(torch.float32, copy=True), start)
                 for start in range(0, flat.shape[0], step)]
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def _record_change(self, block_id: str, residual: torch.Tensor, kept: bool = False) -> None:
        """Compare `residual` with the block's residual from the same call of the previous step (what
        `_kept` keeps of each: the comparison runs on two sketches or two exact copies; `kept`: it
        already is what `_kept` keeps).

        Only a residual recorded at `self.step - 1` counts: a new sampling loop starts again at
        step 0, so the last step of one loop is never compared with the first of the next.
        """
        if self.change == "off":
            return
        if not kept:
            residual = self._kept(residual)
        step, current = self.step, self._current[block_id]
        if current.step != step:  # the first call of a new step
            self._previous[block_id] = current if current.step == step - 1 else _Residuals()
            current = self._current[block_id] = _Residuals(step=step)
        previous, index = self._previous[block_id], len(current.tensors)
        if index < len(previous.tensors) and previous.tensors[index].shape == residual.shape:
            before = previous.tensors[index]
            change = (residual - before).norm() / before.norm().clamp_min(1e-12)
            if not torch.isfinite(change):
                raise F3Error(f"calibration saw NaN/inf in block {block_id}; check the model weights and inputs")
            self._change[block_id][step] += change.item()
            self._change_calls[block_id][step] += 1
            previous.tensors[index] = None  # compared once; free it
        current.tensors.append(residual)

    # -- results -----------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        """All statistics as a flat dict of fp32 tensors (the layout of stats.safetensors)."""
        out: dict[str, torch.Tensor] = {}
        for unit_id, state in self._state.items():
            out[f"unit/{unit_id}/attn"] = state.attn.clone()
            out[f"unit/{unit_id}/rows"] = state.rows.clone()
            out[f"unit/{unit_id}/branch"] = state.branch.clone()
            out[f"unit/{unit_id}/head_branch"] = state.head_branch.clone()
            out[f"unit/{unit_id}/calls"] = state.calls.clone()
            if unit_id in self._text:
                out[f"unit/{unit_id}/text"] = self._text[unit_id].clone()
        for block_id in self._block_ratio:
            if block_id in self._state:  # dropping it removes the residual branch: ‖branch‖ / ‖residual input‖
                out[f"block/{block_id}/ratio"] = self._state[block_id].branch.clone()
                out[f"block/{block_id}/calls"] = self._state[block_id].calls.clone()
            else:
                out[f"block/{block_id}/ratio"] = self._block_ratio[block_id].clone()
                out[f"block/{block_id}/calls"] = self._block_calls[block_id].clone()
            if self.change != "off":
                out[f"block/{block_id}/change"] = self._change[block_id].clone()
                out[f"block/{block_id}/change_calls"] = self._change_calls[block_id].clone()
        return out
