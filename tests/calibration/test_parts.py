"""`calibrate --shard K/N` and `merge`: the shards of an array job join into the one-process calibration,
and shards that do not belong together are refused in one line with nothing written."""

from __future__ import annotations

import json
import shutil

import pytest

import f3compile as f3
from f3compile._io import sha256_file
from f3compile.calibration import CalibrationStats
from f3compile.calibration.parts import merge
from f3compile.errors import F3Error
from tests.helpers import assert_one_line, assert_one_line_error, run

PROMPTS = ["a red circle moving left", "a blue square moving right", "a green triangle moving up",
           "a white star moving down", "a black circle moving left"]


def _calibrate(spec, output, shard=None, seed=0, steps=2, batch=1, prompts=PROMPTS):
    config = f3.CalibrationConfig(steps=steps, seed=seed, batch_size=batch, heatmaps=False)
    return f3.calibrate(spec, prompts, config, output_dir=output, shard=shard)


def _json(path):
    data = json.loads((path / "calibration.json").read_text())
    data.pop("seconds")
    return data


@pytest.mark.parametrize("spec,count,batch", [("builtin:tiny-unet3d", 3, 1), ("builtin:tiny-wan", 2, 2),
                                              ("builtin:tiny-cogvideo", 2, 1)])
def test_merged_shards_are_the_one_process_calibration(tmp_path, spec, count, batch):
    _calibrate(spec, tmp_path / "one", batch=batch)
    parts = [tmp_path / f"part{k}" for k in range(count)]
    for k, part in enumerate(parts):
        stats = _calibrate(spec, part, shard=f"{k}/{count}", batch=batch)
        assert stats.meta["shard"]["index"] == k
    merged = merge(list(reversed(parts)), tmp_path / "merged", heatmaps=False)  # any order
    assert (tmp_path / "merged" / "stats.safetensors").read_bytes() == (tmp_path / "one" / "stats.safetensors").read_bytes()
    assert _json(tmp_path / "merged") == _json(tmp_path / "one")
    assert merged.meta["prompts"]["count"] == len(PROMPTS)
    CalibrationStats.load(tmp_path / "merged")  # plans read it like any calibration


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Two shards of one tiny-unet3d calibration and a shard of another seed."""
    root = tmp_path_factory.mktemp("shards")
    for k in range(2):
        _calibrate("builtin:tiny-unet3d", root / f"p{k}", shard=f"{k}/2", steps=1, prompts=PROMPTS[:2])
    _calibrate("builtin:tiny-unet3d", root / "other-seed", shard="1/2", seed=5, steps=1, prompts=PROMPTS[:2])
    _calibrate("builtin:tiny-unet3d", root / "whole", steps=1, prompts=PROMPTS[:2])
    return root


def _refused(tmp_path, parts, message):
    with pytest.raises(F3Error, match=message) as error:
        merge(parts, tmp_path / "out")
    assert_one_line(error.value)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_merge_refuses_shards_of_another_run(shards, tmp_path):
    _refused(tmp_path, [shards / "p0", shards / "other-seed"], "does not belong with .*seed differ")


def test_merge_refuses_a_missing_or_repeated_shard(shards, tmp_path):
    _refused(tmp_path, [shards / "p0"], r"shards 1/2 are missing")
    _refused(tmp_path, [shards / "p0", shards / "p0", shards / "p1"], r"shard 0/2 is given twice")


def test_merge_refuses_a_whole_calibration_and_a_changed_shard(shards, tmp_path):
    _refused(tmp_path, [shards / "p0", shards / "whole"], "is a whole calibration, not a shard")
    changed = tmp_path / "changed"
    shutil.copytree(shards / "p1", changed)
    data = bytearray((changed / "stats.safetensors").read_bytes())
    data[-1] ^= 1
    (changed / "stats.safetensors").write_bytes(bytes(data))
    _refused(tmp_path, [shards / "p0", changed], "does not match the sha256")
    meta = json.loads((shards / "p1" / "calibration.json").read_text())
    meta["shard"]["batches"] = [0, 2]  # claims batches shard 0 has
    shutil.copy(shards / "p1" / "stats.safetensors", changed / "stats.safetensors")
    (changed / "calibration.json").write_text(json.dumps(meta))
    assert meta["stats_sha256"] == sha256_file(changed / "stats.safetensors")
    _refused(tmp_path, [shards / "p0", changed], "covers prompt batches 0..1")
    del meta["shard"]["batches"]  # a hand-edited shard: refused in one line, not a traceback
    (changed / "calibration.json").write_text(json.dumps(meta))
    _refused(tmp_path, [shards / "p0", changed], "lacks the shard's batches")


def test_a_shard_is_not_a_calibration_for_plan(shards, capsys, tmp_path):
    code, _, err = run(capsys, "plan", shards / "p0", "--ratio", "0.5", "-o", tmp_path / "plan.json")
    assert_one_line_error(code, err, "is shard 0/2 of a calibration; join all shards with `f3compile merge` first")
    assert not (tmp_path / "plan.json").exists()


def test_device_is_refused_where_nothing_samples_on_it(shards, capsys, tmp_path):
    code, _, err = run(capsys, "plan", shards / "whole", "--ratio", "0.5", "--device", "cuda", "-o", tmp_path / "p.json")
    assert_one_line_error(code, err, "--device belongs to --search")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving left\n")
    code, _, err = run(capsys, "calibrate", "builtin:tiny-cogvideo", "--prompts", prompts, "--device", "cuda",
                       "-o", tmp_path / "c")
    assert_one_line_error(code, err, "CogVideo calibrates on the CPU; drop --device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.txt"]


def test_an_interrupted_merge_leaves_nothing(shards, tmp_path, monkeypatch):
    from f3compile.calibration import heatmaps

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(heatmaps, "write_heatmaps", interrupted)
    with pytest.raises(KeyboardInterrupt):
        merge([shards / "p0", shards / "p1"], tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_merge_cli(shards, capsys, tmp_path):
    code, out, _ = run(capsys, "merge", shards / "p1", shards / "p0", "--no-heatmaps", "-o", tmp_path / "cal")
    assert code == 0 and "merged 2 shards" in out
    assert (tmp_path / "cal" / "stats.safetensors").read_bytes() == (shards / "whole" / "stats.safetensors").read_bytes()
    code, _, err = run(capsys, "merge", shards / "p1", "-o", tmp_path / "x")
    assert_one_line_error(code, err, "shards 0/2 are missing; merge all 2 shards")
    code, _, err = run(capsys, "calibrate", "builtin:tiny-unet3d", "--prompts", shards / "nothing.txt", "--shard", "2/2",
                       "-o", tmp_path / "y")
    assert_one_line_error(code, err, "must be K/N with 0 <= K < N")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_more_shards_than_batches_is_refused_before_sampling(tmp_path):
    with pytest.raises(F3Error, match="2 prompt batches cannot be split into 3 parts"):
        _calibrate("builtin:tiny-unet3d", tmp_path / "x", shard="0/3", prompts=PROMPTS[:2])
    assert not (tmp_path / "x").exists()
