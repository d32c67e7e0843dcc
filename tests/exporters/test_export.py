"""ONNX export, verification, audit, manifest and Triton layout (CPU); TensorRT behind `gpu`."""

import dataclasses
import json

import pytest

from f3compile import F3Error
from f3compile.exporters import ExportConfig, export
from f3compile.manifest import load_manifest, validate_manifest
from f3compile.models import find_temporal_units
from f3compile.planning import make_plan
from f3compile.planning.plan import Stage
from f3compile.planning.cost import ModelCost

from tests.helpers import TINY, assert_one_line_error, run

REL_ORT = 1e-5          # onnxruntime vs torch program, fp32
# |ONNX initializer bytes saved - 4 x pruned parameters| on the builtins, at most 3,904 B (tiny-unet3d,
# block plan). It covers pruned weights the exporter already stored once (onnx_ir merges identical
# initializers of <= 1024 elements, such as the untrained builtins' all-ones norm scales and zero
# biases: 4,096 B for that plan) and int64 shape and index constants (frame plans add up to 528 B).
CONSTANT_SLACK = 4096


def _removed_attention_units(stage, units):
    by_id = {u.id: u for u in units}
    removed = {u.id for u in units if u.block in stage.drop_blocks} | set(stage.drop_attention)
    removed |= {u for u, heads in stage.prune_heads.items() if len(heads) == by_id[u].heads}
    return removed


def _mixed_plan(stats, units):
    """One stage of every kind of unit pruning: the first unit's attention dropped, and on the others
    the heads and the frames that the plans of those granularities prune."""
    attention, heads, frames = (make_plan(stats, ratio, granularity).stages[0]
                                for granularity, ratio in (("attention", 1.0), ("head", 0.5), ("frame", 0.5)))
    dropped = attention.drop_attention[:1]
    stage = Stage(attention.timesteps, drop_attention=dropped,
                  prune_heads={u: h for u, h in heads.prune_heads.items() if u not in dropped},
                  keep_frames={u: f for u, f in frames.keep_frames.items() if u not in dropped})
    assert stage.drop_attention and stage.prune_heads and stage.keep_frames
    return dataclasses.replace(make_plan(stats, 0.5, "head"), stages=[stage])


# On every family one stage that mixes attention, head and frame pruning (one export checks the three
# granularities' removals), and two stages of whole blocks on tiny-unet3d and tiny-latte (the passes'
# own checks are in tests/passes/test_passes.py, for every granularity and family, one at a time).
PRUNED_ONNX_CASES = [("block", 2, "tiny-unet3d")] + [("mixed", 1, name) for name in TINY] + [("block", 2, "tiny-latte")]


@pytest.mark.parametrize("granularity, stages, name", PRUNED_ONNX_CASES)
def test_pruned_onnx_is_verified_and_smaller_by_the_plan(models, calibrations, dense_export, tmp_path, name, granularity, stages):
    model, (_, stats) = models[name], calibrations[name]
    units = find_temporal_units(model)
    dense = dense_export(name)[1]["stages"][0]["audit"]  # first: a plan's empty stage is this program, exported once
    if granularity == "mixed":
        plan = _mixed_plan(stats, units)
    else:
        plan = make_plan(stats, 0.5 if granularity != "attention" else 1.0, granularity, stages=stages)
    manifest = export(model, plan, tmp_path / "build", config=ExportConfig(samples=1))
    cost = ModelCost.measure(model, units)
    assert len(manifest["stages"]) == stages
    for entry, stage in zip(manifest["stages"], plan.stages):
        check = entry["verify"]["onnxruntime_vs_torch"]
        assert check["passed"] and check["relative_l2_error"] <= REL_ORT
        audit = entry["audit"]
        assert audit["nodes_from_removed_modules"] == 0 and audit["weights_from_removed_modules"] == 0
        assert dense["attention_nodes"] - audit["attention_nodes"] == len(_removed_attention_units(stage, units))
        _, params_removed = cost.stage_removed(stage)
        saved = dense["initializer_bytes"] - audit["initializer_bytes"]
        assert abs(saved - 4 * params_removed) <= CONSTANT_SLACK
        if granularity != "frame":
            assert saved > 0
        verify_file = json.loads((tmp_path / "build" / f"stage{entry['index']}" / "verify.json").read_text())
        assert verify_file["audit"] == audit
    assert load_manifest(tmp_path / "build")["stages"][0]["files"]["onnx"]["path"] == "onnx/stage0.onnx"


