"""The per-step residual change of temporal blocks, against an independent recomputation.

A block's residual is its output minus its input (for an attention that is its own block: the
attention's output). `change[s]` sums ‖r_s − r_{s−1}‖ / ‖r_{s−1}‖ over sampling loops, comparing
consecutive steps of the same loop only; `change_calls[s]` counts the comparisons.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from f3compile import F3Error
from f3compile._io import sha256_file
from f3compile.calibration.calibrate import CalibrationConfig, calibrate, resolve_shapes
from f3compile.calibration.recorder import AttentionRecorder
from f3compile.calibration.stats import META_FILE, STATS_FILE, CalibrationStats
from f3compile.models import find_temporal_units, temporal_blocks
from f3compile.calibration import criteria
from f3compile.sampling import denoise_loop, start_latents

REL = 1e-4  # fp32 recorded sums against float64 norms of the same fp32 residuals
PROMPTS = ["a red circle moving left", "a blue square", "a green dot"]
CONFIG = CalibrationConfig(steps=4, batch_size=1, heatmaps=False, seed=5)
# tiny-unet3d: temporal transformers enclosing two attentions; tiny-tuneavideo: attentions that are their own blocks
CASES = ["tiny-unet3d", "tiny-tuneavideo"]


def _hidden(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else getattr(output, "sample", output)


def _sample(model, prompts, config, on_step=None) -> list[torch.Tensor]:
    """The calibration's sampling loop, written out: final latents of every prompt batch."""
    shapes = resolve_shapes(model, config.frames, config.height, config.width, config.batch_size)
    was_training = model.denoiser.training
    model.denoiser.eval()
    finals = []
    try:
        with torch.no_grad():
            for loop, start in enumerate(range(0, len(prompts), config.batch_size)):
                batch = prompts[start:start + config.batch_size]
                cond, uncond = model.encode_prompts(batch)
                # prompt i starts from seed + i; the loop steps with its batch's first prompt's generator
                generators = [torch.Generator().manual_seed(config.seed + start + i) for i in range(len(batch))]
                one = model.latent_shape(dataclasses.replace(shapes, batch=1))
                latents = torch.cat([start_latents(None, one, model.scheduler, g) for g in generators])
                generator = generators[0]
                step = (lambda index, t, loop=loop: on_step(loop, index)) if on_step is not None else None
                finals.append(denoise_loop(model.denoise, model.scheduler, latents, cond, uncond, config.steps,
                                           config.guidance_scale, generator, on_step=step))
    finally:
        model.denoiser.train(was_training)
    return finals


def _residuals(model, blocks, prompts, config) -> dict[str, dict[tuple[int, int], torch.Tensor]]:
    """block id -> {(loop, step): residual}, captured by hooks of this file on one sampling run."""
    modules = dict(model.denoiser.named_modules())
    unit_ids = {unit_id for block in blocks for unit_id in block.units}
    where = {"loop": 0, "step": 0}
    seen: dict[str, dict[tuple[int, int], torch.Tensor]] = {block.id: {} for block in blocks}

    def keep(block_id, residual):
        key = (where["loop"], where["step"])
        assert key not in seen[block_id], f"{block_id} called twice at loop {key[0]}, step {key[1]}"
        seen[block_id][key] = residual.detach().float().clone()

    handles = []
    for block in blocks:
        if block.id in unit_ids:  # an attention that is its own block: its output is the residual
            handles.append(modules[block.id].register_forward_hook(
                lambda m, a, out, block_id=block.id: keep(block_id, _first(out))))
        else:
            handles.append(modules[block.id].register_forward_hook(
                lambda m, a, kw, out, block_id=block.id: keep(block_id, _first(out).float() - _hidden(a, kw).float()),
                with_kwargs=True))

    def on_step(loop, index):
        where.update(loop=loop, step=index)

    try:
        _sample(model, prompts, config, on_step)
    finally:
        for handle in handles:
            handle.remove()
    return seen


@pytest.fixture(scope="module")
def runs(models, tmp_path_factory):
    """name -> (calibration directory, stats, captured residuals), each computed once when asked for."""
    cache = {}

    def run(name):
        if name not in cache:
            model = models[name]
            directory = tmp_path_factory.mktemp(f"change-{name}") / "calib"
            stats = calibrate(model, PROMPTS, CONFIG, output_dir=directory)
            units = find_temporal_units(model)
            cache[name] = (directory, stats, _residuals(model, temporal_blocks(units), PROMPTS, CONFIG))
        return cache[name]

    return run


