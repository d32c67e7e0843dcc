"""The pass contract and the pass manager, in torch.fx's manner.

A pass is a callable `(GraphModule, RewriteSpec) -> PassResult(graph_module, modified)` that
declares what it rewrites (`rewrites`: the spec fields it reads). It works on the unlifted graph of
a torch.export program (`ExportedProgram.module()`): weights are `get_attr` nodes and every node
traced inside a module carries `meta["nn_module_stack"]` with the module path. Passes use only
what discovery provides (unit ids, heads, head_dim, frames, block ids) and the neutral
`RewriteSpec`, never architecture names or plan files, so a new architecture needs no pass
changes and the passes do not depend on how plans are made.

`PassManager` runs an ordered list of passes, lints the graph after each one and names the pass
that failed. The default list is the registered pipeline (`register_pass`, in `passes/__init__`);
`f3compile compile --list-passes` prints it. docs/ARCHITECTURE.md shows how a new pass registers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import torch
from torch import fx

from ..errors import F3Error
from ..models.base import DenoiseModule, TemporalUnit

aten = torch.ops.aten


@dataclass(frozen=True)
class PassResult:
    """What a pass returns: the (rewritten) graph module and whether anything changed."""

    graph_module: fx.GraphModule
    modified: bool


@dataclass(frozen=True)
class UnitRewrite:
    """What one program does to one temporal attention."""

    drop: bool = False  # its residual branch is removed: h = h
    pruned_heads: tuple[int, ...] = ()  # sliced out of q/k/v and the output projection
    kept_frames: tuple[int, ...] | None = None  # keys and values gathered from these frames (None: all)
    windows: tuple[int | None, ...] | None = None  # per head: attend within ±W frames (None: that head dense)


@dataclass(frozen=True)
class BlockRewrite:
    """What one program does to one temporal block."""

    drop: bool = False  # output = input
    residual: str | None = None  # temporal reuse: "returned" (computed; residual is an extra output)
    #                              or "given" (not run; output = input + the residual, an extra input)


@dataclass(frozen=True)
class RewriteSpec:
    """The neutral description of one program's rewrite: per unit and per block what to do.

    Built from a plan stage by the compiler (`compiler.compile.rewrite_spec`); the passes read
    nothing else. Entries keep the plan's order (the I/O of temporal reuse follows it).
    """

    units: Mapping[str, TemporalUnit]  # every discovered unit, by id
    unit_rewrites: Mapping[str, UnitRewrite] = field(default_factory=dict)
    block_rewrites: Mapping[str, BlockRewrite] = field(default_factory=dict)
    prefix: str = DenoiseModule.PREFIX

    @property
    def drop_blocks(self) -> list[str]:
        return [block for block, rewrite in self.block_rewrites.items() if rewrite.drop]

    @property
    def drop_attention(self) -> list[str]:
        return [unit for unit, rewrite in self.unit_rewrites.items() if rewrite.drop]

    @property
    def prune_heads(self) -> dict[str, tuple[int, ...]]:
        return {unit: rewrite.pruned_heads for unit, rewrite in self.unit_rewrites.items() if rewrite.pruned_heads}

    @property
    def keep_frames(self) -> dict[str, tuple[int, ...]]:
        return {unit: rewrite.kept_frames for unit, rewrite in self.unit_rewrites.items()
                if rewrite.kept_frames is not None}

    @property
    def windows(self) -> dict[str, tuple[int | None, ...]]:
        return {unit: rewrite.windows for unit, rewrite in self.unit_rewrites.items() if rewrite.windows is not None}

    @property
    def carried_blocks(self) -> list[str]:
        """Blocks whose residual crosses steps (returned or given), in plan order."""
        return [block for block, rewrite in self.block_rewrites.items() if rewrite.residual is not None]

    @property
    def reused(self) -> list[str]:
        """Blocks whose residual this program takes as an input instead of running them."""
        return [block for block, rewrite in self.block_rewrites.items() if rewrite.residual == "given"]

    def removed(self, unit_id: str) -> bool:
        """True when the program does not run the unit (its block dropped or reused, or the
        attention dropped)."""
        block = self.block_rewrites.get(self.units[unit_id].block, BlockRewrite())
        return block.drop or block.residual == "given" or self.unit_rewrites.get(unit_id, UnitRewrite()).drop


GraphPass = Callable[[fx.GraphModule, RewriteSpec], PassResult]


def graph_pass(rewrites: str, annotates_only: bool = False) -> Callable[[GraphPass], GraphPass]:
    """Declare what a pass rewrites (shown by `--list-passes`): `@graph_pass("drop_blocks")`.
    `annotates_only`: it only tags nodes (`meta`), so a graph only it modified computes what it did
    before (the compiler then keeps the program it started from instead of tracing it again)."""
    def mark(fn: GraphPass) -> GraphPass:
        fn.rewrites = rewrites
        fn.annotates_only = annotates_only
        return fn
    return mark


PIPELINE: list[GraphPass] = []  # the registered passes, in the order they run


def register_pass(graph_pass: GraphPass, *, before: str | None = None, after: str | None = None) -> GraphPass:
    """Add `graph_pass` to the pipeline: at the end, or just before / after the pass of that name."""
    names = [p.__name__ for p in PIPELINE]
    if graph_pass.__name__ in names:
        raise ValueError(f"a pass named {graph_pass.__name__} is registered already")
    if not hasattr(graph_pass, "rewrites"):
        raise ValueError(f"pass {graph_pass.__name__} does not declare what it rewrites (@graph_pass)")
    anchor = before or after
    if anchor is None:
        PIPELINE.append(graph_pass)
    elif anchor not in names:
        raise ValueError(f"no registered pass named {anchor}")
    else:
        PIPELINE.insert(names.index(anchor) + (1 if after else 0), graph_pass)
    return graph_pass


class PassManager:
    """Runs passes in order on one graph; lints after each; a failure names the pass."""

    def __init__(self, passes: Iterable[GraphPass] | None = None):
        self.passes = list(PIPELINE if passes is None else passes)

    def __call__(self, gm: fx.GraphModule, spec: RewriteSpec) -> dict[str, bool]:
        """Apply every pass to `gm` in place; returns pass name -> modified."""
        results = {}
        for graph_pass in self.passes:
            name = graph_pass.__name__
            try:
                result = graph_pass(gm, spec)
            except F3Error as exc:
                raise F3Error(f"pass {name}: {exc}") from None
            except Exception as exc:  # a bug: keep the traceback, but say where it happened
                raise RuntimeError(f"pass {name} failed: {exc}") from exc
            if result.graph_module is not gm:
                raise RuntimeError(f"pass {name} returned another graph module; passes rewrite in place")
            try:
                gm.graph.lint()
            except Exception as exc:
                raise RuntimeError(f"pass {name} left an invalid graph: {exc}") from exc
            results[name] = result.modified
        return results

    def describe(self) -> str:
        """One line per pass: number, name, what it rewrites and its docstring's first line."""
        import importlib

        lines = []
        for number, graph_pass in enumerate(self.passes, 1):
            doc = (importlib.import_module(graph_pass.__module__).__doc__ or "").strip().splitlines()[0]
            lines.append(f"{number}. {graph_pass.__name__:<28} {doc.split(':', 1)[-1].strip()} "
                         f"[rewrites: {graph_pass.rewrites}]")
        return "\n".join(lines)


