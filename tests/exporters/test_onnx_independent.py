"""Pruned ONNX judged without the exporter's own verdict, and the removed-modules audit's controls.

The exporter verifies onnxruntime against the pruned torch program, so a pass that prunes the
wrong thing produces two wrong programs that agree. Here the `.onnx` is run with onnxruntime
directly and compared with the masking reference of `tests/passes/reference.py`, which shares no
code with the passes. The audit tests feed `audit_onnx` graphs edited with the `onnx` API: a node
traced inside a removed module must be flagged, and a graph without name scopes must not pass.
"""

import numpy as np
import onnx
import pytest
import torch

from f3compile import F3Error
from f3compile.exporters import ExportConfig, export
from f3compile.exporters import onnx as onnx_export
from f3compile.exporters.onnx import NAME_SCOPES, audit_onnx
from f3compile.models import find_temporal_units
from f3compile.planning import make_plan
from tests.helpers import rel

from ..passes.reference import masked

REL_ONNX_VS_MASKED = 1e-5  # onnxruntime (CPU, fp32) vs the eager masking reference, relative L2
MIN_PRUNING_EFFECT = 1e-3  # the plan must move the output at least this much, or agreement proves nothing
TIMESTEPS = (900.0, 120.0)  # one early and one late denoising step

CASES = {  # case -> (builtin, granularity, ratio)
    "latte-head": ("tiny-latte", "head", 0.5),
    "unet3d-block": ("tiny-unet3d", "block", 0.5),
}


@pytest.fixture(scope="module")
def pruned_exports(models, calibrations, tmp_path_factory):
    """case -> (build directory, plan, manifest); exported without the exporter's verification."""
    out = {}
    for case, (name, granularity, ratio) in CASES.items():
        plan = make_plan(calibrations[name][1], ratio, granularity)
        directory = tmp_path_factory.mktemp(case) / "build"
        out[case] = (directory, plan, export(models[name], plan, directory, config=ExportConfig(verify=False)))
    return out


