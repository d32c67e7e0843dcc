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


class _Banded:
    """Calls the module's original processor with the banded mask as its attention mask."""

    def __init__(self, inner, mask: torch.Tensor):
        self.inner, self.mask = inner, mask

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        assert attention_mask is None
        return self.inner(attn, hidden_states, encoder_hidden_states, self.mask, *args, **kwargs)


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
