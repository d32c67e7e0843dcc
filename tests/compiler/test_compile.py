"""`f3compile compile`: per-stage programs on disk, manifest, errors."""

import json

import pytest
import torch

from f3compile.compiler.compile import export_inputs
from f3compile.errors import F3Error
from f3compile import memo
from f3compile.memo import Memo
from f3compile.planning import make_plan

from tests.helpers import TINY, assert_one_line_error, rel, run

REL_RELOAD = 1e-6
REL_EDITED = 1e-5  # a pruned program vs the masking reference on the same weights, relative L2 (fp32)


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
                                   "prune_heads", "gather_key_frames", "window_attention", "cleanup"]


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


def _count_captures(monkeypatch, cache: bool = False) -> list:
    """Record every torch.export.export call (the capture and each re-export) from here on; without
    `cache`, with the process's program cache off (nothing compiled before is reused)."""

    if not cache:
        monkeypatch.setattr(memo, "PROGRAMS", Memo(limit_bytes=0))
    calls = []
    original = torch.export.export

    def counting(module, args, *rest, **kwargs):
        calls.append(type(module).__name__)
        return original(module, args, *rest, **kwargs)

    monkeypatch.setattr(torch.export, "export", counting)
    return calls


def test_bench_on_two_backends_captures_each_stage_of_each_variant_once(capsys, tmp_path, calibrations, monkeypatch):
    """`bench --backend torch onnxruntime` of a 2-stage plan: the denoiser is captured once, and that
    capture is the dense program (nothing rewritten: it is not traced again); each of the pruned
    program's two stages is re-exported once; the ONNX of both is exported from those programs
    without capturing again."""
    _, stats = calibrations["tiny-latte"]
    make_plan(stats, 0.5, "head", stages=2).save(tmp_path / "plan.json")
    calls = _count_captures(monkeypatch)
    code, out, err = run(capsys, "bench", "builtin:tiny-latte", "--plan", tmp_path / "plan.json", "--backend",
                         "torch", "onnxruntime", "--repeat", "1", "--json", tmp_path / "bench.json")
    assert code == 0, err
    rows = json.loads((tmp_path / "bench.json").read_text())["results"]
    assert {row["backend"] for row in rows} == {"torch", "onnxruntime"}
    # 1 capture of the denoiser (= the dense program) + 2 pruned stages, whatever the number of backends
    assert calls == ["DenoiseModule"] + ["GraphModule"] * 2


def test_export_of_a_compiled_model_captures_nothing_again(tmp_path, calibrations, models, monkeypatch):
    from f3compile import api
    from f3compile.exporters import ExportConfig

    plan = make_plan(calibrations["tiny-latte"][1], 0.5, "block", stages=2)
    compiled = api.compile(models["tiny-latte"], plan)
    calls = _count_captures(monkeypatch)
    manifest = api.export(compiled, config=ExportConfig(samples=1), output_dir=tmp_path / "build")
    assert calls == [] and len(manifest["stages"]) == 2
    assert all(stage["verify"]["onnxruntime_vs_torch"]["passed"] for stage in manifest["stages"])
    with pytest.raises(F3Error, match="compile it as the export asks"):
        api.export(compiled, config=ExportConfig(precision="fp16"), output_dir=tmp_path / "fp16")
    assert not (tmp_path / "fp16").exists()


def test_the_program_cache_reuses_captures_and_stages_of_the_same_model(calibrations, models, monkeypatch):
    """A plan compiled again (and the dense stage every bench compiles) is not traced again: the
    cache is keyed by the model's fingerprint, shapes, dtype and device, and a stage's rewrite."""
    from f3compile.compiler.compile import compile
    from f3compile.models import load_model

    monkeypatch.setattr(memo, "PROGRAMS", Memo())
    plan = make_plan(calibrations["tiny-latte"][1], 0.5, "head", stages=2)
    first = compile(models["tiny-latte"], plan)
    calls = _count_captures(monkeypatch, cache=True)
    again = compile(load_model("builtin:tiny-latte"), plan)  # a model loaded anew: the same fingerprint
    assert calls == []
    inputs = first.inputs(seed=5)
    with torch.no_grad():
        for a, b in zip(first, again):
            assert torch.equal(a.program.module()(*inputs), b.program.module()(*inputs))
    other = make_plan(calibrations["tiny-latte"][1], 1.0, "head", stages=2)  # every head, in both stages
    assert other.stages[0].prune_heads == other.stages[1].prune_heads
    compile(models["tiny-latte"], other)
    assert calls == ["GraphModule"]  # the capture is shared; both stages prune alike: one rewrite
    compile(models["tiny-latte"], other, shapes=models["tiny-latte"].shapes, dtype=torch.float64)
    assert calls[1:] == ["DenoiseModule", "GraphModule"]  # another dtype: another program
    monkeypatch.setattr(memo, "PROGRAMS", Memo(limit_bytes=0))
    compile(models["tiny-latte"], other)
    assert calls[3:] == ["DenoiseModule", "GraphModule", "GraphModule"]  # off: traced again, stage by stage