def test_manifest_refuses_changed_artifacts_and_bad_documents(tmp_path, models):
    build = tmp_path / "build"
    manifest = export(models["tiny-latte"], None, build, config=ExportConfig(verify=False))
    assert "verify" in manifest["stages"][0] and manifest["stages"][0]["verify"] == {}
    validate_manifest(manifest)
    data = json.loads((build / "manifest.json").read_text())
    (build / "manifest.json").write_text(json.dumps(dict(data, extra=1)))
    with pytest.raises(F3Error, match="unknown key"):
        load_manifest(build)
    bad_io = json.loads(json.dumps(data))
    bad_io["stages"][0]["inputs"][0]["name"] = "x"
    with pytest.raises(F3Error, match="inputs must be"):
        validate_manifest(bad_io)
    escaping = json.loads(json.dumps(data))
    escaping["stages"][0]["files"]["onnx"]["path"] = "../elsewhere.onnx"
    with pytest.raises(F3Error, match="inside the build directory"):
        validate_manifest(escaping)
    (build / "manifest.json").write_text(json.dumps(data))
    with open(build / "onnx" / "stage0.onnx", "ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(F3Error, match="does not match the sha256"):
        load_manifest(build)


def test_triton_repository_layout(models, tmp_path):
    export(models["tiny-latte"], None, tmp_path / "build", config=ExportConfig(verify=False, triton_repo=tmp_path / "repo"))
    config = (tmp_path / "repo" / "tiny_latte_stage0" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config and "max_batch_size: 0" in config
    assert 'name: "sample"' in config and "dims: [ 2, 4, 8, 8, 8 ]" in config and "TYPE_FP32" in config
    assert 'name: "noise_pred"' in config
    onnx_copy = tmp_path / "repo" / "tiny_latte_stage0" / "1" / "model.onnx"
    assert onnx_copy.read_bytes() == (tmp_path / "build" / "onnx" / "stage0.onnx").read_bytes()
    weights = onnx_copy.with_name("weights.onnx.data")  # beside the graph, which names it so
    assert weights.read_bytes() == (tmp_path / "build" / "onnx" / "weights.onnx.data").read_bytes()


def test_fp16_export_is_typed_in_the_graph(models, tmp_path):
    import onnx

    from f3compile.models.loading import fingerprint_modules

    model = models["tiny-latte"]
    before = fingerprint_modules(dict(model.denoiser.config), model.denoiser, model.text_encoder)
    manifest = export(model, None, tmp_path / "b", config=ExportConfig(precision="fp16", samples=1))
    # the model itself is never cast: its weights (and so its fingerprint) are unchanged
    assert fingerprint_modules(dict(model.denoiser.config), model.denoiser, model.text_encoder) == before
    assert next(model.denoiser.parameters()).dtype == __import__("torch").float32
    stage = manifest["stages"][0]
    assert stage["precision"] == "fp16" and stage["verify"]["onnxruntime_vs_torch"]["passed"]
    graph = onnx.load(str(tmp_path / "b" / "onnx" / "stage0.onnx")).graph
    types = {i.name: i.type.tensor_type.elem_type for i in graph.input}
    assert types["sample"] == onnx.TensorProto.FLOAT16 and types["timestep"] == onnx.TensorProto.FLOAT
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


def test_onnx_is_constant_folded_and_equals_the_unfolded_export(tmp_path):
    """The exporter's clean-up (`simplify`): no Constant nodes left, far fewer nodes than torch's
    unoptimized export of the same program, and the same outputs in onnxruntime."""
    import onnx
    import onnxruntime as ort
    import torch

    import f3compile
    from f3compile.exporters.onnx import WeightFile, export_onnx
    from f3compile.manifest import INPUT_NAMES, OUTPUT_NAMES

    compiled = f3compile.compile("builtin:tiny-latte")
    program, inputs = compiled.stages[0].program, compiled.inputs()
    torch.onnx.export(program, args=inputs, dynamo=True, opset_version=20, optimize=False, verbose=False,
                      input_names=INPUT_NAMES, output_names=OUTPUT_NAMES).save(str(tmp_path / "unfolded.onnx"))
    with WeightFile(tmp_path / "weights.data") as weights:
        export_onnx(program, inputs, tmp_path / "ours.onnx", weights)
        size = weights.size
        export_onnx(program, inputs, tmp_path / "again.onnx", weights)  # the kept graph, written again
    # every tensor the second graph holds is in the file already: stored once, referenced twice
    assert weights.size == size == (tmp_path / "weights.data").stat().st_size
    assert (tmp_path / "again.onnx").read_bytes() == (tmp_path / "ours.onnx").read_bytes()
    # a graph whose initializers already lie in some file is refused: the build would not hash that file
    import onnx_ir as ir

    (tmp_path / "other").mkdir()
    with WeightFile(tmp_path / "other" / "weights.data") as other, pytest.raises(ValueError, match="already lies in"):
        other.write_graph(ir.load(str(tmp_path / "ours.onnx")), tmp_path / "other" / "ours.onnx")
    graphs = {name: onnx.load(str(tmp_path / f"{name}.onnx")).graph for name in ("unfolded", "ours")}
    assert sum(node.op_type == "Constant" for node in graphs["unfolded"].node) > 0  # the check below can fail
    assert not [node for node in graphs["ours"].node if node.op_type == "Constant"]
    assert len(graphs["ours"].node) < 0.5 * len(graphs["unfolded"].node)  # tiny-latte: 307 against 833
    feeds = {name: tensor.numpy() for name, tensor in zip(INPUT_NAMES, inputs)}
    unfolded, ours = (ort.InferenceSession(str(tmp_path / f"{name}.onnx")).run(None, feeds)[0]
                      for name in ("unfolded", "ours"))
    assert float(abs(ours - unfolded).max() / abs(unfolded).max()) < REL_ORT


@pytest.mark.skipif(__import__("importlib").util.find_spec("tensorrt") is not None
                    and __import__("torch").cuda.is_available(), reason="this machine has a GPU stack")
def test_trt_target_without_gpu_fails_cleanly(capsys, tmp_path):
    code, _, err = run(capsys, "export", "builtin:tiny-latte", "--target", "trt", "-o", tmp_path / "out")
    assert_one_line_error(code, err, "--target trt needs")
    assert not (tmp_path / "out").exists()


def test_an_export_onnxruntime_cannot_hold_is_written_unverified_and_says_why(capsys, tmp_path, monkeypatch):
    """Where onnxruntime's attention scores and weights would not fit in the free memory (here: 1 KiB
    free), the export is written with the verification recorded as skipped and the reason on one
    line, instead of running out of memory; where they fit, it verifies (the other tests)."""
    import f3compile.exporters.onnx as onnx_export

    monkeypatch.setattr(onnx_export, "available_bytes", lambda providers, device: 2**10)
    code, out, err = run(capsys, "export", "builtin:tiny-latte", "-o", tmp_path / "build")
    assert code == 0, err
    lines = [line for line in err.splitlines() if "verification skipped" in line]
    assert len(lines) == 1 and "more than the 0.0 GiB free on the host" in lines[0]
    stage = load_manifest(tmp_path / "build")["stages"][0]
    assert list(stage["verify"]) == ["onnxruntime_vs_torch"] and "skipped" in stage["verify"]["onnxruntime_vs_torch"]
    assert "onnxruntime vs torch skipped" in out


def test_export_cli_errors(capsys, tmp_path):
    cases = [
        (["export", "builtin:tiny-latte", "--precision", "bf16", "-o", tmp_path / "out"], "onnxruntime cannot run the bf16"),
        (["export", "builtin:tiny-latte", "--opset", "12", "-o", tmp_path / "out"], "--opset 12"),
        (["export", "builtin:tiny-latte", "--dynamic-batch", "4:2:8", "-o", tmp_path / "out"], "MIN <= OPT <= MAX"),
        (["export", "builtin:tiny-latte", "--dynamic-batch", "two", "-o", tmp_path / "out"], "MIN:OPT:MAX"),
    ]
    for argv, message in cases:
        code, _, err = run(capsys, *argv)
        assert_one_line_error(code, err, message)
        assert not (tmp_path / "out").exists()


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_engines_verified_against_onnxruntime(models, calibrations, tmp_path, precision):
    _, stats = calibrations["tiny-unet3d"]
    plan = make_plan(stats, 0.5, "block", stages=2)
    manifest = export(models["tiny-unet3d"], plan, tmp_path / "build",
                      config=ExportConfig(target="trt", precision=precision, timing_cache=tmp_path / "cache"))
    for stage in manifest["stages"]:
        assert "trt" in stage["files"] and ".sm" in stage["files"]["trt"]["path"]
        assert stage["verify"]["tensorrt_vs_onnxruntime"]["passed"]
        assert stage["tensorrt"]["requested"] == precision
    assert (tmp_path / "cache").stat().st_size > 0
    load_manifest(tmp_path / "build")


def test_dynamic_batch_onnx_runs_other_batches(models, tmp_path):
    import numpy as np
    import onnxruntime
    import torch

    model = models["tiny-latte"]
    manifest = export(model, None, tmp_path / "b", config=ExportConfig(dynamic_batch=(2, 2, 8), samples=1,
                                                                      triton_repo=tmp_path / "repo"))
    assert manifest["dynamic_batch"] == [2, 2, 8]
    session = onnxruntime.InferenceSession(str(tmp_path / "b" / "onnx" / "stage0.onnx"))
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(6, 4, 8, 8, 8, generator=generator)
    timestep = torch.full((6,), 321.0)
    context = torch.randn(6, model.text_length, model.text_dim, generator=generator)
    ours = session.run(None, {"sample": sample.numpy(), "timestep": timestep.numpy(),
                              "encoder_hidden_states": context.numpy()})[0]
    with torch.no_grad():
        reference = model.denoise(sample, timestep, context).numpy()
    assert np.linalg.norm(ours - reference) / np.linalg.norm(reference) <= REL_ORT
    assert "dims: [ -1, 4, 8, 8, 8 ]" in (tmp_path / "repo" / "tiny_latte_stage0" / "config.pbtxt").read_text()


def test_runtime_refuses_prompt_counts_outside_the_dynamic_batch(models, tmp_path):
    """A CFG batch outside the exported range is one F3Error, not a guard failure or a silent run."""
    from f3compile.runtime import Runtime

    export(models["tiny-latte"], None, tmp_path / "b", config=ExportConfig(dynamic_batch=(2, 2, 4), verify=False))
    for backend in ("torch", "onnxruntime"):
        runtime = Runtime(tmp_path / "b", backend=backend)
        with pytest.raises(F3Error, match="1 to 2 prompt"):
            runtime.generate(["a"] * 3, steps=1)
        assert runtime.generate(["a", "b"], steps=1).shape[0] == 2  # inside the range: runs
