"""`plan --search`: accepted steps stay within the error bound, the recorded error is the error the
compiled plan really has, and the CLI writes a plan that compiles."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from f3compile import F3Error
from f3compile.cli import main
from f3compile.compiler.compile import compile as compile_plan
from f3compile.models import find_temporal_units
from f3compile.planning.cost import ModelCost
from f3compile.planning.search import search_plan
from f3compile.sampling import denoise_loop, initial_latents

PROMPTS = ["a red circle moving left", "a blue square"]  # the `calibrations` fixture's prompts
REL_RECORDED = 1e-4  # recorded (eager) vs compiled-program error of the final latents


def compiled_error(model, stats, plan) -> float:
    """Final-latent error of the *compiled* plan vs dense, over the calibration prompts and seed."""
    compiled = compile_plan(model, plan)
    meta = stats.meta
    shape = model.latent_shape(model.shapes)
    starts = [initial_latents(shape, model.scheduler, torch.Generator().manual_seed(meta["seed"] + i))  # seed + i
              for i in range(len(PROMPTS))]
    programs = [{(): stage.program.module()} | {v.reused: v.program.module() for v in stage.reuse_programs}
                for stage in compiled]

    def loop_denoise_for():
        """Stage switching and, within a stage, the reuse program of each step with its residuals."""
        state = {"stage": None, "step": -1, "cache": {}}

        def denoise_for(t):
            index = plan.stage_for(t)
            if index != state["stage"]:
                state.update(stage=index, step=-1, cache={})
            state["step"] += 1
            stage, step, cache = plan.stages[index], state["step"], state["cache"]
            reused = tuple(b for b in stage.reused_blocks if step % stage.reuse[b])

            def call(*args):
                output = programs[index][reused](*args, *(cache[b] for b in reused))
                if not isinstance(output, tuple):  # no residual outputs (nothing reused, or all of it)
                    return output
                cache.update(zip([b for b in stage.reused_blocks if b not in reused], output[1:]))
                return output[0]
            return call
        return denoise_for

    errors = []
    for start, prompt in zip(starts, PROMPTS):
        cond, uncond = model.encode_prompts([prompt])
        loop = dict(steps=meta["steps"], guidance_scale=meta["guidance_scale"])
        dense = denoise_loop(model.denoise, model.scheduler, start.clone(), cond, uncond, generator=torch.Generator(), **loop)
        pruned = denoise_loop(None, model.scheduler, start.clone(), cond, uncond, generator=torch.Generator(),
                              denoise_for=loop_denoise_for(), **loop)
        errors.append(float((pruned - dense).norm() / dense.norm()))
    return sum(errors) / len(errors)


def replayed(steps) -> dict:
    """(stage, block) -> action after every recorded step in order (a step sets its pair's action;
    "dense" leaves the pair without one)."""
    actions = {}
    for step in steps:
        actions[(step.stage, step.block)] = step.action
    return {pair: action for pair, action in actions.items() if action != "dense"}


def actions_in(plan, units) -> dict:
    """(stage, block) -> action, read from the plan's stages."""
    found = {}
    for number, stage in enumerate(plan.stages):
        for block in stage.drop_blocks:
            found[(number, block)] = "drop"
        for block, period in stage.reuse.items():
            found[(number, block)] = f"reuse:{period}"
        for unit in units:
            if unit.id in stage.prune_heads:
                found[(number, unit.block)] = "heads"
            if unit.id in stage.windows:
                found[(number, unit.block)] = f"window:{stage.windows[unit.id][0]}"
    return found


