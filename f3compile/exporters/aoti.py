"""AOTInductor: a pruned torch.export program compiled ahead of time into one package
(`stageK/denoiser.aoti.pt2`: generated C++/CUDA kernels in a shared library) that runs without
Python model code — the compiled engine this project can build and verify on machines without
TensorRT, on the CPU or on an NVIDIA GPU.

Weights: the package holds none (`aot_inductor.package_constants_in_so=False` without an on-disk
format). They are the stage's torch program's (`denoiser.pt2`, written beside it by every export),
handed to the loaded package as user-managed constants (`load_constants(..., user_managed=True)`):
the package computes with the program's own tensors, so verification holds one copy of the weights,
and the runtime shares them across stages through its weight pool as the torch backend does. A
torch whose package still needs weights of its own (a constant the program does not hold, e.g. one
folded at compile time) gets them the old way: embedded in the `.so` for small programs, one binary
blob in the package above `EMBED_LIMIT_BYTES` (multi-GB constants in a `.so` are a known failure of
the linker and loader); the manifest records which (`aoti.weights`: "pt2" or "package").
Loading a package runs its compiled code: only load packages whose sha256 the manifest vouches for.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..errors import F3Error

EMBED_LIMIT_BYTES = 1 << 30  # 1 GiB of weights: above this they leave the .so


def inductor_configs(weight_bytes: int) -> dict:
    """The inductor options for a program with `weight_bytes` of weights (see the module docstring)."""
    if weight_bytes <= EMBED_LIMIT_BYTES:
        return {}
    from torch._inductor import config

    if not hasattr(config.aot_inductor, "package_constants_on_disk_format"):
        return {}  # this torch cannot keep weights out of the .so; embed and hope the linker copes
    return {"aot_inductor.package_constants_in_so": False,
            "aot_inductor.package_constants_on_disk_format": "binary_blob"}


def package_aoti(program: torch.export.ExportedProgram, path: Path) -> dict:
    """Compile `program` for the device its weights are on and write the package to `path`, without
    weights where the loaded package can take the program's (see the module docstring).

    Returns what the manifest records: device, inductor options, where the weights come from,
    compile seconds."""
    weight_bytes = sum(t.numel() * t.element_size() for t in program.state_dict.values())
    device = _program_device(program)
    started = time.perf_counter()
    configs = {"aot_inductor.package_constants_in_so": False}
    try:
        _compile(program, path, configs)
        weights = "pt2" if _takes_program_weights(path, program, device) else "package"
    except F3Error:
        raise
    except Exception:  # a torch that cannot package without weights: package them
        weights = "package"
    if weights == "package":
        configs = inductor_configs(weight_bytes)
        _compile(program, path, configs)
    return {"device": device, "inductor_configs": configs, "weights": weights, "weight_bytes": int(weight_bytes),
            "compile_seconds": round(time.perf_counter() - started, 1)}


def _compile(program: torch.export.ExportedProgram, path: Path, configs: dict) -> None:
    from torch._inductor import aoti_compile_and_package

    try:
        aoti_compile_and_package(program, package_path=str(path), inductor_configs=configs or None)
    except Exception as exc:  # a compiler toolchain problem is the user's to fix, with the cause
        if _toolchain_error(exc):
            raise F3Error(f"AOTInductor could not build the package ({str(exc).splitlines()[0][:200]}); "
                          "it needs a C++ compiler (g++) and, for CUDA, the CUDA toolkit headers") from None
        raise


def _takes_program_weights(path: Path, program: torch.export.ExportedProgram, device: str) -> bool:
    """Whether the package at `path` holds no weights of its own and every constant it asks for is
    one of the program's (then `attach_weights` gives it them)."""
    import zipfile

    from ..devices import load_aoti, program_constants

    with zipfile.ZipFile(path) as archive:
        if any("/weights/" in name or "/constants/" in name for name in archive.namelist()):
            return False  # this torch packaged the weights anyway
    model = load_aoti(path, torch.device(device))
    held = program_constants(program)
    return all(name in held for name in model.get_constant_fqns())


def _program_device(program: torch.export.ExportedProgram) -> str:
    devices = {t.device.type for t in program.state_dict.values()}
    if len(devices) > 1:
        raise F3Error(f"the program holds weights on several devices ({', '.join(sorted(devices))}); compile it on one")
    return devices.pop() if devices else "cpu"


def _toolchain_error(exc: Exception) -> bool:
    text = f"{type(exc).__name__}: {exc}"
    return any(word in text for word in ("CppCompileError", "InvalidCxxCompiler", "No such file or directory: 'g++'",
                                         "nvcc", "CalledProcessError"))
