"""Where programs run: device names checked once, for every verb that takes `--device`, and the
loader of AOTInductor packages (shared by the exporter's verification and the runtime, which must
not import the compiler)."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import F3Error

DEVICES = ("cpu", "cuda")


def check_device(device: str | torch.device, allow_meta: bool = False) -> torch.device:
    """`device` as a torch.device, or an `F3Error` naming what to change when this machine lacks it.
    `allow_meta`: accept `meta` (shape-only compilation through the Python API; nothing that
    writes or runs artifacts)."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise F3Error(f"--device {device!r} is not a device torch knows; use cpu or cuda") from None
    if device.type not in ("cpu", "cuda") + (("meta",) if allow_meta else ()):
        raise F3Error(f"--device {device} is not supported; use cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise F3Error("--device cuda, but torch sees no CUDA device (a CPU build of torch, or no GPU); use --device cpu")
    return device


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_aoti(path: str | Path, device: torch.device):
    """The compiled model of an AOTInductor package, callable as `(sample, timestep, context)`.
    Loading runs the package's compiled code: callers check its sha256 first."""
    from torch._inductor import aoti_load_package

    if device.type == "cuda":
        return aoti_load_package(str(path), device_index=device.index if device.index is not None else -1)
    return aoti_load_package(str(path))
