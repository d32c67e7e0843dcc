"""TensorRT readiness: the static check of exported ONNX against onnx-tensorrt's operator table (CPU)."""

import importlib.util
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from f3compile import F3Error
from f3compile.exporters import ExportConfig, export
from f3compile.exporters import trt_readiness
from f3compile.exporters.trt_readiness import check_onnx, load_table

TINY = ("tiny-unet3d", "tiny-latte")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_exports(dense_export):
    """name -> (build directory, manifest) of the dense fp32 opset-20 export."""
    return {name: dense_export(name) for name in TINY}


def _model(nodes, inputs, outputs, initializers=(), opset=20, extra_opsets=()):
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in extra_opsets]
    return helper.make_model(graph, opset_imports=opsets)


def _tensor(name, elem_type, shape):
    from onnx import helper

    return helper.make_tensor_value_info(name, elem_type, shape)


@pytest.mark.parametrize("name", TINY)
def test_dense_tiny_exports_are_tensorrt_ready(tiny_exports, name):
    directory, manifest = tiny_exports[name]
    report = manifest["stages"][0]["audit"]["tensorrt_readiness"]
    assert report["ready"], report
    assert report["opset"] == 20 and report["unsupported"] == [] and report["dtype_violations"] == []
    assert report["untyped"] == 0  # shape inference typed every checked tensor: the dtype check saw them all
    assert report["table"]["source"] == "onnx/onnx-tensorrt docs/operators.md"
    assert re.fullmatch(r"[0-9a-f]{40}", report["table"]["commit"])
    # the file on disk gives the same answer as the record written during export
    assert check_onnx(directory / "onnx" / "stage0.onnx") == report


@pytest.mark.parametrize("name", TINY)
def test_table_covers_the_tiny_graphs_and_counts_are_independent(tiny_exports, name):
    import onnx

    directory, manifest = tiny_exports[name]
    model = onnx.load(str(directory / "onnx" / "stage0.onnx"))
    # no subgraphs or local functions here, so a flat count of node op_types is the whole graph
    assert not model.functions
    assert not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                   for n in model.graph.node for a in n.attribute)
    counted = Counter(n.op_type for n in model.graph.node)
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    report = manifest["stages"][0]["audit"]["tensorrt_readiness"]
    assert report["operators"] == dict(counted)
    table = load_table()["operators"]
    assert all(table[op]["supported"] for op in counted), sorted(set(counted) - set(table))
    assert set(report["restrictions"]) == {op for op in counted if table[op]["restrictions"]}


@pytest.mark.parametrize("name", TINY)
def test_verify_json_records_readiness(tiny_exports, name):
    directory, manifest = tiny_exports[name]
    recorded = json.loads((directory / "stage0" / "verify.json").read_text())
    assert recorded["audit"]["tensorrt_readiness"] == manifest["stages"][0]["audit"]["tensorrt_readiness"]
    manifest_file = json.loads((directory / "manifest.json").read_text())
    assert manifest_file["stages"][0]["audit"]["tensorrt_readiness"]["ready"] is True


def test_ops_outside_the_table_are_named():
    from onnx import TensorProto as T
    from onnx import helper

    nodes = [helper.make_node("Frobnicate", ["x"], ["a"]),                             # in no table
             helper.make_node("Det", ["a"], ["b"]),                                    # listed as N
             helper.make_node("FusedMatMul", ["b", "b"], ["c"], domain="com.microsoft"),
             helper.make_node("Relu", ["c"], ["y"])]
    report = check_onnx(_model(nodes, [_tensor("x", T.FLOAT, [2, 2])], [_tensor("y", T.FLOAT, [2, 2])],
                               extra_opsets=["com.microsoft"]))
    assert not report["ready"]
    by_op = {u["op"]: u for u in report["unsupported"]}
    assert set(by_op) == {"Frobnicate", "Det", "com.microsoft::FusedMatMul"}
    assert "not in onnx-tensorrt's operator table" in by_op["Frobnicate"]["reason"]
    assert "marked unsupported" in by_op["Det"]["reason"]
    assert "com.microsoft" in by_op["com.microsoft::FusedMatMul"]["reason"] and by_op["Det"]["count"] == 1
    assert report["operators"] == {"Det": 1, "Frobnicate": 1, "Relu": 1, "com.microsoft::FusedMatMul": 1}
    assert "Frobnicate" in trt_readiness.summary(report)


