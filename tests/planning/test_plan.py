import copy
import json

import pytest
import torch

from f3compile import F3Error
from f3compile.models import find_temporal_units
from f3compile.planning import PruningPlan, make_plan
from f3compile.planning.plan import GRANULARITIES as _ALL
from f3compile.calibration import criteria
from f3compile.planning.cost import ModelCost, count_flops
from f3compile.planning.inspect import render
from tests.helpers import TINY

GRANULARITIES = [g for g in _ALL if g != "window"]  # temporal units; window plans: tests/models/test_wan.py

FLOP_REL = 1e-9  # counted FLOPs are integers: derived removals must match exactly (up to rounding)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("stages", [1, 2])
def test_make_plan_counts_and_stage_ranges(calibrations, name, granularity, stages, tmp_path):
    _, stats = calibrations[name]
    plan = make_plan(stats, 0.5, granularity, stages=stages)
    assert len(plan.stages) == stages
    assert plan.stages[0].timesteps[0] == 999 and plan.stages[-1].timesteps[1] == 0
    for before, after in zip(plan.stages, plan.stages[1:]):
        assert after.timesteps[0] == before.timesteps[1] - 1
    units, blocks = stats.units, stats.blocks
    for stage in plan.stages:
        if granularity == "block":
            assert len(stage.drop_blocks) == round(0.5 * len(blocks) + 1e-9)
        elif granularity == "attention":
            assert len(stage.drop_attention) == int(0.5 * len(units) + 0.5)
        elif granularity == "head":
            total = sum(u.heads for u in units)
            assert sum(map(len, stage.prune_heads.values())) == int(0.5 * total + 0.5)
        else:
            total = sum(u.frames for u in units)
            pruned = sum(u.frames - len(stage.keep_frames.get(u.id, range(u.frames))) for u in units)
            assert pruned == int(0.5 * total + 0.5)
    plan.save(tmp_path / "plan.json")
    assert PruningPlan.load(tmp_path / "plan.json").to_dict() == plan.to_dict()


def test_selection_prunes_the_lowest_scores(calibrations):
    _, stats = calibrations["tiny-unet3d"]
    plan = make_plan(stats, 0.3, "attention")
    scores = {u.id: criteria.unit_score(stats, u.id, "cross_frame_mass") for u in stats.units}
    dropped = set(plan.stages[0].drop_attention)
    assert max(scores[u] for u in dropped) <= min(scores[u] for u in scores if u not in dropped)


def test_cross_frame_mass_is_one_minus_the_diagonal(calibrations):
    _, stats = calibrations["tiny-latte"]
    unit = stats.units[0]
    attn = stats.unit(unit.id, "attn").double().sum(0) / stats.unit(unit.id, "rows").double().sum()
    expected = 1 - torch.diagonal(attn, dim1=-2, dim2=-1).mean(-1)
    torch.testing.assert_close(criteria.head_scores(stats, unit.id, "cross_frame_mass"), expected.float())


def test_ratio_extremes(calibrations):
    _, stats = calibrations["tiny-unet3d"]
    assert all(s.is_empty for s in make_plan(stats, 0.0, "head", stages=2).stages)
    full_blocks = make_plan(stats, 1.0, "block").stages[0]
    assert full_blocks.drop_blocks == [b.id for b in stats.blocks]
    full_frames = make_plan(stats, 1.0, "frame").stages[0]
    assert all(len(full_frames.keep_frames[u.id]) == 1 for u in stats.units)  # one key frame always kept


@pytest.mark.parametrize("kwargs, message", [
    ({"ratio": 1.5}, "--ratio must be in"),
    ({"ratio": -0.1}, "--ratio must be in"),
    ({"ratio": 0.5, "granularity": "layer"}, "--granularity"),
    ({"ratio": 0.5, "criterion": "magic"}, "--criterion"),
    ({"ratio": 0.5, "stages": 0}, "--stages"),
    ({"ratio": 0.5, "stages": 99}, "--stages"),
])
def test_make_plan_rejects_bad_arguments(calibrations, kwargs, message):
    _, stats = calibrations["tiny-latte"]
    with pytest.raises(F3Error, match=message):
        make_plan(stats, **kwargs)


