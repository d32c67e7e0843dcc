"""CogVideo stage 2 (interpolation): windowed plus attention, slot order, step programs against the
masking reference, the 5 → 9 → 17 → 33 loop, calibration with a key model and the CLI end to end."""

from __future__ import annotations

import json

import pytest
import torch

from f3compile.autoregressive.program import (PlusPrune, Session, StepPrune, position_ids, programs, reference_logits,
                                              run_teacher_forced, stage2_plus_mask)
from f3compile.cli import main
from f3compile.errors import F3Error
from f3compile.models.cogvideo import CogVideoConfig, arch_config, load_cogvideo, tiny_config

PROGRAM_RTOL = 1e-5  # step programs vs the masking reference: max |Δ| / max |reference| of the logits


@pytest.fixture(scope="module")
def stage1():
    return load_cogvideo("builtin:tiny-cogvideo")


@pytest.fixture(scope="module")
def stage2():
    return load_cogvideo("builtin:tiny-cogvideo-stage2")


@pytest.fixture(scope="module")
def sequence(stage2):
    """Text, then random image tokens behind each <start_of_image>, for 2 prompts."""
    c = stage2.config
    images = torch.randint(0, c.image_tokens, (2, c.frames * c.frame_tokens), generator=torch.Generator().manual_seed(4))
    images[:, :: c.frame_tokens] = c.start_of_image
    return torch.cat([stage2.tokenizer(["2.0s\na red square moves left", "2.0s\nblue"]), images], dim=1)


def _error(candidate: torch.Tensor, reference: torch.Tensor) -> float:
    return float((candidate - reference).abs().max() / reference.abs().max())


def _keys(mask: torch.Tensor, query: int, c: CogVideoConfig) -> set[tuple[int, int]]:
    """(frame slot, cell) of every frame key the query sees."""
    return {divmod(int(k) - c.text_length, c.frame_tokens) for k in mask[query].nonzero().flatten() if k >= c.text_length}


# --- layout ----------------------------------------------------------------------------------

def test_the_tiny_and_published_stage2_configs():
    c = tiny_config(2)
    assert (c.stage, c.window, c.grid, c.given_frames, c.prefill_length) == (2, 2, 4, 3, c.text_length + 3 * 16)
    a = arch_config(1.0, 2)
    assert (a.window, a.grid, a.shift(0), a.shift(1), a.prefill_length) == (10, 20, 0, 5, 64 + 1200)
    for bad, message in ((dict(frames=4), "5 frame slots"), (dict(window=3), "divide grid"), (dict(stage=3), "stage must")):
        with pytest.raises(F3Error, match=message):
            CogVideoConfig(**{**tiny_config(2).to_dict(), **bad}).check()


def test_slots_hold_times_0_2_4_1_3_and_take_their_times_positions():
    """As the published stage-2 position ids: key frames 0, 2, 4 in slots 0-2, new frames 1, 3 in slots 3-4;
    time 0 from the base table at 512, time t >= 1 the extra table from row (t - 1)·400."""
    c = arch_config(0.05, 2)
    base_id, extra_id, use_extra = position_ids(c)
    T, P = c.text_length, c.frame_tokens
    for slot, time in enumerate((0, 2, 4, 1, 3)):
        s = T + slot * P + 7
        if time == 0:
            assert not use_extra[s] and base_id[s] == 512 + 7
        else:
            assert use_extra[s] and extra_id[s] == (time - 1) * 400 + 7
    assert torch.equal(base_id[:T], torch.arange(T)) and not use_extra[:T].any()