def test_dtype_outside_an_ops_types_is_a_violation():
    from onnx import TensorProto as T
    from onnx import helper

    # MatMul is listed for FP32, FP16, BF16 only; ONNX allows it on INT32
    nodes = [helper.make_node("MatMul", ["x", "x"], ["m"]), helper.make_node("MatMul", ["m", "x"], ["y"])]
    report = check_onnx(_model(nodes, [_tensor("x", T.INT32, [2, 2])], [_tensor("y", T.INT32, [2, 2])]))
    assert not report["ready"] and report["unsupported"] == []
    assert report["dtype_violations"] == [{"op": "MatMul", "dtype": "INT32", "count": 2}]
    assert "MatMul on INT32" in trt_readiness.summary(report)


def test_index_shape_and_condition_tensors_are_not_data_types():
    """Gather's INT64 indices, Equal's BOOL output, Shape's INT64 output are not checked against FP types."""
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper
    import numpy as np

    indices = numpy_helper.from_array(np.array([0, 1], dtype=np.int64), "indices")
    nodes = [helper.make_node("Gather", ["x", "indices"], ["g"]),
             helper.make_node("Equal", ["g", "g"], ["e"]),
             helper.make_node("Where", ["e", "g", "g"], ["w"]),
             helper.make_node("Shape", ["w"], ["s"]),
             helper.make_node("ConstantOfShape", ["s"], ["y"], value=numpy_helper.from_array(np.array([1], np.int64)))]
    report = check_onnx(_model(nodes, [_tensor("x", T.FLOAT, [3, 2])], [_tensor("y", T.INT64, None)], [indices]))
    assert report["ready"], report  # ConstantOfShape to INT64: the table's "INF64" is read as INT64 (errata)
    assert report["untyped"] == 0
    # the same graph at an opset beyond the table's range is not ready
    late = check_onnx(_model(nodes, [_tensor("x", T.FLOAT, [3, 2])], [_tensor("y", T.INT64, None)], [indices], opset=21))
    assert not late["ready"] and late["unsupported"][0]["op"] == "<opset>"


def test_trt_target_refuses_a_graph_that_is_not_ready(models, tmp_path, monkeypatch):
    """With a table that drops Gelu, `--target trt` stops before building, naming the op in one line."""
    import f3compile.exporters.tensorrt as tensorrt

    table = json.loads(json.dumps(load_table()))
    table["operators"]["Gelu"]["supported"] = False
    monkeypatch.setattr(trt_readiness, "load_table", lambda: table)
    monkeypatch.setattr(tensorrt, "require_tensorrt", lambda: (None, "10.0", "sm00"))
    monkeypatch.setattr(tensorrt, "build_engine", lambda *a, **k: pytest.fail("built an engine for a graph that is not ready"))
    with pytest.raises(F3Error, match="Gelu") as caught:
        export(models["tiny-latte"], None, tmp_path / "out", config=ExportConfig(target="trt", verify=False))
    assert "\n" not in str(caught.value) and "stage0" in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_table_generator_reads_the_markdown_verbatim():
    spec = importlib.util.spec_from_file_location("make_trt_operator_table", ROOT / "tools" / "make_trt_operator_table.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    text = """TensorRT 10.0 supports operators in the inclusive range of opset 9 to opset 20. More.

| Operator                  | Supported  | Supported Types | Restrictions |
|---------------------------|------------|-----------------|--------------|
| Abs                       | Y          | FP32, FP16, BF16, INT32, INT64 |
| AffineGrid                | N          |
| ConstantOfShape           | Y          | FP32, INF64, BOOL |
| CumSum                    | Y          | FP32, FP16, BF16 | `axis` must be an initializer                   |
| Selu                      | Y          | FP32, FP16, BF16, |
"""
    table = tool.parse(text)
    assert table["tensorrt"] == "10.0" and table["opset_range"] == [9, 20]
    ops = table["operators"]
    assert list(ops) == ["Abs", "AffineGrid", "ConstantOfShape", "CumSum", "Selu"]
    assert ops["AffineGrid"] == {"supported": False, "types": [], "restrictions": ""}
    assert ops["CumSum"]["restrictions"] == "`axis` must be an initializer"
    assert ops["Selu"]["types"] == ["FP32", "FP16", "BF16"]
    assert ops["ConstantOfShape"]["types"][1] == "INT64" and ops["ConstantOfShape"]["types_as_written"][1] == "INF64"
    assert table["errata"] == [{"op": "ConstantOfShape", "written": "INF64", "means": "INT64"}]
    # the checked-in table is what the generator writes for its own content (one line per operator)
    checked_in = load_table()
    assert json.loads(tool.dump(checked_in)) == checked_in
    assert checked_in["tensorrt"].startswith("10.") and len(checked_in["operators"]) > 150
