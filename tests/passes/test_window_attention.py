"""window_attention on full 3-D attention: structure, negative, idempotence and equality with diffusers'
own attention processor given a block-banded mask (tests/passes/window_reference.py)."""

from __future__ import annotations

import pytest
import torch

from f3compile.errors import F3Error
from f3compile.models import load_model
from f3compile.models.discovery import find_temporal_units
from f3compile.passes import PassManager, RewriteSpec, UnitRewrite, window_attention
from f3compile.passes.base import aten, region
from f3compile.passes.cleanup import run_cleanup
from f3compile.planning.cost import count_flops, window_core_share
from tests.helpers import TINY_FULL, rel
from tests.passes.window_reference import banded, reference_denoise

EXACT = 1e-5  # fp32, relative L2: the rewrite regroups heads (an RMS over permuted channels rounds differently)


@pytest.fixture(scope="module", params=TINY_FULL)
def wan(request):
    from f3compile.compiler.compile import capture

    model = load_model(f"builtin:{request.param}")
    units = find_temporal_units(model)
    program = capture(model, model.shapes)
    return model, units, program, model.example_inputs(seed=3)


def _rewrite(program, units, windows_by_unit, passes=None):
    gm = program.module()
    spec = RewriteSpec(units={u.id: u for u in units},
                       unit_rewrites={uid: UnitRewrite(windows=tuple(w)) for uid, w in windows_by_unit.items()})
    results = (passes or PassManager())(gm, spec)
    return gm, results, spec


def _reference(model, units, windows_by_unit, inputs):
    with torch.no_grad(), banded(model.denoiser, units, windows_by_unit):
        return reference_denoise(model, inputs)


