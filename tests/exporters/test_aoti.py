"""`export --target aoti`: an AOTInductor package per stage, verified against the torch program,
recorded in the manifest, and run by the runtime's `aoti` backend (on the CPU here; the same
code path on CUDA is covered by the `gpu`-marked tests)."""

from __future__ import annotations

import json

import pytest
import torch

from f3compile.exporters import ExportConfig, export
from f3compile.manifest import load_manifest
from f3compile.planning import make_plan
from f3compile.runtime import Runtime

from tests.helpers import assert_one_line_error, run

REL_AOTI = 1e-4  # compiled kernels vs the torch program, fp32 (inductor reorders reductions)


@pytest.fixture(scope="module")
def aoti_build(models, calibrations, tmp_path_factory):
    root = tmp_path_factory.mktemp("aoti")
    plan = make_plan(calibrations["tiny-latte"][1], 0.5, "head")
    manifest = export(models["tiny-latte"], plan, root / "build", config=ExportConfig(target="aoti", samples=1))
    return root / "build", manifest


def test_package_is_written_verified_and_hashed(aoti_build):
    build, manifest = aoti_build
    stage = manifest["stages"][0]
    entry = stage["files"]["aoti"]
    assert entry["path"] == "stage0/denoiser.aoti.pt2" and (build / entry["path"]).stat().st_size > 0
    assert entry["device"] == "cpu" and manifest["device"] == "cpu" and manifest["targets"] == ["aoti"]
    check = stage["verify"]["aoti_vs_torch"]
    assert check["passed"] and check["relative_l2_error"] <= REL_AOTI
    assert json.loads((build / "stage0" / "verify.json").read_text())["verify"]["aoti_vs_torch"] == check
    assert "onnx" not in stage["files"]  # the ONNX path is not taken for an AOTInductor target
    # the package holds no weights: it computes with the stage's torch program's (user-managed constants)
    assert stage["aoti"]["weights"] == "pt2"
    import zipfile

    names = zipfile.ZipFile(build / entry["path"]).namelist()
    assert not [n for n in names if "/weights/" in n or "/constants/" in n], names
    load_manifest(build)  # validates and checks every sha256


def test_aoti_backend_reproduces_the_torch_program(aoti_build):
    build, _ = aoti_build
    runtime = Runtime(build, backend="aoti")
    program = torch.export.load(str(build / "stage0" / "denoiser.pt2"))
    held = [*program.state_dict.values(), *(v for v in program.constants.values() if isinstance(v, torch.Tensor))]
    assert runtime.weights.bytes == sum(t.numel() * t.element_size() for t in held)  # the pt2's, once
    compiled = runtime.generate("a red circle moving left", seed=3, steps=3)
    program = Runtime(build, backend="torch").generate("a red circle moving left", seed=3, steps=3)
    assert float((compiled - program).norm() / program.norm()) <= REL_AOTI


def test_aoti_errors(capsys, aoti_build, tmp_path):
    build, _ = aoti_build
    # a package built for the CPU refuses another device; CUDA itself is refused where torch has none
    code, _, err = run(capsys, "generate", build, "--backend", "aoti", "--device", "cuda", "--prompt", "x",
                       "-o", tmp_path / "v.gif")
    message = "was compiled for cpu" if torch.cuda.is_available() else "torch sees no CUDA device"
    assert_one_line_error(code, err, message)
    code, _, err = run(capsys, "export", "builtin:tiny-latte", "--target", "aoti", "--dynamic-batch", "2:2:4",
                       "-o", tmp_path / "out")
    assert_one_line_error(code, err, "built for one batch")
    assert not (tmp_path / "out").exists() and not (tmp_path / "v.gif").exists()


def test_tampered_package_is_refused(capsys, aoti_build, tmp_path):
    import shutil

    build, _ = aoti_build
    copy = tmp_path / "copy"
    shutil.copytree(build, copy)
    with open(copy / "stage0" / "denoiser.aoti.pt2", "r+b") as handle:
        handle.seek(100)
        handle.write(b"\0\0\0\0")
    code, _, err = run(capsys, "generate", copy, "--backend", "aoti", "--prompt", "x", "-o", tmp_path / "v.gif")
    assert_one_line_error(code, err, "does not match the sha256")


def test_a_package_that_cannot_take_the_programs_weights_gets_its_own(monkeypatch, tmp_path):
    """Where the package built without weights asks for a constant the program lacks (or this torch
    cannot build one), it is built again with the weights packaged and the manifest says so."""
    from f3compile.exporters import aoti

    program = torch.export.export(torch.nn.Linear(4, 4), (torch.randn(2, 4),))
    built = []
    monkeypatch.setattr(aoti, "_compile", lambda program, path, configs: built.append(dict(configs)))
    monkeypatch.setattr(aoti, "_takes_program_weights", lambda path, program, device: False)
    record = aoti.package_aoti(program, tmp_path / "p.pt2")
    assert record["weights"] == "package" and record["device"] == "cpu"
    assert built == [{"aot_inductor.package_constants_in_so": False}, {}]  # small weights: embedded in the .so
    monkeypatch.setattr(aoti, "_takes_program_weights", lambda path, program, device: True)
    built.clear()
    assert aoti.package_aoti(program, tmp_path / "q.pt2")["weights"] == "pt2" and len(built) == 1