def _expected(residuals: dict[tuple[int, int], torch.Tensor], loops: int, steps: int):
    change, calls = torch.zeros(steps, dtype=torch.float64), torch.zeros(steps)
    for loop in range(loops):
        for step in range(1, steps):
            before, now = residuals[(loop, step - 1)].double(), residuals[(loop, step)].double()
            change[step] += (now - before).norm() / before.norm()
            calls[step] += 1
    return change, calls


@pytest.mark.parametrize("name", CASES)
def test_recorded_change_matches_independent_recomputation(runs, name):
    directory, stats, residuals = runs(name)
    loops = len(PROMPTS)  # batch size 1: one sampling loop per prompt
    assert CONFIG.batch_size == 1 and loops > 1
    loaded = CalibrationStats.load(directory)
    for block in stats.blocks:
        assert len(residuals[block.id]) == loops * CONFIG.steps  # one call per step and loop
        expected, expected_calls = _expected(residuals[block.id], loops, CONFIG.steps)
        assert (expected[1:] > 0).all()
        for tensors in (stats.tensors, loaded.tensors):
            change, calls = tensors[f"block/{block.id}/change"], tensors[f"block/{block.id}/change_calls"]
            assert change.shape == calls.shape == (CONFIG.steps,) and change.dtype == torch.float32
            assert change[0] == 0 and calls[0] == 0
            assert calls.tolist() == [0.0] + [float(loops)] * (CONFIG.steps - 1)
            torch.testing.assert_close(calls, expected_calls, rtol=0, atol=0)
            torch.testing.assert_close(change.double(), expected, rtol=REL, atol=0.0)
        # the count-weighted mean over any steps, and the planner's score read from it
        for steps in (None, [1], [2, 3], [0, 1, 2]):
            chosen = list(range(CONFIG.steps)) if steps is None else steps
            mean = float(expected[chosen].sum() / expected_calls[chosen].sum())
            assert loaded.residual_change(block.id, steps) == pytest.approx(mean, rel=REL)
            assert criteria.reuse_score(loaded, block.id, steps) == pytest.approx(mean, rel=REL)
        assert loaded.residual_change(block.id, [0]) is None  # step 0 has no previous step
        with pytest.raises(F3Error, match="step 0 has no previous step"):
            criteria.reuse_score(loaded, block.id, [0])


@pytest.mark.parametrize("name", CASES)
def test_recording_the_change_leaves_the_final_latents_bit_identical(models, name):
    model = models[name]
    units = find_temporal_units(model)
    prompts, config = PROMPTS[:2], dataclasses.replace(CONFIG, batch_size=2)
    plain = _sample(model, prompts, config)
    recorder = AttentionRecorder(model.denoiser, units, temporal_blocks(units), config.steps)
    with recorder:
        recorded = _sample(model, prompts, config, on_step=lambda loop, index: setattr(recorder, "step", index))
    assert len(plain) == len(recorded) == 1
    assert all(torch.equal(a, b) for a, b in zip(plain, recorded))
    tensors = recorder.tensors()
    for block in temporal_blocks(units):  # the recorder was active and compared every consecutive pair
        assert tensors[f"block/{block.id}/change_calls"].tolist() == [0.0] + [1.0] * (config.steps - 1)


