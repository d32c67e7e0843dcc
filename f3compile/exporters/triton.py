"""A Triton Inference Server model repository: one model per stage program.

<repo>/<name>_stage<K>/config.pbtxt + <name>_stage<K>/1/model.{plan,onnx}; a stage with temporal
reuse also has <name>_stage<K>_reuse<N> models, whose extra I/O `residual.<block>` the client
carries between steps as the manifest's `reuse` entry describes. `max_batch_size: 0` means the
dims below are full shapes (-1 for a dynamic CFG batch). The denoising loop (scheduler, CFG, stage
switching by timestep, reuse pattern by step) runs in the client or a BLS model around these models.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "int64": "TYPE_INT64"}


def model_name(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", spec.split(":")[-1].rstrip("/").split("/")[-1]).strip("_") or "model"


def config_pbtxt(name: str, platform: str, inputs: list[dict], outputs: list[dict], dynamic_batch: bool = False) -> str:
    def tensor(spec: dict) -> str:
        shape = ([-1] + list(spec["shape"][1:])) if dynamic_batch else spec["shape"]
        dims = ", ".join(str(d) for d in shape)
        return f'  {{\n    name: "{spec["name"]}"\n    data_type: {_DTYPES[spec["dtype"]]}\n    dims: [ {dims} ]\n  }}'

    return (
        f'name: "{name}"\nplatform: "{platform}"\nmax_batch_size: 0\n'
        f"input [\n" + ",\n".join(tensor(s) for s in inputs) + "\n]\n"
        "output [\n" + ",\n".join(tensor(s) for s in outputs) + "\n]\n"
        "instance_group [ { count: 1, kind: KIND_GPU } ]\n"
    )


def _programs(base: str, stages: list[dict]):
    for stage in stages:
        yield f"{base}_stage{stage['index']}", stage
        for number, program in enumerate(stage.get("reuse", {}).get("programs", []), 1):
            yield f"{base}_stage{stage['index']}_reuse{number}", program


def _link_or_copy(source: Path, target: Path) -> None:
    """Triton loads each model from its own folder: every ONNX model of a build needs the build's
    weight file beside it. A hard link keeps one copy on disk where the file system allows."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def write_triton_repo(repo: Path, spec: str, stages: list[dict], build_dir: Path, dynamic_batch: bool = False) -> list[str]:
    """Write one Triton model per stage program (a stage with temporal reuse has one per pattern of
    reused blocks, `<name>_stage<K>_reuse<N>`, whose residual I/O the client carries between steps);
    TensorRT plans where built, else ONNX. Returns model names."""
    names = []
    base = model_name(spec)
    for name, stage in _programs(base, stages):
        files = stage["files"]
        if "trt" in files:
            platform, source, target = "tensorrt_plan", files["trt"]["path"], "model.plan"
        else:
            platform, source, target = "onnxruntime_onnx", files["onnx"]["path"], "model.onnx"
        version_dir = repo / name / "1"
        version_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(build_dir / source, version_dir / target)
        if target == "model.onnx" and "onnx_data" in files:  # beside the graph, as its initializers name it
            data = build_dir / files["onnx_data"]["path"]
            _link_or_copy(data, version_dir / data.name)
        (repo / name / "config.pbtxt").write_text(config_pbtxt(name, platform, stage["inputs"], stage["outputs"], dynamic_batch))
        names.append(name)
    return names
