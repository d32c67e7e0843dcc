"""ONNX export of pruned torch.export programs (dynamo exporter) and an audit of the result."""

from __future__ import annotations

from pathlib import Path

import torch

from ..manifest import INPUT_NAMES, OUTPUT_NAMES

DEFAULT_OPSET = 20  # parsed by onnxruntime and by TensorRT 10.x/11.x; >= 23 turns SDPA into one Attention node
INLINE_BYTES = 1024  # initializers smaller than this stay in the graph (shapes, scalars, norms' epsilons)
WEIGHTS_FILE = "weights.onnx.data"  # a build's ONNX graphs keep their initializers in this one file


class WeightFile:
    """One external-data file for the ONNX graphs of a build, written as each graph is exported.

    Every initializer of at least `INLINE_BYTES` is stored once: a tensor equal (dtype, shape and
    bytes) to one already in the file is referenced where it lies. The stages of a plan differ only
    in the weights their passes changed (a windowed attention's permuted q/k/v/out rows, pruned
    heads), so a two-stage build holds about one copy of the weights on disk instead of two, and a
    runtime can share one copy between its sessions (`runtime.backends.WeightPool`). Tensors of at
    least 1 MiB start at 64 KiB offsets (the mapping granularity onnxruntime and Windows use), the
    others at 64 bytes. Graphs and the file live in one folder: ONNX resolves `location` relative
    to the graph and refuses paths that leave its folder."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "wb")
        self._stored: dict[tuple, tuple[int, int]] = {}  # (dtype, shape, sha256) -> (offset, length)
        self.size = 0

    def _store(self, data: bytes, key: tuple) -> tuple[int, int]:
        import hashlib

        key = key + (hashlib.sha256(data).digest(),)
        found = self._stored.get(key)
        if found is None:
            align = 65536 if len(data) >= 2**20 else 64
            offset = -(-self.size // align) * align
            self._handle.seek(offset)
            self._handle.write(data)
            self.size = offset + len(data)
            found = self._stored[key] = (offset, len(data))
        return found

    def write_graph(self, model, path: Path) -> None:
        """Save the onnx_ir `model` at `path` (in this file's folder), its initializers in this file.
        The model's tensors are swapped for external references only while it is saved."""
        import onnx_ir as ir

        if Path(path).parent.resolve() != self.path.parent.resolve():
            raise ValueError(f"{path} must be in {self.path.parent}, beside its weights")
        swapped = []
        try:
            for value in model.graph.initializers.values():
                tensor = value.const_value
                if tensor is None or isinstance(tensor, ir.StringTensor):
                    continue
                if isinstance(tensor, ir.ExternalTensor):  # it would name a file the build does not hash
                    raise ValueError(f"initializer {value.name!r} already lies in {tensor.location}; "
                                     "a build's graphs take their initializers from its one weight file")
                data = tensor.tobytes()
                if len(data) < INLINE_BYTES:
                    continue
                offset, length = self._store(data, (tensor.dtype, tuple(tensor.shape)))
                swapped.append((value, tensor))
                value.const_value = ir.ExternalTensor(self.path.name, offset, length, tensor.dtype, shape=tensor.shape,
                                                      name=value.name, base_dir=str(self.path.parent))
            self._handle.flush()  # the graph is readable as soon as it is written
            ir.save(model, str(path))
        finally:
            for value, tensor in swapped:
                value.const_value = tensor

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "WeightFile":
        return self

    def __exit__(self, *_) -> None:
        self.close()


def export_onnx(program: torch.export.ExportedProgram, inputs: tuple, path: Path, weights: WeightFile,
                opset: int = DEFAULT_OPSET, input_names: list[str] | None = None,
                output_names: list[str] | None = None) -> None:
    """Write `program` as ONNX with the project's fixed I/O names (plus the residuals of temporal
    reuse where given), its initializers in `weights` (shared with the build's other graphs).
    Tensors are written one at a time: no serialized copy of the whole model is ever held."""
    import logging
    import warnings

    from .. import memo
    from ..memo import program_bytes

    names = (tuple(input_names or INPUT_NAMES), tuple(output_names or OUTPUT_NAMES))
    key = ("onnx", id(program), opset, names, tuple((tuple(t.shape), str(t.dtype)) for t in inputs))
    exported = memo.FILES.get(key)
    if exported is not None and exported[0] is program:  # exported before: the same graph (`memo.FILES`)
        weights.write_graph(exported[1], path)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        onnx_program = torch.onnx.export(
            program, args=inputs, dynamo=True, input_names=input_names or INPUT_NAMES,
            output_names=output_names or OUTPUT_NAMES,
            opset_version=opset, verbose=False, optimize=False,
        )
        simplify(onnx_program.model)
    weights.write_graph(onnx_program.model, path)
    memo.FILES.put(key, (program, onnx_program.model), program_bytes(program))


def simplify(model) -> None:
    """Constant folding and clean-up of an exported ONNX graph (in place): what torch's default
    `optimize` does, without onnxscript's pattern rewriter. The rewriter took 30–40% of each export
    for a graph a few percent smaller that onnxruntime runs within 2% as fast on the reference
    models (`tools/onnx_simplify_bench.py`); every export is still verified against torch."""
    import logging

    import onnx_ir as ir
    import onnx_ir.passes.common as common
    from onnxscript import optimizer

    logger = logging.getLogger("onnxscript")  # "Skipping constant folding for op Split ..." per node
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        optimizer.inline(model)
        for _ in range(2):  # folding a shape computation can make the next one constant
            optimizer.fold_constants(model)
            optimizer.remove_unused_nodes(model)
        ir.passes.Sequential(
            common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
            common.LiftSubgraphInitializersToMainGraphPass(), common.DeduplicateInitializersPass(),
            common.CommonSubexpressionEliminationPass(), common.RemoveUnusedNodesPass(), common.OutputFixPass(),
            common.NameFixPass(),
        )(model)
    finally:
        logger.setLevel(level)


NAME_SCOPES = "pkg.torch.onnx.name_scopes"  # per-node metadata of torch's dynamo exporter: "['', 'denoiser', ...]"
UNKNOWN = "unknown"  # the audit cannot tell: nodes carry no name scope to check


def _scopes(node) -> str | None:
    """The PyTorch name scopes the exporter recorded on `node`, or None where it recorded none."""
    for prop in node.metadata_props:
        if prop.key == NAME_SCOPES:
            return prop.value
    return None


def node_scopes(graph) -> list[str | None]:
    """Each node's name scopes, None where they cannot be known.

    A node an ONNX optimizer created (e.g. a Split that onnxscript's rewriter fused from `chunk`
    slices) carries no scope of its own; it is attributed to the recorded scopes of the nodes it
    reads from and feeds, since it computes inside them. A node without a scope and without a
    recorded neighbour stays None: nothing shows which module it came from (a graph stripped of
    its metadata is all None).
    """
    own = [_scopes(node) for node in graph.node]
    producer = {name: index for index, node in enumerate(graph.node) for name in node.output if name}
    consumers: dict[str, list[int]] = {}
    for index, node in enumerate(graph.node):
        for name in node.input:
            consumers.setdefault(name, []).append(index)
    resolved = []
    for index, node in enumerate(graph.node):
        if own[index] is not None:
            resolved.append(own[index])
            continue
        neighbours = [producer[name] for name in node.input if name in producer]
        neighbours += [j for name in node.output for j in consumers.get(name, [])]
        recorded = [own[j] for j in neighbours if own[j] is not None]
        resolved.append(" ".join(recorded) if recorded else None)
    return resolved


def audit_onnx(path: Path, removed_modules: list[str], prefix: str = "denoiser.") -> dict:
    """Count initializer bytes, attention cores and nodes traced inside removed modules.

    `removed_modules` are denoiser-relative module paths that the plan removes entirely; a node
    whose PyTorch name scope lies inside one of them means the pruning did not happen. Where the
    plan removes modules and some node's scope cannot be known (the exporter recorded no name
    scopes), `nodes_from_removed_modules` is "unknown", never 0: a graph without metadata does not
    pass. `removed_modules_check` sums it up: "passed", "failed" or "unknown".
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)  # the graph alone: sizes come from dims and dtypes
    initializer_bytes = sum(initializer_nbytes(init) for init in model.graph.initializer)
    attention = sum(1 for n in model.graph.node if n.op_type in ("Softmax", "Attention"))
    removed = [f"'{prefix}{m}'" for m in removed_modules] + [f"'{prefix}{m}." for m in removed_modules]
    scopes = node_scopes(model.graph)
    leftovers = [n.name for n, s in zip(model.graph.node, scopes) if s is not None and any(r in s for r in removed)]
    unknown = sum(1 for s in scopes if s is None)
    names = [init.name for init in model.graph.initializer]
    leftover_weights = [n for n in names if any(n.startswith(f"{prefix}{m}.") for m in removed_modules)]
    cannot_tell = bool(unknown and removed_modules)  # with nothing removed, no node can come from a removed module
    nodes_from_removed = len(leftovers) if leftovers or not cannot_tell else UNKNOWN
    check = "failed" if leftovers or leftover_weights else UNKNOWN if cannot_tell else "passed"
    return {
        "nodes": len(model.graph.node), "initializer_bytes": int(initializer_bytes), "attention_nodes": attention,
        "nodes_from_removed_modules": nodes_from_removed, "weights_from_removed_modules": len(leftover_weights),
        "nodes_of_unknown_scope": unknown, "removed_modules_check": check,
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
    }


def initializer_nbytes(init) -> int:
    """Bytes of an initializer's values, read from its dims and dtype (its data may be external)."""
    import math

    from onnx.helper import tensor_dtype_to_np_dtype

    if init.data_type == init.STRING:
        return sum(len(item) for item in init.string_data)
    return math.prod(init.dims) * tensor_dtype_to_np_dtype(init.data_type).itemsize


def verification_providers(device) -> list[str]:
    """Where onnxruntime verifies an export made for `device`: its CUDA provider for a CUDA export
    when the installed onnxruntime has one, else the CPU."""
    import onnxruntime

    if getattr(device, "type", str(device)).startswith("cuda") and \
            "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def available_bytes(providers: list[str], device) -> int:
    """Memory free where the first provider runs: the GPU's for CUDA, else the host's."""
    import os

    if providers[0] == "CUDAExecutionProvider":
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    try:  # what the kernel can give without swapping, page cache included (Linux)
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def onnxruntime_runner(path: Path, providers: list[str] | None = None):
    """A Polygraphy runner over an onnxruntime session (CPU unless providers say otherwise), made
    when the runner activates and dropped when it deactivates. Unlike the runtime's sessions, which
    stay loaded side by side (`runtime.backends.session_options`), it keeps onnxruntime's arena:
    faster on small graphs, and gone with the session."""
    import onnxruntime
    from polygraphy.backend.onnxrt import OnnxrtRunner

    providers = providers or ["CPUExecutionProvider"]
    return OnnxrtRunner(lambda: onnxruntime.InferenceSession(str(path), providers=providers), name="onnxruntime")
