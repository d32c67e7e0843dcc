"""The recorded statistics and the `output_norm` criterion, against independent recomputation.

One denoiser call runs inside an `AttentionRecorder` while hooks of this file capture the raw
tensors of one temporal attention: its q and k projections, its output, the input of the norm in
front of it (the residual input), the input of its output projection (the attention core's
output, heads concatenated) and its enclosing block's input and output. Every statistic is
recomputed from those captures in float64 and compared with `recorder.tensors()`.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from f3compile.calibration.recorder import AttentionRecorder
from f3compile.cli import main
from f3compile.models import find_temporal_units
from f3compile.models.discovery import temporal_blocks
from f3compile.calibration import criteria

# Tolerances, named in one place.
REL = 1e-5  # fp32 statistics against a float64 recomputation from the same captured tensors
ROW_ATOL = 1e-6  # per summed row: absolute slack on probabilities summed over the batch rows
SCORE_REL = 1e-6  # criteria read float sums: only float32/float64 rounding separates them
MIN_GAP = 1e-4  # relative margin between the last pruned and first kept score (no near-ties)

# (model, index of the unit observed). tiny-unet3d's unit 3 is an `attn2`: its residual input is
# `norm2`'s input, after `attn1`'s residual add. tiny-tuneavideo's `attn_temp` is its own block.
CASES = [("tiny-latte", 1), ("tiny-unet3d", 3), ("tiny-tuneavideo", 1)]


def _hidden(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


@pytest.fixture(scope="module")
def observed(models):
    """model name -> (unit, attention module, recorder tensors, captured tensors) from one call."""
    results = {}
    for name, index in CASES:
        model = models[name]
        units = find_temporal_units(model)
        blocks = temporal_blocks(units)
        unit = units[index]
        modules = dict(model.denoiser.named_modules())
        attention = modules[unit.id]
        parent, _, attr = unit.id.rpartition(".")
        norm = getattr(modules[parent], attr.replace("attn", "norm"))  # attn1 -> norm1, attn_temp -> norm_temp
        captured: dict[str, list[torch.Tensor]] = {}

        def keep(key, tensor):
            captured.setdefault(key, []).append(tensor.detach().clone())

        handles = [
            attention.to_q.register_forward_hook(lambda m, a, out: keep("q", out)),
            attention.to_k.register_forward_hook(lambda m, a, out: keep("k", out)),
            attention.register_forward_hook(lambda m, a, out: keep("attention_out", out)),
            norm.register_forward_pre_hook(lambda m, a: keep("residual", a[0])),
            attention.to_out[0].register_forward_pre_hook(lambda m, a: keep("core", a[0])),
        ]
        if unit.block != unit.id:
            block = modules[unit.block]
            handles.append(block.register_forward_pre_hook(
                lambda m, a, kw: keep("block_in", _hidden(a, kw)), with_kwargs=True))
            handles.append(block.register_forward_hook(lambda m, a, out: keep("block_out", _first(out))))
        try:
            with torch.no_grad(), AttentionRecorder(model.denoiser, units, blocks, steps=1) as recorder:
                model.denoise(*model.example_inputs())
        finally:
            for handle in handles:
                handle.remove()
        for key, values in captured.items():
            assert len(values) == 1, f"{name}: {key} seen {len(values)} times in one denoiser call"
        results[name] = (unit, attention, recorder.tensors(), {k: v[0] for k, v in captured.items()})
    return results


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    rows, frames, width = x.shape  # (N, F, H*d) -> (N, H, F, d)
    return x.double().reshape(rows, frames, heads, width // heads).permute(0, 2, 1, 3)


def _norm_ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> float:
    return float(numerator.double().norm() / denominator.double().norm())


@pytest.mark.parametrize("name", [name for name, _ in CASES])
def test_attention_probabilities_are_summed_softmax_of_q_and_k(observed, name):
    unit, attention, tensors, captured = observed[name]
    q = _split_heads(captured["q"], attention.heads)  # (N, H, F, d)
    k = _split_heads(captured["k"], attention.heads)
    rows, head_dim = q.shape[0], q.shape[-1]
    expected = torch.softmax(q @ k.transpose(-1, -2) / head_dim ** 0.5, dim=-1).sum(0)  # (H, F, F)
    recorded = tensors[f"unit/{unit.id}/attn"]
    assert recorded.shape == (1, attention.heads, unit.frames, unit.frames)
    torch.testing.assert_close(recorded[0].double(), expected, rtol=REL, atol=ROW_ATOL * rows)
    assert tensors[f"unit/{unit.id}/rows"].tolist() == [rows]
    assert tensors[f"unit/{unit.id}/calls"].tolist() == [1.0]


@pytest.mark.parametrize("name", [name for name, _ in CASES])
def test_branch_is_attention_output_over_residual_input(observed, name):
    unit, _, tensors, captured = observed[name]
    assert captured["residual"].shape == captured["attention_out"].shape
    expected = _norm_ratio(captured["attention_out"], captured["residual"])
    assert expected > 0
    recorded = tensors[f"unit/{unit.id}/branch"]
    assert recorded.shape == (1,)
    assert float(recorded[0]) == pytest.approx(expected, rel=REL)


@pytest.mark.parametrize("name", [name for name, _ in CASES])
def test_head_branch_is_each_heads_contribution_through_the_output_projection(observed, name):
    unit, attention, tensors, captured = observed[name]
    core = captured["core"].double()  # (N, F, H*d): the attention core's output, heads concatenated
    head_dim = core.shape[-1] // attention.heads
    projection = copy.deepcopy(attention.to_out[0]).double()
    residual_norm = captured["residual"].double().norm()
    expected = []
    with torch.no_grad():
        for head in range(attention.heads):
            alone = torch.zeros_like(core)
            alone[..., head * head_dim:(head + 1) * head_dim] = core[..., head * head_dim:(head + 1) * head_dim]
            contribution = projection(alone) - projection.bias  # (N, F, C)
            expected.append(float(contribution.norm() / residual_norm))
    expected = torch.tensor(expected, dtype=torch.float64)
    assert (expected > 0).all() and len(set(expected.tolist())) == attention.heads  # heads are told apart
    recorded = tensors[f"unit/{unit.id}/head_branch"]
    assert recorded.shape == (1, attention.heads)
    torch.testing.assert_close(recorded[0].double(), expected, rtol=REL, atol=0.0)


@pytest.mark.parametrize("name", [name for name, _ in CASES])
def test_block_ratio_is_what_dropping_the_block_removes(observed, name):
    unit, _, tensors, captured = observed[name]
    recorded = tensors[f"block/{unit.block}/ratio"]
    assert recorded.shape == (1,) and tensors[f"block/{unit.block}/calls"].tolist() == [1.0]
    if unit.block == unit.id:  # an attention that is its own block: dropping it removes its branch
        assert torch.equal(recorded, tensors[f"unit/{unit.id}/branch"])
        expected = _norm_ratio(captured["attention_out"], captured["residual"])
    else:
        block_in, block_out = captured["block_in"], captured["block_out"]
        assert block_in.shape == block_out.shape
        expected = _norm_ratio(block_out.double() - block_in.double(), block_in)
    assert float(recorded[0]) == pytest.approx(expected, rel=REL)


# -- the output_norm criterion --------------------------------------------------------------
STEP_SETS = [None, [0, 1, 2], [4, 5], [3]]


def _mean_per_call(tensors, prefix: str, name: str, steps) -> torch.Tensor:
    """Σ statistic over `steps` / Σ calls over `steps`, in float64 from the raw tensors."""
    values, calls = tensors[f"{prefix}/{name}"].double(), tensors[f"{prefix}/calls"].double()
    if steps is not None:
        values, calls = values[steps], calls[steps]
    return values.sum(0) / calls.sum()


@pytest.mark.parametrize("name", ["tiny-unet3d", "tiny-latte", "tiny-tuneavideo"])
def test_output_norm_scores_are_branch_means_per_call(calibrations, name):
    _, stats = calibrations[name]
    tensors = stats.tensors
    assert (tensors[f"unit/{stats.units[0].id}/calls"] == 2).all()  # 2 prompts, one call per step each
    for unit in stats.units:
        prefix = f"unit/{unit.id}"
        for steps in STEP_SETS:
            expected = float(_mean_per_call(tensors, prefix, "branch", steps))
            assert criteria.unit_score(stats, unit.id, "output_norm", steps) == pytest.approx(expected, rel=SCORE_REL)
            heads = criteria.head_scores(stats, unit.id, "output_norm", steps)
            assert heads.shape == (unit.heads,)
            torch.testing.assert_close(heads.double(), _mean_per_call(tensors, prefix, "head_branch", steps),
                                       rtol=SCORE_REL, atol=0.0)
    for block in stats.blocks:
        for steps in STEP_SETS:
            expected = float(_mean_per_call(tensors, f"block/{block.id}", "ratio", steps))
            assert criteria.block_score(stats, block.id, "output_norm", steps) == pytest.approx(expected, rel=SCORE_REL)


@pytest.mark.parametrize("name", ["tiny-unet3d", "tiny-tuneavideo"])
def test_cli_output_norm_plan_drops_the_lowest_branch_means(calibrations, name, tmp_path, capsys):
    directory, stats = calibrations[name]
    ids = [unit.id for unit in stats.units]
    means = {u: float(_mean_per_call(stats.tensors, f"unit/{u}", "branch", None)) for u in ids}
    count = int(len(ids) * 0.5 + 0.5)
    ranked = sorted(ids, key=means.__getitem__)
    last_pruned, first_kept = means[ranked[count - 1]], means[ranked[count]]
    assert first_kept - last_pruned > MIN_GAP * first_kept  # the expected set is unambiguous
    output = tmp_path / "plan.json"
    status = main(["plan", str(directory), "--criterion", "output_norm", "--ratio", "0.5", "--granularity",
                   "attention", "-o", str(output)])
    assert status == 0, capsys.readouterr().err
    plan = json.loads(output.read_text())
    assert plan["criterion"] == "output_norm" and len(plan["stages"]) == 1
    stage = plan["stages"][0]
    assert stage["drop_attention"] == [u for u in ids if u in set(ranked[:count])]  # listed in module order
    assert stage["drop_blocks"] == [] and stage["prune_heads"] == {} and stage["keep_frames"] == {}


@pytest.mark.parametrize("name", ["tiny-wan", "tiny-cogvideox"])
def test_full_attention_head_branch_is_each_heads_share_of_the_output_projection(name):
    """Per head ‖o_h W_hᵀ‖ over the whole projection ‖o Wᵀ + b‖, from the projection's own input (the
    kernel's output) in float64: the recorder's ratio head_branch / branch must equal it."""
    from f3compile.models import find_temporal_units, load_model, temporal_blocks

    model = load_model(f"builtin:{name}")
    units = find_temporal_units(model)
    unit = units[0]
    projection = dict(model.denoiser.named_modules())[unit.id].to_out[0]
    seen = []
    handle = projection.register_forward_hook(lambda m, args, out: seen.append((args[0].detach().clone(), out.detach().clone())))
    recorder = AttentionRecorder(model.denoiser, units, temporal_blocks(units), steps=1)
    try:
        with recorder, torch.no_grad():
            model.denoise(*model.example_inputs(seed=2))
    finally:
        handle.remove()
    tensors = recorder.tensors()
    inputs, outputs = seen[0]
    d, weight = unit.head_dim, projection.weight.double()
    if unit.text_tokens:  # CogVideoX projects text and video together; the recorder reads the kernel's whole output
        assert inputs.shape[1] == unit.sequence
    expected = torch.stack([(inputs[..., h * d:(h + 1) * d].double() @ weight[:, h * d:(h + 1) * d].T).norm()
                            for h in range(unit.heads)]) / outputs.double().norm()
    recorded = tensors[f"unit/{unit.id}/head_branch"][0].double() / tensors[f"unit/{unit.id}/branch"][0].double()
    assert tensors[f"unit/{unit.id}/calls"][0] == 1
    torch.testing.assert_close(recorded, expected, rtol=1e-4, atol=0)
