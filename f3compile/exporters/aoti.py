"""AOTInductor: a pruned torch.export program compiled ahead of time into one package
(`stageK/denoiser.aoti.pt2`: generated C++/CUDA kernels in a shared library plus the weights)
that runs without Python model code — the compiled engine this project can build and verify on
machines without TensorRT, on the CPU or on an NVIDIA GPU.

Weights: by default inductor embeds them in the shared library. That is fine for small programs;
for large ones (over `EMBED_LIMIT_BYTES`) they are stored beside it as one binary blob inside the
package (`aot_inductor.package_constants_in_so=False`, `package_constants_on_disk_format=
"binary_blob"`), because multi-GB constants in a `.so` are a known failure of the linker and loader.
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
    """Compile `program` for the device its weights are on and write the package to `path`.

    Returns what the manifest records: device, inductor options, compile seconds."""
    from torch._inductor import aoti_compile_and_package

    weight_bytes = sum(t.numel() * t.element_size() for t in program.state_dict.values())
    configs = inductor_configs(weight_bytes)
    device = _program_device(program)
    started = time.perf_counter()
    try:
        aoti_compile_and_package(program, package_path=str(path), inductor_configs=configs or None)
    except Exception as exc:  # a compiler toolchain problem is the user's to fix, with the cause
        if _toolchain_error(exc):
            raise F3Error(f"AOTInductor could not build the package ({str(exc).splitlines()[0][:200]}); "
                          "it needs a C++ compiler (g++) and, for CUDA, the CUDA toolkit headers") from None
        raise
    return {"device": device, "inductor_configs": configs, "weight_bytes": int(weight_bytes),
            "compile_seconds": round(time.perf_counter() - started, 1)}


def _program_device(program: torch.export.ExportedProgram) -> str:
    devices = {t.device.type for t in program.state_dict.values()}
    if len(devices) > 1:
        raise F3Error(f"the program holds weights on several devices ({', '.join(sorted(devices))}); compile it on one")
    return devices.pop() if devices else "cpu"


def _toolchain_error(exc: Exception) -> bool:
    text = f"{type(exc).__name__}: {exc}"
    return any(word in text for word in ("CppCompileError", "InvalidCxxCompiler", "No such file or directory: 'g++'",
                                         "nvcc", "CalledProcessError"))
