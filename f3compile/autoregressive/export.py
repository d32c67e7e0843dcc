"""Build directories of autoregressive models: prefill and decode-step programs (torch.export, ONNX),
verified, with a manifest (`f3compile.ar-manifest/1`) that a runtime needs nothing else beside.

    BUILD/manifest.json
    BUILD/prefill.pt2, BUILD/decode.pt2          torch.export programs (always)
    BUILD/prefill.onnx, BUILD/decode.onnx        with --target onnx, checked by onnxruntime

The manifest names every input and output of both programs (the caches are `base_kv.L` then
`plus_kv.L`: the prefill returns them as `present.X`; a decode step reads `past.X` and returns the
token's entry `new.X`, which the runtime writes at the slot `program.slot_tables` gives for the
cache's channel and kept frames, both listed under `cache.tensors`), the model's
sizes (for the stand-in tokenizer and decoder), the plan's stage and the cache memory.
Verification feeds one real token sequence (a seeded generation of the dense model) through the
eager pruned programs and through each artifact — the prefill and the first frames' decode
steps — and compares logits, caches and new entries: relative L2 ≤ 1e-5 (torch.export) and ≤ 1e-4
(onnxruntime, fp32).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_dir, read_json, sha256_file
from ..errors import F3Error
from ..models.cogvideo import CogVideoConfig, CogVideoModel
from .program import DecodeProgram, PrefillProgram, Session, StepPrune, programs, slot_tables

SCHEMA = "f3compile.ar-manifest/1"
MANIFEST = "manifest.json"
TOLERANCE = {"pt2": 1e-5, "onnx": 1e-4}  # relative L2 of logits and caches against the eager programs


def prune_of(model: CogVideoModel, plan, renormalise: bool = False) -> StepPrune:
    """The pruning of a one-stage plan made on `model` (dense without a plan)."""
    if plan is None:
        return StepPrune(renormalise=renormalise)
    if plan.model.get("fingerprint") != model.fingerprint:
        raise F3Error(f"the plan was made for another model ({plan.model.get('spec')}); calibrate and plan on {model.spec}")
    if len(plan.stages) != 1:
        raise F3Error("autoregressive models take one-stage plans (there are no timesteps to split); plan with --stages 1")
    return StepPrune.from_stage(plan.stages[0], model.config, renormalise=renormalise)


def _specs(names: list[str], tensors) -> list[dict[str, Any]]:
    return [{"name": n, "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")} for n, t in zip(names, tensors)]


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def verification_tokens(model: CogVideoModel, batch: int, decode_steps: int, seed: int = 0) -> torch.Tensor:
    """A real input sequence (B, T + 1 + decode_steps): a dense generation's first tokens."""
    from .sampling import generate_tokens, teacher_tokens

    c = model.config
    prefill, decode = programs(model.module, None, batch)
    text = model.tokenizer(["a red square moves to the left"] * batch)
    with torch.no_grad():
        images = generate_tokens(c, Session(prefill, decode, prefill.core.slot_tables()), text, seed=seed)
    return teacher_tokens(c, text, images)[:, : c.text_length + 1 + decode_steps]


def _run(prefill, decode, tables, tokens: torch.Tensor, prefill_length: int) -> list[list[torch.Tensor]]:
    """Every call's outputs along `tokens`: the prefill's (logits, *caches), then each decode
    step's (logits, *new entries)."""
    session = Session(prefill, decode, tables)
    outs = [[session.start(tokens[:, :prefill_length]), *session.caches]]
    outs[0] = [torch.as_tensor(o).clone() for o in outs[0]]
    for index in range(prefill_length, tokens.shape[1]):
        logits, new = session.step(tokens[:, index:index + 1], index)
        outs.append([torch.as_tensor(logits), *(torch.as_tensor(n) for n in new)])
    return outs


def _compare(candidate: list[list[torch.Tensor]], reference: list[list[torch.Tensor]]) -> dict[str, float]:
    logits = max(_relative(c[0], r[0]) for c, r in zip(candidate, reference))
    caches = max(_relative(x, y) for c, r in zip(candidate, reference) for x, y in zip(c[1:], r[1:]))
    return {"logits_relative_l2": logits, "caches_relative_l2": caches, "calls": len(reference)}


