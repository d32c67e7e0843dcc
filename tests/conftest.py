"""Shared fixtures: one registry of tiny models (the builtins) and small calibrations."""

from __future__ import annotations

import pytest
import torch

from f3compile.models import load_model
from tests.helpers import TINY

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def models():
    """builtin name -> VideoModel (built once per session)."""
    return {name: load_model(f"builtin:{name}") for name in TINY}


@pytest.fixture(scope="session")
def calibrations(models, tmp_path_factory):
    """builtin name -> (directory, CalibrationStats) from a 6-step, 2-prompt calibration."""
    from f3compile.calibration import CalibrationConfig, CalibrationStats, calibrate

    out = {}
    for name, model in models.items():
        directory = tmp_path_factory.mktemp(f"calib-{name}") / "calib"
        calibrate(model, ["a red circle moving left", "a blue square"], CalibrationConfig(steps=6, heatmaps=False),
                  output_dir=directory)
        out[name] = (directory, CalibrationStats.load(directory))
    return out


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


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need CUDA (torch on CUDA, AOTInductor); `tensorrt` tests need TensorRT too."""
    cuda, tensorrt = torch.cuda.is_available(), _tensorrt_available()
    for item in items:
        if "tensorrt" in item.keywords and not tensorrt:
            item.add_marker(pytest.mark.skip(reason="needs an NVIDIA GPU with CUDA and TensorRT"))
        elif "gpu" in item.keywords and not cuda:
            item.add_marker(pytest.mark.skip(reason="needs an NVIDIA GPU with CUDA"))
