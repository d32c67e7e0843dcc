"""TensorRT engines from the exported ONNX (needs the `[trt]` extra and an NVIDIA GPU).

TensorRT 10 and 11 are both handled the same way: the network is strongly typed (always so on
11.x, opted into on 10.x), so precision comes from the ONNX's own dtypes — the exporter writes
fp16/bf16 graphs for those precisions — and no precision builder flag is used (11.x removed them).
One optimization profile over the batch, a timing cache reused across stages and runs, and engine
files named `denoiser.trt<version>.sm<major><minor>.plan` (plans are tied to both). After the
build the engine's I/O and layer precisions are read back and compared with the request.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import F3Error

TRT_DTYPES = {"fp32": "FLOAT", "fp16": "HALF", "bf16": "BF16"}


def require_tensorrt() -> tuple[object, str, str]:
    """(tensorrt module, version, 'smXY') or an F3Error saying what is missing — before any work."""
    try:
        import tensorrt as trt
    except ImportError:
        raise F3Error("--target trt needs TensorRT: pip install 'f3compile[trt]' on a machine with an NVIDIA GPU") from None
    try:
        import torch

        if not torch.cuda.is_available():
            raise F3Error("--target trt needs an NVIDIA GPU with CUDA; none is visible (use --target onnx here)")
        major, minor = torch.cuda.get_device_capability()
    except F3Error:
        raise
    except Exception as exc:  # pragma: no cover - driver problems
        raise F3Error(f"--target trt: CUDA is not usable ({exc}); use --target onnx here") from None
    return trt, trt.__version__, f"sm{major}{minor}"


def engine_name(version: str, compute: str, stem: str = "denoiser") -> str:
    return f"{stem}.trt{version}.{compute}.plan"


def build_engine(onnx_path: Path, engine_path: Path, io_specs: list[dict], precision: str,
                 batch_profile: tuple[int, int, int] | None, timing_cache: Path, workspace_gib: float = 8.0) -> dict:
    """Build and serialize one engine; returns the precision report."""
    trt, version, _ = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Strongly typed on every version: required semantics on 11.x (where the flag is accepted and
    # ignored), opt-in on 10.x; the ONNX already carries the requested precision in its dtypes.
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise F3Error(f"TensorRT {version} could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 1024**3))
    cache_bytes = timing_cache.read_bytes() if timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    if batch_profile is not None:
        profile = builder.create_optimization_profile()
        example_batch = io_specs[0]["shape"][0]
        for spec in io_specs:  # a residual of temporal reuse may hold factor × batch rows
            shape = list(spec["shape"])
            factor = max(1, shape[0] // example_batch)
            low, opt, high = ([b * factor] + shape[1:] for b in batch_profile)
            profile.set_shape(spec["name"], low, opt, high)
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise F3Error(f"TensorRT {version} failed to build an engine from {onnx_path.name}; see the log above")
    engine_path.write_bytes(bytes(serialized))
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return precision_report(engine_path, precision)


def precision_report(engine_path: Path, precision: str) -> dict:
    """Read back the engine's I/O and layer precisions; flag a silent fallback to fp32."""
    import json

    trt, version, _ = require_tensorrt()
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    io = {engine.get_tensor_name(i): str(engine.get_tensor_dtype(engine.get_tensor_name(i))).split(".")[-1]
          for i in range(engine.num_io_tensors)}
    layer_types: dict[str, int] = {}
    try:
        inspector = engine.create_engine_inspector()
        info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
        for layer in info.get("Layers", []):
            text = json.dumps(layer)
            for name in ("Half", "BFloat16", "Float", "FP16", "FP32", "BF16"):
                if f'"{name}' in text or f"{name}" in text:
                    layer_types[name] = layer_types.get(name, 0) + 1
                    break
    except Exception:  # inspector detail depends on the build's profiling verbosity
        layer_types = {}
    wanted = TRT_DTYPES[precision]
    io_ok = all(dtype == wanted for name, dtype in io.items() if name != "timestep")
    return {"tensorrt": version, "requested": precision, "io_dtypes": io, "layer_precisions": layer_types,
            "matches_request": bool(io_ok), "fell_back": not io_ok}


def tensorrt_runner(engine_path: Path):
    """A Polygraphy runner over a serialized engine."""
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    return TrtRunner(EngineFromBytes(BytesFromPath(str(engine_path))), name="tensorrt")