def _plan_dict(calibrations):
    _, stats = calibrations["tiny-unet3d"]
    return make_plan(stats, 0.5, "head", stages=2).to_dict()


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(extra=1), "unknown key"),
    (lambda d: d["stages"][0].update(drop_everything=True), "unknown key"),
    (lambda d: d.pop("scores"), "missing key"),
    (lambda d: d.update(schema="f3compile.plan/0"), "schema"),
    (lambda d: d.update(ratio=2), "ratio"),
    (lambda d: d.update(granularity="layer"), "granularity"),
    (lambda d: d["stages"][0].update(drop_attention=["no.such.unit"]), "not a temporal attention"),
    (lambda d: d["stages"][0].update(drop_blocks=["no.such.block"]), "not a temporal block"),
    (lambda d: d["stages"][0].update(prune_heads={"transformer_in.transformer_blocks.0.attn1": [8]}), "out of range"),
    (lambda d: d["stages"][0].update(keep_frames={"transformer_in.transformer_blocks.0.attn1": [0, 9]}), "out of range"),
    (lambda d: d["stages"][0].update(keep_frames={"transformer_in.transformer_blocks.0.attn1": []}), "non-empty"),
    (lambda d: d["stages"][1].update(timesteps=[400, 0]), "right below"),
    (lambda d: d["stages"][1].update(timesteps=[d["stages"][0]["timesteps"][1] - 1, 5]), "end at timestep 0"),
])
def test_plan_validation(calibrations, tmp_path, mutate, message):
    data = copy.deepcopy(_plan_dict(calibrations))
    mutate(data)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    with pytest.raises(F3Error, match=message):
        PruningPlan.load(path)


