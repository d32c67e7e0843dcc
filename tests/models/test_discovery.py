import pytest
import torch
from diffusers.models.attention_processor import Attention
from torch import nn

from f3compile import F3Error
from f3compile.models import find_temporal_units, temporal_blocks
from f3compile.models.base import VideoModel, VideoShapes


def test_unet3d_units(models):
    units = find_temporal_units(models["tiny-unet3d"])
    ids = [u.id for u in units]
    assert ids[:2] == ["transformer_in.transformer_blocks.0.attn1", "transformer_in.transformer_blocks.0.attn2"]
    assert len(ids) == 10 and all(i.endswith(("attn1", "attn2")) for i in ids)
    assert all("temp_attentions" in i or i.startswith("transformer_in") for i in ids)
    blocks = temporal_blocks(units)
    assert [b.id for b in blocks] == [
        "transformer_in", "down_blocks.0.temp_attentions.0", "up_blocks.1.temp_attentions.0",
        "up_blocks.1.temp_attentions.1", "mid_block.temp_attentions.0",
    ]
    assert all(len(b.units) == 2 for b in blocks)
    first = units[2]  # down_blocks.0: 32 channels, UNet3D gives C/8 heads here
    assert (first.heads, first.head_dim, first.frames, first.channels) == (4, 8, 8, 32)


def test_animatediff_units(models):
    units = find_temporal_units(models["tiny-animatediff"])
    assert len(units) == 14
    assert all(".motion_modules." in u.id for u in units)
    assert {u.block for u in units} == {u.id.split(".transformer_blocks")[0] for u in units}
    assert all(u.heads == 2 for u in units)


def test_latte_units(models):
    units = find_temporal_units(models["tiny-latte"])
    assert [u.id for u in units] == ["temporal_transformer_blocks.0.attn1", "temporal_transformer_blocks.1.attn1"]
    assert [u.block for u in units] == ["temporal_transformer_blocks.0", "temporal_transformer_blocks.1"]


def test_spatial_and_cross_attention_are_never_temporal(models):
    for model in models.values():
        ids = {u.id for u in find_temporal_units(model)}
        attention_ids = {n for n, m in model.denoiser.named_modules() if isinstance(m, Attention)}
        spatial = attention_ids - ids
        assert spatial, "the builtins all have spatial/cross attention"
        assert not any(".attentions." in i for i in ids)
        assert not any(i.startswith("transformer_blocks.") for i in ids)


class _OddlyNamed(nn.Module):
    """A toy video denoiser whose temporal attention is called `mixer` and spatial one `looker`."""

    def __init__(self, temporal: bool = True):
        super().__init__()
        self.config = {"in_channels": 4}
        self.looker = Attention(query_dim=4, heads=2, dim_head=2)
        self.mixer = nn.ModuleList([_Residual(Attention(query_dim=4, heads=2, dim_head=2))]) if temporal else None
        self.context = Attention(query_dim=4, cross_attention_dim=6, heads=2, dim_head=2)

    def forward(self, sample, timestep, context):
        b, c, f, h, w = sample.shape
        x = sample.permute(0, 2, 3, 4, 1).reshape(b * f, h * w, c)
        x = x + self.looker(x)
        x = x + self.context(x, encoder_hidden_states=context.repeat_interleave(f, 0))
        if self.mixer is not None:
            t = x.reshape(b, f, h * w, c).permute(0, 2, 1, 3).reshape(b * h * w, f, c)
            t = self.mixer[0](t)
            x = t.reshape(b, h * w, f, c).permute(0, 2, 1, 3).reshape(b * f, h * w, c)
        return x.reshape(b, f, h, w, c).permute(0, 4, 1, 2, 3)


class _Residual(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return x + self.inner(x)


def _toy_model(temporal: bool) -> VideoModel:
    torch.manual_seed(0)
    return VideoModel(
        spec="toy", family="toy", denoiser=_OddlyNamed(temporal), scheduler=None, text_encoder=None, tokenizer=None,
        pipeline=None, shapes=VideoShapes(1, 5, 32, 32), latent_channels=4, vae_scale_factor=8, text_length=3,
        text_dim=6, fingerprint="sha256:toy", denoise_call=lambda d, s, t, c: d(s, t, c), encode_call=None,
    )


def test_discovery_goes_by_behaviour_not_names():
    units = find_temporal_units(_toy_model(temporal=True))
    assert [(u.id, u.block, u.frames) for u in units] == [("mixer.0.inner", "mixer.0", 5)]


def test_model_without_temporal_attention_is_an_error():
    with pytest.raises(F3Error, match="has no temporal attention"):
        find_temporal_units(_toy_model(temporal=False))