@pytest.mark.slow
# tiny-latte, two stages; a UNet family (Tune-A-Video's) is searched through the CLI below
@pytest.mark.parametrize("name, stages", [("tiny-latte", 2)])
def test_search_stays_within_the_bound_and_records_the_true_error(models, calibrations, name, stages):
    model, (_, stats) = models[name], calibrations[name]
    units = find_temporal_units(model)
    cost = ModelCost.measure(model, units)
    bound = 0.05
    plan, steps = search_plan(model, stats, PROMPTS, cost, units, max_error=bound, stages=stages)
    assert steps, "nothing was within the bound: the test needs a looser bound"
    assert all(step.error is None or step.error <= bound for step in steps)
    moves = [s for s in steps if not s.exchange]  # the ranking's moves, before any exchange
    assert [s.predicted_speedup for s in moves] == sorted(s.predicted_speedup for s in moves)
    assert len({(s.stage, s.block) for s in moves}) == len(moves)  # one action per (stage, block)
    assert plan.search["calls"] <= 20 * plan.search["loop_calls"]
    assert plan.search["error"] == pytest.approx(steps[-1].error, abs=1e-6)
    assert replayed(steps) == actions_in(plan, units)  # the recorded path is the plan
    assert compiled_error(model, stats, plan) == pytest.approx(plan.search["error"], rel=REL_RECORDED, abs=1e-7)
    from f3compile.planning.schedule import predicted_speedup

    assert predicted_speedup(plan, cost) == pytest.approx(plan.search["predicted_speedup"], rel=1e-6)


def test_search_over_reuse_records_the_error_of_the_reuse_programs(models, calibrations):
    """Reuse alone: the measured (eager) error equals the compiled compute/reuse programs' error."""
    model, (_, stats) = models["tiny-latte"], calibrations["tiny-latte"]
    units = find_temporal_units(model)
    cost = ModelCost.measure(model, units)
    plan, steps = search_plan(model, stats, PROMPTS, cost, units, max_error=1.0, stages=1, actions=("reuse",),
                              reuse_period=3)
    assert steps and all(step.action == "reuse:3" for step in steps)
    assert plan.stages[0].reuse == {step.block: 3 for step in steps} and not plan.stages[0].drop_blocks
    assert plan.search["actions"] == ["reuse:3"]
    assert plan.search["error"] > 1e-4  # reuse changed the result: the comparison below can fail
    assert compiled_error(model, stats, plan) == pytest.approx(plan.search["error"], rel=REL_RECORDED, abs=1e-7)


def test_search_to_a_target_speedup(models, calibrations):
    from f3compile.planning import make_plan
    from f3compile.planning.schedule import predicted_speedup

    model, (_, stats) = models["tiny-latte"], calibrations["tiny-latte"]
    units = find_temporal_units(model)
    cost = ModelCost.measure(model, units)
    target = 1 + 0.6 * (predicted_speedup(make_plan(stats, 1.0, "block", stages=2), cost) - 1)
    plan, steps = search_plan(model, stats, PROMPTS, cost, units, target_speedup=target, stages=2, actions=("drop",))
    assert plan.search["predicted_speedup"] >= target > 1.0
    assert all(s.action in ("drop", "dense") for s in steps) and not any(stage.prune_heads for stage in plan.stages)
    moves = [s for s in steps if not s.exchange]
    assert len(moves) > 1 and moves[-2].predicted_speedup < target  # the moves stop as soon as it is reached
    with pytest.raises(F3Error, match="out of reach"):
        search_plan(model, stats, PROMPTS, cost, units, target_speedup=target, max_error=1e-9, stages=2)
    with pytest.raises(F3Error, match="needs --max-error"):
        search_plan(model, stats, PROMPTS, cost, units)


def test_a_target_beyond_the_gentlest_actions_upgrades_them(models, calibrations):
    """Reuse everywhere is not fast enough: accepted reuses are replaced by drops until the target is
    met; the plan stays valid and its recorded error is the compiled one."""
    from f3compile.planning import make_plan
    from f3compile.planning.schedule import predicted_speedup

    model, (_, stats) = models["tiny-latte"], calibrations["tiny-latte"]
    units = find_temporal_units(model)
    cost = ModelCost.measure(model, units)
    reuse_all = predicted_speedup(make_plan(stats, 1.0, "block", stages=1, reuse=2), cost)
    drop_all = predicted_speedup(make_plan(stats, 1.0, "block", stages=1), cost)
    target = (reuse_all + drop_all) / 2
    plan, steps = search_plan(model, stats, PROMPTS, cost, units, target_speedup=target, stages=1,
                              actions=("reuse", "drop"))
    assert plan.search["predicted_speedup"] >= target > reuse_all
    upgraded = [s for s in steps if s.action == "drop" and any(
        t.block == s.block and t.action == "reuse:2" for t in steps[:steps.index(s)])]
    assert upgraded, [s.to_dict() for s in steps]
    stage = plan.stages[0]
    assert not set(stage.drop_blocks) & set(stage.reuse)
    assert plan.ratio == [1.0]  # both blocks decided, counted once each
    assert plan.ratio == [len(actions_in(plan, units)) / len(stats.blocks)]
    assert compiled_error(model, stats, plan) == pytest.approx(plan.search["error"], rel=REL_RECORDED, abs=1e-7)


