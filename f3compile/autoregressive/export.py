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
Verification feeds one real token sequence (a seeded generation of the dense model; stage 2:
between three seeded random key frames) through the eager pruned programs and through each
artifact — the prefill and the first frames' decode steps — and compares logits, caches and new entries: relative L2 ≤ 1e-5 (torch.export) and ≤ 1e-4
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
from ..manifest import AR_SCHEMA as SCHEMA
from ..models.cogvideo import CogVideoConfig, CogVideoModel
from .program import DecodeProgram, PrefillProgram, Session, StepPrune, programs

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
            steps = verify_steps if verify_steps is not None else min(2 * c.frame_tokens, c.sequence_length - c.prefill_length)
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


def _is_int(value: Any, least: int = 0, most: int = 2**40) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and least <= value <= most


def _check_ar_manifest(data: Any, where: str, directory: Path) -> None:
    """Every field the runtime reads, with its type and relations; files inside `directory`."""
    def need(condition: bool, what: str) -> None:
        if not condition:
            raise F3Error(f"{where}: {what}; rebuild with `f3compile export`")

    need(isinstance(data, dict) and data.get("schema") == SCHEMA, f"not a {SCHEMA} manifest")
    need(isinstance(data.get("config"), dict), "config must be an object")
    config = CogVideoConfig.from_dict(data["config"], f"{where}: config")
    need(_is_int(data.get("batch"), 1, 4096), "batch must be an integer in [1, 4096]")
    cache = data.get("cache")
    need(isinstance(cache, dict) and _is_int(cache.get("bytes")) and isinstance(cache.get("tensors"), list),
         "cache must hold an integer bytes and a list of tensors")
    names = []
    for number, spec in enumerate(cache["tensors"]):
        need(isinstance(spec, dict) and set(spec) == {"name", "shape", "channel", "kept_frames"},
             f"cache.tensors[{number}] must have exactly name, shape, channel and kept_frames")
        need(spec["channel"] in ("base", "plus") and isinstance(spec["name"], str)
             and spec["name"].startswith(f"{spec['channel']}_kv."), f"cache.tensors[{number}]: bad channel or name")
        kept = spec["kept_frames"]
        need(kept is None or (spec["channel"] == "plus" and isinstance(kept, list) and len(set(map(repr, kept))) == len(kept)
                              and all(_is_int(f, 0, config.frames - 1) for f in kept)),
             f"cache.tensors[{number}].kept_frames must be null or distinct frames of 0..{config.frames - 1}")
        need(isinstance(spec["shape"], list) and len(spec["shape"]) == 5 and all(_is_int(x, 1) for x in spec["shape"]),
             f"cache.tensors[{number}].shape must be 5 positive integers")
        frames = config.frames if kept is None else len(kept)
        slots = config.text_length + config.frame_tokens if spec["channel"] == "base" else (
            config.text_length + frames * config.frame_tokens + 1)
        batch, two, heads, length, dim = spec["shape"]
        need(batch == data["batch"] and two == 2 and heads <= config.num_heads and length == slots and dim == config.head_dim,
             f"cache.tensors[{number}].shape {spec['shape']} does not fit the config (expected "
             f"[{data['batch']}, 2, <= {config.num_heads}, {slots}, {config.head_dim}])")
        names.append(spec["name"])
    need(len(set(names)) == len(names), "cache tensor names must be distinct")
    programs = data.get("programs")
    need(isinstance(programs, dict) and set(programs) >= {"prefill", "decode"}, "programs must hold prefill and decode")
    for name in ("prefill", "decode"):
        entry = programs[name]
        need(isinstance(entry, dict) and isinstance(entry.get("files"), dict) and isinstance(entry.get("sha256"), dict)
             and "pt2" in entry["files"] and set(entry["files"]) <= {"pt2", "onnx"}
             and set(entry["sha256"]) == set(entry["files"]), f"programs.{name} must name its pt2 (and onnx) files and their sha256")
        for kind, path in entry["files"].items():
            need(isinstance(path, str) and path == Path(path).name and path not in ("", ".", "..")
                 and path.isprintable(), f"programs.{name}.files.{kind} must be a file name inside the build")
            need(isinstance(entry["sha256"][kind], str), f"programs.{name}.sha256.{kind} must be a string")
        for io in ("inputs", "outputs"):
            need(isinstance(entry.get(io), list) and all(isinstance(x, dict) and isinstance(x.get("name"), str)
                                                          for x in entry[io]), f"programs.{name}.{io} must list named tensors")
    decode_inputs = [x["name"] for x in programs["decode"]["inputs"]]
    need(decode_inputs == ["token", "position"] + [f"past.{n}" for n in names],
         "the decode step's inputs must be token, position and past.X for every cache X")
    for name in ("prefill", "decode"):
        for kind, path in programs[name]["files"].items():
            need((directory / path).is_file(), f"names {path}, which is missing")
            need(sha256_file(directory / path) == programs[name]["sha256"][kind], f"{path} does not match its sha256")


def load_ar_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of an autoregressive build, validated, with every file's sha256 checked."""
    directory = Path(directory)
    data = read_json(directory / MANIFEST, "rebuild it with `f3compile export`")
    _check_ar_manifest(data, str(directory / MANIFEST), directory)
    return data
