"""CogVideo: SAT key compatibility, step programs against the masking reference, calibration,
export with onnxruntime verification, runtime and the CLI end to end."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from f3compile.autoregressive.program import (PlusPrune, Session, StepPrune, programs, reference_logits,
                                              run_teacher_forced)
from f3compile.cli import main
from f3compile.errors import F3Error
from f3compile.models.cogvideo import (CogVideoTransformer, arch_config, convert, load_cogvideo, module_from_state,
                                       published_keys, tiny_config)

PROGRAM_RTOL = 1e-5  # step programs vs the masking reference: max |Δ| / max |reference| of the logits


@pytest.fixture(scope="module")
def tiny():
    return load_cogvideo("builtin:tiny-cogvideo")


@pytest.fixture(scope="module")
def sequence(tiny):
    """A whole input sequence for 2 prompts: text, then random image tokens behind each <start_of_image>."""
    c = tiny.config
    images = torch.randint(0, c.image_tokens, (2, c.frames * c.frame_tokens), generator=torch.Generator().manual_seed(1))
    images[:, :: c.frame_tokens] = c.start_of_image
    return torch.cat([tiny.tokenizer(["a red square moves left", "blue"]), images], dim=1)


def _error(candidate: torch.Tensor, reference: torch.Tensor) -> float:
    return float((candidate - reference).abs().max() / reference.abs().max())


# --- SAT names -------------------------------------------------------------------------------

def test_the_published_sizes_give_the_published_key_list_and_shapes():
    config = arch_config(1.0)
    with torch.device("meta"):
        module = CogVideoTransformer(config)
    state = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert state == published_keys(config)
    assert state["transformer.layers.47.attention.query_key_value.weight"] == (9216, 3072)
    assert state["mixins.attention_plus.query_key_value.47.weight"] == (9216, 3072)
    assert state["mixins.attention_plus.attn_distribution.47"] == (3072,)
    assert state["transformer.word_embeddings.weight"] == (150010, 3072)
    assert state["transformer.position_embeddings.weight"] == (1024, 3072)
    assert state["mixins.extra_position_embedding.position_embeddings.weight"] == (2000, 3072)
    assert len(state) == 2 + 48 * 21 + 2 + 1  # embeddings, 16 per layer + 5 plus, final norm, extra positions


def test_a_state_dict_with_exactly_the_published_keys_loads_and_runs():
    config = tiny_config()
    generator = torch.Generator().manual_seed(3)
    state = {k: torch.randn(shape, generator=generator) for k, shape in published_keys(config).items()}
    module = module_from_state(config, state, "test")
    assert torch.equal(module.state_dict()["mixins.attention_plus.dense.2.weight"], state["mixins.attention_plus.dense.2.weight"])
    logits = reference_logits(module, torch.zeros((1, config.text_length + 3), dtype=torch.int64))
    assert logits.shape == (1, config.text_length + 3, config.image_tokens) and torch.isfinite(logits).all()


@pytest.mark.parametrize("change", ["missing", "unexpected", "shape"])
def test_a_state_dict_off_the_published_layout_is_refused(change):
    config = tiny_config()
    state = {k: torch.zeros(shape) for k, shape in published_keys(config).items()}
    if change == "missing":
        del state["mixins.attention_plus.attn_distribution.1"]
    elif change == "unexpected":
        state["mixins.attention_plus.extra.0"] = torch.zeros(1)
    else:
        state["transformer.layers.0.attention.dense.weight"] = torch.zeros(3, 3)
    with pytest.raises(F3Error, match="missing|unexpected|shape"):
        module_from_state(config, state, "test")


def test_a_sat_checkpoint_converts_through_weights_only_loading(tmp_path, tiny):
    """As SAT's training loop saves it: the weights under `module`, the iteration and random states beside."""
    import random

    import numpy as np

    torch.save({"module": tiny.module.state_dict(), "iteration": 1000, "np_rng_state": np.random.get_state(),
                "random_rng_state": random.getstate(), "torch_rng_state": torch.get_rng_state()},
               tmp_path / "mp_rank_00_model_states.pt")
    c = tiny.config
    convert(tmp_path / "mp_rank_00_model_states.pt", tmp_path / "model", text_length=c.text_length, frames=c.frames,
            grid=c.grid, patch=c.patch, image_tokens=c.image_tokens, frame_position_offset=c.frame_position_offset,
            start_of_image=c.start_of_image, pad_token=c.pad_token, num_heads=c.num_heads)
    loaded = load_cogvideo(str(tmp_path / "model"))
    assert loaded.config == c
    assert loaded.fingerprint == tiny.fingerprint