def test_longer_reuse_periods_come_before_dropping(models, calibrations):
    """With periods 2 and 4 and reuse only, a target above reuse-2-everywhere is met by upgrading
    blocks to period 4; the plan holds only reuses and its recorded error is the compiled one."""
    from f3compile.planning import make_plan
    from f3compile.planning.schedule import predicted_speedup

    model, (_, stats) = models["tiny-latte"], calibrations["tiny-latte"]
    units = find_temporal_units(model)
    cost = ModelCost.measure(model, units)
    k2 = predicted_speedup(make_plan(stats, 1.0, "block", stages=1, reuse=2), cost)
    k4 = predicted_speedup(make_plan(stats, 1.0, "block", stages=1, reuse=4), cost)
    target = (k2 + k4) / 2
    plan, steps = search_plan(model, stats, PROMPTS, cost, units, target_speedup=target, stages=1,
                              actions=("reuse",), reuse_periods=(2, 4))
    assert plan.search["actions"] == ["reuse:2", "reuse:4"]
    assert plan.search["predicted_speedup"] >= target > k2
    assert 4 in plan.stages[0].reuse.values() and not plan.stages[0].drop_blocks
    assert compiled_error(model, stats, plan) == pytest.approx(plan.search["error"], rel=REL_RECORDED, abs=1e-7)
    with pytest.raises(F3Error, match="distinct integers"):
        search_plan(model, stats, PROMPTS, cost, units, target_speedup=target, actions=("reuse",), reuse_periods=(2, 1))


def test_exchanges_are_every_plan_one_or_two_pairs_away_least_estimated_error_first():
    """Written out by hand for two (stage, block) pairs, one holding an action: every change of one
    pair and of both (never two changes to one pair), each with its estimated change of error and of
    the share of FLOPs removed, in order of the first, then the most removed; "dense" gives an action
    up, and applied it leaves the block without one."""
    from f3compile.planning.plan import Stage
    from f3compile.planning.search import DENSE, _apply, _exchanges

    a, b = (0, "x"), (0, "y")
    options = {a: {"drop": (0.4, 1.0), "reuse:2": (0.1, 0.25)}, b: {"drop": (0.3, 1.0)}}  # (estimate, gain)
    share = {"drop": 0.5, "reuse:2": 0.2, DENSE: 0.0}  # 1 - 1 / (1 + gain)
    estimate = {a: {"drop": 0.4, "reuse:2": 0.1, DENSE: 0.0}, b: {"drop": 0.3, DENSE: 0.0}}
    assign = {a: "reuse:2"}
    singles = [((a, "drop"),), ((a, DENSE),), ((b, "drop"),)]
    expected = [(estimate[p][x] - estimate[p][assign.get(p, DENSE)], share[x] - share[assign.get(p, DENSE)], c)
                for c in singles for p, x in c]
    for (p1, x1), (p2, x2) in [((a, "drop"), (b, "drop")), ((a, DENSE), (b, "drop"))]:
        expected.append((estimate[a][x1] - 0.1 + estimate[b][x2], share[x1] - 0.2 + share[x2], ((p1, x1), (p2, x2))))
    found = _exchanges(assign, options, order=lambda pair: pair)
    assert sorted(c[2] for c in found) == sorted(c[2] for c in expected)
    numbers = {c[2]: c[:2] for c in found}
    assert all(numbers[c[2]] == pytest.approx(c[:2]) for c in expected)
    assert [c[2] for c in found] == [c[2] for c in sorted(expected, key=lambda c: (round(c[0], 9), -c[1]))]
    from types import SimpleNamespace

    units = [SimpleNamespace(block=block, id=f"{block}.attn", heads=2) for block in ("x", "y", "z")]
    order = {unit.id: [1, 0] for unit in units}
    stage = Stage(timesteps=(999, 0), drop_blocks=["x"], reuse={"y": 2}, prune_heads={"z.attn": [1]})
    _apply(stage, "x", DENSE, units, order)
    _apply(stage, "y", DENSE, units, order)
    _apply(stage, "z", DENSE, units, order)
    assert stage.drop_blocks == [] and stage.reuse == {} and stage.prune_heads == {} and not stage.windows
    _apply(stage, "z", "heads", units, order)  # the control: an action does set something here
    assert stage.prune_heads == {"z.attn": [1]}


