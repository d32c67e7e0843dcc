"""ONNX export of pruned torch.export programs (dynamo exporter) and an audit of the result."""

from __future__ import annotations

from pathlib import Path

import torch

from ..manifest import INPUT_NAMES, OUTPUT_NAMES

DEFAULT_OPSET = 20  # parsed by onnxruntime and by TensorRT 10.x/11.x; >= 23 turns SDPA into one Attention node
EXTERNAL_DATA_BYTES = 2 * 1024**3 - 64 * 1024**2  # protobuf's 2 GB limit, with headroom for the graph


def export_onnx(program: torch.export.ExportedProgram, inputs: tuple, path: Path, opset: int = DEFAULT_OPSET) -> None:
    """Write `program` as ONNX with the project's fixed I/O names; external data when large."""
    import logging
    import warnings

    weight_bytes = sum(t.numel() * t.element_size() for t in program.state_dict.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        onnx_program = torch.onnx.export(
            program, args=inputs, dynamo=True, input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
            opset_version=opset, verbose=False,
        )
    onnx_program.save(str(path), external_data=weight_bytes > EXTERNAL_DATA_BYTES)


def _scopes(node) -> str:
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            return prop.value
    return ""


def audit_onnx(path: Path, removed_modules: list[str], prefix: str = "denoiser.") -> dict:
    """Count initializer bytes, attention cores and nodes traced inside removed modules.

    `removed_modules` are denoiser-relative module paths that the plan removes entirely; a node
    whose PyTorch name scope lies inside one of them means the pruning did not happen.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=True)
    initializer_bytes = 0
    for init in model.graph.initializer:
        initializer_bytes += onnx.numpy_helper.to_array(init).nbytes
    attention = sum(1 for n in model.graph.node if n.op_type in ("Softmax", "Attention"))
    removed = [f"'{prefix}{m}'" for m in removed_modules] + [f"'{prefix}{m}." for m in removed_modules]
    leftovers = [n.name for n in model.graph.node if any(r in _scopes(n) for r in removed)]
    names = [init.name for init in model.graph.initializer]
    leftover_weights = [n for n in names if any(n.startswith(f"{prefix}{m}.") for m in removed_modules)]
    return {
        "nodes": len(model.graph.node), "initializer_bytes": int(initializer_bytes), "attention_nodes": attention,
        "nodes_from_removed_modules": len(leftovers), "weights_from_removed_modules": len(leftover_weights),
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
    }


def onnxruntime_runner(path: Path, providers: list[str] | None = None):
    """A Polygraphy runner over an onnxruntime session (CPU unless providers say otherwise)."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    return OnnxrtRunner(SessionFromOnnx(str(path), providers=providers or ["CPUExecutionProvider"]), name="onnxruntime")