def onnx_callables(directory: Path, manifest: dict):
    """(prefill, decode) over onnxruntime sessions with the programs' call signatures."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3

    def wrap(name: str):
        spec = manifest["programs"][name]
        session = ort.InferenceSession(str(directory / spec["files"]["onnx"]), options, providers=["CPUExecutionProvider"])
        inputs = [i["name"] for i in spec["inputs"]]

        def call(*args):
            feed = {n: np.ascontiguousarray(a.detach().cpu().numpy()) for n, a in zip(inputs, args)}
            return [torch.from_numpy(o) for o in session.run(None, feed)]
        return call

    return wrap("prefill"), wrap("decode")


def build(model: CogVideoModel, plan, output: Path, target: str = "pt2", batch: int = 1, plan_path: Path | None = None,
          renormalise: bool = False, verify: bool = True, verify_steps: int | None = None) -> dict[str, Any]:
    """Write BUILD (see the module docstring); returns the manifest."""
    import torch.export

    if target not in ("pt2", "onnx"):
        raise F3Error(f"autoregressive models export to onnx (or compile to .pt2), not {target!r}")
    if batch < 1:
        raise F3Error("--batch must be at least 1")
    c: CogVideoConfig = model.config
    prune = prune_of(model, plan, renormalise)
    prefill, decode = programs(model.module, prune, batch)
    started = time.perf_counter()
    with torch.no_grad():
        exported = {"prefill": torch.export.export(prefill, prefill.example_inputs(), strict=False),
                    "decode": torch.export.export(decode, decode.example_inputs(), strict=False)}
    seconds = {"export": round(time.perf_counter() - started, 3)}
    eager: dict[str, PrefillProgram | DecodeProgram] = {"prefill": prefill, "decode": decode}
    with atomic_dir(output) as tmp:
        entries = {}
        for name, program in exported.items():
            module = eager[name]
            inputs = module.example_inputs()
            with torch.no_grad():
                outputs = module(*inputs)
            files = {"pt2": f"{name}.pt2"}
            torch.export.save(program, str(tmp / files["pt2"]))
            if target == "onnx":
                from ..exporters.onnx import export_onnx

                started = time.perf_counter()
                files["onnx"] = f"{name}.onnx"
                export_onnx(program, inputs, tmp / files["onnx"], input_names=module.input_names(),
                            output_names=module.output_names())
                seconds[f"onnx_{name}"] = round(time.perf_counter() - started, 3)
            entries[name] = {"files": files, "inputs": _specs(module.input_names(), inputs),
                             "outputs": _specs(module.output_names(), outputs)}
        core = prefill.core
        manifest: dict[str, Any] = {
            "schema": SCHEMA, "kind": "autoregressive", "family": model.family,
            "model": {"spec": model.spec, "fingerprint": model.fingerprint},
            "config": c.to_dict(), "batch": batch, "precision": "fp32",
            "plan": None if plan is None else {"file": str(plan_path) if plan_path else None,
                                                "granularity": plan.granularity, "ratio": plan.ratio,
                                                "stage": plan.stages[0].to_dict()},
            "renormalise": renormalise,
            "plus_layers": [int(k) for k, v in core.plus.items() if v.heads],
            "cache": {"bytes": core.cache_bytes(batch), "tensors": core.cache_layout(batch)},
            "programs": entries, "seconds": seconds,
        }
        if verify:
            steps = verify_steps if verify_steps is not None else min(2 * c.frame_tokens, c.sequence_length - c.text_length - 1)
            tokens = verification_tokens(model, batch, steps)
            with torch.no_grad():
                tables = prefill.core.slot_tables()
                reference = _run(prefill, decode, tables, tokens, prefill.length)
                loaded = {n: torch.export.load(str(tmp / e["files"]["pt2"])).module() for n, e in entries.items()}
                checks = {"pt2": _compare(_run(loaded["prefill"], loaded["decode"], tables, tokens, prefill.length), reference)}
                if target == "onnx":
                    onnx_prefill, onnx_decode = onnx_callables(tmp, manifest)
                    checks["onnx"] = _compare(_run(onnx_prefill, onnx_decode, tables, tokens, prefill.length), reference)
            for kind, result in checks.items():
                worst = max(result["logits_relative_l2"], result["caches_relative_l2"])
                result["tolerance"] = TOLERANCE[kind]
                if not worst <= TOLERANCE[kind]:
                    raise F3Error(f"the {kind} programs differ from the eager ones by {worst:.2e} (relative L2) "
                                  f"over {result['calls']} calls, above {TOLERANCE[kind]:g}; nothing was written")
            manifest["verify"] = checks
        for entry in entries.values():
            entry["sha256"] = {kind: sha256_file(tmp / path) for kind, path in entry["files"].items()}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def is_ar_build(directory: str | Path) -> bool:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("schema") == SCHEMA
    except (ValueError, OSError, AttributeError):
        return False


def load_ar_manifest(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    data = read_json(directory / MANIFEST, "rebuild it with `f3compile export`")
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise F3Error(f"{directory / MANIFEST} is not a {SCHEMA} manifest")
    try:
        CogVideoConfig.from_dict(data["config"], f"{directory / MANIFEST}: config")
        for name in ("prefill", "decode"):
            entry = data["programs"][name]
            for kind, path in entry["files"].items():
                if not (directory / path).is_file():
                    raise F3Error(f"{directory / MANIFEST} names {path}, which is missing; rebuild with `f3compile export`")
                if sha256_file(directory / path) != entry["sha256"][kind]:
                    raise F3Error(f"{directory / path} does not match the manifest's sha256; rebuild with `f3compile export`")
    except (KeyError, TypeError) as exc:
        raise F3Error(f"{directory / MANIFEST} lacks {exc}; rebuild with `f3compile export`") from None
    return data