def test_exchanges_spend_the_budget_left_on_a_better_plan(models, calibrations):
    """With a target, the moves reach it in a few loops; the budget left measures exchanges of one or
    two (stage, block) actions, and each one kept lowers the measured error at the target: the plan
    ends with less error than the moves reached, its recorded error is the compiled one, and its
    recorded path replays to it."""
    model, (_, stats) = models["tiny-latte"], calibrations["tiny-latte"]
    units = find_temporal_units(model)
    cost = ModelCost.measure(model, units)
    plan, steps = search_plan(model, stats, PROMPTS, cost, units, target_speedup=1.1, stages=2)
    moves = [s for s in steps if not s.exchange]
    kept = [s.error for s in steps if s.exchange and s.error is not None]  # the last change of each exchange
    assert kept, [s.to_dict() for s in steps]
    assert moves[-1].error is not None and [moves[-1].error, *kept] == sorted([moves[-1].error, *kept], reverse=True)
    assert len(set(kept)) == len(kept) and kept[-1] < moves[-1].error
    assert plan.search["error"] == pytest.approx(kept[-1], abs=1e-6) and plan.search["predicted_speedup"] >= 1.1
    assert all(s.predicted_speedup >= 1.1 for s in steps if s.exchange and s.error is not None)
    assert replayed(steps) == actions_in(plan, units)
    assert plan.search["calls"] <= 20 * plan.search["loop_calls"]
    assert compiled_error(model, stats, plan) == pytest.approx(plan.search["error"], rel=REL_RECORDED, abs=1e-7)


