import pytest
import torch
from diffusers.models.attention_processor import Attention
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from f3compile import F3Error
from f3compile.models import find_temporal_units, temporal_blocks
from f3compile.models.discovery import discovery_probe, forget
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
        # spatial transformers' self- and cross-attention (attn1, attn2) are never temporal; Tune-A-Video's
        # attn_temp sits in the same transformer block and is
        assert not any(".attentions." in i and i.rsplit(".", 1)[-1] in ("attn1", "attn2") for i in ids)
        assert not any(i.startswith("transformer_blocks.") for i in ids)
        if model.family == "tuneavideo":
            assert ids and all(i.endswith(".attn_temp") for i in ids)


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


def _toy_model(temporal: bool, denoiser: type | None = None) -> VideoModel:
    torch.manual_seed(0)
    return VideoModel(
        spec="toy", family="toy", denoiser=(denoiser or _OddlyNamed)(temporal), scheduler=None, text_encoder=None, tokenizer=None,
        pipeline=None, shapes=VideoShapes(1, 5, 32, 32), latent_channels=4, vae_scale_factor=8, text_length=3,
        text_dim=6, fingerprint=f"sha256:toy-{(denoiser or _OddlyNamed).__name__}-{temporal}",  # discovery caches by it
        denoise_call=lambda d, s, t, c: d(s, t, c), encode_call=None,
    )


def test_discovery_goes_by_behaviour_not_names():
    units = find_temporal_units(_toy_model(temporal=True))
    assert [(u.id, u.block, u.frames) for u in units] == [("mixer.0.inner", "mixer.0", 5)]


def test_model_without_temporal_attention_is_an_error():
    with pytest.raises(F3Error, match="has no temporal attention"):
        find_temporal_units(_toy_model(temporal=False))


# --- shape-only discovery: fake tensors, no real compute, the model left as it was -------------

_COMPUTE_OPS = {"convolution", "mm", "addmm", "bmm", "baddbmm", "matmul", "linear"}


