"""`f3compile.apply`: a plan run inside the user's own diffusers pipeline object.

Each family's pipeline is built from diffusers' classes, written with `save_pretrained` and loaded
back as a user would; the applied pipeline's own call must reproduce `generate` of the same plan's
build from the same start latents, windows must equal diffusers' own processor given the banded mask
(tests/passes/window_reference.py, nothing of f3compile's kernels), and `remove()` must give back the
object bit for bit.
"""

from __future__ import annotations

import pytest
import torch

from f3compile import api
from f3compile.errors import F3Error
from f3compile.models import VideoShapes, find_temporal_units, load_model
from f3compile.planning.plan import PruningPlan, Stage
from tests.helpers import assert_one_line, rel
from tests.passes.window_reference import banded

PARITY = 1e-4  # relative L2 of final latents, applied pipeline vs the build's runtime, fp32 (the bound)
EXACT = 1e-5  # relative L2 of one denoiser call, applied windows vs the banded-mask reference
STEPS = 4
PROMPT = "a red circle moving left"
FAMILIES = ["tiny-unet3d", "tiny-animatediff", "tiny-latte", "tiny-tuneavideo", "tiny-wan", "tiny-wan2.2", "tiny-cogvideox"]


@pytest.fixture(scope="module", params=FAMILIES)
def saved(request, tmp_path_factory):
    """(model loaded from a save_pretrained directory, its units): the user's own pipeline object."""
    from f3compile.models.loading import build_builtin

    name = request.param
    pipe, shapes = build_builtin(name)
    directory = tmp_path_factory.mktemp(name) / "pipeline"
    pipe.save_pretrained(directory)
    model = load_model(str(directory))
    model.shapes = VideoShapes(1, *shapes)  # the builtin's small shape (a pipeline directory defaults to the published one)
    return name, model, find_temporal_units(model)