def test_a_checkpoint_holding_other_objects_is_refused_without_loading_them(tmp_path, capsys, tiny):
    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": tiny.module.state_dict(), "args": argparse.Namespace(lr=1.0)}, path)
    assert main(["convert", str(path), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "weights only" in err[0]
    assert not (tmp_path / "out").exists()


# --- step programs ---------------------------------------------------------------------------

PRUNES = {
    "dense": StepPrune(),
    "drop": StepPrune({1: PlusPrune(drop=True)}),
    "drop-renormalised": StepPrune({0: PlusPrune(drop=True), 2: PlusPrune(drop=True)}, renormalise=True),
    "heads": StepPrune({0: PlusPrune(pruned_heads=(1, 3)), 2: PlusPrune(pruned_heads=(0,))}),
    "all-heads": StepPrune({1: PlusPrune(pruned_heads=(0, 1, 2, 3))}),
    "frames": StepPrune({0: PlusPrune(kept_frames=(0, 2, 3)), 1: PlusPrune(kept_frames=(4,))}),
    "mixed": StepPrune({0: PlusPrune(drop=True), 1: PlusPrune(pruned_heads=(2,), kept_frames=(1, 4))}),
}


@pytest.mark.parametrize("name", list(PRUNES))
def test_prefill_and_decode_steps_equal_the_masking_reference(tiny, sequence, name):
    c = tiny.config
    prefill, decode = programs(tiny.module, PRUNES[name], batch=2)
    with torch.no_grad():
        stepped = run_teacher_forced(prefill, decode, sequence)
    reference = reference_logits(tiny.module, sequence, PRUNES[name])[:, c.text_length:]
    assert stepped.shape == reference.shape == (2, c.frames * c.frame_tokens, c.image_tokens)
    assert _error(stepped, reference) <= PROGRAM_RTOL
    if name != "dense":  # the pruning changes the model: the comparison can fail
        assert _error(reference, reference_logits(tiny.module, sequence)[:, c.text_length:]) > 1e-3


def test_a_channel_gated_shut_is_what_dropping_it_renormalised_gives(tiny, sequence):
    """Independent of the masks: σ(a) → 1 removes the plus term and leaves dense(ctx_base)."""
    shut = load_cogvideo("builtin:tiny-cogvideo").module
    with torch.no_grad():
        for layer in range(shut.config.num_layers):
            shut.plus(layer)[2].fill_(40.0)
    dropped = StepPrune({l: PlusPrune(drop=True) for l in range(shut.config.num_layers)}, renormalise=True)
    assert _error(reference_logits(shut, sequence), reference_logits(tiny.module, sequence, dropped)) <= PROGRAM_RTOL


def test_pruning_removes_the_key_value_cache(tiny):
    c = tiny.config
    dense, _ = programs(tiny.module, None, batch=1)
    base = c.num_layers * 2 * c.hidden_size * (c.text_length + c.frame_tokens) * 4
    plus = c.num_layers * 2 * c.hidden_size * (c.text_length + c.frames * c.frame_tokens + 1) * 4
    assert dense.core.cache_bytes(1) == base + plus
    dropped, _ = programs(tiny.module, StepPrune({l: PlusPrune(drop=True) for l in range(c.num_layers)}), batch=1)
    assert dropped.core.cache_bytes(1) == base
    assert [n for n in dropped.output_names() if "plus" in n] == []
    half_heads, _ = programs(tiny.module, StepPrune({0: PlusPrune(pruned_heads=(0, 1))}), batch=1)
    assert dense.core.cache_bytes(1) - half_heads.core.cache_bytes(1) == plus // c.num_layers // 2
    one_frame, _ = programs(tiny.module, StepPrune({0: PlusPrune(kept_frames=(3,))}), batch=1)
    assert dense.core.cache_bytes(1) - one_frame.core.cache_bytes(1) == 2 * c.hidden_size * 4 * 4 * c.frame_tokens


# --- calibration -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def calibration(tiny, tmp_path_factory):
    from f3compile.autoregressive.calibrate import calibrate_cogvideo
    from f3compile.calibration import CalibrationStats

    directory = tmp_path_factory.mktemp("cogvideo") / "calib"
    calibrate_cogvideo(tiny, ["a red square moves left", "a blue circle", "green"], batch_size=2, output_dir=directory)
    return directory, CalibrationStats.load(directory)


def test_calibration_records_causal_frame_to_frame_attention_per_layer(tiny, calibration):
    _, stats = calibration
    c = tiny.config
    assert [u.id for u in stats.units] == [f"mixins.attention_plus.{l}" for l in range(c.num_layers)]
    for unit in stats.units:
        attn, rows = stats.unit(unit.id, "attn")[0], stats.unit(unit.id, "rows")[0]
        assert rows == 3 * c.frame_tokens  # every query token of 3 videos, per query frame
        torch.testing.assert_close(attn.sum(-1), torch.full((c.num_heads, c.frames), float(rows)), rtol=1e-5, atol=1e-3)
        assert torch.all(torch.triu(attn, diagonal=1) == 0)  # no query frame sees a later frame
        assert torch.allclose(attn[:, 0, 0], rows)  # the first frame only sees itself
        assert torch.all(attn[:, 1:, :-1].sum(-1) > 0)  # later frames do look back
        assert stats.unit(unit.id, "calls")[0] == 3 * (c.frames - 1) * c.frame_tokens
    gate = stats.tensors["layer/0/gate"]
    torch.testing.assert_close(gate, torch.sigmoid(tiny.module.plus(0)[2].detach()))


def test_each_plan_granularity_maps_to_the_pruning_it_names(tiny, calibration):
    from f3compile.autoregressive.export import prune_of
    from f3compile.models.cogvideo import layer_of
    from f3compile.planning import make_plan

    _, stats = calibration
    for granularity in ("block", "attention", "head", "frame"):
        plan = make_plan(stats, 0.5, granularity, "cross_frame_mass", 1)
        stage, prune = plan.stages[0], prune_of(tiny, plan)
        dropped = {layer_of(u) for u in list(stage.drop_blocks) + list(stage.drop_attention)}
        assert {l for l, p in prune.layers.items() if p.drop} == dropped
        assert {l: p.pruned_heads for l, p in prune.layers.items() if p.pruned_heads} == {
            layer_of(u): tuple(sorted(h)) for u, h in stage.prune_heads.items()}
        assert {l: p.kept_frames for l, p in prune.layers.items() if p.kept_frames is not None} == {
            layer_of(u): tuple(sorted(f)) for u, f in stage.keep_frames.items()}
        assert prune.layers, granularity  # ratio 0.5 prunes something at every granularity


# --- export, runtime, CLI --------------------------------------------------------------------

@pytest.mark.slow
def test_cli_end_to_end_and_the_runtime_reproduces_the_eager_programs(tiny, calibration, tmp_path, capsys):
    from f3compile.autoregressive.export import load_ar_manifest, prune_of
    from f3compile.autoregressive.runtime import ARRuntime
    from f3compile.autoregressive.sampling import generate_tokens
    from f3compile.planning import PruningPlan

    directory, _ = calibration
    plan = tmp_path / "plan.json"
    assert main(["plan", str(directory), "--ratio", "0.5", "--granularity", "block", "-o", str(plan)]) == 0
    capsys.readouterr()
    assert main(["inspect", str(plan), "--model", "builtin:tiny-cogvideo"]) == 0
    shown = capsys.readouterr().out
    assert "mixins.attention_plus.0" in shown and "key/value cache at batch 1" in shown and "FLOP-predicted" in shown
    assert main(["export", "builtin:tiny-cogvideo", "--plan", str(plan), "-o", str(tmp_path / "build")]) == 0
    manifest = load_ar_manifest(tmp_path / "build")
    assert manifest["verify"]["onnx"]["logits_relative_l2"] <= 1e-4
    assert manifest["verify"]["pt2"]["logits_relative_l2"] <= 1e-5
    dropped = PruningPlan.load(plan).stages[0].drop_blocks
    assert len(dropped) in (1, 2)  # half of 3 channels, rounded
    assert manifest["plus_layers"] == [l for l in range(3) if f"mixins.attention_plus.{l}" not in dropped]
    decode = manifest["programs"]["decode"]
    assert [i["name"] for i in decode["inputs"]][:3] == ["token", "position", "past.base_kv.0"]
    assert [o["name"] for o in decode["outputs"]][-1] == f"new.plus_kv.{manifest['plus_layers'][-1]}"
    assert main(["generate", str(tmp_path / "build"), "--prompt", "a red square", "--seed", "5",
                 "-o", str(tmp_path / "video.gif")]) == 0
    assert (tmp_path / "video.gif").stat().st_size > 0
    runtime = ARRuntime(tmp_path / "build")
    prefill, step = programs(tiny.module, prune_of(tiny, PruningPlan.load(plan)), batch=1)
    with torch.no_grad():
        session = Session(prefill, step, prefill.core.slot_tables())
        eager = generate_tokens(tiny.config, session, tiny.tokenizer(["a red square"]), seed=5)[0]
    assert torch.equal(runtime.generate("a red square", seed=5), eager)
    assert main(["bench", "builtin:tiny-cogvideo", "--plan", str(plan), "--repeat", "3",
                 "--json", str(tmp_path / "bench.json")]) == 0
    rows = json.loads((tmp_path / "bench.json").read_text())["results"]
    assert rows[1]["cache_saving"] > 0.2 and rows[1]["predicted_decode_speedup"] > 1.05
    capsys.readouterr()


@pytest.mark.parametrize("argv, message", [
    (["eval", "builtin:tiny-cogvideo", "--plan", "x.json", "-o", "e"], "autoregressive"),
    (["export", "builtin:tiny-cogvideo", "--target", "aoti", "-o", "b"], "--target onnx"),
    (["compile", "builtin:tiny-cogvideo", "--precision", "fp16", "-o", "b"], "fp32"),
    (["calibrate", "builtin:tiny-cogvideo", "--prompts", "p.txt", "--frames", "4", "-o", "c"], "--frames"),
    (["bench", "builtin:tiny-cogvideo,width-scale=0.5", "--plan", "x.json"], "width-scale"),
])
def test_what_cogvideo_does_not_take_is_a_one_line_error(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.txt").write_text("a prompt\n")
    (tmp_path / "x.json").write_text("{}")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not any((tmp_path / name).exists() for name in ("b", "c", "e"))


def test_a_plan_for_another_model_is_refused(tiny, calibration, tmp_path):
    from f3compile.autoregressive.export import prune_of
    from f3compile.planning import make_plan

    plan = make_plan(calibration[1], 0.5, "block", "cross_frame_mass", 1)
    plan.model["fingerprint"] = "sha256:0"
    with pytest.raises(F3Error, match="another model"):
        prune_of(tiny, plan)


def test_discovery_finds_the_plus_channels_by_what_they_attend_to(tiny):
    from f3compile.autoregressive.calibrate import cross_frame_mass, find_temporal_units

    mass = cross_frame_mass(tiny)
    c = tiny.config
    assert all(mass[("base", l)] == 0.0 for l in range(c.num_layers))  # own frame and text only
    assert all(mass[("plus", l)] > 0.1 for l in range(c.num_layers))  # earlier frames' tokens
    assert [u["id"] for u in find_temporal_units(tiny)] == [f"mixins.attention_plus.{l}" for l in range(c.num_layers)]


def test_a_partial_generation_is_the_start_of_the_whole_one(tiny):
    from f3compile.autoregressive.sampling import generate_tokens

    prefill, decode = programs(tiny.module, None, batch=1)
    text = tiny.tokenizer(["a red square"])
    with torch.no_grad():
        whole = generate_tokens(tiny.config, Session(prefill, decode, prefill.core.slot_tables()), text, seed=2)
        part = generate_tokens(tiny.config, Session(prefill, decode, prefill.core.slot_tables()), text, seed=2, count=21)
    assert torch.equal(part.flatten()[:21], whole.flatten()[:21])
    assert torch.all(part.flatten()[21:] == 0)
