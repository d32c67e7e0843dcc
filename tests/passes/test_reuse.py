"""Temporal reuse: compute/reuse programs, the runtime that carries residuals, and k = 1 = dense.

The reference here skips the work for real: at a reuse step the block's forward is replaced by
"input + the residual stored at its last computed step" (for an attention that is its own block,
the stored branch), without running the block. The compiled programs, the runtime and the eager
hooks `plan --search` measures with must all equal it.
"""

import contextlib
import dataclasses

import pytest
import torch

from f3compile.compiler import compile_to_dir
from f3compile.compiler.compile import ProgramLoop, compile, export_inputs
from f3compile.errors import F3Error
from f3compile.exporters import ExportConfig, export
from f3compile.manifest import load_manifest, validate_manifest
from f3compile.models import find_temporal_units, load_model
from f3compile.inplace import install
from f3compile.planning.plan import PruningPlan, Stage, reuse_patterns
from f3compile.runtime import Runtime
from f3compile.sampling import denoise_loop, initial_latents
from tests.helpers import TINY, rel

REL_LOOP = 1e-5  # whole sampling loop, fp32


def blocks_of(model):
    return list(dict.fromkeys(u.block for u in find_temporal_units(model)))


def reuse_plan(model, periods: dict[str, int], stages: int = 2) -> PruningPlan:
    """A `stages`-stage plan whose first stage reuses `periods` (the rest dense)."""
    plan = PruningPlan.dense(model, find_temporal_units(model))
    top = plan.stages[0].timesteps[0]
    cuts = [top - (top + 1) * n // stages for n in range(stages)] + [-1]
    plan.stages = [Stage(timesteps=(cuts[n], cuts[n + 1] + 1)) for n in range(stages)]
    plan.stages[0].reuse = dict(periods)
    return plan


@contextlib.contextmanager
def skipping_reference(model, periods: dict[str, int], step: int, cache: dict):
    """At `step` of the stage: blocks with step % k == 0 run and store their residual; the others
    do not run at all and return input + stored residual."""
    modules = dict(model.denoiser.named_modules())
    units = {u.id for u in find_temporal_units(model)}
    saved = {}
    for block, period in periods.items():
        if period == 1:
            continue
        module, own = modules[block], block in units
        original = module.forward
        saved[block] = original

        def forward(*args, _original=original, _block=block, _own=own, _run=step % period == 0, **kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            if _run:
                output = _original(*args, **kwargs)
                tensor = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
                cache[_block] = (tensor if _own else tensor - hidden, output)
                return output
            residual, template = cache[_block]
            value = residual if _own else hidden + residual
            if isinstance(template, tuple):
                return (value,) + tuple(template[1:])
            if hasattr(template, "sample"):
                return dataclasses.replace(template, sample=value)
            return value
        module.forward = forward
    try:
        yield
    finally:
        for block, original in saved.items():
            del modules[block].forward
            assert modules[block].forward == original


def reference_loop(model, plan, prompt, seed, steps):
    """The sampling loop with the plan's reuse done by `skipping_reference`."""
    state = {"stage": None, "step": 0, "cache": {}}

    def denoise_for(t):
        index = plan.stage_for(t)
        if index != state["stage"]:
            state.update(stage=index, step=0, cache={})
        else:
            state["step"] += 1
        step, periods = state["step"], plan.stages[index].reuse

        def call(sample, timestep, context):
            with skipping_reference(model, periods, step, state["cache"]):
                return model.denoise(sample, timestep, context)
        return call

    cond, uncond = model.encode_prompts([prompt])
    generator = torch.Generator().manual_seed(seed)
    latents = initial_latents(model.latent_shape(model.shapes), model.scheduler, generator)
    return denoise_loop(None, model.scheduler, latents, cond, uncond, steps, 7.5, generator, denoise_for=denoise_for)


def eager_loop(model, plan, prompt, seed, steps):
    """The plan applied in place on the eager model (`apply`'s path, which the search measures)."""
    cond, uncond = model.encode_prompts([prompt])
    generator = torch.Generator().manual_seed(seed)
    latents = initial_latents(model.latent_shape(model.shapes), model.scheduler, generator)
    with install(model, plan, find_temporal_units(model)):
        return denoise_loop(model.denoise, model.scheduler, latents, cond, uncond, steps, 7.5, generator)


@pytest.mark.parametrize("name", TINY + ["tiny-wan"])
def test_reuse_programs_equal_a_reference_that_skips_the_blocks(models, tmp_path, name):
    """Runtime (compiled compute + reuse programs) and eager hooks vs the skipping reference. In Wan
    (full 3-D attention) every block reads the timestep embedding through a cast that fp32 tracing
    hands from the first block to the later ones; the block is still reused as a whole."""
    model = models[name] if name in models else load_model(f"builtin:{name}")
    blocks = blocks_of(model)
    plan = reuse_plan(model, {blocks[0]: 2, blocks[-1]: 2})
    compile_to_dir(model, plan, tmp_path / "b")
    runtime = Runtime(tmp_path / "b")
    steps = 6  # 3 steps in the reusing stage: compute, reuse, compute
    ours = runtime.generate("a red circle", seed=3, steps=steps)
    expected = reference_loop(model, plan, "a red circle", 3, steps)
    assert rel(ours, expected) <= REL_LOOP
    assert rel(eager_loop(model, plan, "a red circle", 3, steps), expected) <= REL_LOOP
    # positive control: reuse changes the video, so a runtime that recomputed everything is caught
    dense = reference_loop(model, reuse_plan(model, {}), "a red circle", 3, steps)
    assert rel(ours, dense) > 1e-4
    stage = runtime.manifest["stages"][0]
    assert stage["reuse"]["periods"] == {blocks[0]: 2, blocks[-1]: 2}
    assert [p["reused"] for p in stage["reuse"]["programs"]] == [[blocks[0], blocks[-1]]]
    assert "reuse" not in runtime.manifest["stages"][1]


def test_period_one_is_exactly_dense(models):
    model = models["tiny-latte"]
    periods = {block: 1 for block in blocks_of(model)}
    plan = reuse_plan(model, periods, stages=1)
    assert plan.stages[0].is_empty and reuse_patterns(periods) == [()]
    [pruned] = compile(model, plan)
    [dense] = compile(model, None)
    assert not pruned.reuse_programs
    inputs = export_inputs(model, model.shapes, seed=4)
    with torch.no_grad():
        assert torch.equal(pruned.program.module()(*inputs), dense.program.module()(*inputs))


def test_programs_carry_residuals_and_drop_the_reused_weights(models):
    model = models["tiny-unet3d"]
    blocks = blocks_of(model)
    reused = [b for b in blocks if b != "transformer_in"][:2]
    plan = reuse_plan(model, {b: 2 for b in reused}, stages=1)
    [stage] = compile(model, plan)
    [dense] = compile(model, None)
    inputs = export_inputs(model, model.shapes, seed=4)
    with torch.no_grad():
        noise, *residuals = stage.program.module()(*inputs)
        assert torch.equal(noise, dense.program.module()(*inputs))  # the compute program is the dense model
        [variant] = stage.reuse_programs
        assert variant.reused == tuple(reused)
        # fed its own step's residuals, the reuse program gives the same prediction
        again = variant.program.module()(*inputs, *residuals)
        assert rel(again, noise) <= 1e-6
    modules = dict(model.denoiser.named_modules())
    for block, residual in zip(reused, residuals):
        hidden = {}
        handle = modules[block].register_forward_hook(
            lambda m, a, kw, out, b=block: hidden.setdefault(b, (a[0] if a else kw["hidden_states"], out)), with_kwargs=True)
        with torch.no_grad():
            model.denoise(*inputs)
        handle.remove()
        x, out = hidden[block]
        out = out[0] if isinstance(out, tuple) else getattr(out, "sample", out)
        assert torch.allclose(residual, out - x, rtol=1e-5, atol=1e-6)
    def weights_of_reused_blocks(program):
        return [n for n in program.graph_signature.parameters if any(n.startswith(f"denoiser.{b}.") for b in reused)]

    assert weights_of_reused_blocks(stage.program)  # positive control: the names are found where they exist
    assert not weights_of_reused_blocks(variant.program)


def test_mixed_periods_build_one_program_per_pattern(models, tmp_path):
    model = models["tiny-latte"]
    a, b = blocks_of(model)[:2]
    assert reuse_patterns({a: 2, b: 3}) == [(), (a, b), (b,), (a,)]
    plan = reuse_plan(model, {a: 2, b: 3}, stages=1)
    compile_to_dir(model, plan, tmp_path / "b")
    manifest = load_manifest(tmp_path / "b")
    assert [p["reused"] for p in manifest["stages"][0]["reuse"]["programs"]] == [[a, b], [b], [a]]
    ours = Runtime(tmp_path / "b").generate("a blue square", seed=1, steps=7)
    expected = reference_loop(model, plan, "a blue square", 1, 7)
    assert rel(ours, expected) <= REL_LOOP
    # what `eval` runs: the compiled programs in process, one fresh sequence per loop
    programs = ProgramLoop(compile(model, plan))
    cond, uncond = model.encode_prompts(["a blue square"])
    for _ in range(2):
        generator = torch.Generator().manual_seed(1)
        start = initial_latents(model.latent_shape(model.shapes), model.scheduler, generator)
        loop = denoise_loop(None, model.scheduler, start, cond, uncond, 7, 7.5, generator, denoise_for=programs.denoise_for())
        assert rel(loop, expected) <= REL_LOOP


def test_onnx_export_with_reuse_runs_in_onnxruntime(models, tmp_path):
    """Named residual I/O in ONNX and Triton, verified per program, dynamic CFG batch included."""
    model = models["tiny-latte"]
    blocks = blocks_of(model)
    plan = reuse_plan(model, {blocks[0]: 2, blocks[1]: 2}, stages=1)
    manifest = export(model, plan, tmp_path / "b", config=ExportConfig(samples=1, dynamic_batch=(2, 2, 4),
                                                                       triton_repo=tmp_path / "triton"))
    stage = manifest["stages"][0]
    [program] = stage["reuse"]["programs"]
    assert program["verify"]["onnxruntime_vs_torch"]["passed"] and stage["verify"]["onnxruntime_vs_torch"]["passed"]
    assert program["audit"]["removed_modules_check"] == "passed"
    names = [f"residual.{b}" for b in blocks[:2]]
    assert [o["name"] for o in stage["outputs"]] == ["noise_pred"] + names
    assert [i["name"] for i in program["inputs"]][3:] == names
    assert stage["reuse"]["residual_bytes"] == sum(4 * torch.Size(o["shape"]).numel() for o in stage["outputs"][1:])
    config = (tmp_path / "triton" / "tiny_latte_stage0_reuse1" / "config.pbtxt").read_text()
    assert all(f'name: "{n}"' in config for n in names) and "dims: [ -1," in config
    ours = Runtime(tmp_path / "b", backend="onnxruntime").generate(["a red circle", "a blue square"], seed=2, steps=6)
    torch_ = Runtime(tmp_path / "b").generate(["a red circle", "a blue square"], seed=2, steps=6)
    assert rel(ours, torch_) <= REL_LOOP
    # a manifest whose reuse program lists its residual inputs out of order is refused
    bad = load_manifest(tmp_path / "b")
    bad["stages"][0]["reuse"]["programs"][0]["inputs"] = bad["stages"][0]["reuse"]["programs"][0]["inputs"][::-1]
    with pytest.raises(F3Error, match="inputs must be"):
        validate_manifest(bad)
    # one without the program a reuse step needs is refused too (the runtime would have no program to run)
    bad = load_manifest(tmp_path / "b")
    bad["stages"][0]["reuse"]["programs"] = []
    with pytest.raises(F3Error, match="one program per pattern of reused blocks"):
        validate_manifest(bad)


@pytest.mark.parametrize("change, message", [
    (lambda s, b: s.update(reuse={b[0]: 0}), r"integer period in \[1, 64\]"),
    (lambda s, b: s.update(reuse={b[0]: 2}, drop_blocks=[b[0]]), "either dropped or reused"),
    (lambda s, b: s.update(reuse={"down_blocks.9": 2}), "not a temporal block"),
    (lambda s, b: s.update(reuse=dict(zip(b, (2, 3, 5, 7, 11)))), "more than 8 programs"),
])
def test_invalid_reuse_is_refused(models, change, message):
    model = models["tiny-unet3d"]
    data = reuse_plan(model, {}, stages=1).to_dict()
    change(data["stages"][0], blocks_of(model))
    with pytest.raises(F3Error, match=message):
        PruningPlan.from_dict(data)
