"""The pass pipeline: structure, negative, idempotence and numerical equivalence per pass.

Numerical references come from `reference.masked`, which prunes by masking inside the original
eager model (tolerances below).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from f3compile import F3Error
from f3compile.compiler.compile import apply_stage, capture, export_inputs, rewrite_spec
from f3compile.models import find_temporal_units
from f3compile.passes import PassManager
from f3compile.passes.base import aten, innermost, region
from f3compile.planning.cost import ModelCost, count_flops
from f3compile.planning.plan import Stage
from tests.helpers import TINY, rel

from .reference import masked

REL_EMPTY = 1e-6   # empty plan vs the original denoiser
REL_PRUNED = 1e-5  # pruned program vs the masking reference
FLOPS_REL = 0.02   # counted FLOPs of the program vs `inspect`'s removal


@pytest.fixture(scope="module")
def captured(models):
    """builtin -> (model, units, ExportedProgram, inputs)."""
    out = {}
    for name, model in models.items():
        units = find_temporal_units(model)
        out[name] = (model, units, capture(model, model.shapes), export_inputs(model, model.shapes, seed=11))
    return out


def stages_for(units):
    """One stage per granularity plus a mixed one, built from the discovered units."""
    blocks = list(dict.fromkeys(u.block for u in units))
    first, last = units[0], units[-1]
    half_heads = {u.id: list(range(0, u.heads, 2)) for u in units}
    frames = {u.id: [0, 2, 3, u.frames - 1] for u in units}
    mixed = Stage(
        timesteps=(999, 0), drop_blocks=blocks[-1:],
        drop_attention=[first.id] if first.block not in blocks[-1:] else [],
        prune_heads={u.id: [u.heads - 1] for u in units[1:2]},
        keep_frames={u.id: [1, 4, 5] for u in units[2:3] or units[1:2]},
    )
    return {
        "block": Stage((999, 0), drop_blocks=blocks[::2]),
        "attention": Stage((999, 0), drop_attention=[u.id for u in units[::2]]),
        "head": Stage((999, 0), prune_heads=half_heads),
        "all-heads": Stage((999, 0), prune_heads={last.id: list(range(last.heads))}),
        "frame": Stage((999, 0), keep_frames=frames),
        "mixed": mixed,
    }


@pytest.mark.parametrize("name", TINY)
def test_empty_plan_equals_the_original_denoiser(captured, name):
    model, units, program, inputs = captured[name]
    compiled = apply_stage(program, Stage((999, 0)), units, inputs)
    with torch.no_grad():
        assert rel(compiled.program.module()(*inputs), model.denoise(*inputs)) <= REL_EMPTY
    assert compiled.parameters == sum(p.numel() for p in model.denoiser.parameters())


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("kind", ["block", "attention", "head", "all-heads", "frame", "mixed"])
def test_pruned_program_equals_masking_reference(captured, name, kind):
    model, units, program, inputs = captured[name]
    stage = stages_for(units)[kind]
    compiled = apply_stage(program, stage, units, inputs)
    with torch.no_grad():
        ours = compiled.program.module()(*inputs)
        with masked(model, stage, units):
            reference = model.denoise(*inputs)
        dense = model.denoise(*inputs)
    assert rel(ours, reference) <= REL_PRUNED
    assert rel(reference, dense) > 1e-4  # the plan really changes the output
    # parameters fall by exactly the pruned weights; FLOPs by what `inspect` reports
    cost = ModelCost.measure(model, units)
    flops_removed, params_removed = cost.stage_removed(stage)
    assert compiled.parameters == cost.total_params - params_removed
    counted, _ = count_flops(compiled.program.module(), inputs)
    assert abs((cost.total_flops - counted) - flops_removed) <= FLOPS_REL * max(flops_removed, 1)


def _graph(captured, name):
    model, units, program, inputs = captured[name]
    return model, units, program.module(), inputs


def _sdpa_by_unit(gm):
    return {innermost(n, "denoiser."): n for n in gm.graph.nodes if n.target == aten.scaled_dot_product_attention.default}


@pytest.mark.parametrize("name", TINY)
def test_structure_of_each_pass(captured, name):
    model, units, _, _ = captured[name]
    stages = stages_for(units)
    by_id = {u.id: u for u in units}
    # drop_temporal_blocks: nothing of the dropped blocks remains, weights included
    _, _, gm, _ = _graph(captured, name)
    PassManager()(gm, rewrite_spec(stages["block"], units))
    for block in stages["block"].drop_blocks:
        assert not region(gm.graph, block, "denoiser.")
        assert not [n for n, _ in gm.named_parameters() if n.startswith(f"denoiser.{block}.")]
    # drop_temporal_attention: the attention and its weights are gone
    _, _, gm, _ = _graph(captured, name)
    PassManager()(gm, rewrite_spec(stages["attention"], units))
    for unit_id in stages["attention"].drop_attention:
        assert not region(gm.graph, unit_id, "denoiser.")
        assert not [n for n, _ in gm.named_parameters() if n.startswith(f"denoiser.{unit_id}.")]
    # prune_heads: projections and the attention node have the kept head count
    _, _, gm, _ = _graph(captured, name)
    PassManager()(gm, rewrite_spec(stages["head"], units))
    params = dict(gm.named_parameters())
    sdpa = _sdpa_by_unit(gm)
    for unit_id, pruned in stages["head"].prune_heads.items():
        unit, kept = by_id[unit_id], by_id[unit_id].heads - len(pruned)
        assert params[f"denoiser.{unit_id}.to_q.weight"].shape == (kept * unit.head_dim, unit.channels)
        assert params[f"denoiser.{unit_id}.to_out.0.weight"].shape == (unit.channels, kept * unit.head_dim)
        assert sdpa[unit_id].args[0].meta.get("val") is not None
    compiled = apply_stage(captured[name][2], stages["head"], units, captured[name][3])
    shapes = {innermost(n, "denoiser."): n.meta["val"].shape for n in compiled.program.graph.nodes
              if n.target == aten.scaled_dot_product_attention.default}
    for unit_id, pruned in stages["head"].prune_heads.items():
        assert shapes[unit_id][1] == by_id[unit_id].heads - len(pruned)
    # gather_key_frames: keys/values of the kept frames only
    compiled = apply_stage(captured[name][2], stages["frame"], units, captured[name][3])
    for node in compiled.program.graph.nodes:
        if node.target == aten.scaled_dot_product_attention.default and innermost(node, "denoiser.") in stages["frame"].keep_frames:
            q, k = node.args[0].meta["val"].shape, node.args[1].meta["val"].shape
            assert q[2] == by_id[innermost(node, "denoiser.")].frames and k[2] == 4


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("kind", ["block", "attention", "head", "frame", "mixed"])
def test_negative_spatial_and_unplanned_attention_untouched(captured, name, kind):
    model, units, gm, inputs = _graph(captured, name)
    stage = stages_for(units)[kind]
    before = {k: (v.args[0].meta["val"].shape, v.args[1].meta["val"].shape) for k, v in _sdpa_by_unit(gm).items()}
    params_before = {n: p.shape for n, p in gm.named_parameters()}
    PassManager()(gm, rewrite_spec(stage, units))
    touched = set(stage.drop_attention) | set(stage.prune_heads) | set(stage.keep_frames)
    touched |= {u.id for u in units if u.block in stage.drop_blocks}
    after = _sdpa_by_unit(gm)
    for unit_id, shapes in before.items():
        if unit_id in touched:
            continue
        assert unit_id in after, unit_id  # spatial, cross and unplanned temporal attention remain
        node = after[unit_id]
        assert (node.args[0].meta["val"].shape, node.args[1].meta["val"].shape) == shapes
    # a removed attention takes the norm that only feeds it along
    norms = {u.rpartition(".")[0] + "." + u.rpartition(".")[2].replace("attn", "norm") for u in touched}
    for param, shape in params_before.items():
        if not any(param.startswith(f"denoiser.{t}.") for t in touched | norms | set(stage.drop_blocks)):
            assert dict(gm.named_parameters())[param].shape == shape, param


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("kind", ["block", "attention", "head", "all-heads", "frame", "mixed"])
def test_passes_are_idempotent(captured, name, kind):
    model, units, gm, inputs = _graph(captured, name)
    spec = rewrite_spec(stages_for(units)[kind], units)
    first = PassManager()(gm, spec)
    with torch.no_grad():
        once = gm(*inputs)
    code = gm.code
    second = PassManager()(gm, spec)
    assert any(first.values()) and not any(second.values())
    assert gm.code == code
    with torch.no_grad():
        assert torch.equal(gm(*inputs), once)


def test_frames_mismatch_is_reported_by_the_annotate_pass(captured):
    model, units, gm, _ = _graph(captured, "tiny-unet3d")
    wrong = {u.id: type(u)(u.id, u.block, u.heads, u.head_dim, u.frames + 1, u.channels) for u in units}
    with pytest.raises(F3Error, match="pass annotate_temporal_attention: .* does not attend over 9 frames"):
        PassManager()(gm, rewrite_spec(Stage((999, 0), drop_attention=[units[0].id]), list(wrong.values())))


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("kind", ["block", "attention", "head", "all-heads", "frame", "mixed"])
def test_eager_application_equals_the_masking_reference(captured, name, kind):
    """What `apply` runs and `plan --search` measures (the plan applied in place on the eager model)
    is what the passes compile (both are held to the masking reference)."""
    from f3compile.inplace import install
    from f3compile.planning.plan import PruningPlan

    model, units, _, inputs = captured[name]
    stage = stages_for(units)[kind]
    plan = PruningPlan.dense(model, units)
    plan.stages = [dataclasses.replace(stage, timesteps=plan.stages[0].timesteps)]
    with torch.no_grad():
        with install(model, plan, units):
            ours = model.denoise(*inputs)
        with masked(model, stage, units):
            reference = model.denoise(*inputs)
        dense = model.denoise(*inputs)  # and the hooks are gone afterwards
        assert torch.equal(dense, model.denoise(*inputs))
    assert rel(ours, reference) <= REL_EMPTY
    assert rel(dense, reference) > 1e-4