def _rewrite_stats(directory, edit) -> None:
    """Apply `edit` to the stored tensors and keep calibration.json's stats_sha256 in step with them."""
    tensors = load_file(str(directory / STATS_FILE))
    edit(tensors)
    save_file(tensors, str(directory / STATS_FILE))
    meta = json.loads((directory / META_FILE).read_text())
    meta["stats_sha256"] = sha256_file(directory / STATS_FILE)
    (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def test_calibration_without_change_statistics_still_loads(runs, tmp_path):
    source, _, _ = runs("tiny-unet3d")
    directory = tmp_path / "old"
    shutil.copytree(source, directory)
    before = load_file(str(directory / STATS_FILE))

    def drop_change(tensors):
        for key in [k for k in tensors if k.endswith(("/change", "/change_calls"))]:
            del tensors[key]

    _rewrite_stats(directory, drop_change)
    stats = CalibrationStats.load(directory)
    assert not any(key.endswith(("/change", "/change_calls")) for key in stats.tensors)
    assert all(torch.equal(stats.tensors[k], before[k]) for k in stats.tensors)
    assert stats.blocks
    for block in stats.blocks:
        assert stats.residual_change(block.id) is None
        with pytest.raises(F3Error, match="no residual-change statistics.*re-run `f3compile calibrate`"):
            criteria.reuse_score(stats, block.id)
    # the other scores still work
    assert criteria.block_score(stats, stats.blocks[0].id, "output_norm") > 0


@pytest.mark.parametrize("damage, message", [
    (lambda tensors, key: tensors.__setitem__(key + "/change", torch.zeros(CONFIG.steps + 1)), "has shape"),
    (lambda tensors, key: tensors.__setitem__(key + "/change_calls", torch.zeros(CONFIG.steps, 2)), "has shape"),
    (lambda tensors, key: tensors.pop(key + "/change_calls"), "lacks"),
    (lambda tensors, key: tensors.pop(key + "/change"), "lacks"),
], ids=["change-shape", "calls-shape", "calls-missing", "change-missing"])
def test_damaged_change_statistics_are_refused(runs, tmp_path, damage, message):
    source, stats, _ = runs("tiny-unet3d")
    directory = tmp_path / "damaged"
    shutil.copytree(source, directory)
    key = f"block/{stats.blocks[1].id}"
    _rewrite_stats(directory, lambda tensors: damage(tensors, key))
    with pytest.raises(F3Error, match=message) as caught:
        CalibrationStats.load(directory)
    assert f"{key}/change" in str(caught.value) and "re-run `f3compile calibrate`" in str(caught.value)


@pytest.fixture(scope="module")
def ref_wan():
    from f3compile.models import load_model

    return load_model("builtin:ref-wan")  # residual rows of 128 channels: longer than the sketch keeps


def test_sketched_change_is_within_two_percent_of_the_independent_recomputation(ref_wan):
    from f3compile.calibration.recorder import SKETCH_WIDTH

    units = find_temporal_units(ref_wan)
    blocks = temporal_blocks(units)
    residuals = _residuals(ref_wan, blocks, PROMPTS, CONFIG)
    assert {r.shape[-1] for r in residuals[blocks[0].id].values()} == {128} and 128 > SKETCH_WIDTH
    sketched = calibrate(ref_wan, PROMPTS, CONFIG)  # the default
    exact = calibrate(ref_wan, PROMPTS, dataclasses.replace(CONFIG, residual_change="exact"))
    assert sketched.meta["residual_change"] == {"sketch": SKETCH_WIDTH} and exact.meta["residual_change"] == "exact"
    errors = []
    for block in blocks:
        expected, calls = _expected(residuals[block.id], len(PROMPTS), CONFIG.steps)
        torch.testing.assert_close(exact.tensors[f"block/{block.id}/change"].double(), expected, rtol=REL, atol=0.0)
        assert sketched.tensors[f"block/{block.id}/change_calls"].tolist() == calls.tolist()
        change = sketched.tensors[f"block/{block.id}/change"].double()
        errors.append(float(((change[1:] - expected[1:]).abs() / expected[1:]).max()))
    assert 0 < max(errors) <= 0.02, errors  # an estimate (not the exact sums), within 2% at every step
    # the other statistics do not depend on how the change is kept
    for key, tensor in exact.tensors.items():
        if not key.endswith("/change"):
            torch.testing.assert_close(sketched.tensors[key], tensor, rtol=0, atol=0)


def test_the_sketch_is_what_the_recorder_keeps_between_steps(ref_wan):
    from f3compile.calibration.recorder import SKETCH_WIDTH

    units = find_temporal_units(ref_wan)
    blocks = temporal_blocks(units)
    config = dataclasses.replace(CONFIG, steps=2)
    recorder = AttentionRecorder(ref_wan.denoiser, units, blocks, config.steps)
    recorder.attach()
    try:
        _sample(ref_wan, PROMPTS[:1], config, on_step=lambda loop, index: setattr(recorder, "step", index))
        kept = {block.id: recorder._current[block.id].tensors for block in blocks}
    finally:
        recorder.detach()
    rows = 2 * units[0].sequence  # the guidance batch's rows of one call
    for tensors in kept.values():  # one call per step with guidance batched: (rows, k), not (rows, 128)
        assert [tuple(t.shape) for t in tensors] == [(rows, SKETCH_WIDTH)]


def test_change_off_records_none_and_reuse_says_how_to_get_it(models, tmp_path):
    model = models["tiny-unet3d"]
    stats = calibrate(model, PROMPTS[:1], dataclasses.replace(CONFIG, residual_change="off"), output_dir=tmp_path / "c")
    loaded = CalibrationStats.load(tmp_path / "c")
    assert loaded.meta["residual_change"] == "off"
    assert not any(key.endswith(("/change", "/change_calls")) for key in loaded.tensors)
    with pytest.raises(F3Error, match="--residual-change off"):
        criteria.reuse_score(loaded, stats.blocks[0].id)
    with pytest.raises(F3Error, match="--residual-change 'fast' is unknown; use one of sketch, exact, off"):
        calibrate(model, PROMPTS[:1], dataclasses.replace(CONFIG, residual_change="fast"))
