"""One verification helper shared by every exporter: run a reference and a candidate runner on
the same fresh random inputs through Polygraphy's comparator and summarize the difference."""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import numpy as np

# (rtol, atol) per precision; fp16/bf16 artifacts are compared with an fp32 reference
TOLERANCES: dict[str, tuple[float, float]] = {"fp32": (1e-4, 1e-4), "fp16": (2e-2, 2e-2), "bf16": (6e-2, 6e-2)}


_NUMPY = {"float32": "float32", "float16": "float16", "bfloat16": "float32"}  # numpy has no bfloat16
_TORCH = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}  # names of torch dtypes


def _quiet_polygraphy() -> None:
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.ERROR


def torch_runner(fn: Callable, input_specs: list[dict], output_names: list[str], device: str = "cpu", name: str = "torch"):
    """A Polygraphy runner around a torch callable (Polygraphy's own PytRunner assumes CUDA)."""
    import torch
    from polygraphy.backend.base import BaseRunner

    class TorchRunner(BaseRunner):
        def __init__(self):
            super().__init__(name=name, prefix="torch-runner")

        def activate_impl(self):
            pass

        def deactivate_impl(self):
            pass

        def get_input_metadata_impl(self):
            from polygraphy.common import TensorMetadata

            metadata = TensorMetadata()
            for spec in input_specs:
                metadata.add(spec["name"], np.dtype(_NUMPY[spec["dtype"]]), tuple(spec["shape"]))
            return metadata

        def infer_impl(self, feed_dict):
            import time

            start = time.perf_counter()
            with torch.no_grad():
                args = [torch.from_numpy(np.ascontiguousarray(feed_dict[spec["name"]])).to(device=device, dtype=getattr(torch, _TORCH[spec["dtype"]]))
                        for spec in input_specs]
                output = fn(*args)
            outputs = output if isinstance(output, (tuple, list)) else [output]
            result = OrderedDict((n, np.ascontiguousarray(o.float().cpu().numpy())) for n, o in zip(output_names, outputs))
            self.inference_time = time.perf_counter() - start
            return result

    return TorchRunner()


def random_feeds(specs: list[dict], count: int = 1, seed: int = 1234) -> list[dict[str, np.ndarray]]:
    """Fresh random inputs for the I/O specs of a manifest stage (timesteps in [0, 999])."""
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        feed = OrderedDict()
        for spec in specs:
            dtype = np.dtype(_NUMPY[spec["dtype"]])
            if spec["name"] == "timestep":
                value = np.full(spec["shape"], rng.integers(0, 1000), dtype=np.float32)
            else:
                value = rng.standard_normal(spec["shape"]).astype(dtype)
            feed[spec["name"]] = value
        feeds.append(feed)
    return feeds


def compare(reference, candidate, feeds: list[dict], precision: str) -> dict:
    """Run both runners on `feeds` and compare every output; returns a JSON-able summary."""
    from polygraphy.comparator import Comparator, SimpleCompareFunc

    _quiet_polygraphy()
    rtol, atol = TOLERANCES[precision]
    results = Comparator.run([reference, candidate], data_loader=feeds)
    accuracy = Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(rtol=rtol, atol=atol))
    passed = bool(accuracy)
    (_, ref_iters), (_, cand_iters) = list(results.items())[:2]
    return {
        "passed": passed, "precision": precision, "rtol": rtol, "atol": atol, "samples": len(feeds),
        **errors((ref_out[name], cand_out[name]) for ref_out, cand_out in zip(ref_iters, cand_iters) for name in ref_out),
    }


def errors(pairs) -> dict[str, float]:
    """The largest absolute difference and relative L2 error ‖candidate − reference‖ / ‖reference‖
    over (reference, candidate) output pairs (arrays or tensors), in float64: the numbers every
    verification reports, for the denoisers' artifacts and the autoregressive step programs alike."""
    max_abs = max_rel = 0.0
    for reference, candidate in pairs:
        expected = np.asarray(_numpy(reference), dtype=np.float64)
        diff = np.abs(np.asarray(_numpy(candidate), dtype=np.float64) - expected)
        max_abs = max(max_abs, float(diff.max()) if diff.size else 0.0)
        max_rel = max(max_rel, float(np.linalg.norm(diff) / max(np.linalg.norm(expected), 1e-30)))
    return {"max_abs_error": max_abs, "relative_l2_error": max_rel}


def _numpy(value):
    return value.detach().cpu().double().numpy() if hasattr(value, "detach") else value
