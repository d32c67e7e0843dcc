"""`export`: pruned programs → ONNX (+ TensorRT engines), verified, with a manifest.

Per stage: save the pruned torch.export program, export ONNX, verify onnxruntime against the
torch program on fresh random inputs (Polygraphy comparator), audit that pruned modules are gone
from the ONNX, and for `--target trt` build an engine, verify it against onnxruntime and read
back its precisions. A failed verification fails the export and leaves no artifact.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .._io import atomic_dir, sha256_file
from ..config import option
from ..errors import F3Error
from ..models.base import VideoShapes

TARGETS = ("onnx", "aoti", "trt")
PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass
class ExportConfig:
    """What `export` builds and how it checks it."""

    target: str = option("onnx", "onnx; aoti (AOTInductor package for --device); trt (ONNX + TensorRT engines; needs a GPU)")
    device: str = option("cpu", "cpu or cuda: where the program is captured, compiled, verified and meant to run")
    precision: str = option("fp32", "fp32, fp16 or bf16: the dtype of the exported graph")
    opset: int = option(20, "ONNX opset (onnxruntime and TensorRT 10/11 parse 17..23)")
    dynamic_batch: tuple[int, int, int] | None = option(None, "TensorRT profile over the CFG batch: (min, opt, max)")
    verify: bool = option(True, "compare onnxruntime with torch, and TensorRT with onnxruntime")
    samples: int = option(2, "random input sets per verification")
    triton_repo: Path | None = option(None, "also write a Triton model repository here")
    timing_cache: Path | None = option(None, "TensorRT timing cache (default: ~/.cache/f3compile/trt-timing.cache)")

    def check(self) -> None:
        if self.target not in TARGETS:
            raise F3Error(f"--target {self.target!r} is unknown; use one of {', '.join(TARGETS)}")
        if self.precision not in PRECISIONS:
            raise F3Error(f"--precision {self.precision!r} is unknown; use one of {', '.join(PRECISIONS)}")
        if not 17 <= self.opset <= 23:
            raise F3Error(f"--opset {self.opset} is outside 17..23, the range onnxruntime and TensorRT parse")
        if self.dynamic_batch is not None:
            low, opt, high = self.dynamic_batch
            if not 1 <= low <= opt <= high:
                raise F3Error(f"--dynamic-batch {low}:{opt}:{high} must satisfy 1 <= MIN <= OPT <= MAX")
        if self.samples < 1:
            raise F3Error("--samples must be at least 1")
        if self.target == "aoti" and self.dynamic_batch is not None:
            raise F3Error("--dynamic-batch is for --target onnx/trt; an AOTInductor package is built for one batch")


def parse_batch_profile(text: str | None) -> tuple[int, int, int] | None:
    if text is None:
        return None
    try:
        low, opt, high = (int(x) for x in text.split(":"))
    except ValueError:
        raise F3Error(f"--dynamic-batch {text!r} must be MIN:OPT:MAX, e.g. 2:2:8") from None
    return low, opt, high


def removed_modules(stage_plan: dict, units: dict) -> list[str]:
    """Module paths a stage removes entirely (dropped blocks/attentions, q/k/v of all-pruned units)."""
    removed = list(stage_plan["drop_blocks"]) + list(stage_plan["drop_attention"])
    for unit_id, heads in stage_plan["prune_heads"].items():
        if len(heads) == units[unit_id].heads:
            removed += [f"{unit_id}.to_q", f"{unit_id}.to_k", f"{unit_id}.to_v"]
    return removed


def export(source, plan=None, output_dir: str | Path | None = None, shapes: VideoShapes | None = None,
           config: ExportConfig | None = None, plan_path: str | Path | None = None, progress: bool = False) -> dict:
    """Build the artifacts of `config.target` for every plan stage into `output_dir`; returns the manifest.

    `source` is a `VideoModel` (compiled here with `plan` at `shapes`, in the config's precision,
    device and batch profile) or a `CompiledModel` that `compile` already made (then `plan` and
    `shapes` are its own, and it must have been compiled as the config asks)."""
    from ..compiler.compile import PRECISION_DTYPES, CompiledModel, build_manifest, compile, stage_entries
    from ..devices import check_device
    from ..manifest import write_manifest
    from ..models.base import attention_scores_bytes

    config = config or ExportConfig()
    config.check()
    if output_dir is None:
        raise F3Error("export needs an output directory (-o BUILD_DIR)")
    trt_info = None
    if config.target == "trt":  # fail at once, before any work
        from .tensorrt import require_tensorrt

        _, trt_version, compute = require_tensorrt()
        trt_info = (trt_version, compute)
    started = time.perf_counter()
    dtype = PRECISION_DTYPES[config.precision]
    batch_range = (config.dynamic_batch[0], config.dynamic_batch[2]) if config.dynamic_batch else None
    device = check_device(config.device)
    if isinstance(source, CompiledModel):
        compiled = source
        if plan is not None or shapes is not None:
            raise F3Error("a compiled model carries its own plan and shapes; pass neither")
        asked = (dtype, device, batch_range)
        if (compiled.dtype, compiled.device, compiled.batch_range) != asked:
            raise F3Error(f"the compiled model is {compiled.precision} on {compiled.device} with batch range "
                          f"{compiled.batch_range}; the export asks for {config.precision} on {device} with "
                          f"{batch_range}: compile it as the export asks")
        started -= compiled.seconds
    else:
        compiled = compile(source, plan, shapes, dtype=dtype, batch_range=batch_range, device=device)
    model, plan, shapes = compiled.model, compiled.plan, compiled.shapes
    units = {u.id: u for u in compiled.units}
    inputs = compiled.inputs()
    # onnxruntime's decomposed attention holds one call's scores and their softmax at once
    scores = 2 * attention_scores_bytes(compiled.units, int(inputs[0].shape[0]))
    with atomic_dir(output_dir) as tmp, _weight_file(config, tmp) as weights:
        stages = stage_entries(model, compiled, tmp, shapes, precision=config.precision)
        for entry, stage in zip(stages, compiled):
            stage_dir = tmp / f"stage{entry['index']}"
            removed = removed_modules(entry["plan"], units)
            programs = [(entry, stage.program, "denoiser", f"stage{entry['index']}", removed)]
            for number, (program_entry, variant) in enumerate(zip(entry.get("reuse", {}).get("programs", []),
                                                                  stage.reuse_programs), 1):
                programs.append((program_entry, variant.program, f"denoiser.reuse{number}",
                                 f"stage{entry['index']} reuse{number}", removed + list(variant.reused)))
            for program_entry, program, stem, label, removed_here in programs:
                _build_program(program_entry, program, inputs, tmp, stage_dir, stem, label, removed_here,
                               config, device, trt_info, progress, scores, weights)
            (stage_dir / "verify.json").write_text(json.dumps({
                "verify": entry["verify"], "audit": entry.get("audit"),
                **({"reuse": [{"reused": p["reused"], "verify": p["verify"], "audit": p.get("audit")}
                              for p in entry["reuse"]["programs"]]} if "reuse" in entry else {}),
            }, indent=2) + "\n")
        if weights is not None:  # every graph's initializers: one file, hashed once it is whole
            weights.close()
            data = {"path": weights.path.relative_to(tmp).as_posix(), "sha256": sha256_file(weights.path)}
            for entry in stages:
                for program_entry in [entry] + entry.get("reuse", {}).get("programs", []):
                    program_entry["files"]["onnx_data"] = dict(data)
        extra = {"dynamic_batch": list(config.dynamic_batch)} if config.dynamic_batch else {}
        from ..runtime.components import save_components

        manifest = build_manifest(model, plan, plan_path, shapes, stages, started, targets=[config.target], device=device.type,
                                  components=save_components(model, tmp / "pipeline"), **extra)
        write_manifest(tmp, manifest)
        if config.triton_repo is not None:
            from .triton import write_triton_repo

            with atomic_dir(config.triton_repo) as repo:
                write_triton_repo(repo, model.spec, stages, tmp, dynamic_batch=config.dynamic_batch is not None)
    return manifest


def _weight_file(config: ExportConfig, tmp: Path):
    """The build's one ONNX weight file (`onnx/weights.onnx.data`), or nothing for an AOTI build."""
    from contextlib import nullcontext

    if config.target == "aoti":
        return nullcontext()
    from .onnx import WEIGHTS_FILE, WeightFile

    return WeightFile(tmp / "onnx" / WEIGHTS_FILE)


