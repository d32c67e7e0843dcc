"""The bytes a computation's tensors take, alive at once, counted by running it on the meta device
(or on real tensors): what the memory report and the runtime's tiling decision trace.

`traced_peak(fn, modules, inputs)` runs `fn` under a dispatch mode that adds up the storage bytes
of the tensors operators return and frees them when they die (the modules' weights and the inputs
are not the computation's, nor views of them), while `scaled_dot_product_attention` allocates what
a fused kernel allocates: its output, never the N×N matrix.
"""

from __future__ import annotations

import copy
import weakref

import torch


def meta_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of `module` whose parameters and buffers are on the meta device (shapes and dtypes,
    no memory); `module` itself is left as it is."""
    memo = {id(p): torch.nn.Parameter(p.detach().to("meta"), requires_grad=p.requires_grad) for p in module.parameters()}
    memo.update({id(b): b.detach().to("meta") for b in module.buffers()})
    return copy.deepcopy(module, memo)


class LiveTensors:
    """Bytes of the tensors the traced operators made that are alive at once (their peak)."""

    def __init__(self, exclude: list[torch.Tensor]):
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                counter.saw(func, out)
                return out

        self.mode = Mode()
        self.skip = {id(t.untyped_storage()) for t in exclude}
        self.live: dict[int, int] = {}
        self.now = self.peak = 0
        self.at = ""

    def saw(self, func, out) -> None:
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key, size = id(storage), storage.nbytes()
            if key in self.live or key in self.skip or not size:
                continue
            self.live[key] = size
            self.now += size
            weakref.finalize(storage, self.free, key)
        if self.now > self.peak:
            self.peak, self.at = self.now, str(func)

    def free(self, key: int) -> None:
        self.now -= self.live.pop(key, 0)


class FusedAttention:
    """`scaled_dot_product_attention` as a fused kernel allocates: its output alone."""

    def __enter__(self):
        from torch.overrides import TorchFunctionMode

        sdpa = torch.nn.functional.scaled_dot_product_attention

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                if func is sdpa:
                    q, k, v = (args[i] if i < len(args) else kwargs[name]
                               for i, name in enumerate(("query", "key", "value")))
                    return torch.empty(q.shape[:-1] + (v.shape[-1],), dtype=q.dtype, device=q.device)
                return func(*args, **kwargs)

        self.mode = Mode()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)


def traced_peak(fn, modules: list[torch.nn.Module], inputs: list[torch.Tensor]) -> tuple[int, str]:
    """(bytes, operator) at the peak of the tensors `fn()` makes, on the meta device."""
    exclude = [t for m in modules if m is not None for t in (*m.parameters(), *m.buffers())] + list(inputs)
    tensors = LiveTensors(exclude)
    with torch.no_grad(), FusedAttention(), tensors.mode:
        fn()
    return tensors.peak, tensors.at