@pytest.mark.slow
def test_search_from_the_cli(capsys, tmp_path, calibrations):
    directory, _ = calibrations["tiny-tuneavideo"]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    code = main(["plan", str(directory), "--search", "--prompts", str(prompts), "--max-error", "0.1", "--stages", "2",
                 "--actions", "drop", "-o", str(tmp_path / "plan.json")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "alone: stage 0" in out and "searched" in out
    plan = json.loads((tmp_path / "plan.json").read_text())
    steps = plan["search"]["accepted"]
    moves = sum(1 for step in steps if not step.get("exchange"))
    kept = sum(1 for step in steps if step.get("exchange") and step["error"] is not None)
    assert f"searched, {moves} accepted step(s)" + (f", {kept} exchange(s) kept" if kept else "") + ", error" in out
    assert plan["search"]["max_error"] == 0.1 and plan["search"]["prompts"] == 2
    assert all(step["error"] is None or step["error"] <= 0.1 for step in plan["search"]["accepted"])
    assert plan["search"]["error"] <= 0.1
    code = main(["inspect", str(tmp_path / "plan.json")])
    assert code == 0
    code = main(["plan", str(directory), "--search", "--max-error", "0.1", "-o", str(tmp_path / "p2.json")])
    assert code == 2 and "pass --prompts" in capsys.readouterr().err


def hand_trajectory(model, stats, prompt: str, index: int):
    """The dense loop written out here: latents before every step (and the final ones), the
    scheduler as it was before each step, and a guided noise prediction for any denoise function."""
    meta = stats.meta
    latents = initial_latents(model.latent_shape(model.shapes), model.scheduler,
                              torch.Generator().manual_seed(meta["seed"] + index))
    cond, uncond = model.encode_prompts([prompt])
    scheduler = copy.deepcopy(model.scheduler)
    scheduler.set_timesteps(meta["steps"])

    def guided(fn, sched, x, t):
        out = fn(sched.scale_model_input(torch.cat([x, x]), t), torch.full((2,), float(t)), torch.cat([uncond, cond]))
        u, c = out.chunk(2)
        return u + meta["guidance_scale"] * (c - u)

    xs, before = [], []
    with torch.no_grad():
        for t in scheduler.timesteps:
            xs.append(latents)
            before.append(copy.deepcopy(scheduler))
            latents = scheduler.step(guided(model.denoise, scheduler, latents, t), t, latents).prev_sample
    return xs + [latents], before, guided


@pytest.mark.parametrize("name, action, calls", [("tiny-latte", "drop", [3]), ("tiny-latte", "reuse:2", [2, 3]),
                                                 ("tiny-wan", "window:0", [2])])
def test_estimates_are_one_step_taken_from_the_dense_trajectory(models, calibrations, name, action, calls):
    """The search's estimate of an action at step s equals, per prompt, ||step(x_s) - x_{s+1}|| /
    ||x_final|| computed on a dense loop written here (a reuse first runs the step before, whose
    residual it re-adds), averaged over the prompts; tiny-wan's multistep UniPC steps from the
    history the dense loop had (kept on the host between uses)."""
    from f3compile import api
    from f3compile.calibration import CalibrationConfig
    from f3compile.inplace import install
    from f3compile.models.loading import load_model
    from f3compile.planning import make_plan
    from f3compile.planning.search import _apply, _Runner

    if name in models:
        model, (_, stats) = models[name], calibrations[name]
    else:
        model = load_model(f"builtin:{name}")
        stats = api.calibrate(model, PROMPTS, CalibrationConfig(steps=6, heatmaps=False))
    units = find_temporal_units(model)
    plan = make_plan(stats, 0.0, "block", stages=1)
    block = stats.blocks[0].id
    _apply(plan.stages[0], block, action, units, {})
    runner = _Runner(model, stats, PROMPTS, units, keep=set(calls))
    estimate = runner.step_change(plan, [(calls, calls[-1:])])

    expected = []
    for index, prompt in enumerate(PROMPTS):
        xs, before, guided = hand_trajectory(model, stats, prompt, index)
        assert torch.equal(xs[-1], runner.dense[index])
        applied = install(model, plan, units)
        try:
            with torch.no_grad():
                for step in calls:
                    sched = copy.deepcopy(before[step])
                    t = sched.timesteps[step]
                    noise = guided(model.denoise, sched, xs[step], t)
                moved = sched.step(noise, t, xs[calls[-1]]).prev_sample
        finally:
            applied.remove()
        expected.append(float((moved - xs[calls[-1] + 1]).norm() / xs[-1].norm()))
    assert estimate > 1e-6  # the action changed the step: the comparison can fail
    assert estimate == pytest.approx(sum(expected) / len(expected), rel=1e-5)


def test_search_spends_at_most_its_budget_of_denoiser_calls(models, calibrations, monkeypatch):
    """Counted here around the model's denoise: the calls per prompt are what the plan records and
    within the budget; a budget too small to estimate every action leaves some out, and the plan
    still stays within the bound with its error measured whole."""
    model, (_, stats) = models["tiny-latte"], calibrations["tiny-latte"]
    units = find_temporal_units(model)
    cost = ModelCost.measure(model, units)
    counted = []
    denoise = model.denoise
    monkeypatch.setattr(model, "denoise", lambda *args: counted.append(1) or denoise(*args))
    budget, loop = 4.0, stats.meta["steps"]
    plan, steps = search_plan(model, stats, PROMPTS, cost, units, max_error=0.05, stages=2, search_budget=budget)
    assert len(counted) / len(PROMPTS) == pytest.approx(plan.search["calls"])
    assert len(counted) / len(PROMPTS) <= budget * loop
    assert plan.search["screened"] > 0 and plan.search["samples"] == 1 and plan.search["loop_calls"] == loop
    assert plan.search["error"] <= 0.05
    if steps:
        assert plan.search["error"] == pytest.approx(steps[-1].error, abs=1e-6)
    with pytest.raises(F3Error, match="--search-budget"):
        search_plan(model, stats, PROMPTS, cost, units, max_error=0.05, search_budget=1.5)
