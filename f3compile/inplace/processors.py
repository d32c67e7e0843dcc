"""Attention processors that run one unit of a plan on the live module: what `apply` installs.

Each processor stands in for the unit's own diffusers processor and computes what the compiled
program computes for the unit at the current stage (read from the shared `PlanState`):
- a dropped attention returns zeros without running (the residual add outside leaves h unchanged);
- full 3-D attention (Wan `attn1`, CogVideoX `attn1`, HunyuanVideo 1.5 `attn`): diffusers' q/k/v
  projections (the context's own too), norms and rotary
  embeddings, then `windows.grouped_attention` on the kept heads, regrouped by the weight permutation
  `apply` made for this stage (pruned heads last: their value rows and output columns are not used);
- temporal attention (sequence = frames): q/k/v from the kept heads' rows only, keys and values from
  the kept frames only, the output projection over the kept heads' columns.
A unit with nothing to do at a stage runs the original processor on the original head order.
Everything a processor branches on is a Python value `apply` set before the call (the stage, the
frame count), so `torch.compile(..., fullgraph=True)` traces it without a graph break.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import F3Error
from ..windows import Geometry, grouped_attention


class UnitProcessor:
    """Base: holds the unit, the shared state and the processor it replaces."""

    def __init__(self, unit, state, original):
        self.unit, self.state, self.original = unit, state, original
        self.ops = state.ops

    def plan(self):
        """(dropped, regrouping or None, kept frames or None) of this unit at the current stage."""
        return self.state.unit_plan(self.unit.id)

    def out_weight(self, attn):
        """The output projection's weight over the kept heads' columns (the first after regrouping)."""
        return self.state.out_weight(self.unit.id, attn.to_out[0].weight)

    def project_out(self, attn, hidden):
        bias = attn.to_out[0].bias
        return attn.to_out[1](F.linear(hidden, self.out_weight(attn), bias))


def _rows(linear, rows: int, hidden: torch.Tensor) -> torch.Tensor:
    """`linear` over its first `rows` output rows only."""
    if rows == linear.weight.shape[0]:
        return linear(hidden)
    return F.linear(hidden, linear.weight[:rows], None if linear.bias is None else linear.bias[:rows])


def _value_rows(attn, kept: int, hidden: torch.Tensor, head_dim: int) -> torch.Tensor:
    """The value projection of the first `kept` heads only (rows of the regrouped weight)."""
    return _rows(attn.to_v, kept * head_dim, hidden)


def _rotate(hidden: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding on (B, N, H, d), as its attention processor applies it, written head-major:
    the result is a contiguous (B, H, N, d), so the kernel's per-frame views of it need no copy."""
    x1, x2 = hidden.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = freqs_cos[..., 0::2], freqs_sin[..., 1::2]
    batch, tokens, heads, dim = hidden.shape
    out = hidden.new_empty(batch, heads, tokens, dim)
    rows = out.transpose(1, 2)  # (B, N, H, d) view of the head-major storage
    rows[..., 0::2] = x1 * cos - x2 * sin
    rows[..., 1::2] = x1 * sin + x2 * cos
    return out


