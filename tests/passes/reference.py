"""An independent eager reference for the pruning semantics of docs/ARCHITECTURE.md, by masking in the original model.

- dropped block: a forward hook returns the block's input as its output (an attention that is its
  own block is dropped as an attention);
- dropped attention: the attention returns zeros, so the residual add leaves h unchanged;
- pruned heads: their outputs are multiplied by 0 before the output projection;
- kept frames: keys outside the kept frames get -inf before the softmax.
No graph, no weight slicing: nothing here shares code with the passes.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F


class MaskedAttention:
    def __init__(self, heads_mask: torch.Tensor | None, frames_kept: list[int] | None, drop: bool):
        self.heads_mask, self.frames_kept, self.drop = heads_mask, frames_kept, drop

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        assert encoder_hidden_states is None and attention_mask is None and hidden_states.ndim == 3
        rows, frames, _ = hidden_states.shape
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        d = q.shape[-1] // attn.heads
        q, k, v = (x.view(rows, -1, attn.heads, d).transpose(1, 2) for x in (q, k, v))
        mask = None
        if self.frames_kept is not None:
            mask = torch.full((frames,), float("-inf"))
            mask[self.frames_kept] = 0.0
            mask = mask.view(1, 1, 1, frames)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (N, H, F, d)
        if self.heads_mask is not None:
            out = out * self.heads_mask.view(1, -1, 1, 1)
        out = out.transpose(1, 2).reshape(rows, frames, attn.heads * d)
        out = attn.to_out[1](attn.to_out[0](out))
        if self.drop:
            out = torch.zeros_like(out)
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


@contextlib.contextmanager
def masked(model, stage, units):
    """Within the block, `model.denoise` computes the pruned model of `stage` by masking."""
    modules = dict(model.denoiser.named_modules())
    saved, handles = {}, []
    try:
        for unit in units:
            heads = stage.prune_heads.get(unit.id)
            frames = stage.keep_frames.get(unit.id)
            drop = unit.id in stage.drop_attention or unit.id in stage.drop_blocks  # (its own block)
            attention = modules[unit.id]
            saved[unit.id] = attention.processor
            heads_mask = None
            if heads:
                heads_mask = torch.ones(unit.heads)
                heads_mask[heads] = 0.0
            attention.set_processor(MaskedAttention(heads_mask, frames, drop))
        for block in (b for b in stage.drop_blocks if b not in {u.id for u in units}):
            def identity(module, args, kwargs, output):
                hidden = args[0] if args else kwargs["hidden_states"]
                return (hidden,) if isinstance(output, tuple) else hidden
            handles.append(modules[block].register_forward_hook(identity, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()
        for unit_id, processor in saved.items():
            modules[unit_id].set_processor(processor)
