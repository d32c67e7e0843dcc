"""The independent reference for windowed heads: diffusers' own attention processor, handed a
block-banded boolean mask per head (nothing of f3compile's rewrite is used). HunyuanVideo 1.5 runs
through diffusers' own transformer forward (`reference_denoise`), whose processor masks padded text
itself: the band is combined with that mask."""

from __future__ import annotations

from contextlib import contextmanager

import torch


def banded_mask(windows, frames: int, tokens: int, text: int, text_first: bool = True) -> torch.Tensor:
    """(1, H, N, N) bool: head h lets a video query of frame f see the keys of frames g with
    |f − g| ≤ windows[h] and every text key; text queries and dense heads (None) see everything.
    The text tokens come first, or (`text_first` False) after the video tokens."""
    length = text + frames * tokens
    frame = torch.full((length,), -1)
    video = slice(text, length) if text_first else slice(0, frames * tokens)
    frame[video] = torch.arange(frames).repeat_interleave(tokens)
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
    """Hands `mask(sequence length)` to the one scaled_dot_product_attention call the processor makes."""

    def __init__(self, mask):
        super().__init__()
        self.mask, self.calls = mask, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.nn.functional.scaled_dot_product_attention:
            assert len(args) <= 3
            query = args[0] if args else kwargs["query"]
            mask = self.mask(query.shape[-2]).to(query.device)
            given = kwargs.get("attn_mask")
            assert given is None or given.dtype == torch.bool, "the processor's own mask is a boolean one"
            kwargs["attn_mask"] = mask if given is None else given & mask
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
            text_first = type(denoiser).__name__ != "HunyuanVideo15Transformer3DModel"  # diffusers: video, then text

            def mask(length, windows=windows, unit=unit, text_first=text_first):  # diffusers' sequence may hold more text
                return banded_mask(windows, unit.frames, unit.tokens, length - unit.frames * unit.tokens, text_first)
            module.processor = _Banded(module.processor, mask)
        yield
    finally:
        for unit_id, processor in saved.items():
            modules[unit_id].processor = processor


GLYPH_ROWS, IMAGE_TOKENS = 256, 729  # HunyuanVideo15Pipeline's ByT5 length and image tokens


def reference_denoise(model, inputs):
    """The model's denoiser called as its diffusers pipeline calls it: HunyuanVideo 1.5's transformer
    forward on the packed context taken apart here (glyph rows, then Qwen rows, the mask in the last
    column), zero condition channels and zero image embeddings, as `HunyuanVideo15Pipeline` passes them
    for text-to-video; every other family through `model.denoise`."""
    if model.family != "hunyuanvideo15":
        return model.denoise(*inputs)
    sample, timestep, context = inputs
    transformer = model.denoiser
    config = transformer.config
    mask = context[..., -1]
    batch, channels, frames, height, width = sample.shape
    hidden = torch.cat([sample, sample.new_zeros(batch, config.in_channels - channels, frames, height, width)], dim=1)
    return transformer(hidden_states=hidden, timestep=torch.as_tensor(timestep).reshape(-1).expand(batch),
                       encoder_hidden_states=context[:, GLYPH_ROWS:, :config.text_embed_dim],
                       encoder_attention_mask=mask[:, GLYPH_ROWS:],
                       encoder_hidden_states_2=context[:, :GLYPH_ROWS, :config.text_embed_2_dim],
                       encoder_attention_mask_2=mask[:, :GLYPH_ROWS],
                       image_embeds=sample.new_zeros(batch, IMAGE_TOKENS, config.image_embed_dim), return_dict=False)[0]