class _RealCompute(TorchDispatchMode):
    """Counts convolutions, matmuls and attention kernels run on real (not fake, not meta) tensors."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in _COMPUTE_OPS or name.startswith("_scaled_dot_product"):
            # user modes see ops before the fake mode converts real weights, so judge by the result:
            # a kernel that computed for real returned real data
            tensors = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
            if any(not isinstance(t, FakeTensor) and t.device.type != "meta" for t in tensors):
                self.ops.append(name)
        return out


def _parameters(module: nn.Module) -> dict[str, tuple]:
    return {k: (v, v.detach().clone(), v._version) for k, v in module.state_dict(keep_vars=True).items()}


def _fakes_in(module: nn.Module) -> list[str]:
    def has_fake(value, depth=0):
        if isinstance(value, FakeTensor):
            return True
        if depth < 3 and isinstance(value, dict):
            return any(has_fake(v, depth + 1) for v in value.values())
        if depth < 3 and isinstance(value, (list, tuple)):
            return any(has_fake(v, depth + 1) for v in value)
        return False

    holders = []
    for name, m in module.named_modules():
        holders.append((name, m))
        if getattr(m, "processor", None) is not None:
            holders.append((f"{name}.processor", m.processor))
    return [name for name, holder in holders if hasattr(holder, "__dict__") and has_fake(vars(holder))]


@pytest.mark.parametrize("name", ["tiny-unet3d", "tiny-animatediff", "tiny-latte"])
def test_shape_only_discovery_matches_the_real_probe(models, name):
    model = models[name]
    forget(model)
    units = find_temporal_units(model)
    assert discovery_probe(model) == "fake"  # no silent fallback to real compute
    real = find_temporal_units(model, _probe_mode="real")
    assert [(u.id, u.block, u.heads, u.head_dim, u.frames, u.channels) for u in units] == \
        [(u.id, u.block, u.heads, u.head_dim, u.frames, u.channels) for u in real]
    assert units == real


@pytest.mark.parametrize("name", ["tiny-unet3d", "tiny-animatediff", "tiny-latte"])
def test_discovery_leaves_the_denoiser_untouched(models, name):
    model = models[name]
    inputs = model.example_inputs(cfg=False, seed=1)
    with torch.no_grad():
        before_out = model.denoise(*inputs)
    before = _parameters(model.denoiser)
    forget(model)
    find_temporal_units(model)
    after = model.denoiser.state_dict(keep_vars=True)
    assert list(after) == list(before)
    for key, (tensor, copy, version) in before.items():
        assert after[key] is tensor and not isinstance(tensor, FakeTensor), key
        assert tensor._version == version and torch.equal(tensor, copy), key
    assert _fakes_in(model.denoiser) == []
    with torch.no_grad():
        assert torch.equal(model.denoise(*inputs), before_out)  # bit-identical


@pytest.mark.parametrize("name", ["tiny-unet3d", "tiny-animatediff", "tiny-latte"])
def test_discovery_runs_no_real_compute(models, name):
    model = models[name]
    forget(model)
    with _RealCompute() as shape_only:
        find_temporal_units(model)
    assert shape_only.ops == []
    with _RealCompute() as real:  # the counter does see the real probe's (the former discovery's) compute
        find_temporal_units(model, _probe_mode="real")
    assert "convolution" in real.ops and "addmm" in real.ops


class _LazyState(nn.Module):
    """Builds a buffer and a dict cache on first use, as rotary tables and position caches do."""

    def __init__(self):
        super().__init__()
        self.cache: dict[int, torch.Tensor] = {}

    def forward(self, x):
        if "table" not in self._buffers:
            self.register_buffer("table", torch.linspace(0.5, 1.5, x.shape[-1]), persistent=False)
        if x.shape[1] not in self.cache:
            self.cache[x.shape[1]] = torch.arange(x.shape[1], dtype=x.dtype)[:, None] / 10
        return x * self.table + self.cache[x.shape[1]]


class _StatefulToy(_OddlyNamed):
    def __init__(self, temporal: bool = True):
        super().__init__(temporal)
        self.lazy = _LazyState()

    def forward(self, sample, timestep, context):
        out = super().forward(sample, timestep, context)
        b, c, f, h, w = out.shape
        x = self.lazy(out.permute(0, 2, 3, 4, 1).reshape(b * f, h * w, c))
        return x.reshape(b, f, h, w, c).permute(0, 4, 1, 2, 3)


def test_state_built_during_discovery_does_not_leak():
    model, reference = _toy_model(True, _StatefulToy), _toy_model(True, _StatefulToy)
    units = find_temporal_units(model)
    assert discovery_probe(model) == "fake"
    assert [(u.id, u.block) for u in units] == [("mixer.0.inner", "mixer.0")]
    lazy = model.denoiser.lazy
    assert "table" not in lazy._buffers and lazy.cache == {}  # the fake ones were taken back out
    assert _fakes_in(model.denoiser) == []
    inputs = model.example_inputs(cfg=False, seed=2)
    with torch.no_grad():
        assert torch.equal(model.denoise(*inputs), reference.denoise(*inputs))
    assert not isinstance(lazy.table, FakeTensor) and not any(isinstance(v, FakeTensor) for v in lazy.cache.values())


class _ValueBranching(_OddlyNamed):
    def forward(self, sample, timestep, context):
        if bool(timestep.max() > 0):  # data-dependent control flow: fake tensors cannot answer it
            sample = sample * 1.0
        return super().forward(sample, timestep, context)


def test_a_model_fake_tensors_cannot_trace_falls_back_to_the_real_probe():
    model = _toy_model(True, _ValueBranching)
    units = find_temporal_units(model)
    assert discovery_probe(model) == "real"
    assert [(u.id, u.block, u.frames) for u in units] == [("mixer.0.inner", "mixer.0", 5)]
    assert _fakes_in(model.denoiser) == []