CASES = {
    "W0": lambda u: [0] * u.heads,
    "W1": lambda u: [1] * u.heads,
    "W2": lambda u: [2] * u.heads,
    "mixed": lambda u: [[2, None, 0, None], [None, 1, 0, 3]][int(u.id.split(".")[1]) % 2][: u.heads],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_equals_the_banded_mask_reference(wan, case):
    model, units, program, inputs = wan
    windows = {u.id: CASES[case](u) for u in units}
    gm, _, _ = _rewrite(program, units, windows)
    with torch.no_grad():
        ours = gm(*inputs)
        dense = model.denoise(*inputs)
    reference = _reference(model, units, windows, inputs)
    assert rel(ours, reference) <= EXACT
    assert rel(dense, reference) > 1e-3  # the windows do change the model: the comparison can fail


def test_structure_kernels_run_on_the_window_keys(wan):
    from torch.fx.passes.shape_prop import ShapeProp

    model, units, program, inputs = wan
    unit = units[0]
    windows = {unit.id: [None, 0, 1, 0][: unit.heads]}
    gm, results, _ = _rewrite(program, units, windows)
    assert results["window_attention"] is True
    with torch.no_grad():
        ShapeProp(gm).propagate(*inputs)
    kernels = [n for n in gm.graph.nodes if n.target == aten.scaled_dot_product_attention.default
               and n.meta.get("f3_window") == unit.id]
    S, F, T, d = unit.tokens, unit.frames, unit.text_tokens, unit.head_dim
    # regrouped by window: dense head 0 (all keys), W=0 heads 1 and 3 (per frame: the text and S keys),
    # W=1 head 2 (the text and 3 frames); text queries of windowed heads see every key
    shapes = sorted((tuple(n.args[0].meta["tensor_meta"].shape), n.args[1].meta["tensor_meta"].shape[-2]) for n in kernels)
    batch, every = inputs[0].shape[0], T + F * S
    # windowed groups run with batch × heads on the kernel's batch axis and the query frame on its head axis
    expected = [((batch, 1, every, d), every), ((batch * 2, F, S, d), T + S), ((batch * 1, F, S, d), T + 3 * S)]
    if T:
        expected += [((batch, 2, T, d), every), ((batch, 1, T, d), every)]
    assert shapes == sorted(expected)
    # weights permuted once, not reordered at run time: q rows and out columns follow heads 0, 1, 3, 2
    d = unit.head_dim
    rows = torch.cat([torch.arange(h * d, (h + 1) * d) for h in (0, 1, 3, 2)])
    original = dict(model.denoiser.named_parameters())
    rewritten = dict(gm.named_parameters())
    assert torch.equal(rewritten[f"denoiser.{unit.id}.to_q.weight"], original[f"{unit.id}.to_q.weight"][rows])
    assert torch.equal(rewritten[f"denoiser.{unit.id}.to_out.0.weight"], original[f"{unit.id}.to_out.0.weight"][:, rows])
    gathers = [n for n in gm.graph.nodes if n.target == aten.index_select.default and n.meta.get("f3_window") == unit.id]
    assert gathers and all(str(n.args[2].target).startswith("f3_window__frames") for n in gathers)  # key frames only


def test_units_with_one_geometry_share_one_index_and_one_mask(wan):
    """Every unit at W = 1 reads the same key-frame index and edge mask: one buffer of each, not one per unit."""
    model, units, program, inputs = wan
    gm, results, _ = _rewrite(program, units, {u.id: [1] * u.heads for u in units})
    assert results["window_attention"] is True and len(units) > 1
    buffers = sorted(name for name, _ in gm.named_buffers() if name.startswith("f3_window__"))
    assert buffers == ["f3_window__frames0", "f3_window__mask0"]
    readers = [n for n in gm.graph.nodes if n.op == "get_attr" and n.target == "f3_window__mask0"]
    assert sorted(n.meta["f3_window"] for n in readers) == sorted(u.id for u in units)


def test_negative_cross_attention_and_unplanned_units_are_untouched(wan):
    model, units, program, inputs = wan
    first, second = units[0], units[1]
    gm, _, _ = _rewrite(program, units, {first.id: [0] * first.heads})
    before = program.module()
    run_cleanup(before)  # as the clean-up after the rewrite does (the last joint block's text output is unused)
    cross = [unit.id.replace("attn1", "attn2") for unit in (second, first) if unit.id.endswith("attn1")]  # none: joint
    for path in [second.id, *cross]:
        old = [n.target for n in region(before.graph, path, "denoiser.")]
        new = [n.target for n in region(gm.graph, path, "denoiser.")]
        assert old == new, path
    assert not any(n.meta.get("f3_window") == second.id for n in gm.graph.nodes)
    # every head dense: nothing to do
    gm, results, _ = _rewrite(program, units, {first.id: [None] * first.heads})
    assert results["window_attention"] is False


def test_refuses_temporal_units_and_every_head_pruned(wan):
    import dataclasses

    model, units, program, _ = wan
    temporal = [dataclasses.replace(u, tokens=0, text_tokens=0) for u in units]
    with pytest.raises(F3Error, match="temporal attention"):
        gm = program.module()
        window_attention(gm, RewriteSpec(units={u.id: u for u in temporal},
                                         unit_rewrites={temporal[0].id: UnitRewrite(windows=(0,) * temporal[0].heads)}))
    with pytest.raises(F3Error, match="every head pruned"):
        gm = program.module()
        window_attention(gm, RewriteSpec(units={u.id: u for u in units}, unit_rewrites={
            units[0].id: UnitRewrite(pruned_heads=tuple(range(units[0].heads)))}))


PRUNED = {0: (1,), 1: (0, 2)}  # per layer: pruned heads, composed with the "mixed" windows


def _head_zeroing(model, units, pruned_by_unit):
    """The reference for pruned heads: their slices of the output projection's input are zero."""
    modules = dict(model.denoiser.named_modules())
    handles = []
    for unit in units:
        heads = pruned_by_unit.get(unit.id, ())
        keep = torch.ones(unit.heads * unit.head_dim)
        for head in heads:
            keep[head * unit.head_dim:(head + 1) * unit.head_dim] = 0
        attention = modules[unit.id]
        # joint attention: the context's own output projection loses the head too
        for projection in (attention.to_out[0], getattr(attention, "to_add_out", None)):
            if projection is not None:
                handles.append(projection.register_forward_pre_hook(
                    lambda m, args, keep=keep: (args[0] * keep,) + tuple(args[1:])))
    return handles


@pytest.mark.parametrize("with_windows", [False, True])
def test_pruned_heads_alone_and_with_windows_equal_the_reference(wan, with_windows):
    model, units, program, inputs = wan
    windows = {u.id: CASES["mixed"](u) for u in units} if with_windows else {}
    pruned = {u.id: PRUNED[number] for number, u in enumerate(units)}
    gm = program.module()
    spec = RewriteSpec(units={u.id: u for u in units}, unit_rewrites={
        u.id: UnitRewrite(windows=tuple(windows[u.id]) if with_windows else None, pruned_heads=pruned[u.id]) for u in units})
    results = PassManager()(gm, spec)
    assert results["window_attention"] is True and results["prune_heads"] is False  # q/k/v projections stay whole
    handles = _head_zeroing(model, units, pruned)
    try:
        reference = _reference(model, units, windows, inputs)
    finally:
        for handle in handles:
            handle.remove()
    with torch.no_grad():
        ours = gm(*inputs)
    assert rel(ours, reference) <= EXACT
    rewritten = dict(gm.named_parameters())
    for unit in units:
        out = rewritten[f"denoiser.{unit.id}.to_out.0.weight"]
        assert out.shape[1] == (unit.heads - len(pruned[unit.id])) * unit.head_dim
    from f3compile.planning.cost import ModelCost
    from f3compile.planning.plan import Stage

    cost = ModelCost.measure(model, units)
    removed, params = cost.stage_removed(Stage(timesteps=(999, 0), windows=windows,
                                               prune_heads={k: list(v) for k, v in pruned.items()}))
    dense = program.module()
    run_cleanup(dense)  # as every rewrite's clean-up does (the last joint block's text output is unused)
    dense_total, _ = count_flops(dense, inputs)
    ours_total, _ = count_flops(gm, inputs)
    assert ours_total == pytest.approx(dense_total - removed, rel=1e-6)
    modules = dict(model.denoiser.named_modules())
    outputs = {u.id: 1 + (getattr(modules[u.id], "to_add_out", None) is not None) for u in units}  # joint: the context's too
    assert params == sum(len(pruned[u.id]) * u.head_dim * u.channels * outputs[u.id] for u in units)


def test_idempotent(wan):
    model, units, program, inputs = wan
    windows = {u.id: CASES["mixed"](u) for u in units}
    gm, _, spec = _rewrite(program, units, windows)
    code = gm.code
    with torch.no_grad():
        once = gm(*inputs)
    again = PassManager()(gm, spec)
    assert again["window_attention"] is False
    assert gm.code == code
    with torch.no_grad():
        assert torch.equal(gm(*inputs), once)


def test_counted_flops_fall_as_predicted(wan):
    from f3compile.planning.cost import ModelCost
    from f3compile.planning.plan import Stage

    model, units, program, inputs = wan
    windows = {u.id: CASES["mixed"](u) for u in units}
    gm, _, _ = _rewrite(program, units, windows)
    dense = program.module()
    run_cleanup(dense)  # as the rewrite's clean-up (HunyuanVideo 1.5: the last block's context stream is unused)
    dense_total, _ = count_flops(dense, inputs)
    ours_total, _ = count_flops(gm, inputs)
    cost = ModelCost.measure(model, units)
    removed, _ = cost.stage_removed(Stage(timesteps=(999, 0), windows=windows))
    assert count_flops(program.module(), inputs)[0] == cost.total_flops
    assert removed > 0
    assert ours_total == pytest.approx(dense_total - removed, rel=1e-6)
    # the share itself, counted by hand: tiny-wan T=0, F=5, S=16: W=1 keeps 3 of 5 frames' keys, W=0 one;
    # tiny-cogvideox T=16, F=5, S=16 (N=96): W=1 keeps (16·96 + 80·(16 + 48)) of 96², W=0 (16·96 + 80·32);
    # tiny-hunyuanvideo1.5 T=1256 (padding included), N=1336: W=1 (1256·1336 + 80·(1256 + 48)), W=0 (… + 80·1272)
    unit = units[0]
    by_hand = {0: {0: 1 / 5, 1: 3 / 5}, 16: {0: 4096 / 9216, 1: 6656 / 9216},
               1256: {0: 1779776 / 1336 ** 2, 1: 1782336 / 1336 ** 2}}[unit.text_tokens]
    assert (unit.text_tokens, unit.frames, unit.tokens) in ((0, 5, 16), (16, 5, 16), (1256, 5, 16))
    for window, share in by_hand.items():
        assert window_core_share(unit, window) == pytest.approx(share)
    assert window_core_share(unit, unit.frames - 1) == 1.0


def test_a_dropped_wan_block_passes_its_input_through(wan):
    """Dropping a whole block of full 3-D attention: Wan's block reads the timestep embedding through
    a cast that fp32 tracing hands on to every later block, yet the block goes as a whole and the
    program equals the model with that block returning its input. CogVideoX's and HunyuanVideo 1.5's
    blocks return video and text (two outputs) and are refused in one line."""
    from f3compile.passes import BlockRewrite
    from f3compile.planning.cost import ModelCost

    model, units, program, inputs = wan
    block = units[0].block
    spec = RewriteSpec(units={u.id: u for u in units}, block_rewrites={block: BlockRewrite(drop=True)})
    gm = program.module()
    if model.family in ("cogvideox", "hunyuanvideo15"):  # joint blocks: video and text out
        with pytest.raises(F3Error, match="2 outputs"):
            PassManager()(gm, spec)
        return
    PassManager()(gm, spec)
    # nothing of the block is computed (its rotary embedding's in-place writes included); what may
    # stay are metadata checks of tensors later blocks still read
    assert {n.target for n in region(gm.graph, block, spec.prefix)} <= {aten._assert_tensor_metadata.default}
    dense_total, _ = count_flops(program.module(), inputs)
    ours_total, _ = count_flops(gm, inputs)
    assert ours_total == dense_total - ModelCost.measure(model, units).flops[block] > 0
    module = dict(model.denoiser.named_modules())[block]
    module.forward = lambda hidden_states, *args, **kwargs: hidden_states
    try:
        with torch.no_grad():
            expected = model.denoise(*inputs)
    finally:
        del module.forward
    with torch.no_grad():
        ours, dense = gm(*inputs), model.denoise(*inputs)
    assert rel(ours, expected) <= EXACT
    assert rel(ours, dense) > 1e-3  # the block did something: the comparison can tell
