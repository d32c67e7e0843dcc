import pytest

from f3compile import F3Error
from f3compile.models import find_temporal_units, load_model, temporal_blocks
from f3compile.models.base import VideoShapes


@pytest.mark.parametrize("name, units, blocks", [
    ("arch-modelscope", 34, 17),   # transformer_in + temp_attentions, attn1 and attn2 (published: 34)
    ("arch-animatediff", 42, 21),  # motion modules incl. the mid block, attn1 and attn2 (published: 42)
    ("arch-latte", 28, 28),        # one temporal transformer block per layer (published: 28)
    ("arch-tuneavideo", 16, 16),   # attn_temp in every SD v1 transformer block, each its own block
])
def test_presets_have_the_published_temporal_layout(name, units, blocks):
    model = load_model(f"builtin:{name},width-scale=0.1")
    found = find_temporal_units(model, VideoShapes(1, 16, 64, 64))  # small frames keep the probe quick; layout is shape-independent
    assert len(found) == units and len(temporal_blocks(found)) == blocks
    assert all(unit.frames == 16 for unit in found)  # the frame axis discovery confirmed is the one it ran


def test_width_scale_scales_channels():
    small = load_model("builtin:arch-latte,width-scale=0.05")
    larger = load_model("builtin:arch-latte,width-scale=0.1")
    assert small.denoiser.config.num_attention_heads == 1 and larger.denoiser.config.num_attention_heads == 2
    assert small.denoiser.config.num_layers == larger.denoiser.config.num_layers == 28


@pytest.mark.parametrize("spec, message", [
    ("builtin:arch-latte,depth=2", "unknown option 'depth'"),
    ("builtin:arch-latte,width-scale=2", "width-scale must be in"),
    ("builtin:arch-sora", "unknown preset"),
])
def test_bad_preset_specs(spec, message):
    with pytest.raises(F3Error, match=message):
        load_model(spec)