# -- node helpers shared by the passes ---------------------------------------------------------
def module_paths(node: fx.Node, prefix: str) -> list[str]:
    """Module paths (denoiser-relative) enclosing `node`, outermost first."""
    stack = node.meta.get("nn_module_stack") or {}
    paths = []
    for value in stack.values():
        path = value[0] if isinstance(value, tuple) else str(value)
        if path.startswith(prefix):
            paths.append(path[len(prefix):])
    return paths


def inside(node: fx.Node, path: str, prefix: str) -> bool:
    return path in module_paths(node, prefix)


def innermost(node: fx.Node, prefix: str) -> str | None:
    paths = module_paths(node, prefix)
    return paths[-1] if paths else None


def region(graph: fx.Graph, path: str, prefix: str) -> list[fx.Node]:
    """All compute nodes traced inside the module at `path`."""
    return [n for n in graph.nodes if n.op == "call_function" and inside(n, path, prefix)]


def single_output(graph: fx.Graph, path: str, prefix: str, what: str) -> tuple[list[fx.Node], fx.Node | None]:
    """(nodes, output) of the module at `path`; output None when nothing of it is used any more
    (already removed). More than one output cannot be replaced as a whole: an error."""
    nodes = region(graph, path, prefix)
    outputs = region_outputs(nodes)
    if len(outputs) > 1:  # a same-dtype cast of an outside value is that value: later modules may use it
        _reroute_identity_casts(outputs, set(nodes))
        outputs = region_outputs(nodes)
    if len(outputs) > 1:
        raise F3Error(f"{what} {path} has {len(outputs)} outputs in the graph; it cannot be removed as a whole")
    return nodes, (outputs[0] if outputs else None)


_CASTS = (aten.to.dtype, aten.type_as.default, aten._to_copy.default)


