"""One hook on the attention kernel, `scaled_dot_product_attention`, where full 3-D attention is read.

Discovery reads the kernel's sequence lengths and queries, calibration its q, k and output, and eager
window plans hand it a mask: all through `KernelCalls`, a torch-function mode that is entered only
while the module of interest runs and passes every other call through untouched.
"""

from __future__ import annotations

from typing import Callable

import torch

NAMES = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")


class KernelCalls(torch.overrides.TorchFunctionMode):
    """While active, each `scaled_dot_product_attention` call has its arguments (all by name) passed
    through `before(arguments) -> arguments` (return them changed to change the call), then runs, then
    `after(arguments, output)` sees it."""

    def __init__(self, before: Callable[[dict], dict] | None = None,
                 after: Callable[[dict, torch.Tensor], None] | None = None):
        super().__init__()
        self.before, self.after = before, after

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not torch.nn.functional.scaled_dot_product_attention:
            return func(*args, **kwargs)
        arguments = dict(zip(NAMES, args)) | kwargs
        if self.before is not None:
            arguments = self.before(arguments)
        out = func(**arguments)
        if self.after is not None:
            self.after(arguments, out)
        return out
