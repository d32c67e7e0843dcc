"""TensorRT readiness of an ONNX graph: a static check against onnx-tensorrt's operator table.

`check_onnx` reads an exported ONNX (no TensorRT, no GPU) and checks it against
`tensorrt_operators.json`, a verbatim conversion of onnx-tensorrt's docs/operators.md
(regenerate with tools/make_trt_operator_table.py):

- the default-domain opset lies in the table's opset range;
- every node (subgraphs and local functions included) is a default-domain ("" / "ai.onnx")
  operator that the table lists as supported; other domains (com.microsoft, ...) would need a
  TensorRT plugin and are reported as unsupported;
- the element types of each node's data tensors are in the operator's "Supported Types". The
  column is read as the types of the operator's data type parameter in its ONNX schema (`T`,
  else `V`, else `T1`; both sides of Cast/CastLike/EyeLike; the output of ConstantOfShape and
  Random*Like; the values of OneHot). Indices, shapes, axes, conditions and other inputs of a
  fixed or separate type are not checked against it. Types come from ONNX shape inference.

It is a static check, not a TensorRT build: the "Restrictions" column (attribute values,
initializer-only inputs, ...) is only reported for the operators used, not verified, and a
graph that passes can still fail to build or run in TensorRT.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from pathlib import Path

TABLE_PATH = Path(__file__).with_name("tensorrt_operators.json")
DEFAULT_DOMAINS = ("", "ai.onnx")

# ONNX TensorProto element type -> the spelling of onnx-tensorrt's table (its TensorOrWeights.cpp
# names FLOAT8E4M3FN "FP8"; DOUBLE, listed by no operator, is cast down by the parser). Types not
# here keep their ONNX name and so are never in an operator's list.
_TYPE_NAMES = {"FLOAT": "FP32", "FLOAT16": "FP16", "BFLOAT16": "BF16", "FLOAT8E4M3FN": "FP8"}
# the schema type parameters whose tensors the "Supported Types" column describes, where the
# default (T, else V, else T1) would pick the wrong ones
_CHECKED_PARAMS = {
    "Cast": ("T1", "T2"), "CastLike": ("T1", "T2"), "EyeLike": ("T1", "T2"), "ConstantOfShape": ("T2",),
    "RandomNormalLike": ("T2",), "RandomUniformLike": ("T2",), "OneHot": ("T3",),
}


@functools.lru_cache(maxsize=1)
def load_table() -> dict:
    return json.loads(TABLE_PATH.read_text(encoding="utf-8"))


def type_name(elem_type: int) -> str:
    import onnx

    name = onnx.TensorProto.DataType.Name(elem_type)
    return _TYPE_NAMES.get(name, name)


def _graphs(graph):
    """`graph` and every subgraph of its nodes (If/Loop/Scan bodies), depth first."""
    import onnx

    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _graphs(sub)


def _elem_types(graph) -> dict[str, int]:
    """Tensor name -> ONNX element type, over all value infos, initializers and Constant outputs."""
    types: dict[str, int] = {}
    for g in _graphs(graph):
        for value in list(g.input) + list(g.output) + list(g.value_info):
            if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
                types[value.name] = value.type.tensor_type.elem_type
        for init in g.initializer:
            types[init.name] = init.data_type
        for sparse in g.sparse_initializer:
            types[sparse.values.name] = sparse.values.data_type
        for node in g.node:
            if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS:
                for attr in node.attribute:
                    if attr.name == "value" and node.output:
                        types.setdefault(node.output[0], attr.t.data_type)
    return types


def _checked_slots(node, opset: int) -> list[str]:
    """The names of the node's inputs and outputs whose type the table's "Supported Types" constrains."""
    import onnx

    try:
        schema = onnx.defs.get_schema(node.op_type, opset, "")
    except onnx.defs.SchemaError:  # an operator ONNX no longer defines: check every tensor
        return [n for n in list(node.input) + list(node.output) if n]
    params = {c.type_param_str for c in schema.type_constraints}
    checked = _CHECKED_PARAMS.get(node.op_type) or next(((p,) for p in ("T", "V", "T1") if p in params), ())
    names = []
    for actual, formal in ((node.input, schema.inputs), (node.output, schema.outputs)):
        for index, name in enumerate(actual):
            if not name or not formal:
                continue
            parameter = formal[min(index, len(formal) - 1)]  # a variadic last parameter takes the rest
            if parameter.type_str in checked:
                names.append(name)
    return names


def check_onnx(path_or_model) -> dict:
    """TensorRT readiness of an ONNX file or `onnx.ModelProto` (JSON-able; see the module docstring).

    Returns ``{"ready", "table": {source, commit, branch, tensorrt, opset_range}, "opset",
    "operators": {op: nodes}, "unsupported": [{op, reason, count}], "dtype_violations":
    [{op, dtype, count}] (count: nodes), "untyped": tensors whose type inference left unknown,
    "restrictions": {op: text}}``; ops of other domains are named ``domain::op``.
    """
    import onnx

    if isinstance(path_or_model, onnx.ModelProto):
        model = path_or_model
    else:
        model = onnx.load(str(path_or_model), load_external_data=False)
    table = load_table()
    opset = next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), None)
    if model.functions:  # what TensorRT's parser sees of a local function is its body
        from onnx import inliner

        model = inliner.inline_local_functions(model)
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - inference is best effort; unknown types are counted below
        pass
    types = _elem_types(model.graph)
    known = table["operators"]
    operators: Counter = Counter()
    violations: Counter = Counter()
    untyped = 0
    for graph in _graphs(model.graph):
        for node in graph.node:
            default = node.domain in DEFAULT_DOMAINS
            op = node.op_type if default else f"{node.domain}::{node.op_type}"
            operators[op] += 1
            if not (default and known.get(op, {}).get("supported")) or opset is None:
                continue
            bad = set()
            for name in _checked_slots(node, opset):
                if name not in types:
                    untyped += 1
                elif type_name(types[name]) not in known[op]["types"]:
                    bad.add(type_name(types[name]))
            for dtype in bad:
                violations[(op, dtype)] += 1
    unsupported = []
    low, high = table["opset_range"]
    if opset is None or not low <= opset <= high:
        unsupported.append({"op": "<opset>", "count": 1,
                            "reason": f"default-domain opset {opset} is outside {low}..{high}, the range of TensorRT {table['tensorrt']}"})
    for op, count in sorted(operators.items()):
        if "::" in op:
            reason = f"domain {op.split('::')[0]!r} is not ONNX's default domain (needs a TensorRT plugin)"
        elif op not in known:
            reason = "not in onnx-tensorrt's operator table"
        elif not known[op]["supported"]:
            reason = "marked unsupported (N) in onnx-tensorrt's operator table"
        else:
            continue
        unsupported.append({"op": op, "reason": reason, "count": count})
    return {
        "ready": not unsupported and not violations,
        "table": {k: table[k] for k in ("source", "commit", "branch", "tensorrt", "opset_range") if k in table},
        "opset": opset,
        "operators": dict(sorted(operators.items())),
        "unsupported": unsupported,
        "dtype_violations": [{"op": op, "dtype": dtype, "count": count} for (op, dtype), count in sorted(violations.items())],
        "untyped": untyped,
        "restrictions": {op: known[op]["restrictions"] for op in sorted(operators)
                         if known.get(op, {}).get("supported") and known[op]["restrictions"]},
    }


def summary(report: dict) -> str:
    """One line naming what keeps `report` from being ready ("" when it is)."""
    items = [f"{u['op']} ({u['reason']})" for u in report["unsupported"]]
    items += [f"{v['op']} on {v['dtype']}" for v in report["dtype_violations"]]
    return "; ".join(items)