def _mixed_plan(model, units) -> PruningPlan:
    """Two stages that prune differently, with every action the family takes (and reuse)."""
    plan = PruningPlan.dense(model, units)
    if len(plan.stages) == 1:  # two stages of two steps each
        model.scheduler.set_timesteps(STEPS)
        boundary = int(model.scheduler.timesteps[STEPS // 2 - 1])
        plan.stages = [Stage(timesteps=(plan.stages[0].timesteps[0], boundary)), Stage(timesteps=(boundary - 1, 0))]
    first, second = plan.stages
    if units[0].spatiotemporal:
        plan.granularity = "window"
        own = {u.id: u for u in units}
        for stage, prefix in ((first, units[0].id.split(".")[0]), (second, units[-1].id.split(".")[0])):
            mine = [u for u in units if not model.experts or u.id.startswith(prefix + ".")]
            a, b = mine[0], mine[-1]
            if stage is first:
                stage.windows = {a.id: [0, None, 1, 0][: a.heads]}
                stage.prune_heads = {b.id: [1]}
            else:
                stage.windows = {a.id: [None, 1, 0, 0][: a.heads], b.id: [0] * b.heads}
                if model.family == "cogvideox":  # its blocks and attentions return text and video: never removed whole
                    stage.prune_heads = {a.id: [0]}
                else:
                    stage.reuse = {a.block: 2}
                    stage.windows[b.id] = [1] * own[b.id].heads
        return plan
    plan.granularity = "head"
    blocks = list(dict.fromkeys(u.block for u in units))
    in_block = {block: [u for u in units if u.block == block] for block in blocks}
    first.prune_heads = {in_block[blocks[1]][0].id: [0]}
    first.keep_frames = {in_block[blocks[-1]][0].id: [0, 2, 5]}
    second.drop_blocks = [blocks[0]]
    second.reuse = {blocks[-1]: 2}
    if blocks[1] != blocks[-1]:  # (not in the reused block, whose skipped calls are counted)
        second.drop_attention = [in_block[blocks[1]][0].id]
    return plan


def _pipeline_call(model, start: torch.Tensor, steps: int = STEPS) -> torch.Tensor:
    """The pipeline's own call from `start` (B, C, F, h, w): final latents (B, C, F, h, w)."""
    pipe, shapes = model.pipeline, model.shapes
    kwargs = dict(num_inference_steps=steps, guidance_scale=5.0, output_type="latent",
                  generator=torch.Generator().manual_seed(0), height=shapes.height, width=shapes.width)
    if model.family == "cogvideox":  # its latents are (B, F, C, h, w); T5 length as the transformer's
        return pipe(PROMPT, negative_prompt="", latents=start.permute(0, 2, 1, 3, 4).clone(), num_frames=shapes.frames,
                    max_sequence_length=pipe.transformer.config.max_text_seq_length,
                    **kwargs).frames.permute(0, 2, 1, 3, 4)
    if model.family == "latte":
        return pipe(PROMPT, negative_prompt="", latents=start.clone(), video_length=shapes.frames, clean_caption=False,
                    mask_feature=False, **kwargs).frames
    if model.family == "wan":
        kwargs["negative_prompt"] = ""
    return pipe(PROMPT, latents=start.clone(), num_frames=shapes.frames, **kwargs).frames


def _start(model) -> torch.Tensor:
    return torch.randn(model.latent_shape(model.shapes), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def built(saved, tmp_path_factory):
    """The mixed plan and its build's final latents (`generate` through the runtime)."""
    name, model, units = saved
    plan = _mixed_plan(model, units)
    directory = tmp_path_factory.mktemp(name + "-build") / "build"
    api.compile(model, plan, output_dir=directory)
    start = _start(model)
    final = api.Runtime(directory).generate(PROMPT, steps=STEPS, guidance_scale=5.0, latents=start)
    return plan, start, final, directory


def _state_of(model):
    params = {name: p.detach().clone() for name, p in model.denoiser.named_parameters()}
    processors = {name: m.processor for name, m in model.denoiser.named_modules() if hasattr(m, "processor")}
    forwards = {name: "forward" in vars(m) for name, m in model.denoiser.named_modules()}
    return params, processors, forwards


def test_the_applied_pipeline_reproduces_the_build(saved, built):
    name, model, units = saved
    plan, start, expected, _ = built
    dense = _pipeline_call(model, start)
    before = _state_of(model)
    with api.apply(model.pipeline, plan) as applied:
        ours = _pipeline_call(model, start)
        if model.family == "wan":  # separate guidance calls: residuals kept per branch
            assert {"cond", "uncond"} <= {context for context, _ in applied.state.caches}
    assert rel(ours, expected) <= PARITY, name
    assert rel(dense, expected) > 1e-3  # the plan changes the video: the comparison can fail
    # removed: the same weights (bit for bit), processors and forwards, and the dense video again
    params, processors, forwards = _state_of(model)
    assert all(torch.equal(params[k], before[0][k]) for k in params)
    assert all(processors[k] is before[1][k] for k in processors) and forwards == before[2]
    assert torch.equal(_pipeline_call(model, start), dense)


def test_a_plan_applies_to_another_step_count(saved, built):
    """Stages switch by timestep: the plan runs a 3-step call as the build does, and the next call of
    the pipeline starts afresh (no stage clock or residual carried over)."""
    name, model, units = saved
    plan, start, _, directory = built
    expected = api.Runtime(directory).generate(PROMPT, steps=3, guidance_scale=5.0, latents=start)
    with api.apply(model.pipeline, plan):
        first = _pipeline_call(model, start, steps=3)
        again = _pipeline_call(model, start, steps=3)
    assert rel(first, expected) <= PARITY
    assert torch.equal(first, again)


def test_reused_blocks_are_skipped(saved, built):
    """At the steps where a block's residual is reused, the block does not run at all."""
    name, model, units = saved
    plan, start, _, _ = built
    reused = [block for stage in plan.stages for block in stage.reused_blocks]
    if not reused:
        pytest.skip("CogVideoX blocks are not reused")
    modules = dict(model.denoiser.named_modules())
    inner = modules[next(u.id for u in units if u.block == reused[0]) + ".to_out.1"]  # every processor calls it
    calls = []
    handle = inner.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        with api.apply(model.pipeline, plan):
            _pipeline_call(model, start)
    finally:
        handle.remove()
    # the reusing stage runs 2 of the 4 steps (Wan 2.2's second expert: 3), the block computed at its first
    model.scheduler.set_timesteps(STEPS)
    index = next(i for i, s in enumerate(plan.stages) if s.reuse)
    in_stage = sum(plan.stage_for(int(t)) == index for t in model.scheduler.timesteps)
    skipped = in_stage // 2
    branches = 2 if model.family == "wan" else 1  # Wan calls the guidance branches separately
    active = in_stage if model.experts else STEPS  # an expert's block runs only on its expert's steps
    assert skipped >= 1 and len(calls) == (active - skipped) * branches


@pytest.mark.parametrize("case", ["W0", "W1", "mixed"])
def test_windows_equal_the_banded_mask_reference(case):
    from f3compile.inplace import install

    for name in ("tiny-wan", "tiny-cogvideox"):
        model = load_model(f"builtin:{name}")
        units = find_temporal_units(model)
        windows = {u.id: {"W0": [0] * u.heads, "W1": [1] * u.heads, "mixed": [2, None, 0, 1][: u.heads]}[case]
                   for u in units}
        plan = PruningPlan.dense(model, units)
        plan.stages[0].windows = windows
        inputs = model.example_inputs(seed=3)
        with torch.no_grad():
            with install(model, plan, units) as applied:
                ours = model.denoise(*inputs)
                constants = applied.state.ops.constants
            with banded(model.denoiser, units, windows):
                reference = model.denoise(*inputs)
            dense = model.denoise(*inputs)
        assert rel(ours, reference) <= EXACT, name
        assert rel(dense, reference) > 1e-3
        if case == "W1":  # one key-frame index and one edge mask, shared by every unit (not one per unit)
            assert len(units) > 1 and sorted(kind for kind, _ in constants) == ["frames", "mask"]


def test_plans_that_do_not_fit_are_refused_before_anything_changes(saved, built):
    name, model, units = saved
    plan, _, _, _ = built
    before = _state_of(model)
    other = PruningPlan.from_dict(plan.to_dict())
    other.model = {"spec": "builtin:other", "fingerprint": "sha256:" + "0" * 64}
    wrong_heads = PruningPlan.from_dict(plan.to_dict())
    wrong_heads.stages[0].prune_heads = {units[0].id: [units[0].heads + 3]}
    for bad, message in ((other, "the plan was made for model"), (wrong_heads, "out of range")):
        with pytest.raises(F3Error) as caught:
            api.apply(model.pipeline, bad)
        assert_one_line(caught.value)
        assert message in str(caught.value)
    params, processors, forwards = _state_of(model)
    assert all(torch.equal(params[k], before[0][k]) for k in params) and forwards == before[2]
    assert all(processors[k] is before[1][k] for k in processors)


def test_autoregressive_models_are_refused():
    with pytest.raises(F3Error) as caught:
        api.apply(api.load("builtin:tiny-cogvideo"), PruningPlan.dense(load_model("builtin:tiny-wan"), []))
    assert_one_line(caught.value)
    assert "runs through its build" in str(caught.value)


@pytest.mark.parametrize("name", ["tiny-wan", "tiny-cogvideox"])
def test_torch_compile_fullgraph_runs_the_applied_pipeline(name):
    """`torch.compile(pipe.transformer, fullgraph=True)` on an applied model: no graph break (dynamo
    refuses one under fullgraph), the stage and reuse decisions made outside the compiled call, one
    graph per stage, reuse pattern and guidance branch that needs its own residuals (never the
    recompile limit, past which dynamo would run eager without a word), and the compiled pipeline's
    latents equal the eager applied pipeline's. A counting backend hands dynamo's graphs back to run
    as they are: what inductor would be given, without its minutes of code generation."""
    import torch._dynamo

    model = load_model(f"builtin:{name}")
    units = find_temporal_units(model)
    plan = _mixed_plan(model, units)
    start = _start(model)
    pipe = model.pipeline
    graphs = []

    def counting(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    torch._dynamo.reset()
    with api.apply(pipe, plan) as applied:
        eager = _pipeline_call(model, start)
        original = pipe.transformer
        pipe.transformer = torch.compile(original, fullgraph=True, backend=counting)
        try:
            compiled = _pipeline_call(model, start)
            again = _pipeline_call(model, start)  # a second call reuses the graphs
            stages_seen = applied.state.stage
        finally:
            pipe.transformer = original
    torch._dynamo.reset()
    assert stages_seen == 1  # both stages ran (and with Wan, a reused block)
    # Wan: stage 0, stage 1 computing (cond, uncond: they store residuals apart), stage 1 reusing (the same);
    # CogVideoX: one graph per stage
    assert len(graphs) == (5 if model.family == "wan" else 2)
    assert rel(compiled, eager) <= EXACT and torch.equal(again, compiled)


def test_the_readme_example(tmp_path):
    """README "In your own pipeline": load the pipeline the usual way, calibrate from it, plan, apply,
    call it (a tiny Wan pipeline written by diffusers, at a small shape)."""
    from diffusers import WanPipeline

    import f3compile as f3
    from f3compile.models.loading import build_builtin

    build_builtin("tiny-wan")[0].save_pretrained(tmp_path / "wan")
    pipe = WanPipeline.from_pretrained(tmp_path / "wan", torch_dtype=torch.float32)
    prompts, prompt = ["a red circle moving left", "a blue square moving up"], "a green triangle moving right"
    stats = f3.calibrate(pipe, prompts, f3.CalibrationConfig(steps=6, frames=9, height=32, width=32, heatmaps=False))
    plan = f3.plan(stats, f3.PlanOptions(granularity="window", window=0, ratio=0.5, stages=2))

    def call():
        return pipe(prompt, num_inference_steps=4, num_frames=9, height=32, width=32, output_type="latent",
                    generator=torch.Generator().manual_seed(0)).frames

    dense = call()
    with f3.apply(pipe, plan):
        video = call()
    assert video.shape == dense.shape and rel(video, dense) > 1e-4
    assert torch.equal(call(), dense)


def test_a_second_plan_is_refused_while_one_is_applied(saved, built):
    name, model, units = saved
    plan, _, _, _ = built
    with api.apply(model.pipeline, plan):
        before = _state_of(model)
        with pytest.raises(F3Error) as caught:
            api.apply(model.pipeline, plan)
        assert_one_line(caught.value)
        assert "applied to this model already" in str(caught.value)
        params, processors, forwards = _state_of(model)
        assert all(torch.equal(params[k], before[0][k]) for k in params) and forwards == before[2]


def test_unfused_lora_layers_are_refused():
    """PEFT's LoRA layers wrap a projection as `base_layer` (plus low-rank weights the regrouping
    would not permute): apply asks for them to be fused first, with nothing changed."""
    model = load_model("builtin:tiny-wan")
    units = find_temporal_units(model)
    plan = PruningPlan.dense(model, units)
    plan.stages[0].windows = {units[0].id: [0] * units[0].heads}
    attention = dict(model.denoiser.named_modules())[units[0].id]

    class LoraLinear(torch.nn.Module):  # the shape of peft.tuners.lora.Linear that matters here
        def __init__(self, base):
            super().__init__()
            self.base_layer = base

        def forward(self, x):
            return self.base_layer(x)

    original = attention.to_q
    attention.to_q = LoraLinear(original)
    try:
        before = attention.processor
        with pytest.raises(F3Error) as caught:
            api.apply(model, plan)
        assert_one_line(caught.value)
        assert "fuse_lora" in str(caught.value) and attention.processor is before
    finally:
        attention.to_q = original


def test_a_bare_denoiser_module_takes_the_plan():
    """`apply(pipe.transformer, plan)`: the denoiser alone (no pipeline, structure checked without
    the text encoder's fingerprint) runs the plan as the pipeline target does."""
    model = load_model("builtin:tiny-wan")
    units = find_temporal_units(model)
    plan = PruningPlan.dense(model, units)
    plan.stages[0].windows = {u.id: [0, None, 1, 0][: u.heads] for u in units}
    plan.stages[0].prune_heads = {units[-1].id: [2]}
    inputs = model.example_inputs(seed=4)
    with torch.no_grad():
        with api.apply(model, plan):
            expected = model.denoise(*inputs)
        with api.apply(model.denoiser, plan):
            ours = model.denoise(*inputs)
        dense = model.denoise(*inputs)
    assert torch.equal(ours, expected) and rel(dense, expected) > 1e-3


def test_guidance_branches_called_apart_without_cache_context_keep_their_own_residuals():
    """A loop that calls the conditional and unconditional branches one after the other, with no
    `cache_context` (a bare denoiser in a loop of one's own): each keeps its own residuals, so the
    result is the batched-guidance loop's."""
    from f3compile.inplace import install
    from f3compile.sampling import denoise_loop

    model = load_model("builtin:tiny-wan")
    units = find_temporal_units(model)
    plan = PruningPlan.dense(model, units)
    plan.stages[0].reuse = {u.block: 2 for u in units}
    cond, uncond = model.encode_prompts([PROMPT])
    start = torch.randn(model.latent_shape(model.shapes), generator=torch.Generator().manual_seed(2))

    def apart(sample, timestep, context):  # the batch [uncond; cond] as two calls
        halves = [model.denoise(s, t, c) for s, t, c in zip(sample.chunk(2), timestep.chunk(2), context.chunk(2))]
        return torch.cat(halves)

    with install(model, plan, units) as applied:
        batched = denoise_loop(model.denoise, model.scheduler, start.clone(), cond, uncond, 4, 5.0, torch.Generator())
        applied.reset()
        separate = denoise_loop(apart, model.scheduler, start.clone(), cond, uncond, 4, 5.0, torch.Generator())
        assert {(None, 0), (None, 1)} <= set(applied.state.caches)
    dense = denoise_loop(model.denoise, model.scheduler, start.clone(), cond, uncond, 4, 5.0, torch.Generator())
    assert rel(separate, batched) <= EXACT and rel(dense, batched) > 1e-3


def test_weights_it_cannot_regroup_are_refused():
    """Offloaded to the meta device (sequential or group offloading): refused in one line before the
    model is fingerprinted or anything changes."""
    model = load_model("builtin:tiny-wan")
    units = find_temporal_units(model)
    plan = PruningPlan.dense(model, units)
    plan.stages[0].windows = {units[0].id: [0] * units[0].heads}
    attention = dict(model.denoiser.named_modules())[units[0].id]
    original = attention.to_k.weight
    for replacement, word in ((torch.empty(original.shape, device="meta"), "meta device"),):
        attention.to_k.weight = torch.nn.Parameter(replacement, requires_grad=False)
        try:
            with pytest.raises(F3Error) as caught:
                api.apply(model.denoiser, plan)
            assert_one_line(caught.value)
            assert word in str(caught.value)
            assert "forward" not in vars(model.denoiser) and type(attention.processor).__module__.startswith("diffusers")
        finally:
            attention.to_k.weight = original