def test_windows_follow_the_published_key_frame_and_decoding_rules():
    """tiny: 4×4 grid, windows of 2, shift 1 on odd layers. Key frames (run at once) roll the grid by −1,
    so windows wrap around the edges; a generated token's window is cut at the edges instead."""
    c = tiny_config(2)
    T, P = c.text_length, c.frame_tokens
    even, odd = stage2_plus_mask(c, 0, c.sequence_length), stage2_plus_mask(c, 1, c.sequence_length)
    corner = T + 0  # slot 0, cell (0, 0)
    assert _keys(even, corner, c) == {(g, cell) for g in range(3) for cell in (0, 1, 4, 5)}
    assert _keys(odd, corner, c) == {(g, cell) for g in range(3) for cell in (0, 3, 12, 15)}  # wrapped window
    generated = T + 3 * P + 5  # slot 3, cell (1, 1)
    assert _keys(even, generated, c) == {(g, cell) for g in range(3) for cell in (0, 1, 4, 5)} | {(3, 0), (3, 1), (3, 4), (3, 5)}
    assert _keys(odd, generated, c) == {(g, cell) for g in range(3) for cell in (5, 6, 9, 10)} | {(3, 5)}
    first = T + 4 * P  # slot 4, cell (0, 0): the cut window of one cell, in all four earlier slots and itself
    assert _keys(odd, first, c) == {(g, 0) for g in range(5)}
    assert even[:, :T].all() and odd[:, :T].all()  # every token sees the text


def test_a_stage2_checkpoint_converts_by_the_same_names(tmp_path, stage2):
    from f3compile.models.cogvideo import convert

    torch.save({"module": stage2.module.state_dict()}, tmp_path / "mp_rank_00_model_states.pt")
    c = stage2.config
    sizes = {k: getattr(c, k) for k in ("text_length", "frames", "grid", "patch", "image_tokens", "frame_position_offset",
                                        "start_of_image", "pad_token", "num_heads", "stage", "window")}
    convert(tmp_path / "mp_rank_00_model_states.pt", tmp_path / "model", **sizes)
    loaded = load_cogvideo(str(tmp_path / "model"))
    assert loaded.config == c and loaded.fingerprint == stage2.fingerprint


def test_convert_stage_2_from_the_cli_marks_the_interpolation_checkpoint(tmp_path, capsys):
    """The published sizes at a small width: the same keys convert to a stage-1 or, with --stage 2, a
    stage-2 model directory, which loads as the stage-2 builtin of those weights."""
    from safetensors.torch import save_file

    builtin = load_cogvideo("builtin:arch-cogvideo-stage2,width-scale=0.02")
    save_file({k: v.contiguous() for k, v in builtin.module.state_dict().items()}, str(tmp_path / "stage2.safetensors"))
    ids = ["--start-of-image", "20000", "--pad-token", "20001"]
    assert main(["convert", str(tmp_path / "stage2.safetensors"), "--stage", "2", "-o", str(tmp_path / "m2")] + ids) == 0
    assert main(["convert", str(tmp_path / "stage2.safetensors"), "-o", str(tmp_path / "m1")] + ids) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "m2" / "cogvideo.json").read_text())["stage"] == 2
    assert json.loads((tmp_path / "m1" / "cogvideo.json").read_text())["stage"] == 1
    assert load_cogvideo(str(tmp_path / "m2")).fingerprint == builtin.fingerprint


# --- step programs ---------------------------------------------------------------------------

PRUNES = {
    "dense": StepPrune(),
    "drop": StepPrune({1: PlusPrune(drop=True)}),
    "heads": StepPrune({0: PlusPrune(pruned_heads=(1, 3)), 1: PlusPrune(pruned_heads=(0,))}),
    "frames": StepPrune({0: PlusPrune(kept_frames=(0, 2, 3)), 1: PlusPrune(kept_frames=(4,))}),
    "mixed": StepPrune({0: PlusPrune(drop=True), 1: PlusPrune(pruned_heads=(2,), kept_frames=(1, 4))}, renormalise=True),
}


@pytest.mark.parametrize("name", list(PRUNES))
def test_prefill_and_windowed_decode_equal_the_masking_reference(stage2, sequence, name):
    c = stage2.config
    prefill, decode = programs(stage2.module, PRUNES[name], batch=2)
    with torch.no_grad():
        stepped = run_teacher_forced(prefill, decode, sequence)
    reference = reference_logits(stage2.module, sequence, PRUNES[name])[:, c.prefill_length - 1:]
    assert stepped.shape == reference.shape == (2, 2 * c.frame_tokens + 1, c.image_tokens)
    assert _error(stepped, reference) <= PROGRAM_RTOL
    if name != "dense":
        assert _error(reference, reference_logits(stage2.module, sequence)[:, c.prefill_length - 1:]) > 1e-3


def test_the_window_is_what_the_decode_step_reads(stage2):
    """Decode keys per plus channel: the text, one window per kept frame and the token (not the cache)."""
    from f3compile.autoregressive.bench import decode_flops

    c = stage2.config
    prefill, _ = programs(stage2.module, PRUNES["frames"])
    plus = prefill.core.plus
    assert plus["0"].decode_keys == c.text_length + 3 * c.window ** 2 + 1
    assert plus["2"].decode_keys == c.text_length + 5 * c.window ** 2 + 1 < plus["2"].slots
    dense, _ = programs(stage2.module)
    saved = 2 * c.head_dim * c.num_heads * ((5 - 3) + (5 - 1)) * c.window ** 2  # two channels keep 3 and 1 of 5 frames
    assert decode_flops(dense.core) - decode_flops(prefill.core) == saved


# --- the interpolation loop ------------------------------------------------------------------

def test_three_rounds_make_33_frames_around_the_key_frames(stage1, stage2):
    from f3compile.autoregressive.sampling import generate_tokens, interpolate_video, interpolation_text

    p1, d1 = programs(stage1.module)
    p2, d2 = programs(stage2.module)
    prefills = []

    def session():
        def prefill(tokens):
            prefills.append(tokens.clone())
            return p2(tokens)
        return Session(prefill, d2, p2.core.slot_tables())

    with torch.no_grad():
        keys = generate_tokens(stage1.config, Session(p1, d1, p1.core.slot_tables()), stage1.tokenizer(["a red ball"]))
        video = interpolate_video(stage2.config, session, lambda d: stage2.tokenizer([interpolation_text("a red ball", d)]),
                                  keys, rounds=3)
    assert video.shape == (1, 33, stage2.config.frame_tokens)
    assert torch.equal(video[:, ::8], keys)  # the key frames stay where they were
    assert len(prefills) == 2 + 4 + 8  # one interpolation per key-frame triple per round
    c = stage2.config
    first = prefills[1][0, c.text_length:].view(3, c.frame_tokens)  # second triple of round 1: key frames 2, 3, 4
    assert torch.equal(first[:, 1:], keys[0, 2:5, :-1]) and (first[:, 0] == c.start_of_image).all()
    assert stage2.tokenizer([interpolation_text("a red ball", 1.0)]).equal(prefills[2][:, :c.text_length])  # round 2: 1.0 s
    with pytest.raises(F3Error, match="odd number"):
        interpolate_video(c, session, lambda d: None, keys[:, :4])


# --- calibration, CLI ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def calibration(stage1, stage2, tmp_path_factory):
    from f3compile.autoregressive.calibrate import calibrate_cogvideo
    from f3compile.calibration import CalibrationStats

    directory = tmp_path_factory.mktemp("stage2") / "calib"
    calibrate_cogvideo(stage2, ["a red square moves left", "green"], batch_size=2, output_dir=directory, key_model=stage1)
    return directory, CalibrationStats.load(directory)


def test_calibration_records_windowed_attention_of_key_and_new_frames(stage2, calibration):
    _, stats = calibration
    c = stage2.config
    assert stats.meta["stage"] == 2 and stats.meta["key_model"]["spec"] == "builtin:tiny-cogvideo"
    for unit in stats.units:
        attn, rows = stats.unit(unit.id, "attn")[0], stats.unit(unit.id, "rows")[0]
        assert rows == 2 * 2 * c.frame_tokens  # 2 prompts x 2 triples, every query token per slot
        torch.testing.assert_close(attn.sum(-1), torch.full((c.num_heads, c.frames), float(rows)), rtol=1e-5, atol=1e-3)
        assert torch.all(attn[:, :3, 3:] == 0)  # key frames see key frames only
        assert torch.all(attn[:, 3, 4] == 0) and torch.all(attn[:, 3, :3].sum(-1) > 0)  # slot 3 looks back, not ahead
        assert torch.all(attn[:, 4, :4].sum(-1) > 0)
        assert stats.unit(unit.id, "calls")[0] == 2 * 2 * c.frames * c.frame_tokens  # every slot uses the plus term


@pytest.mark.slow
def test_stage2_cli_end_to_end(stage1, stage2, calibration, tmp_path, capsys):
    from f3compile.autoregressive.export import load_ar_manifest, prune_of
    from f3compile.autoregressive.runtime import ARRuntime
    from f3compile.autoregressive.sampling import interpolate_tokens, interpolation_text
    from f3compile.planning import PruningPlan

    directory, _ = calibration
    plan = tmp_path / "plan.json"
    assert main(["plan", str(directory), "--ratio", "0.5", "--granularity", "frame", "-o", str(plan)]) == 0
    assert main(["export", "builtin:tiny-cogvideo-stage2", "--plan", str(plan), "-o", str(tmp_path / "s2")]) == 0
    assert main(["compile", "builtin:tiny-cogvideo", "-o", str(tmp_path / "s1")]) == 0
    manifest = load_ar_manifest(tmp_path / "s2")
    assert manifest["config"]["stage"] == 2 and manifest["verify"]["onnx"]["calls"] == 1 + 2 * stage2.config.frame_tokens
    assert manifest["verify"]["onnx"]["logits_relative_l2"] <= 1e-4
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "s1"), "--interpolate", str(tmp_path / "s2"), "--rounds", "2",
                 "--prompt", "a red square", "-o", str(tmp_path / "v.png")]) == 0
    assert "interpolated 5 -> 17 frames" in capsys.readouterr().out
    # the build interpolates as the eager pruned programs do
    runtime = ARRuntime(tmp_path / "s2", backend="onnxruntime")
    keys = torch.randint(0, stage2.config.image_tokens, (3, stage2.config.frame_tokens), generator=torch.Generator().manual_seed(2))
    built = runtime.interpolate("a cat", keys, rounds=1, seed=3)
    prefill, decode = programs(stage2.module, prune_of(stage2, PruningPlan.load(plan)))
    with torch.no_grad():
        eager = interpolate_tokens(stage2.config, Session(prefill, decode, prefill.core.slot_tables()),
                                   stage2.tokenizer([interpolation_text("a cat", 2.0)]), keys.unsqueeze(0), seed=3)
    assert torch.equal(built, torch.stack([keys[0], eager[0, 0], keys[1], eager[0, 1], keys[2]]))
    assert main(["bench", "builtin:tiny-cogvideo-stage2", "--plan", str(plan), "--repeat", "2",
                 "--json", str(tmp_path / "bench.json")]) == 0
    rows = json.loads((tmp_path / "bench.json").read_text())["results"]
    assert rows[1]["predicted_decode_speedup"] > 1.0 and rows[1]["cache_saving"] > 0.1


@pytest.mark.parametrize("argv, message", [
    (["calibrate", "builtin:tiny-cogvideo-stage2", "--prompts", "p.txt", "-o", "c"], "--key-model"),
    (["calibrate", "builtin:tiny-cogvideo", "--key-model", "builtin:tiny-cogvideo", "--prompts", "p.txt", "-o", "c"],
     "stage-2 models"),
    (["calibrate", "builtin:tiny-cogvideo-stage2", "--key-model", "builtin:arch-cogvideo,width-scale=0.02",
      "--prompts", "p.txt", "-o", "c"], "must be a stage-1 model"),
    (["calibrate", "builtin:tiny-unet3d", "--key-model", "builtin:tiny-cogvideo", "--prompts", "p.txt", "-o", "c"],
     "CogVideo stage-2"),
    (["generate", ".", "--interpolate", "s2", "--prompt", "x", "-o", "c.gif"], "--interpolate takes a CogVideo"),
])
def test_stage2_misuse_is_a_one_line_error(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.txt").write_text("a prompt\n")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "c").exists() and not (tmp_path / "c.gif").exists()


def test_builds_of_the_wrong_stage_are_refused_by_generate(tmp_path, capsys):
    for spec, name in (("builtin:tiny-cogvideo", "s1"), ("builtin:tiny-cogvideo-stage2", "s2")):
        assert main(["compile", spec, "-o", str(tmp_path / name)]) == 0
    capsys.readouterr()
    for argv, message in ((["generate", str(tmp_path / "s2")], "stage-2 (interpolation) build"),
                          (["generate", str(tmp_path / "s1"), "--interpolate", str(tmp_path / "s1")], "stage-1 build"),
                          (["generate", str(tmp_path / "s1"), "--interpolate", str(tmp_path / "s2"), "--rounds", "0"], "--rounds")):
        assert main(argv + ["--prompt", "x", "-o", str(tmp_path / "v.gif")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert not (tmp_path / "v.gif").exists()