def _example_inputs(inputs: tuple, specs: list[dict]) -> tuple:
    """The standard example inputs plus zeros for a program's residual inputs."""
    import torch

    extra = tuple(torch.zeros(spec["shape"], dtype=getattr(torch, spec["dtype"]), device=inputs[0].device)
                  for spec in specs[len(inputs):])
    return tuple(inputs) + extra


def _unverifiable(config: ExportConfig, device, scores: int, weights: int) -> str | None:
    """Why onnxruntime cannot verify this export where it would run (None: it can): a graph whose
    attention scores (one call's (B, H, N, N) fp32 and their softmax, materialised by onnxruntime's
    kernels) and weights
    would not fit in the memory free there. A deployment-size export then ships unverified by
    onnxruntime, saying so, instead of running out of memory."""
    from . import onnx as onnx_export

    providers = onnx_export.verification_providers(device)
    free = onnx_export.available_bytes(providers, device)
    if scores + weights <= 0.9 * free:
        return None
    where = "the GPU" if providers[0] == "CUDAExecutionProvider" else "the host"
    gib = 2**30
    return (f"onnxruntime ({providers[0]}) would hold {(scores + weights) / gib:.1f} GiB (one call's attention scores and "
            f"their softmax {scores / gib:.1f} GiB and the weights {weights / gib:.1f} GiB), more than the {free / gib:.1f} GiB free on "
            f"{where}; verify with onnxruntime-gpu on a larger GPU, or export the same plan at a smaller "
            "--frames/--height/--width to verify its graph there")