def test_stages_that_prune_alike_share_one_program_and_one_onnx_export(calibrations, models, tmp_path, monkeypatch):
    """Two stages with the same rewrite (at different steps) are one program: rewritten once,
    exported to ONNX once, and written as two identical files, each verified and hashed."""
    from f3compile import api
    from f3compile.exporters import ExportConfig

    monkeypatch.setattr(memo, "PROGRAMS", Memo())
    monkeypatch.setattr(memo, "FILES", Memo())
    plan = make_plan(calibrations["tiny-latte"][1], 1.0, "head", stages=2)  # every head, in both stages
    compiled = api.compile(models["tiny-latte"], plan)
    assert compiled.stages[0].program is compiled.stages[1].program
    assert [s.stage.timesteps for s in compiled] == [s.timesteps for s in plan.stages]  # each keeps its steps
    exports = []
    original = torch.onnx.export
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: exports.append(1) or original(*a, **k))
    manifest = api.export(compiled, config=ExportConfig(samples=1), output_dir=tmp_path / "build")
    assert len(exports) == 1 and len(manifest["stages"]) == 2
    files = [tmp_path / "build" / "onnx" / f"stage{i}.onnx" for i in (0, 1)]
    assert files[0].read_bytes() == files[1].read_bytes()
    # one program, one copy of its weights in the build's ONNX weight file (two stages would be twice)
    weights = (tmp_path / "build" / "onnx" / "weights.onnx.data").stat().st_size
    assert weights < 1.2 * memo.program_bytes(compiled.stages[0].program)
    assert all(stage["verify"]["onnxruntime_vs_torch"]["passed"] for stage in manifest["stages"])
    assert [s["timesteps"] for s in manifest["stages"]] == [list(s.timesteps) for s in plan.stages]


def test_a_program_the_memo_will_not_keep_is_not_read_back(tmp_path, monkeypatch):
    """`save_program` reads a written .pt2 back only to keep its bytes: a program above the memo's
    limit (every deployment-sized one) is written and never read again (at 14B, a second 28 GB)."""
    from pathlib import Path

    from f3compile.compiler.compile import save_program

    program = torch.export.export(torch.nn.Linear(4, 4), (torch.randn(1, 4),))
    reads, real = [], Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self) or real(self))
    monkeypatch.setattr(memo, "FILES", Memo(limit_bytes=0))
    save_program(program, tmp_path / "big.pt2")
    assert (tmp_path / "big.pt2").stat().st_size > 0 and reads == []
    monkeypatch.setattr(memo, "FILES", Memo())  # control: a program the memo keeps is read back once
    save_program(program, tmp_path / "small.pt2")
    assert reads == [tmp_path / "small.pt2"]


def test_weights_edited_after_loading_are_captured_anew(calibrations, monkeypatch):
    """The cache is keyed by the fingerprint of the weights the model was loaded with; once they are
    edited in place, the next compile captures and rewrites the model as it is now (a pruned
    program holds copies of the weights it slices, so reusing it would run the old weights)."""
    from f3compile.compiler.compile import compile
    from f3compile.models import find_temporal_units, load_model
    from tests.passes.reference import masked

    monkeypatch.setattr(memo, "PROGRAMS", Memo())
    model = load_model("builtin:tiny-latte")
    plan = make_plan(calibrations["tiny-latte"][1], 0.5, "head")
    before = compile(model, plan)
    other = load_model("builtin:tiny-latte")  # the same fingerprint, weights of its own
    with torch.no_grad():
        for parameter in model.denoiser.parameters():
            parameter.mul_(1.5)
    after = compile(model, plan)
    unedited = compile(other, plan)  # not what was compiled from `model`, whose tensors changed since
    inputs = model.example_inputs(seed=3)
    units = find_temporal_units(model)
    with torch.no_grad():
        for source, compiled in ((model, after), (other, unedited)):
            with masked(source, plan.stages[0], units):
                reference = source.denoise(*inputs)
            assert rel(compiled.stages[0].program.module()(*inputs), reference) <= REL_EDITED
        with masked(model, plan.stages[0], units):
            edited = model.denoise(*inputs)
        assert rel(before.stages[0].program.module()(*inputs), edited) > 1e-2  # the cached one would be wrong


def test_a_plan_compiles_at_the_shape_it_was_calibrated_at():
    """Without --frames/--height/--width a build takes the plan's calibration shape, not the model's
    default (tiny-wan's is 17x64x64); each size given still wins."""
    from f3compile import api
    from f3compile.calibration import CalibrationConfig, calibrate
    from f3compile.models import load_model
    from f3compile.models.base import VideoShapes
    from f3compile.options import CompileOptions, Shapes

    model = load_model("builtin:tiny-wan")
    stats = calibrate(model, ["a red circle moving left"],
                      CalibrationConfig(steps=2, frames=9, height=48, width=32, heatmaps=False))
    plan = make_plan(stats, 0.5, "head")
    assert (plan.calibration["frames"], plan.calibration["height"], plan.calibration["width"]) == (9, 48, 32)
    assert api.compile(model, plan).shapes == VideoShapes(1, 9, 48, 32)
    given = api.compile(model, plan, CompileOptions(shapes=Shapes(frames=13)))
    assert given.shapes == VideoShapes(1, 13, 48, 32)
    assert api.compile(model, None).shapes == model.shapes  # the dense model: its own shape


def test_a_flow_matching_first_timestep_runs_the_first_stage():
    """Flow-matching Euler's first timestep is t = 1000, above the 0-999 range plans divide: the
    compiled loop (what `eval` runs) gives it to the first stage, as the plan and the runtime do;
    a timestep inside no stage is still refused."""
    from f3compile.compiler.compile import ProgramLoop
    from f3compile.planning.plan import Stage

    loop = object.__new__(ProgramLoop)  # two stages whose programs say which they are
    loop.stages = [Stage(timesteps=(999, 500)), Stage(timesteps=(499, 100))]
    loop.modules = [{(): lambda sample, t, context, k=k: sample * 0 + k} for k in (1.0, 2.0)]
    loop.dtype = torch.float32
    sample = torch.zeros(1, 2)
    denoise_for = loop.denoise_for()
    assert [float(denoise_for(t)(sample, t, sample)[0, 0]) for t in (1000, 999, 499)] == [1.0, 1.0, 2.0]
    with pytest.raises(F3Error, match="outside every stage"):
        loop.denoise_for()(50)