class WanProcessor(UnitProcessor):
    """Wan's self-attention `attn1` (video tokens only; q and k normalised over all heads)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        dropped, regrouping, _ = self.plan()
        if dropped:
            return torch.zeros_like(hidden_states)
        if regrouping is None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        if encoder_hidden_states is not None or attention_mask is not None:
            raise F3Error(f"{self.unit.id} was called as cross-attention or with a mask; windows need plain self-attention")
        d, kept = self.unit.head_dim, regrouping.kept
        query, key = attn.norm_q(attn.to_q(hidden_states)), attn.norm_k(attn.to_k(hidden_states))
        value = _value_rows(attn, kept, hidden_states, d)
        query, key = query.unflatten(2, (attn.heads, -1)), key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (kept, -1))
        if rotary_emb is not None:  # (B, N, H, d) -> (B, H, N, d), contiguous
            query, key = _rotate(query, *rotary_emb), _rotate(key, *rotary_emb)
        else:
            query, key = query.transpose(1, 2), key.transpose(1, 2)
        # the regrouped heads first: (B, kept, N, d)
        query, key, value = query[:, :kept], key[:, :kept], value.transpose(1, 2)
        frames = self.state.frames
        geometry = Geometry(0, frames, hidden_states.shape[1] // frames, d)
        out = grouped_attention(self.ops, query, key, value, regrouping, geometry, None)
        out = out.transpose(1, 2).flatten(2, 3).type_as(query)
        return self.project_out(attn, out)


class CogVideoXProcessor(UnitProcessor):
    """CogVideoX's joint attention over `cat([text, video])` (rotary embeddings on the video part)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None):
        dropped, regrouping, _ = self.plan()
        if dropped:
            return torch.zeros_like(hidden_states), torch.zeros_like(encoder_hidden_states)
        if regrouping is None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        if attention_mask is not None:
            raise F3Error(f"{self.unit.id} was called with an attention mask; windows need a plain kernel")
        text = encoder_hidden_states.size(1)
        joint = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        batch = joint.shape[0]
        d, kept = self.unit.head_dim, regrouping.kept
        query, key = attn.to_q(joint), attn.to_k(joint)
        value = _value_rows(attn, kept, joint, d)
        query, key = (x.view(batch, -1, attn.heads, d).transpose(1, 2) for x in (query, key))
        value = value.view(batch, -1, kept, d).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:
            from diffusers.models.embeddings import apply_rotary_emb

            query[:, :, text:] = apply_rotary_emb(query[:, :, text:], image_rotary_emb)
            key[:, :, text:] = apply_rotary_emb(key[:, :, text:], image_rotary_emb)
        query, key = query[:, :kept], key[:, :kept]
        frames = self.state.frames
        geometry = Geometry(text, frames, hidden_states.shape[1] // frames, d)
        out = grouped_attention(self.ops, query, key, value, regrouping, geometry, None)
        out = self.project_out(attn, out.transpose(1, 2).reshape(batch, -1, kept * d))
        encoder_out, out = out.split([text, out.size(1) - text], dim=1)
        return out, encoder_out


class HunyuanProcessor(UnitProcessor):
    """HunyuanVideo 1.5's joint attention: the video's q/k/v (rotary embeddings on them) and the
    context's own (`add_*_proj`), run context first as f3compile's programs run it, with the padded
    context keys masked by an additive key bias (`hunyuan15.key_bias`) made from diffusers' mask (B, T)
    or handed in as it is (f3compile's own call passes the bias (B, 1, 1, T + N)); the context's output
    through its own projection `to_add_out`, over the kept heads' columns like `to_out.0`."""

    takes_key_bias = True  # f3compile's own call hands it the (B, 1, 1, N) key bias (`hunyuan15.denoise`)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        from ..models.hunyuan15 import JointProcessor, joint_qkv, key_bias

        dropped, regrouping, _ = self.plan()
        if dropped:
            return torch.zeros_like(hidden_states), torch.zeros_like(encoder_hidden_states)
        given_bias = attention_mask is not None and attention_mask.ndim == 4
        if regrouping is None:
            if given_bias:
                return JointProcessor()(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        text = encoder_hidden_states.shape[1]
        bias = attention_mask if given_bias else None
        if bias is None and attention_mask is not None:
            bias = key_bias(attention_mask.bool(), hidden_states.shape[1], hidden_states.dtype)
        d, kept = self.unit.head_dim, regrouping.kept
        query, key, value = joint_qkv(attn, hidden_states, encoder_hidden_states, image_rotary_emb, d,
                                      value=lambda linear, x: _rows(linear, kept * d, x))
        frames = self.state.frames
        geometry = Geometry(text, frames, hidden_states.shape[1] // frames, d)
        out = grouped_attention(self.ops, query[:, :kept], key[:, :kept], value, regrouping, geometry, None, bias)
        out = out.transpose(1, 2).flatten(2, 3).type_as(query)
        text_out, out = out[:, :text], out[:, text:]
        projection = attn.to_add_out
        text_out = F.linear(text_out, self.state.out_weight(self.unit.id, projection.weight), projection.bias)
        return self.project_out(attn, out), text_out


class TemporalProcessor(UnitProcessor):
    """Self-attention over frames ((B·H·W, F, C): ModelScope, AnimateDiff, Latte, Tune-A-Video)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        dropped, regrouping, frames_kept = self.plan()
        if dropped:
            return torch.zeros_like(hidden_states)
        if regrouping is None and frames_kept is None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb=temb, **kwargs)
        if encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 3:
            raise F3Error(f"{self.unit.id} was called with context, a mask or a {hidden_states.ndim}-D input; "
                          "head and frame pruning need plain self-attention over frames")
        rows, frames, _ = hidden_states.shape
        d = self.unit.head_dim
        kept = regrouping.kept if regrouping is not None else attn.heads
        sources = hidden_states
        if frames_kept is not None:
            if frames != self.unit.frames:
                raise F3Error(f"the plan keeps key frames of a {self.unit.frames}-frame video; this call has {frames} "
                              "frames: run the pipeline with the plan's frame count")
            sources = hidden_states.index_select(1, self.state.frame_index(self.unit.id, frames_kept, hidden_states.device))

        if kept == 0:  # every head pruned: the output projection sees zeros and yields its bias
            out = self.project_out(attn, hidden_states.new_zeros(rows, frames, 0))
            return (out + hidden_states if attn.residual_connection else out) / attn.rescale_output_factor

        def project(linear, x):
            bias = None if linear.bias is None else linear.bias[: kept * d]
            return F.linear(x, linear.weight[: kept * d], bias).view(rows, -1, kept, d).transpose(1, 2)

        query, key, value = project(attn.to_q, hidden_states), project(attn.to_k, sources), project(attn.to_v, sources)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        out = F.scaled_dot_product_attention(query, key, value)  # (rows, kept, F, d)
        out = self.project_out(attn, out.transpose(1, 2).reshape(rows, frames, kept * d).to(query.dtype))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor
