"""build/manifest.json (schema `f3compile.manifest/1`): everything a runtime needs, validated.

A runtime on another machine reads the manifest to run the denoising loop: the scheduler class
and config, the text encoder and prompt-encoding settings, and per stage the timestep range,
artifact files with sha256, I/O names/shapes/dtypes, precision and verification summary. It
refuses artifacts whose hashes do not match (`load_manifest`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._io import read_json, sha256_file, write_json_atomic
from .errors import F3Error
from .reuse import MAX_PROGRAMS as MAX_REUSE_PROGRAMS, step_patterns

SCHEMA = "f3compile.manifest/1"
AR_SCHEMA = "f3compile.ar-manifest/1"  # the build of an autoregressive model (`autoregressive.export`)
TOP_KEYS = {"schema": str, "model": dict, "plan": dict, "shapes": dict, "sample_layout": str, "scheduler": dict,
            "text_encoder": dict, "versions": dict, "stages": list}
STAGE_KEYS = {"index": int, "timesteps": list, "plan": dict, "files": dict, "parameters": int, "precision": str,
              "inputs": list, "outputs": list}
OPTIONAL_TOP = {"seconds", "targets", "dynamic_batch", "components", "decoder", "device"}
OPTIONAL_STAGE = {"passes", "verify", "audit", "tensorrt", "aoti", "reuse"}
REUSE_KEYS = {"periods": dict, "programs": list, "residual_bytes": int}
PROGRAM_KEYS = {"reused": list, "files": dict, "parameters": int, "inputs": list, "outputs": list}
OPTIONAL_PROGRAM = {"passes", "verify", "audit", "tensorrt", "aoti"}
RESIDUAL_PREFIX = "residual."  # + block id: a temporal-reuse residual carried between steps
PRECISIONS = ("fp32", "fp16", "bf16")
# the I/O names of every artifact, for every model (in call order)
INPUT_NAMES = ["sample", "timestep", "encoder_hidden_states"]
OUTPUT_NAMES = ["noise_pred"]


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {}
    for package in ("f3compile", "torch", "diffusers", "transformers", "safetensors", "onnx", "onnxruntime",
                    "onnxruntime-gpu", "tensorrt", "polygraphy"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            continue
    return versions


def text_encoder_info(model) -> dict[str, Any]:
    """Identity of the text encoder and how prompts are encoded (so a runtime encodes the same)."""
    return {
        "class": model.info.get("text_encoder_class"),
        "tokenizer_class": type(model.tokenizer).__name__ if model.tokenizer is not None else None,
        "max_length": model.text_length,
        "hidden_size": model.text_dim,
        "padding": "max_length",
        "negative_prompt": "",
        "family": model.family,
        # how prompts are tokenized and encoded: "clip" (CLIP-style, mask only if the encoder asks),
        # "t5" (lower-cased, attention mask passed), "hashed" (bare denoiser: seeded pseudo-embeddings)
        "style": "hashed" if model.pipeline is None else ("t5" if model.family == "latte" else "clip"),
    }


def _name(name: Any) -> str:
    """A name from the file for a one-line message: odd ones (empty, control characters) quoted."""
    return name if isinstance(name, str) and name.isprintable() and name.strip() == name != "" else repr(name)


def _inside(path: Any) -> bool:
    """A string path relative to the build directory that does not leave it."""
    return isinstance(path, str) and not Path(path).is_absolute() and ".." not in Path(path).parts


def _check(obj: Any, keys: dict[str, type], optional: set[str], where: str) -> None:
    if not isinstance(obj, dict):
        raise F3Error(f"{where} must be an object")
    unknown = sorted(set(obj) - set(keys) - optional)
    missing = sorted(set(keys) - set(obj))
    if unknown or missing:
        raise F3Error(f"{where}: " + "; ".join(filter(None, [
            f"unknown key(s) {', '.join(map(_name, unknown))}" if unknown else "",
            f"missing key(s) {', '.join(missing)}" if missing else ""])))
    for key, kind in keys.items():
        if not isinstance(obj[key], kind) or (kind is int and isinstance(obj[key], bool)):
            raise F3Error(f"{where}: {key} must be {kind.__name__}")


def validate_manifest(data: Any, where: str = "manifest") -> None:
    """Raise `F3Error` unless `data` is a well-formed f3compile.manifest/1 document."""
    _check(data, TOP_KEYS, OPTIONAL_TOP, where)
    if data["schema"] != SCHEMA:
        raise F3Error(f"{where}: schema is {data['schema']!r}, expected {SCHEMA!r}")
    if not isinstance(data["model"].get("fingerprint"), str):
        raise F3Error(f"{where}: model.fingerprint must be a string")
    if "class" not in data["scheduler"] or "config" not in data["scheduler"]:
        raise F3Error(f"{where}: scheduler needs class and config")
    if not all(isinstance(version, str) for version in data["versions"].values()):
        raise F3Error(f"{where}: versions must map package names to version strings")
    components = data.get("components", {})
    if not isinstance(components, dict):
        raise F3Error(f"{where}: components must be an object mapping names to {{\"path\", \"class\", \"sha256\"}}")
    for name, entry in components.items():
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("path", "class", "sha256")):
            raise F3Error(f"{where}: components.{_name(name)} needs a path, a class and a sha256")
        if not _inside(entry["path"]):
            raise F3Error(f"{where}: components.{_name(name)}.path must stay inside the build directory")
    decoder = data.get("decoder")
    if decoder is not None and (not isinstance(decoder, dict) or decoder.get("kind") != "pixel_shuffle"
                                or not isinstance(decoder.get("factor"), int) or decoder["factor"] < 1):
        raise F3Error(f"{where}: decoder must be {{\"kind\": \"pixel_shuffle\", \"factor\": K}} with K >= 1")
    if not data["stages"]:
        raise F3Error(f"{where}: stages must not be empty")
    previous_low = None
    for number, stage in enumerate(data["stages"]):
        at = f"{where}: stages[{number}]"
        _check(stage, STAGE_KEYS, OPTIONAL_STAGE, at)
        span = stage["timesteps"]
        if len(span) != 2 or not all(isinstance(t, int) and not isinstance(t, bool) for t in span) or not span[0] >= span[1] >= 0:
            raise F3Error(f"{at}: timesteps must be [high, low] integers with high >= low >= 0, got {span!r}")
        high, low = span
        if previous_low is not None and high != previous_low - 1:
            problem = "leave a gap after" if high < previous_low - 1 else "overlap the previous stage, which ends at"
            raise F3Error(f"{at}: timesteps {stage['timesteps']} {problem} {previous_low}; "
                          f"stage timesteps must start at {previous_low - 1}")
        previous_low = low
        if stage["precision"] not in PRECISIONS:
            raise F3Error(f"{at}: precision must be one of {', '.join(PRECISIONS)}")
        if (not all(isinstance(io, dict) for io in stage["inputs"] + stage["outputs"])
                or [i.get("name") for i in stage["inputs"]] != INPUT_NAMES or [o.get("name") for o in stage["outputs"]][:1] != OUTPUT_NAMES):
            raise F3Error(f"{at}: inputs must be {INPUT_NAMES} and the first output {OUTPUT_NAMES[0]}")
        _check_files(stage["files"], at)
        if "reuse" in stage:
            _check_reuse(stage, at)
    if previous_low != 0:
        raise F3Error(f"{where}: the last stage must end at timestep 0")


def _check_files(files: dict, at: str) -> None:
    for kind, entry in files.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or not str(entry.get("sha256", "")).startswith("sha256:"):
            raise F3Error(f"{at}: files.{_name(kind)} needs a path and a sha256")
        if not _inside(entry["path"]):
            raise F3Error(f"{at}: files.{_name(kind)}.path must stay inside the build directory")


def _io_names(specs: list) -> list:
    return [spec.get("name") if isinstance(spec, dict) else None for spec in specs]


def _check_reuse(stage: dict, at: str) -> None:
    """Temporal reuse: the stage's program returns every reused block's residual after noise_pred;
    each further program takes the residuals of its `reused` blocks after the standard inputs."""
    reuse = stage["reuse"]
    _check(reuse, REUSE_KEYS, set(), f"{at}: reuse")
    periods = reuse["periods"]
    if not periods or not all(isinstance(b, str) and isinstance(k, int) and not isinstance(k, bool) and k > 1
                              for b, k in periods.items()):
        raise F3Error(f"{at}: reuse.periods must map temporal block ids to integer periods > 1")
    residuals = [RESIDUAL_PREFIX + block for block in periods]
    if _io_names(stage["outputs"]) != OUTPUT_NAMES + residuals:
        raise F3Error(f"{at}: with reuse the outputs must be {OUTPUT_NAMES + residuals}")
    seen = []
    for number, program in enumerate(reuse["programs"]):
        where = f"{at}: reuse.programs[{number}]"
        _check(program, PROGRAM_KEYS, OPTIONAL_PROGRAM, where)
        reused = program["reused"]
        if not reused or not all(b in periods for b in reused) or reused in seen:
            raise F3Error(f"{where}: reused must be a new, non-empty list of blocks in reuse.periods")
        seen.append(reused)
        if _io_names(program["inputs"]) != INPUT_NAMES + [RESIDUAL_PREFIX + b for b in reused]:
            raise F3Error(f"{where}: inputs must be {INPUT_NAMES} followed by the residuals of its reused blocks")
        computed = [RESIDUAL_PREFIX + b for b in periods if b not in reused]
        if _io_names(program["outputs"]) != OUTPUT_NAMES + computed:
            raise F3Error(f"{where}: outputs must be {OUTPUT_NAMES + computed}")
        _check_files(program["files"], where)
    try:
        needed = step_patterns(periods, MAX_REUSE_PROGRAMS)[1:]
    except ValueError:
        raise F3Error(f"{at}: reuse.periods need more than {MAX_REUSE_PROGRAMS} programs") from None
    if sorted(map(tuple, seen)) != sorted(needed):
        raise F3Error(f"{at}: reuse.programs must hold one program per pattern of reused blocks the periods "
                      f"produce ({len(needed)}), got {len(seen)}; rebuild the artifacts")
    if reuse["residual_bytes"] < 0:
        raise F3Error(f"{at}: reuse.residual_bytes must be >= 0")


def build_kind(directory: str | Path) -> str:
    """The kind of model a build directory holds, by its manifest ("diffusion" when it cannot tell:
    that loader then says what is wrong with the directory)."""
    import json

    try:
        data = json.loads((Path(directory) / "manifest.json").read_text())
    except (OSError, ValueError, RecursionError):
        return "diffusion"
    return "autoregressive" if isinstance(data, dict) and data.get("schema") == AR_SCHEMA else "diffusion"


def program_entries(stage: dict) -> list[dict]:
    """The stage's program entries: its own (computing every block) then its reuse programs."""
    return [stage] + list(stage.get("reuse", {}).get("programs", []))


def write_manifest(directory: Path, data: dict) -> None:
    validate_manifest(data, "manifest being written")
    write_json_atomic(directory / "manifest.json", data)


def load_manifest(directory: str | Path, check_hashes: bool = True) -> dict:
    """Read and validate `directory/manifest.json`; with `check_hashes`, refuse changed artifacts."""
    directory = Path(directory)
    path = directory / "manifest.json"
    if not path.is_file():
        raise F3Error(f"{directory} has no manifest.json; run `f3compile compile` or `f3compile export` first")
    data = read_json(path, "rebuild the artifacts")
    validate_manifest(data, str(path))
    if check_hashes:
        try:
            for name, entry in data.get("components", {}).items():
                if not (directory / entry["path"]).is_dir():
                    raise F3Error(f"{_name(str(directory / entry['path']))} ({_name(name)}) is missing; rebuild the artifacts")
            for stage in data["stages"]:
                for kind, entry in [item for program in program_entries(stage) for item in program["files"].items()]:
                    file = directory / entry["path"]
                    if not file.is_file():
                        raise F3Error(f"{_name(str(file))} is missing; rebuild the artifacts")
                    if sha256_file(file) != entry["sha256"]:
                        raise F3Error(f"{_name(str(file))} does not match the sha256 in the manifest; rebuild the artifacts")
        except OSError as exc:  # e.g. a path too long for the file system
            raise F3Error(f"{_name(str(exc.filename))} cannot be read ({exc.strerror}); rebuild the artifacts") from None
    return data
