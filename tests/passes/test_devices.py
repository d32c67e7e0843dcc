"""Every tensor a pass creates lives on the device of the graph it rewrites.

The programs are captured on the `meta` device (shapes only, no compute), so a CPU-only machine
checks what a GPU would need: a pass that builds an index or constant on the CPU leaves a CPU
tensor in a meta program (or fails to trace), exactly as it would on CUDA.
"""

from __future__ import annotations

import pytest
import torch

from f3compile.compiler.compile import apply_stage, capture, export_inputs
from f3compile.models import find_temporal_units
from tests.helpers import TINY

from .test_passes import stages_for


def _tensors(program: torch.export.ExportedProgram) -> dict[str, torch.Tensor]:
    found = dict(program.state_dict)
    found.update({f"constant:{k}": v for k, v in program.constants.items() if isinstance(v, torch.Tensor)})
    module = program.module()
    found.update({f"module:{k}": v for k, v in module.named_buffers()})
    found.update({f"module:{k}": v for k, v in module.named_parameters()})
    return found


@pytest.fixture(scope="module")
def on_meta(models):
    out = {}
    for name, model in models.items():
        units = find_temporal_units(model)
        out[name] = (units, capture(model, model.shapes, device="meta"), export_inputs(model, model.shapes, device="meta"))
    return out


@pytest.mark.parametrize("name", TINY)
# "mixed" runs the attention, head and frame passes together; "all-heads" and "block" their own
@pytest.mark.parametrize("kind", ["block", "all-heads", "mixed"])
def test_pruned_program_holds_only_tensors_of_the_graph_device(on_meta, models, name, kind):
    units, program, inputs = on_meta[name]
    compiled = apply_stage(program, stages_for(units)[kind], units, inputs)
    tensors = _tensors(compiled.program)
    assert tensors, "the program has no tensors to check"
    elsewhere = {k: str(v.device) for k, v in tensors.items() if v.device.type != "meta"}
    assert not elsewhere, elsewhere
    # the model the program was captured from is untouched: still real weights on the CPU
    assert all(p.device.type == "cpu" for p in models[name].denoiser.parameters())


def test_device_check_has_a_positive_control(models):
    """The helper sees a program's weights and buffers: on a CPU-captured program every one of them
    is reported as off the meta device."""
    name = "tiny-latte"
    model = models[name]
    program = capture(model, model.shapes)
    tensors = _tensors(program)
    assert tensors and all(v.device.type == "cpu" for v in tensors.values())
