"""The pass infrastructure: PassManager (order, lint after each pass, the failing pass named),
registration, and the neutral RewriteSpec the compiler builds from a plan stage."""

from __future__ import annotations

import pytest
import torch
from torch import fx

from f3compile.compiler.compile import rewrite_spec
from f3compile.errors import F3Error
from f3compile.models.base import TemporalUnit
from f3compile.passes import PIPELINE, BlockRewrite, PassManager, PassResult, RewriteSpec, UnitRewrite, graph_pass
from f3compile.passes.base import register_pass
from f3compile.planning.plan import Stage

UNITS = [TemporalUnit("b0.attn1", "b0", 4, 8, 8, 32), TemporalUnit("b0.attn2", "b0", 4, 8, 8, 32),
         TemporalUnit("b1.attn1", "b1", 4, 8, 8, 32)]


class _Tiny(torch.nn.Module):
    def forward(self, x):
        return torch.relu(x) + 1


def _graph() -> fx.GraphModule:
    return fx.symbolic_trace(_Tiny())


def _spec() -> RewriteSpec:
    return RewriteSpec(units={u.id: u for u in UNITS})


@graph_pass("nothing")
def leave_alone(gm, spec):
    return PassResult(gm, False)


@graph_pass("the relu")
def drop_relu(gm, spec):
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target is torch.relu:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            gm.recompile()
            return PassResult(gm, True)
    return PassResult(gm, False)


@graph_pass("user error")
def refuse(gm, spec):
    raise F3Error("unit x is not in the graph")


@graph_pass("a bug")
def crash(gm, spec):
    raise KeyError("oops")


@graph_pass("the graph, badly")
def break_graph(gm, spec):
    relu = next(n for n in gm.graph.nodes if n.target is torch.relu)
    relu.prepend(next(iter(relu.users)))  # its user now comes before it: used before it is defined
    return PassResult(gm, True)


def test_the_manager_runs_passes_in_order_and_reports_modified():
    gm = _graph()
    assert PassManager([leave_alone, drop_relu, drop_relu])(gm, _spec()) == {"leave_alone": False, "drop_relu": False}
    gm = _graph()
    results = PassManager([drop_relu, leave_alone])(gm, _spec())
    assert results == {"drop_relu": True, "leave_alone": False}
    assert torch.equal(gm(torch.tensor([-2.0, 3.0])), torch.tensor([-1.0, 4.0]))  # the relu is gone


def test_a_user_error_names_the_pass_and_stays_one_line():
    with pytest.raises(F3Error, match=r"^pass refuse: unit x is not in the graph$"):
        PassManager([leave_alone, refuse, drop_relu])(_graph(), _spec())


def test_a_bug_names_the_pass_and_keeps_its_cause():
    with pytest.raises(RuntimeError, match="pass crash failed") as caught:
        PassManager([crash])(_graph(), _spec())
    assert isinstance(caught.value.__cause__, KeyError)


def test_the_graph_is_linted_after_every_pass():
    with pytest.raises(RuntimeError, match="pass break_graph left an invalid graph"):
        PassManager([break_graph, leave_alone])(_graph(), _spec())


def test_the_default_pipeline_and_its_description():
    names = [p.__name__ for p in PassManager().passes]
    assert names == [p.__name__ for p in PIPELINE] == [
        "annotate_temporal_attention", "reuse_temporal_blocks", "drop_temporal_blocks", "drop_temporal_attention",
        "prune_heads", "gather_key_frames", "window_attention", "cleanup"]
    lines = PassManager().describe().splitlines()
    assert lines[4].startswith("5. prune_heads") and lines[4].endswith("[rewrites: unit_rewrites.pruned_heads]")


def test_registering_a_pass(monkeypatch):
    monkeypatch.setattr("f3compile.passes.base.PIPELINE", list(PIPELINE))
    from f3compile.passes import base

    register_pass(leave_alone, before="cleanup")
    register_pass(drop_relu, after="annotate_temporal_attention")
    names = [p.__name__ for p in base.PIPELINE]
    assert names[1] == "drop_relu" and names[-2:] == ["leave_alone", "cleanup"]
    assert [p.__name__ for p in PassManager().passes] == names
    with pytest.raises(ValueError, match="registered already"):
        register_pass(leave_alone)
    with pytest.raises(ValueError, match="no registered pass named nope"):
        register_pass(refuse, after="nope")

    def undeclared(gm, spec):
        return PassResult(gm, False)
    with pytest.raises(ValueError, match="does not declare what it rewrites"):
        register_pass(undeclared)


def test_the_spec_of_a_stage_per_unit_and_block():
    stage = Stage((999, 0), drop_blocks=["b1"], drop_attention=["b0.attn2"], prune_heads={"b0.attn1": [0, 2]},
                  keep_frames={"b0.attn1": [1, 3], "b0.attn2": [0]})
    spec = rewrite_spec(stage, UNITS)
    assert spec.unit_rewrites == {"b0.attn2": UnitRewrite(drop=True, kept_frames=(0,)),
                                  "b0.attn1": UnitRewrite(pruned_heads=(0, 2), kept_frames=(1, 3))}
    assert spec.block_rewrites == {"b1": BlockRewrite(drop=True)}
    assert spec.drop_blocks == ["b1"] and spec.drop_attention == ["b0.attn2"]
    assert spec.prune_heads == {"b0.attn1": (0, 2)} and spec.keep_frames == {"b0.attn2": (0,), "b0.attn1": (1, 3)}
    assert [spec.removed(u.id) for u in UNITS] == [False, True, True]


def test_the_spec_of_temporal_reuse_names_given_and_returned_residuals():
    stage = Stage((999, 0), reuse={"b0": 2, "b1": 3})
    computing = rewrite_spec(stage, UNITS)
    reusing = rewrite_spec(stage, UNITS, reused=("b1",))
    assert computing.block_rewrites == {"b0": BlockRewrite(residual="returned"), "b1": BlockRewrite(residual="returned")}
    assert reusing.carried_blocks == ["b0", "b1"] and reusing.reused == ["b1"]
    assert [reusing.removed(u.id) for u in UNITS] == [False, False, True]
    assert rewrite_spec(Stage((999, 0), reuse={"b0": 1}), UNITS).block_rewrites == {}  # period 1: computed every step