def test_invalid_json_and_missing_file(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(F3Error, match="not valid JSON"):
        PruningPlan.load(tmp_path / "bad.json")
    with pytest.raises(F3Error, match="does not exist"):
        PruningPlan.load(tmp_path / "none.json")


def test_plan_for_another_model_is_refused(calibrations, models):
    _, stats = calibrations["tiny-unet3d"]
    plan = make_plan(stats, 0.5, "head")
    other = models["tiny-animatediff"]
    with pytest.raises(F3Error, match="was made for model builtin:tiny-unet3d"):
        plan.check_model(other, find_temporal_units(other))


@pytest.mark.parametrize("name", ["tiny-unet3d", "tiny-latte"])
def test_block_flops_removed_match_a_recount_without_the_block(models, calibrations, name, monkeypatch):
    """Independent check of `inspect`'s numbers: count the model again with blocks bypassed."""
    model = models[name]
    _, stats = calibrations[name]
    units = find_temporal_units(model)
    plan = make_plan(stats, 0.5, "block")
    cost = ModelCost.measure(model, units)
    flops_removed, params_removed = cost.stage_removed(plan.stages[0])
    modules = dict(model.denoiser.named_modules())
    for block in plan.stages[0].drop_blocks:
        # output = input, in the return type the caller expects (Latte blocks return a tensor)
        identity = (lambda hidden_states, *a, **k: hidden_states) if model.family == "latte" \
            else (lambda hidden_states, *a, **k: (hidden_states,))
        monkeypatch.setattr(modules[block], "forward", identity)
    recount, _ = count_flops(model.denoise_module(), model.example_inputs())
    monkeypatch.undo()
    assert flops_removed == cost.total_flops - recount
    removed_params = sum(sum(p.numel() for p in modules[b].parameters()) for b in plan.stages[0].drop_blocks)
    assert params_removed == removed_params


def test_head_flops_scale_with_kept_heads(models, calibrations):
    model = models["tiny-unet3d"]
    _, stats = calibrations["tiny-unet3d"]
    units = find_temporal_units(model)
    cost = ModelCost.measure(model, units)
    unit = units[0]
    plan = PruningPlan.from_dict(make_plan(stats, 0.0, "head").to_dict())
    plan.stages[0].prune_heads = {unit.id: list(range(unit.heads // 2))}
    flops, params = cost.stage_removed(plan.stages[0])
    assert flops == round(cost.flops[unit.id] / 2)
    attention = dict(model.denoiser.named_modules())[unit.id]
    qkv = sum(p.numel() for m in (attention.to_q, attention.to_k, attention.to_v) for p in m.parameters())
    assert params == (qkv + attention.to_out[0].weight.numel()) // 2


def test_render_lists_every_unit_and_savings(models, calibrations):
    _, stats = calibrations["tiny-unet3d"]
    text = render(make_plan(stats, 0.5, "attention", stages=2), models["tiny-unet3d"])
    for unit in stats.units:
        assert text.count(unit.id) == 2  # one row per stage
    assert text.count("removed per denoiser call") == 2 and "FLOP-predicted speedup" in text
    assert "pruned (attention)" in text and "kept" in text


@pytest.mark.parametrize("granularity", ["block", "attention", "head"])
def test_random_plans_are_reproducible_controls_of_the_same_size(calibrations, granularity, tmp_path):
    _, stats = calibrations["tiny-unet3d"]
    chosen = make_plan(stats, 0.5, granularity, stages=2)
    first = make_plan(stats, 0.5, granularity, "random", stages=2, seed=1)
    again = make_plan(stats, 0.5, granularity, "random", stages=2, seed=1)
    assert first.criterion == "random:1"
    assert first.to_dict() == again.to_dict()
    others = [make_plan(stats, 0.5, granularity, "random", stages=2, seed=s).to_dict()["stages"] for s in range(2, 7)]
    assert any(o != first.to_dict()["stages"] for o in others)  # seeds give different selections

    def size(plan):
        return [len(s.drop_blocks) + len(s.drop_attention) + sum(map(len, s.prune_heads.values())) for s in plan.stages]

    assert size(first) == size(chosen)
    first.save(tmp_path / "random.json")
    assert PruningPlan.load(tmp_path / "random.json").criterion == "random:1"


def test_random_criterion_needs_a_numeric_seed_and_no_frames(calibrations, tmp_path):
    _, stats = calibrations["tiny-unet3d"]
    with pytest.raises(F3Error, match="not frame"):
        make_plan(stats, 0.5, "frame", "random")
    data = make_plan(stats, 0.5, "head", "random", seed=3).to_dict()
    data["criterion"] = "random:x"
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(F3Error, match="criterion 'random:x' is unknown"):
        PruningPlan.load(tmp_path / "bad.json")


# -- schedules: a ratio per stage, or a speed budget over (unit, stage) pairs ------------------
def test_a_ratio_per_stage(calibrations, tmp_path):
    _, stats = calibrations["tiny-unet3d"]
    plan = make_plan(stats, [0.0, 0.5, 1.0], "block", stages=3)
    blocks = [b.id for b in stats.blocks]
    assert [len(s.drop_blocks) for s in plan.stages] == [0, round(0.5 * len(blocks) + 1e-9), len(blocks)]
    assert plan.stage_ratios() == [0.0, 0.5, 1.0] and plan.ratio_text() == "0,0.5,1"
    # each stage ranks on its own steps: the middle stage equals a one-ratio plan's middle stage
    assert plan.stages[1].drop_blocks == make_plan(stats, 0.5, "block", stages=3).stages[1].drop_blocks
    plan.save(tmp_path / "plan.json")
    assert PruningPlan.load(tmp_path / "plan.json").to_dict() == plan.to_dict()
    with pytest.raises(F3Error, match="gives 2 values for --stages 3"):
        make_plan(stats, [0.0, 0.5], "block", stages=3)
    data = plan.to_dict()
    data["ratio"] = [0.0, 0.5]
    with pytest.raises(F3Error, match="ratio lists 2 values for 3 stages"):
        PruningPlan.from_dict(data)


def _candidates(stats, granularity, stages):
    """(score, stage, order, item) for every (unit, stage) pair, recomputed from the criteria."""
    from f3compile.planning.plan import split_steps

    order = {u.id: i for i, u in enumerate(stats.units)}
    rows = []
    for number, group in enumerate(split_steps(len(stats.timesteps), stages)):
        if granularity == "block":
            rows += [(criteria.block_score(stats, b.id, "cross_frame_mass", group), number, order[b.units[0]], b.id)
                     for b in stats.blocks]
        else:
            rows += [(criteria.unit_score(stats, u.id, "cross_frame_mass", group), number, order[u.id], u.id)
                     for u in stats.units]
    return sorted(rows, key=lambda r: r[:3])


@pytest.mark.parametrize("name, granularity", [("tiny-unet3d", "block"), ("tiny-tuneavideo", "attention")])
def test_target_speedup_prunes_the_lowest_pairs_until_the_prediction_reaches_it(models, calibrations, name, granularity):
    from f3compile.planning.inspect import summarize
    from f3compile.planning.schedule import make_target_plan, predicted_speedup

    model, (_, stats) = models[name], calibrations[name]
    units = find_temporal_units(model)
    cost = ModelCost.measure(model, units)
    everything = make_plan(stats, 1.0, granularity, stages=3)
    most = predicted_speedup(everything, cost)
    target = 1 + 0.5 * (most - 1)
    plan = make_target_plan(stats, cost, target, granularity, stages=3)
    # independent of the planner: the trajectory-weighted prediction from `inspect`'s summary
    summary = summarize(plan, model, units)
    reached = summary["total_flops"] / (summary["total_flops"] - summary["trajectory_flops_removed"])
    assert reached >= target and plan.budget["predicted_speedup"] == pytest.approx(reached, rel=1e-6)
    chosen = {(number, item) for number, stage in enumerate(plan.stages)
              for item in (stage.drop_blocks if granularity == "block" else stage.drop_attention)}
    ranked = [(number, item) for _, number, _, item in _candidates(stats, granularity, 3)]
    assert chosen == set(ranked[:len(chosen)])  # a prefix of the ranking ...
    fewer = PruningPlan.from_dict(plan.to_dict())
    last_stage, last_item = ranked[len(chosen) - 1]
    getattr(fewer.stages[last_stage], "drop_blocks" if granularity == "block" else "drop_attention").remove(last_item)
    assert predicted_speedup(fewer, cost) < target  # ... and the shortest one that reaches the target
    size = len(stats.blocks) if granularity == "block" else len(units)
    assert plan.ratio == [round(len(getattr(s, "drop_blocks" if granularity == "block" else "drop_attention")) / size, 6)
                          for s in plan.stages]
    with pytest.raises(F3Error, match="out of reach"):
        make_target_plan(stats, cost, most * 1.01, granularity, stages=3)
    assert "budget: target speedup" in render(plan, model)


def test_inspect_counts_a_preset_on_the_meta_device_as_on_its_weights(tmp_path):
    """`inspect --model builtin:arch-…` builds the preset without weights: the counts equal those of the
    preset with weights, and a plan made for that preset (any granularity) is inspected as it is."""
    from f3compile import api
    from f3compile.models import load_model
    from f3compile.models.base import VideoShapes
    from f3compile.options import Shapes

    spec, shapes = "builtin:arch-latte,width-scale=0.125", VideoShapes(1, 16, 64, 64)  # 2 heads per unit
    counts = []
    for meta in (True, False):
        model = load_model(spec, meta=meta)
        units = find_temporal_units(model, shapes)
        cost = ModelCost.measure(model, units, shapes)
        counts.append((cost.total_flops, [cost.flops[u.id] for u in units]))
    assert counts[0] == counts[1] and counts[0][0] > 0
    plan = PruningPlan.dense(model, units)
    plan.stages[0].prune_heads = {u.id: list(range(u.heads // 2)) for u in units}
    plan.save(tmp_path / "heads.json")
    text = api.inspect(tmp_path / "heads.json", spec, Shapes(16, 64, 64))
    assert "carried over" not in text and text.count("prune heads") == len(units)
