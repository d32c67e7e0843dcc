"""`f3compile eval` end to end on the trained ref-latte, and its input errors."""

from __future__ import annotations

import json

import pytest

from f3compile.cli import main

pytestmark = pytest.mark.slow  # whole evaluations of a trained model

EVAL_FLAGS = ["--limit", "4", "--samples", "2", "--steps", "4", "--real", "2", "--repeat", "1", "--batch", "4"]


@pytest.fixture(scope="module")
def latte_plans(tmp_path_factory):
    work = tmp_path_factory.mktemp("eval-plans")
    prompts = work / "prompts.txt"
    prompts.write_text("a red circle moving left\na blue square rising\n")
    assert main(["calibrate", "builtin:ref-latte", "--prompts", str(prompts), "--steps", "4", "--no-heatmaps",
                 "-o", str(work / "calib")]) == 0
    for name, ratio in (("keep", "0"), ("half", "0.5")):
        assert main(["plan", str(work / "calib"), "--ratio", ratio, "--granularity", "block",
                     "-o", str(work / f"{name}.json")]) == 0
    return work


def test_eval_writes_table_grid_and_one_entry_per_plan(latte_plans, tmp_path, capsys, monkeypatch):
    import torch

    from f3compile import memo
    from f3compile.memo import Memo


    monkeypatch.setattr(memo, "PROGRAMS", Memo(limit_bytes=0))  # nothing from before
    captures, export = [], torch.export.export
    monkeypatch.setattr(torch.export, "export", lambda module, *a, **k: captures.append(type(module).__name__)
                        or export(module, *a, **k))
    out = tmp_path / "eval"
    code = main(["eval", "builtin:ref-latte", "--plan", str(latte_plans / "keep.json"), str(latte_plans / "half.json"),
                 *EVAL_FLAGS, "-o", str(out)])
    assert code == 0
    # compile once: one capture shared by every variant (it is the dense program, and "keep" prunes
    # nothing: the same program), the one rewritten stage of "half" re-exported once, and the
    # speedups timed on the programs that made the videos
    assert captures == ["DenoiseModule", "GraphModule"]
    assert {p.name for p in out.iterdir()} == {"eval.json", "eval.md", "grid.png"}
    result = json.loads((out / "eval.json").read_text())
    assert list(result["results"]) == ["dense", "keep", "half"]
    assert result["videos_per_variant"] == 8
    for entry in result["results"].values():
        assert set(entry["accuracy"]) == {"color", "shape", "direction", "all"}
        assert all(0.0 <= v <= 1.0 for v in entry["accuracy"].values())
        assert len(entry["frechet_by_seed"]) == 2 and entry["frechet"] >= 0
        assert -1.0 <= entry["temporal_consistency"] <= 1.0
    dense, keep, half = (result["results"][k] for k in ("dense", "keep", "half"))
    assert dense["psnr_vs_dense"] is None and dense["speedup"] == 1.0
    # a plan that prunes nothing runs the same program: identical videos
    assert keep["psnr_vs_dense"] == pytest.approx(100.0)
    assert keep["ssim_vs_dense"] == pytest.approx(1.0) and keep["latents_rel_l2_vs_dense"] == 0.0
    assert keep["accuracy"] == dense["accuracy"] and keep["frechet"] == pytest.approx(dense["frechet"], rel=1e-6)
    assert half["psnr_vs_dense"] < 100.0 and half["speedup"] > 0
    assert half["granularity"] == "block" and half["ratio"] == 0.5
    table = (out / "eval.md").read_text()
    assert "| half | block | 0.5 |" in table
    printed = capsys.readouterr().out
    assert "half" in printed
    # the last lines: each plan against the dense model, speed and quality side by side
    assert f"half: {half['speedup']:.2f}x the speed of dense; Fréchet {half['frechet']:.0f} (dense {dense['frechet']:.0f}" in printed


def test_eval_sweep_with_random_plans(latte_plans, tmp_path):
    out = tmp_path / "sweep"
    code = main(["eval", "builtin:ref-latte", "--calibration", str(latte_plans / "calib"), "--sweep", "--random", "1",
                 "--ratios", "0.5", "--granularities", "block", "--stages", "1", *EVAL_FLAGS, "-o", str(out)])
    assert code == 0
    result = json.loads((out / "eval.json").read_text())
    assert list(result["results"]) == ["dense", "block-0.5-s1", "block-0.5-s1-random0"]
    assert result["results"]["block-0.5-s1-random0"]["criterion"] == "random:0"
    assert (out / "sweep.png").stat().st_size > 0


@pytest.mark.parametrize("lines, message", [
    (['{"prompt": "a red circle", "color": "purple", "shape": "circle", "direction": "left"}'], '"color" must be one of'),
    (["not json"], "is not JSON"),
    ([], "is empty"),
])
def test_eval_rejects_bad_prompt_files(latte_plans, tmp_path, capsys, lines, message):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(lines))
    code = main(["eval", "builtin:ref-latte", "--plan", str(latte_plans / "half.json"), "--prompts", str(prompts),
                 "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_eval_needs_something_to_compare(tmp_path, capsys):
    assert main(["eval", "builtin:ref-latte", "-o", str(tmp_path / "out")]) == 2
    assert "nothing to compare" in capsys.readouterr().err
    assert main(["eval", "builtin:ref-latte", "--sweep", "-o", str(tmp_path / "out")]) == 2
    assert "--calibration" in capsys.readouterr().err
    assert main(["eval", "builtin:ref-latte", "--plan", "missing.json", "--limit", "0", "-o", str(tmp_path / "out")]) == 2
    assert "--limit must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_fidelity_eval_for_a_model_without_probe(tmp_path, capsys):
    """Any model: PSNR, SSIM and latents error against dense; a plan that prunes nothing is exact."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a dog running on the beach\na red car\n")
    assert main(["calibrate", "builtin:tiny-tuneavideo", "--prompts", str(prompts), "--steps", "3", "--no-heatmaps",
                 "-o", str(tmp_path / "calib")]) == 0
    for name, ratio in (("keep", "0"), ("half", "0.5")):
        assert main(["plan", str(tmp_path / "calib"), "--ratio", ratio, "--granularity", "attention",
                     "-o", str(tmp_path / f"{name}.json")]) == 0
    capsys.readouterr()
    out = tmp_path / "eval"
    code = main(["eval", "builtin:tiny-tuneavideo", "--plan", str(tmp_path / "keep.json"), str(tmp_path / "half.json"),
                 "--prompts", str(prompts), "--samples", "1", "--steps", "3", "--repeat", "1", "--batch", "2",
                 "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "eval.json").read_text())
    assert result["measures"] == "fidelity" and result["reference"] is None
    dense, keep, half = (result["results"][k] for k in ("dense", "keep", "half"))
    assert dense["psnr_vs_dense"] is None and dense["speedup"] == 1.0
    assert keep["psnr_vs_dense"] == pytest.approx(100.0) and keep["ssim_vs_dense"] == pytest.approx(1.0)
    assert keep["latents_rel_l2_vs_dense"] == 0.0
    assert 0 < half["latents_rel_l2_vs_dense"] and half["psnr_vs_dense"] < 100 and half["ssim_vs_dense"] < 1
    assert "| half | attention | 0.5 |" in (out / "eval.md").read_text()
    code = main(["eval", "builtin:tiny-tuneavideo", "--plan", str(tmp_path / "half.json"), "-o", str(tmp_path / "x")])
    assert code == 2 and "needs --prompts" in capsys.readouterr().err
