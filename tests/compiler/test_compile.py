"""`f3compile compile`: per-stage programs on disk, manifest, errors."""

import json

import pytest
import torch

from f3compile.compiler.compile import export_inputs
from f3compile.planning import make_plan

from tests.helpers import TINY, assert_one_line_error, run

REL_RELOAD = 1e-6


@pytest.mark.parametrize("name", TINY)
def test_compile_two_stage_plan_writes_programs_and_manifest(capsys, tmp_path, calibrations, models, name):
    _, stats = calibrations[name]
    plan = make_plan(stats, 0.5, "head", stages=2)
    plan.save(tmp_path / "plan.json")
    code, out, err = run(capsys, "compile", f"builtin:{name}", "--plan", tmp_path / "plan.json", "-o", tmp_path / "build")
    assert code == 0, err
    manifest = json.loads((tmp_path / "build" / "manifest.json").read_text())
    assert manifest["schema"] == "f3compile.manifest/1"
    assert manifest["model"]["fingerprint"] == models[name].fingerprint
    assert [s["timesteps"] for s in manifest["stages"]] == [list(s.timesteps) for s in plan.stages]
    model = models[name]
    inputs = export_inputs(model, model.shapes, seed=4)
    for stage in manifest["stages"]:
        assert [i["name"] for i in stage["inputs"]] == ["sample", "timestep", "encoder_hidden_states"]
        assert [tuple(i["shape"]) for i in stage["inputs"]] == [tuple(t.shape) for t in inputs]
        assert stage["outputs"][0]["name"] == "noise_pred"
        program = torch.export.load(str(tmp_path / "build" / stage["files"]["pt2"]["path"]))
        assert sum(program.state_dict[n].numel() for n in program.graph_signature.parameters) == stage["parameters"]
        assert stage["parameters"] < sum(p.numel() for p in model.denoiser.parameters())
        with torch.no_grad():
            out = program.module()(*inputs)
        assert out.shape == inputs[0].shape and torch.isfinite(out).all()


def test_dense_compile_without_plan_matches_the_model(capsys, tmp_path, models):
    code, _, err = run(capsys, "compile", "builtin:tiny-latte", "-o", tmp_path / "dense")
    assert code == 0, err
    manifest = json.loads((tmp_path / "dense" / "manifest.json").read_text())
    assert len(manifest["stages"]) == 1 and manifest["stages"][0]["timesteps"] == [999, 0]
    program = torch.export.load(str(tmp_path / "dense" / "stage0" / "denoiser.pt2"))
    model = models["tiny-latte"]
    inputs = export_inputs(model, model.shapes, seed=2)
    with torch.no_grad():
        ours, reference = program.module()(*inputs), model.denoise(*inputs)
    assert float((ours - reference).norm() / reference.norm()) <= REL_RELOAD


def test_list_passes(capsys):
    code, out, _ = run(capsys, "compile", "--list-passes")
    names = [line.split()[1] for line in out.strip().splitlines()]
    assert code == 0 and names == ["annotate_temporal_attention", "reuse_temporal_blocks", "drop_temporal_blocks",
                                   "drop_temporal_attention",
                                   "prune_heads", "gather_key_frames", "cleanup"]


def test_compile_errors_leave_nothing(capsys, tmp_path, calibrations):
    _, stats = calibrations["tiny-unet3d"]
    make_plan(stats, 0.5, "frame").save(tmp_path / "frames.json")
    make_plan(calibrations["tiny-latte"][1], 0.5, "head").save(tmp_path / "latte.json")
    cases = [
        (["compile", "builtin:tiny-unet3d", "--plan", tmp_path / "frames.json", "--frames", "6", "-o", tmp_path / "out"], "--frames 8"),
        (["compile", "builtin:tiny-unet3d", "--plan", tmp_path / "latte.json", "-o", tmp_path / "out"], "was made for model"),
        (["compile", "builtin:tiny-unet3d", "--plan", tmp_path / "none.json", "-o", tmp_path / "out"], "does not exist"),
        (["compile", "builtin:tiny-unet3d", "--height", "30", "-o", tmp_path / "out"], "multiple of"),
    ]
    for argv, message in cases:
        code, _, err = run(capsys, *argv)
        assert_one_line_error(code, err, message)
        assert not (tmp_path / "out").exists()
