"""Where and in what precision programs run: device names checked once, for every verb that takes
`--device` (`cuda` is the current CUDA device, the same one as `cuda:0` by default), the
precision a verb runs in, and the loader of AOTInductor packages (shared by the exporter's
verification and the runtime, which must not import the compiler)."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import F3Error

DEVICES = ("cpu", "cuda")
PRECISION_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRECISIONS = tuple(PRECISION_DTYPES)


def resolve_precision(precision: str | None, device: str | torch.device = "cpu") -> str:
    """The precision a verb runs in: `precision` when given, else bf16 on CUDA and fp32 on the CPU
    (where bf16 matrix products are slow and fp16 ones unsupported by many kernels)."""
    if precision is None:
        try:
            return "bf16" if torch.device(device).type == "cuda" else "fp32"
        except (RuntimeError, TypeError):
            return "fp32"  # the device itself is refused where it is checked
    if precision not in PRECISION_DTYPES:
        raise F3Error(f"--precision {precision!r} is unknown; use one of {', '.join(PRECISIONS)}")
    return precision


def precision_of(dtype: torch.dtype) -> str:
    """The precision name of a floating dtype (fp32 for any other)."""
    return next((name for name, value in PRECISION_DTYPES.items() if value == dtype), "fp32")


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
    return canonical(device)


def canonical(device: torch.device, current: int | None = None) -> torch.device:
    """`cuda` as the CUDA device it means (`current`, default torch's current device), so that
    `cuda` and `cuda:0` compare equal and nothing is moved or loaded twice between them."""
    if device.type != "cuda" or device.index is not None:
        return device
    return torch.device("cuda", torch.cuda.current_device() if current is None else current)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_aoti(path: str | Path, device: torch.device, program=None):
    """The compiled model of an AOTInductor package, callable as `(sample, timestep, context)`;
    with `program` (the torch program it was compiled from), computing with that program's own
    tensors (a package exported without weights). Loading runs the package's compiled code:
    callers check its sha256 first."""
    from torch._inductor import aoti_load_package

    if device.type == "cuda":
        model = aoti_load_package(str(path), device_index=device.index if device.index is not None else -1)
    else:
        model = aoti_load_package(str(path))
    if program is not None:
        attach_weights(model, program)
    return model


def program_constants(program) -> dict[str, torch.Tensor]:
    """The tensors a package compiled from a torch.export `program` takes as constants, by name."""
    found = dict(program.state_dict)
    found.update({k: v for k, v in program.constants.items() if isinstance(v, torch.Tensor)})
    return found


def attach_weights(model, program) -> None:
    """Hand `program`'s own tensors to a loaded AOTInductor package built without weights (no
    copy: user-managed constants). Refuses a package that asks for a constant the program lacks."""
    held = program_constants(program)
    wanted = list(model.get_constant_fqns())
    missing = [name for name in wanted if name not in held]
    if missing:
        raise F3Error(f"the AOTInductor package asks for constants its torch program does not hold "
                      f"({', '.join(missing[:3])}{', …' if len(missing) > 3 else ''}); export it again")
    model.load_constants({name: held[name] for name in wanted}, check_full_update=True, user_managed=True)