def _build_program(entry: dict, program, inputs: tuple, tmp: Path, stage_dir: Path, stem: str, label: str,
                   removed: list[str], config: ExportConfig, device, trt_info, progress: bool, scores: int = 0,
                   weights=None) -> None:
    """Build, audit and verify one program's artifacts; record them in its manifest `entry`."""
    from . import onnx as onnx_export
    from .trt_readiness import check_onnx, summary as readiness_summary
    from .verify import compare, random_feeds, torch_runner

    relative = stage_dir.relative_to(tmp)
    input_names = [spec["name"] for spec in entry["inputs"]]
    output_names = [spec["name"] for spec in entry["outputs"]]
    verify: dict = {}
    if config.target == "aoti":
        from ..devices import load_aoti
        from .aoti import package_aoti

        if progress:
            print(f"{label}: compiling AOTInductor package ({device.type}, {config.precision})", flush=True)
        aoti_path = stage_dir / f"{stem}.aoti.pt2"
        built = package_aoti(program, aoti_path)
        entry["files"]["aoti"] = {"path": f"{relative}/{aoti_path.name}", "sha256": sha256_file(aoti_path),
                                  "device": built["device"]}
        entry["aoti"] = built
        if config.verify:
            feeds = random_feeds(entry["inputs"], config.samples)
            verify["aoti_vs_torch"] = compare(
                torch_runner(program.module(), entry["inputs"], output_names, device=str(device)),
                torch_runner(load_aoti(aoti_path, device, program if built["weights"] == "pt2" else None),
                             entry["inputs"], output_names, device=str(device), name="aoti"),
                feeds, config.precision)
            if not verify["aoti_vs_torch"]["passed"]:
                raise F3Error(f"{label}: the AOTInductor package differs from the torch program "
                              f"(relative L2 {verify['aoti_vs_torch']['relative_l2_error']:.2e})")
    else:
        # every graph beside the build's one weight file: stage0.onnx, stage0.reuse1.onnx, stage1.onnx, ...
        onnx_path = weights.path.parent / f"{stage_dir.name}{stem[len('denoiser'):]}.onnx"
        if progress:
            print(f"{label}: exporting ONNX (opset {config.opset}, {config.precision})", flush=True)
        onnx_export.export_onnx(program, _example_inputs(inputs, entry["inputs"]), onnx_path, weights, opset=config.opset,
                                input_names=input_names, output_names=output_names)
        entry["files"]["onnx"] = {"path": onnx_path.relative_to(tmp).as_posix(), "sha256": sha256_file(onnx_path)}
        audit = onnx_export.audit_onnx(onnx_path, removed)
        audit["program_weight_bytes"] = int(sum(t.numel() * t.element_size() for t in program.state_dict.values()))
        audit["tensorrt_readiness"] = check_onnx(onnx_path)  # static: onnx-tensorrt's operator table
        if config.target == "trt" and not audit["tensorrt_readiness"]["ready"]:
            raise F3Error(f"{label}: the ONNX uses what TensorRT {audit['tensorrt_readiness']['table']['tensorrt']} "
                          f"does not support: {readiness_summary(audit['tensorrt_readiness'])}")
        entry["audit"] = audit
        if audit.get("removed_modules_check") == "unknown" and not audit["weights_from_removed_modules"]:
            raise F3Error(f"{label}: {audit['nodes_of_unknown_scope']} ONNX node(s) carry no "
                          "PyTorch name scope, so the pruning cannot be audited; export with a torch whose "
                          "ONNX exporter records name scopes")
        if audit["nodes_from_removed_modules"] or audit["weights_from_removed_modules"]:
            raise F3Error(f"{label}: the ONNX still holds nodes or weights of pruned modules; "
                          "this is a bug, please report it with the plan")
        skipped = _unverifiable(config, device, scores, audit["initializer_bytes"]) if config.verify else None
        if skipped:
            verify["onnxruntime_vs_torch"] = {"skipped": skipped}
            print(f"{label}: onnxruntime verification skipped: {skipped}", file=sys.stderr, flush=True)
        elif config.verify:
            feeds = random_feeds(entry["inputs"], config.samples)
            try:
                verify["onnxruntime_vs_torch"] = compare(
                    torch_runner(program.module(), entry["inputs"], output_names, device=str(device)),
                    onnx_export.onnxruntime_runner(onnx_path, onnx_export.verification_providers(device)), feeds,
                    config.precision)
            except Exception as exc:
                if "onnxruntime" not in type(exc).__module__:
                    raise
                reason = str(exc).splitlines()[0][:200]
                raise F3Error(f"onnxruntime cannot run the {config.precision} ONNX of {label} ({reason}); "
                              "use --precision fp16/fp32, or --no-verify and verify on TensorRT") from None
            if not verify["onnxruntime_vs_torch"]["passed"]:
                raise F3Error(f"{label}: onnxruntime differs from the torch program "
                              f"(relative L2 {verify['onnxruntime_vs_torch']['relative_l2_error']:.2e}); "
                              "try another --opset or --precision fp32")
    if config.target == "trt":
        from .tensorrt import build_engine, engine_name, tensorrt_runner

        version, compute = trt_info
        engine_path = stage_dir / engine_name(version, compute, stem)
        cache = config.timing_cache or Path.home() / ".cache" / "f3compile" / "trt-timing.cache"
        cache.parent.mkdir(parents=True, exist_ok=True)
        entry["tensorrt"] = build_engine(onnx_path, engine_path, entry["inputs"], config.precision,
                                         config.dynamic_batch, cache)
        entry["files"]["trt"] = {"path": f"{relative}/{engine_path.name}", "sha256": sha256_file(engine_path)}
        if config.verify and "skipped" not in verify.get("onnxruntime_vs_torch", {}):  # the reference: onnxruntime
            feeds = random_feeds(entry["inputs"], config.samples)
            verify["tensorrt_vs_onnxruntime"] = compare(
                onnx_export.onnxruntime_runner(onnx_path), tensorrt_runner(engine_path), feeds, config.precision)
            if not verify["tensorrt_vs_onnxruntime"]["passed"]:
                raise F3Error(f"{label}: TensorRT differs from onnxruntime "
                              f"(relative L2 {verify['tensorrt_vs_onnxruntime']['relative_l2_error']:.2e})")
        elif config.verify:
            verify["tensorrt_vs_onnxruntime"] = {"skipped": "its reference, onnxruntime, cannot run here: "
                                                            + verify["onnxruntime_vs_torch"]["skipped"]}
    entry["verify"] = verify