def _reroute_identity_casts(outputs: list[fx.Node], members: set[fx.Node]) -> None:
    """A cast inside a module to the dtype its input already has (Wan's `temb.float()` in fp32)
    returns the input itself, so tracing hands the cast to every later module that reads the input:
    the module seems to have a second output. Uses outside the module read the cast's input instead."""
    for node in outputs:
        source = node.args[0] if node.target in _CASTS and node.args else None
        if not isinstance(source, fx.Node) or source in members:
            continue
        if dtype_of(node) is None or dtype_of(node) != dtype_of(source) or shape_of(node) != shape_of(source):
            continue
        for user in [u for u in node.users if u not in members]:
            user.replace_input_with(node, source)


def region_outputs(nodes: Iterable[fx.Node]) -> list[fx.Node]:
    members = set(nodes)
    return [n for n in members if any(user not in members for user in n.users)]


def region_inputs(nodes: Iterable[fx.Node]) -> list[fx.Node]:
    members = set(nodes)
    seen: dict[fx.Node, None] = {}
    for node in nodes:
        for arg in node.all_input_nodes:
            if arg not in members and arg.op != "get_attr":
                seen[arg] = None
    return list(seen)


def shape_of(node: fx.Node) -> tuple[int, ...] | None:
    if "f3_shape" in node.meta:
        return tuple(node.meta["f3_shape"])
    value = node.meta.get("val")
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def dtype_of(node: fx.Node):
    value = node.meta.get("val")
    return value.dtype if isinstance(value, torch.Tensor) else node.meta.get("f3_dtype")


def new_zeros_like(graph: fx.Graph, reference: fx.Node, shape: tuple[int, ...], before: fx.Node) -> fx.Node:
    """A zero tensor of `shape` with `reference`'s dtype and device, tagged as a known zero."""
    with graph.inserting_before(before):
        zero = graph.call_function(aten.new_zeros.default, (reference, list(shape)))
    zero.meta["f3_shape"] = tuple(shape)
    zero.meta["f3_zero"] = True
    if dtype_of(reference) is not None:
        zero.meta["f3_dtype"] = dtype_of(reference)
    return zero


def linear_of(nodes: Iterable[fx.Node], path: str, prefix: str) -> fx.Node | None:
    """The single aten.linear node traced inside module `path` (e.g. `<unit>.to_q`)."""
    found = [n for n in nodes if n.target == aten.linear.default and innermost(n, prefix) == path]
    return found[0] if len(found) == 1 else None


def get_attr_tensor(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor:
    owner, _, name = node.target.rpartition(".")
    return getattr(gm.get_submodule(owner) if owner else gm, name)


def set_attr_tensor(gm: fx.GraphModule, node: fx.Node, value: torch.Tensor) -> None:
    owner, _, name = node.target.rpartition(".")
    module = gm.get_submodule(owner) if owner else gm
    if isinstance(getattr(module, name), torch.nn.Parameter):
        setattr(module, name, torch.nn.Parameter(value, requires_grad=False))
    else:
        setattr(module, name, value)


def block_input(nodes: list[fx.Node], output: fx.Node, block: str) -> fx.Node:
    """The tensor entering the block with its output's shape and dtype (what output = input means)."""
    candidates = [n for n in region_inputs(nodes) if shape_of(n) == shape_of(output) and dtype_of(n) == dtype_of(output)]
    if len(candidates) != 1:
        raise F3Error(f"temporal block {block} has no unique input shaped like its output {shape_of(output)}")
    return candidates[0]


def extend_signature(gm: fx.GraphModule, inputs: list[tuple[str, fx.Node]], outputs: list[fx.Node]) -> None:
    """Append placeholders (already in the graph) and outputs to an unlifted program's flat
    signature: forward(*original inputs, *inputs) -> (*original outputs, *outputs)."""
    import torch.utils._pytree as pytree

    codegen = gm.graph._codegen
    info = getattr(codegen, "pytree_info", None)
    if info is None:
        raise F3Error("the program has no flat signature to extend")
    output_node = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    flat = list(output_node.args[0]) if isinstance(output_node.args[0], (tuple, list)) else [output_node.args[0]]
    flat += outputs
    output_node.args = (tuple(flat),)
    arg_names = list(info.orig_args) + [name for name, _ in inputs]
    in_spec = pytree.tree_flatten((tuple(range(len(arg_names))), {}))[1]
    out_spec = pytree.tree_flatten(tuple(range(len(flat))))[1] if len(flat) > 1 else info.out_spec
    codegen.pytree_info = type(info)(arg_names, in_spec, out_spec)
    gm.recompile()
