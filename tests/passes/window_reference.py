"""The independent reference for windowed heads: diffusers' own attention processor, handed a
block-banded boolean mask per head (nothing of f3compile's rewrite is used)."""

from __future__ import annotations

from contextlib import contextmanager

import torch


def banded_mask(windows, frames: int, tokens: int, text: int) -> torch.Tensor:
    """(1, H, N, N) bool: head h lets a video query of frame f see the keys of frames g with
    |f − g| ≤ windows[h] and every text key; text queries and dense heads (None) see everything."""
    length = text + frames * tokens
    frame = torch.full((length,), -1)
    frame[text:] = torch.arange(frames).repeat_interleave(tokens)
    distance = (frame[:, None] - frame[None, :]).abs()
    is_text_row, is_text_col = frame[:, None] < 0, frame[None, :] < 0
    masks = []
    for window in windows:
        if window is None:
            masks.append(torch.ones(length, length, dtype=torch.bool))
        else:
            masks.append((distance <= window) | is_text_row | is_text_col)
    return torch.stack(masks)[None]


class _MaskKernel(torch.overrides.TorchFunctionMode):
    """Hands `mask` to the one scaled_dot_product_attention call the processor makes."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.mask, self.calls = mask, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.nn.functional.scaled_dot_product_attention:
            assert kwargs.get("attn_mask") is None and len(args) <= 3, "the processor already masks"
            kwargs["attn_mask"] = self.mask.to(args[0].device if args else kwargs["query"].device)
            self.calls += 1
        return func(*args, **kwargs)


class _Banded:
    """Runs the module's original processor (diffusers' own q/k/v, norms, rotary embeddings, output
    projection), its attention kernel given the banded mask."""

    def __init__(self, inner, mask: torch.Tensor):
        import functools

        self.inner, self.mask = inner, mask
        # diffusers' Attention passes only the keyword arguments its processor's signature names
        # (CogVideoX's image_rotary_emb): show the wrapped processor's signature
        self.__call__ = functools.wraps(inner.__call__)(lambda *args, **kwargs: self._call(*args, **kwargs))

    def __call__(self, attn, *args, **kwargs):
        return self._call(attn, *args, **kwargs)

    def _call(self, attn, *args, **kwargs):
        mode = _MaskKernel(self.mask)
        with mode:
            out = self.inner(attn, *args, **kwargs)
        assert mode.calls == 1
        return out


@contextmanager
def banded(denoiser, units, windows_by_unit: dict):
    """Within the block, each unit in `windows_by_unit` runs with its banded mask."""
    modules = dict(denoiser.named_modules())
    saved = {}
    try:
        for unit in units:
            windows = windows_by_unit.get(unit.id)
            if windows is None:
                continue
            module = modules[unit.id]
            saved[unit.id] = module.processor
            module.processor = _Banded(module.processor, banded_mask(windows, unit.frames, unit.tokens, unit.text_tokens))
        yield
    finally:
        for unit_id, processor in saved.items():
            modules[unit_id].processor = processor
