"""Shared fixtures: one registry of tiny models (the builtins) and small calibrations.

Under pytest-xdist (`make test` runs two workers) the expensive fixtures are built once per run,
not once per worker: `shared` builds a directory under the run's common temporary root behind a
file lock, and every worker reads it.
"""

from __future__ import annotations

import os

# Nothing here comes from a model hub: a directory that does not load is not looked up there (each
# lookup would wait for a network timeout). Set before huggingface_hub is imported, which reads it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402
from typing import Callable

import pytest
import torch

from f3compile.models import load_model
from tests.helpers import TINY

WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ... under xdist; None in a plain run
torch.set_num_threads(1 if WORKER else 2)  # one thread per worker: two workers fill the two cores


@pytest.fixture(scope="session")
def shared(tmp_path_factory) -> Callable[[str, Callable[[Path], None]], Path]:
    """`shared(name, build)`: the directory `name`, written by `build(directory)` once per test run
    (by whichever worker gets there first; the others wait on the lock and read it)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    root = (root.parent if WORKER else root) / "shared"  # the workers' common temporary root
    root.mkdir(parents=True, exist_ok=True)

    def get(name: str, build: Callable[[Path], None]) -> Path:
        directory = root / name
        with FileLock(str(root / f"{name}.lock")):
            if not (directory / ".complete").is_file():
                build(directory)
                (directory / ".complete").touch()
        return directory
    return get


@pytest.fixture(scope="session")
def models():
    """builtin name -> VideoModel (built once per session)."""
    return {name: load_model(f"builtin:{name}") for name in TINY}


@pytest.fixture(scope="session")
def calibrations(models, shared):
    """builtin name -> (directory, CalibrationStats) from a 6-step, 2-prompt calibration."""
    from f3compile.calibration import CalibrationConfig, CalibrationStats, calibrate

    out = {}
    for name, model in models.items():
        directory = shared(f"calib-{name}", lambda d, model=model: calibrate(
            model, ["a red circle moving left", "a blue square"], CalibrationConfig(steps=6, heatmaps=False),
            output_dir=d / "calib")) / "calib"
        out[name] = (directory, CalibrationStats.load(directory))
    return out


@pytest.fixture(scope="session")
def dense_export(models, shared):
    """`dense_export(name)` -> (build directory, manifest) of the tiny builtin's dense fp32 ONNX export
    (opset 20, verified on one sample), made once per run."""
    import json

    from f3compile.exporters import ExportConfig, export

    def get(name: str):
        directory = shared(f"dense-export-{name}", lambda d: export(models[name], None, d / "build",
                                                                    config=ExportConfig(samples=1))) / "build"
        return directory, json.loads((directory / "manifest.json").read_text())
    return get


@pytest.fixture(scope="session")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("# calibration prompts\na red circle moving left\n\na blue square moving up\n")
    return path


def _tensorrt_available() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


# The modules that take a minute or more, longest first. They are collected first, so that `make test`
# (`--dist loadscope --no-loadscope-reorder`: whole modules handed out in collection order) starts
# them early and the two workers finish together instead of one waiting on a long module at the end.
LONG_FIRST = (
    "tests/exporters/test_export.py", "tests/passes/test_passes.py", "tests/models/test_full_attention.py",
    "tests/models/test_tuneavideo.py",
    "tests/passes/test_reuse.py", "tests/planning/test_search.py", "tests/models/test_training.py",
    "tests/compiler/test_compile.py", "tests/passes/test_devices.py", "tests/runtime/test_runtime.py",
    "tests/test_api.py", "tests/autoregressive/test_cogvideo_stage2.py",
)


def pytest_collection_modifyitems(config, items):
    """The long modules first (`LONG_FIRST`, the rest in their order). `gpu` tests need CUDA (torch
    on CUDA, AOTInductor); `tensorrt` tests need TensorRT too."""
    rank = {path: i for i, path in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(LONG_FIRST)))  # stable
    cuda, tensorrt = torch.cuda.is_available(), _tensorrt_available()
    for item in items:
        if "tensorrt" in item.keywords and not tensorrt:
            item.add_marker(pytest.mark.skip(reason="needs an NVIDIA GPU with CUDA and TensorRT"))
        elif "gpu" in item.keywords and not cuda:
            item.add_marker(pytest.mark.skip(reason="needs an NVIDIA GPU with CUDA"))