def _inputs(model, entry, timestep, seed):
    """Fresh inputs with the shapes and dtypes the manifest records for the stage."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {spec["name"]: spec["shape"] for spec in entry["inputs"]}
    sample = torch.randn(shapes["sample"], generator=generator)
    context = torch.randn(shapes["encoder_hidden_states"], generator=generator)
    return sample, torch.full(shapes["timestep"], timestep), context


@pytest.mark.parametrize("case", CASES)
def test_onnxruntime_equals_the_masked_model(models, pruned_exports, case):
    import onnxruntime

    name = CASES[case][0]
    model, (directory, plan, manifest) = models[name], pruned_exports[case]
    units = find_temporal_units(model)
    assert manifest["stages"][0]["verify"] == {}  # nothing here rests on the exporter's verdict
    for entry, stage in zip(manifest["stages"], plan.stages):
        session = onnxruntime.InferenceSession(str(directory / entry["files"]["onnx"]["path"]),
                                               providers=["CPUExecutionProvider"])
        for seed, timestep in enumerate(TIMESTEPS):
            sample, timesteps, context = _inputs(model, entry, timestep, seed)
            ours = session.run(["noise_pred"], {"sample": sample.numpy(), "timestep": timesteps.numpy(),
                                                "encoder_hidden_states": context.numpy()})[0]
            with torch.no_grad():
                with masked(model, stage, units):
                    reference = model.denoise(sample, timesteps, context).numpy()
                dense = model.denoise(sample, timesteps, context).numpy()
            assert ours.shape == reference.shape
            assert rel(ours, reference) <= REL_ONNX_VS_MASKED
            assert rel(ours, dense) >= MIN_PRUNING_EFFECT  # positive control: the plan is really applied


# -- the audit: "no node from removed modules" --------------------------------------------------

def _block_build(pruned_exports):
    directory, plan, manifest = pruned_exports["unet3d-block"]
    stage = plan.stages[0]
    assert stage.drop_blocks, "the control needs a plan that removes modules"
    return directory / manifest["stages"][0]["files"]["onnx"]["path"], list(stage.drop_blocks)


def _identity(graph, name: str, scopes: str | None = None, source: str | None = None):
    """An Identity node reading `source` (the graph's first input by default), carrying `scopes`
    as its PyTorch name scopes or, with None, no metadata (as a node the ONNX rewriter creates)."""
    node = onnx.helper.make_node("Identity", [source or graph.input[0].name], [f"{name}_out"], name=name)
    if scopes is not None:
        node.metadata_props.add(key=NAME_SCOPES, value=scopes)
    return node


def test_audit_flags_a_node_traced_in_a_removed_module(pruned_exports, tmp_path):
    path, removed = _block_build(pruned_exports)
    clean = audit_onnx(path, removed)
    assert clean["nodes_from_removed_modules"] == 0 and clean["removed_modules_check"] == "passed"
    model = onnx.load(str(path))
    # a node of a module the plan keeps: the audit must not flag it (the control is specific)
    model.graph.node.append(_identity(model.graph, "kept_node", "['', 'denoiser', 'denoiser.conv_in', 'x']"))
    onnx.save(model, str(tmp_path / "kept.onnx"))
    kept = audit_onnx(tmp_path / "kept.onnx", removed)
    assert kept["nodes_from_removed_modules"] == 0 and kept["removed_modules_check"] == "passed"
    # a node inside a block the plan drops, as the exporter would record a leftover
    scopes = f"['', 'denoiser', 'denoiser.{removed[0]}', 'denoiser.{removed[0]}.proj_in', 'linear']"
    model.graph.node.append(_identity(model.graph, "leftover_node", scopes))
    onnx.save(model, str(tmp_path / "leftover.onnx"))
    audit = audit_onnx(tmp_path / "leftover.onnx", removed)
    assert audit["nodes_from_removed_modules"] == 1 and audit["removed_modules_check"] == "failed"
    assert audit["nodes"] == clean["nodes"] + 2
    # a node without metadata that reads the leftover is attributed to the leftover's module
    model.graph.node.append(_identity(model.graph, "unscoped_node", source="leftover_node_out"))
    onnx.save(model, str(tmp_path / "unscoped.onnx"))
    audit = audit_onnx(tmp_path / "unscoped.onnx", removed)
    assert audit["nodes_from_removed_modules"] == 2 and audit["nodes_of_unknown_scope"] == 0


def _stripped(path, target):
    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
    onnx.save(model, str(target))
    return target


def test_audit_without_name_scopes_does_not_pass(pruned_exports, tmp_path):
    path, removed = _block_build(pruned_exports)
    model = onnx.load(str(path))
    # the rewriter's nodes carry no metadata of their own; the audit places them by their neighbours
    assert any(not node.metadata_props for node in model.graph.node)
    assert audit_onnx(path, removed)["nodes_of_unknown_scope"] == 0
    # one node without metadata and without a neighbour that has any is enough to make it unknown
    model.graph.node.append(_identity(model.graph, "orphan_node"))
    onnx.save(model, str(tmp_path / "orphan.onnx"))
    orphan = audit_onnx(tmp_path / "orphan.onnx", removed)
    assert orphan["nodes_of_unknown_scope"] == 1 and orphan["removed_modules_check"] == "unknown"
    stripped = _stripped(path, tmp_path / "stripped.onnx")
    audit = audit_onnx(stripped, removed)
    assert audit["nodes_of_unknown_scope"] == audit["nodes"] > 0
    assert audit["nodes_from_removed_modules"] == "unknown" and audit["removed_modules_check"] == "unknown"
    # nothing removed: no node can come from a removed module, with or without scopes
    assert audit_onnx(stripped, [])["removed_modules_check"] == "passed"


def test_export_refuses_a_graph_it_cannot_audit(models, calibrations, tmp_path, monkeypatch):
    """Through `export`: an ONNX whose name scopes are lost fails the export and leaves nothing."""
    plan = make_plan(calibrations["tiny-latte"][1], 0.5, "block")
    removed = list(plan.stages[0].drop_blocks)
    assert removed
    real_export_onnx, before_stripping = onnx_export.export_onnx, []

    def export_without_scopes(program, inputs, path, weights, opset=onnx_export.DEFAULT_OPSET, **names):
        real_export_onnx(program, inputs, path, weights, opset=opset, **names)
        before_stripping.append(audit_onnx(path, removed))  # control: the real graph passes
        _stripped(path, path)

    monkeypatch.setattr(onnx_export, "export_onnx", export_without_scopes)
    with pytest.raises(F3Error, match="stage0"):
        export(models["tiny-latte"], plan, tmp_path / "build", config=ExportConfig(verify=False))
    assert not (tmp_path / "build").exists()
    assert [audit["removed_modules_check"] for audit in before_stripping] == ["passed"]
