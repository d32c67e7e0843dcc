"""Build directories of autoregressive models: prefill and decode-step programs (torch.export, ONNX),
verified, with a manifest (`f3compile.manifest/1` of kind `autoregressive`, `AutoregressiveManifest`)
that a runtime needs nothing else beside.

    BUILD/manifest.json
    BUILD/prefill.pt2, BUILD/decode.pt2          torch.export programs (always)
    BUILD/prefill.onnx, BUILD/decode.onnx        with --target onnx, checked by onnxruntime
    BUILD/weights.onnx.data                      their initializers, each stored once for both

The manifest names every input and output of both programs (the caches are `base_kv.L` then
`plus_kv.L`: the prefill returns them as `present.X`; a decode step reads `past.X` and returns the
token's entry `new.X`, which the runtime writes at the slot `program.slot_tables` gives for the
cache's channel and kept frames, both listed under `cache.tensors`), the model's
sizes (for the stand-in tokenizer and decoder), the plan's stage and the cache memory.
Verification feeds one real token sequence (a seeded generation of the dense model; stage 2:
between three seeded random key frames) through the eager pruned programs and through each
artifact — the prefill and the first frames' decode steps — and compares logits, caches and new entries: relative L2 ≤ 1e-5 (torch.export) and ≤ 1e-4
(onnxruntime, fp32).
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from dataclasses import dataclass

from .._io import atomic_dir, sha256_file
from ..errors import F3Error
from ..manifest import SCHEMA, ManifestHeader, library_versions, load_manifest, register_manifest, write_manifest
from ..models.cogvideo import CogVideoConfig, CogVideoModel
from ..schema import fail, key
from .program import DecodeProgram, PrefillProgram, Session, StepPrune, programs

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


def verification_tokens(model: CogVideoModel, batch: int, decode_steps: int, seed: int = 0) -> torch.Tensor:
    """A real input sequence (B, prefill length + decode_steps): a dense generation's first tokens
    (stage 2: between three seeded random key frames)."""
    from .sampling import generate_tokens, interpolate_tokens, interpolation_text, teacher_tokens

    c = model.config
    prefill, decode = programs(model.module, None, batch)
    session = Session(prefill, decode, prefill.core.slot_tables())
    prompt = "a red square moves to the left"
    with torch.no_grad():
        if c.stage == 1:
            text = model.tokenizer([prompt] * batch)
            images = generate_tokens(c, session, text, seed=seed, count=decode_steps)
        else:
            text = model.tokenizer([interpolation_text(prompt, 2.0)] * batch)
            given = torch.randint(0, c.image_tokens, (batch, c.given_frames, c.frame_tokens),
                                  generator=torch.Generator().manual_seed(seed))
            images = torch.cat([given, interpolate_tokens(c, session, text, given, seed=seed, count=decode_steps)], dim=1)
    return teacher_tokens(c, text, images)[:, : c.prefill_length + decode_steps]


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
    """Relative L2 of the logits and of the cache entries, the largest over the calls (the same
    comparison as every exporter's verification, `exporters.verify.errors`)."""
    from ..exporters.verify import errors

    logits = errors((r[0], c[0]) for c, r in zip(candidate, reference))
    caches = errors((y, x) for c, r in zip(candidate, reference) for x, y in zip(c[1:], r[1:]))
    return {"logits_relative_l2": logits["relative_l2_error"], "caches_relative_l2": caches["relative_l2_error"],
            "max_abs_error": max(logits["max_abs_error"], caches["max_abs_error"]), "calls": len(reference)}


def onnx_callables(directory: Path, manifest: dict):
    """(prefill, decode) over onnxruntime sessions with the programs' call signatures."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3

    def wrap(name: str):
        spec = manifest["programs"][name]
        session = ort.InferenceSession(str(directory / spec["files"]["onnx"]["path"]), options,
                                       providers=["CPUExecutionProvider"])
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
    with atomic_dir(output) as tmp, ExitStack() as closing:
        entries = {}
        weights = None  # prefill and decode share their initializers: one weight file beside the graphs
        for name, program in exported.items():
            module = eager[name]
            inputs = module.example_inputs()
            with torch.no_grad():
                outputs = module(*inputs)
            files = {"pt2": f"{name}.pt2"}
            torch.export.save(program, str(tmp / files["pt2"]))
            if target == "onnx":
                from ..exporters.onnx import WEIGHTS_FILE, WeightFile, export_onnx

                if weights is None:
                    weights = closing.enter_context(WeightFile(tmp / WEIGHTS_FILE))
                started = time.perf_counter()
                files["onnx"], files["onnx_data"] = f"{name}.onnx", WEIGHTS_FILE
                export_onnx(program, inputs, tmp / files["onnx"], weights, input_names=module.input_names(),
                            output_names=module.output_names())
                seconds[f"onnx_{name}"] = round(time.perf_counter() - started, 3)
            entries[name] = {"files": files, "inputs": _specs(module.input_names(), inputs),
                             "outputs": _specs(module.output_names(), outputs)}
        if weights is not None:
            weights.close()
        core = prefill.core
        for name, entry in entries.items():  # hashed before the verification reads them
            entry["files"] = {kind: {"path": path, "sha256": sha256_file(tmp / path)} for kind, path in entry["files"].items()}
        manifest: dict[str, Any] = {
            "schema": SCHEMA, "kind": "autoregressive", "family": model.family,
            "model": {"spec": model.spec, "fingerprint": model.fingerprint},
            "config": c.to_dict(), "batch": batch, "precision": "fp32",
            "plan": None if plan is None else {"file": str(plan_path) if plan_path else None,
                                                "granularity": plan.granularity, "ratio": plan.ratio,
                                                "stage": plan.stages[0].to_dict()},
            "renormalise": renormalise,
            "plus_layers": [int(k) for k, v in core.plus.items() if v.heads],
            "versions": library_versions(),
            "cache": {"bytes": core.cache_bytes(batch), "tensors": core.cache_layout(batch)},
            "programs": entries, "seconds": seconds,
        }
        if verify:
            steps = verify_steps if verify_steps is not None else min(2 * c.frame_tokens, c.sequence_length - c.prefill_length)
            tokens = verification_tokens(model, batch, steps)
            with torch.no_grad():
                tables = prefill.core.slot_tables()
                reference = _run(prefill, decode, tables, tokens, prefill.length)
                loaded = {n: torch.export.load(str(tmp / e["files"]["pt2"]["path"])).module() for n, e in entries.items()}
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
        write_manifest(tmp, manifest)
    return manifest


def _file_name(path: Any) -> bool:
    return isinstance(path, str) and path == Path(path).name and path not in ("", ".", "..") and path.isprintable()


@dataclass
class ProgramFile:
    """programs.<name>.files.<kind>: a file beside the manifest and its sha256."""

    MESSAGE = "must be a file name inside the build with its sha256"
    path: str = key(check=_file_name)
    sha256: str = key(check=lambda v: v.startswith("sha256:"))


@dataclass
class StepProgram:
    """programs.prefill / programs.decode: the torch.export program (and its ONNX) and its I/O."""

    files: dict[str, ProgramFile] = key(check=lambda v: "pt2" in v and set(v) <= {"pt2", "onnx", "onnx_data"},
                                        message="files must name the pt2 (and onnx, onnx_data) program")
    inputs: list[dict[str, Any]] = key(check=lambda v: all(isinstance(x.get("name"), str) for x in v),
                                       message="inputs must list named tensors")
    outputs: list[dict[str, Any]] = key(check=lambda v: all(isinstance(x.get("name"), str) for x in v),
                                        message="outputs must list named tensors")


@dataclass
class CacheTensor:
    """cache.tensors[i]: one key/value cache and the frame slots it holds."""

    name: str = key()
    shape: list[int] = key(check=lambda v: len(v) == 5 and all(x >= 1 for x in v), message="shape must be 5 positive integers")
    channel: Any = key(check=lambda v: v in ("base", "plus"), message="channel must be base or plus")
    kept_frames: list[int] | None = key()


@dataclass
class Cache:
    bytes: int = key(check=lambda v: 0 <= v <= 2**40, message="bytes must be an integer in [0, 2**40]")
    tensors: list[CacheTensor] = key()


@dataclass(kw_only=True)
class AutoregressiveManifest(ManifestHeader):
    """The build of an autoregressive model: prefill and decode-step programs with static caches."""

    FIX = "rebuild with `f3compile export`"
    family: str = key()
    config: dict[str, Any] = key(message="config must be an object")
    batch: int = key(check=lambda v: 1 <= v <= 4096, message="batch must be an integer in [1, 4096]")
    precision: str = key()
    plan: dict[str, Any] | None = key()
    renormalise: bool = key()
    plus_layers: list[int] = key()
    cache: Cache = key()
    programs: dict[str, StepProgram] = key(check=lambda v: {"prefill", "decode"} <= set(v),
                                           message="programs must hold prefill and decode")
    seconds: Any = key(optional=True)
    verify: Any = key(optional=True)
    versions: dict[str, str] = key(optional=True, message="versions must map package names to version strings")

    @staticmethod
    def relations(data: dict, where: str) -> None:
        fix = AutoregressiveManifest.FIX
        config = CogVideoConfig.from_dict(data["config"], f"{where}: config")
        names = []
        for number, spec in enumerate(data["cache"]["tensors"]):
            at = f"{where}: cache.tensors[{number}]"
            if not spec["name"].startswith(f"{spec['channel']}_kv."):
                fail(at, "bad channel or name", fix)
            kept = spec["kept_frames"]
            if not (kept is None or (spec["channel"] == "plus" and len(set(kept)) == len(kept)
                                     and all(0 <= f < config.frames for f in kept))):
                fail(at, f"kept_frames must be null or distinct frames of 0..{config.frames - 1}", fix)
            frames = config.frames if kept is None else len(kept)
            slots = config.text_length + config.frame_tokens if spec["channel"] == "base" else (
                config.text_length + frames * config.frame_tokens + 1)
            batch, two, heads, length, dim = spec["shape"]
            if not (batch == data["batch"] and two == 2 and heads <= config.num_heads and length == slots
                    and dim == config.head_dim):
                fail(at, f"shape {spec['shape']} does not fit the config (expected [{data['batch']}, 2, "
                         f"<= {config.num_heads}, {slots}, {config.head_dim}])", fix)
            names.append(spec["name"])
        if len(set(names)) != len(names):
            fail(where, "cache tensor names must be distinct", fix)
        decode_inputs = [x["name"] for x in data["programs"]["decode"]["inputs"]]
        if decode_inputs != ["token", "position"] + [f"past.{n}" for n in names]:
            fail(where, "the decode step's inputs must be token, position and past.X for every cache X", fix)

    @staticmethod
    def files(data: dict) -> list[tuple[str, dict]]:
        return [(kind, entry) for name in ("prefill", "decode") for kind, entry in data["programs"][name]["files"].items()]


register_manifest("autoregressive", AutoregressiveManifest)


def load_ar_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of an autoregressive build, validated, with every file's sha256 checked."""
    return load_manifest(directory, kind="autoregressive")
