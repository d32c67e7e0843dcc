"""The pass contract: a function `GraphModule, PassContext -> PassResult(modified)`.

Passes work on the unlifted graph of a torch.export program (`ExportedProgram.module()`): weights
are `get_attr` nodes and every node traced inside a module carries `meta["nn_module_stack"]` with
the module path. They use only what discovery provides (unit ids, heads, head_dim, frames, block
ids), never architecture names, so a new architecture needs no pass changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import fx

from ..errors import F3Error
from ..models.base import DenoiseModule, TemporalUnit
from ..planning.plan import Stage

aten = torch.ops.aten


@dataclass(frozen=True)
class PassResult:
    modified: bool


@dataclass
class PassContext:
    """What the passes may rely on: the discovered units and the stage to apply."""

    units: dict[str, TemporalUnit]
    stage: Stage
    prefix: str = DenoiseModule.PREFIX
    # the program being built for a stage with temporal reuse: the blocks whose residual comes in as
    # an input (the others in `stage.reused_blocks` are computed and return their residual)
    reused: tuple[str, ...] = ()

    def removed(self, unit_id: str) -> bool:
        """True when the program does not run the unit (its block dropped or reused, or the
        attention dropped)."""
        block = self.units[unit_id].block
        return block in self.stage.drop_blocks or block in self.reused or unit_id in self.stage.drop_attention


GraphPass = Callable[[fx.GraphModule, PassContext], PassResult]


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
    if len(outputs) > 1:
        raise F3Error(f"{what} {path} has {len(outputs)} outputs in the graph; it cannot be removed as a whole")
    return nodes, (outputs[0] if outputs else None)


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
