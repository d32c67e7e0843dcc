"""build/manifest.json (schema `f3compile.manifest/1`): everything a runtime needs, validated.

One schema for every kind of build. The header — `schema`, `kind` (absent: `diffusion`), `model` —
is common; each kind adds its own body:

- `diffusion` (`DiffusionManifest`): the scheduler class and config, the text encoder and
  prompt-encoding settings, the pipeline components, and per stage the timestep range, artifact
  files with sha256, I/O names/shapes/dtypes, precision and verification summary;
- `autoregressive` (`autoregressive.export.AutoregressiveManifest`, registered there): CogVideo's
  config, the prefill and decode-step programs, the key/value cache layout.

`load_manifest(directory, kind)` validates the document with its kind's schema (`schema.validate`)
and, before any work, checks the sha256 of every file it records — artifacts and pipeline
components alike — so a damaged VAE is refused when the build is opened, not after the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._io import directory_sha256, read_json, sha256_file, write_json_atomic
from .errors import F3Error
from .reuse import MAX_PROGRAMS as MAX_REUSE_PROGRAMS, step_patterns
from .schema import fail, key, name as _name, validate

SCHEMA = "f3compile.manifest/1"
OLD_AR_SCHEMA = "f3compile.ar-manifest/1"  # autoregressive builds written before the one schema: read as such
RESIDUAL_PREFIX = "residual."  # + block id: a temporal-reuse residual carried between steps
PRECISIONS = ("fp32", "fp16", "bf16")
# the I/O names of every diffusion artifact (in call order)
INPUT_NAMES = ["sample", "timestep", "encoder_hidden_states"]
OUTPUT_NAMES = ["noise_pred"]
FIX = "rebuild the artifacts"


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
        # "t5" (lower-cased, attention mask passed), "umt5" (Wan: cleaned, mask passed, the states past
        # each prompt's length zeroed), "hunyuan15" (HunyuanVideo 1.5: Qwen2.5-VL behind its chat template and
        # ByT5 on quoted text, packed with their masks), "hashed" (bare denoiser: seeded pseudo-embeddings)
        "style": "hashed" if model.pipeline is None else {"latte": "t5", "wan": "umt5", "hunyuanvideo15": "hunyuan15"}.get(
            model.family, "clip"),
        **({"packing": model.info["packing"]} if "packing" in model.info else {}),  # where each part of a packed context lies
    }


def _inside(path: Any) -> bool:
    """A string path relative to the build directory that does not leave it."""
    return isinstance(path, str) and not Path(path).is_absolute() and ".." not in Path(path).parts


# -- the schemas ---------------------------------------------------------------------------------
@dataclass
class FileEntry:
    """files.<kind>: an artifact, relative to the build directory, and its sha256."""

    OPEN = True  # an AOTInductor package also records its device
    MESSAGE = "needs a path and a sha256"
    path: str = key()
    sha256: str = key(check=lambda v: v.startswith("sha256:"))

    @staticmethod
    def relations(entry: dict, where: str) -> None:
        if not _inside(entry["path"]):
            raise F3Error(f"{where}.path must stay inside the build directory")


@dataclass
class ComponentEntry:
    """components.<name>: a pipeline part saved with save_pretrained, hashed as a directory."""

    OPEN = True
    MESSAGE = "needs a path, a class and a sha256"
    path: str = key()
    sha256: str = key()

    @staticmethod
    def relations(entry: dict, where: str) -> None:
        if not isinstance(entry.get("class"), str):
            raise F3Error(f"{where} {ComponentEntry.MESSAGE}")
        if not _inside(entry["path"]):
            raise F3Error(f"{where}.path must stay inside the build directory")


def _span_ok(span: Any) -> bool:
    return (isinstance(span, list) and len(span) == 2 and all(isinstance(t, int) and not isinstance(t, bool) for t in span)
            and span[0] >= span[1] >= 0)


def _io_names(specs: list) -> list:
    return [spec.get("name") if isinstance(spec, dict) else None for spec in specs]


@dataclass
class ProgramEntry:
    """reuse.programs[i]: a program of a stage with temporal reuse that takes some residuals."""

    reused: list[Any] = key()
    files: dict[str, FileEntry] = key(message="files must be an object of artifacts")
    parameters: int = key()
    inputs: list[Any] = key()
    outputs: list[Any] = key()
    passes: Any = key(optional=True)
    verify: Any = key(optional=True)
    audit: Any = key(optional=True)
    tensorrt: Any = key(optional=True)
    aoti: Any = key(optional=True)


@dataclass
class ReuseEntry:
    periods: dict[str, Any] = key()
    programs: list[ProgramEntry] = key()
    residual_bytes: int = key(check=lambda v: v >= 0, message="reuse.residual_bytes must be >= 0")


@dataclass
class StageEntry:
    """stages[i]: one plan stage's programs."""

    index: int = key()
    timesteps: Any = key(check=_span_ok, message=lambda span: "timesteps must be [high, low] integers with high >= low "
                                                             f">= 0, got {span!r}")
    plan: dict[str, Any] = key()
    files: dict[str, FileEntry] = key(message="files must be an object of artifacts")
    parameters: int = key()
    precision: Any = key(check=lambda v: v in PRECISIONS, message=f"precision must be one of {', '.join(PRECISIONS)}")
    inputs: list[Any] = key()
    outputs: list[Any] = key()
    passes: Any = key(optional=True)
    expert: str = key(optional=True, check=bool, message="expert must name the denoiser expert the stage runs")
    verify: Any = key(optional=True)
    audit: Any = key(optional=True)
    tensorrt: Any = key(optional=True)
    aoti: Any = key(optional=True)
    reuse: ReuseEntry = key(optional=True)

    @staticmethod
    def relations(stage: dict, at: str) -> None:
        if _io_names(stage["inputs"]) != INPUT_NAMES or _io_names(stage["outputs"])[:1] != OUTPUT_NAMES:
            fail(at, f"inputs must be {INPUT_NAMES} and the first output {OUTPUT_NAMES[0]}")
        if "reuse" in stage:
            _check_reuse(stage, at)


def _check_reuse(stage: dict, at: str) -> None:
    """Temporal reuse: the stage's program returns every reused block's residual after noise_pred;
    each further program takes the residuals of its `reused` blocks after the standard inputs."""
    reuse = stage["reuse"]
    periods = reuse["periods"]
    if not periods or not all(isinstance(k, int) and not isinstance(k, bool) and k > 1 for k in periods.values()):
        fail(at, "reuse.periods must map temporal block ids to integer periods > 1")
    residuals = [RESIDUAL_PREFIX + block for block in periods]
    if _io_names(stage["outputs"]) != OUTPUT_NAMES + residuals:
        fail(at, f"with reuse the outputs must be {OUTPUT_NAMES + residuals}")
    seen = []
    for number, program in enumerate(reuse["programs"]):
        where = f"{at}: reuse.programs[{number}]"
        reused = program["reused"]
        if not reused or not all(isinstance(b, str) and b in periods for b in reused) or reused in seen:
            fail(where, "reused must be a new, non-empty list of blocks in reuse.periods")
        seen.append(reused)
        if _io_names(program["inputs"]) != INPUT_NAMES + [RESIDUAL_PREFIX + b for b in reused]:
            fail(where, f"inputs must be {INPUT_NAMES} followed by the residuals of its reused blocks")
        computed = [RESIDUAL_PREFIX + b for b in periods if b not in reused]
        if _io_names(program["outputs"]) != OUTPUT_NAMES + computed:
            fail(where, f"outputs must be {OUTPUT_NAMES + computed}")
    try:
        needed = step_patterns(periods, MAX_REUSE_PROGRAMS)[1:]
    except ValueError:
        raise F3Error(f"{at}: reuse.periods need more than {MAX_REUSE_PROGRAMS} programs") from None
    if sorted(map(tuple, seen)) != sorted(needed):
        fail(at, f"reuse.programs must hold one program per pattern of reused blocks the periods "
                 f"produce ({len(needed)}), got {len(seen)}", FIX)


def _conditioning_ok(value: Any) -> bool:
    counts = [value.get(name, 0) for name in ("channels", "tokens", "width")] if isinstance(value, dict) else []
    first = value.get("first_frame", False) if isinstance(value, dict) else None
    if isinstance(value, dict) and value.get("family", "wan") not in ("wan", "hunyuanvideo15"):
        return False
    return bool(counts) and value.get("kind") == "image" and all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts) and isinstance(first, bool) \
        and (counts[0] >= 1) != first and (counts[1] == 0) == (counts[2] == 0)


def _decoder_ok(decoder: Any) -> bool:
    if isinstance(decoder, dict) and decoder.get("kind") == "video_vae":
        return isinstance(decoder.get("class"), str)
    return isinstance(decoder, dict) and decoder.get("kind") == "pixel_shuffle" and isinstance(decoder.get("factor"), int) \
        and not isinstance(decoder["factor"], bool) and decoder["factor"] >= 1


@dataclass(kw_only=True)
class ManifestHeader:
    """What every manifest starts with: the schema, the kind of build, the model it was made from."""

    schema: str = key(check=lambda v: v == SCHEMA, message=lambda v: f"schema is {v!r}, expected {SCHEMA!r}")
    kind: str = key(optional=True)
    model: dict[str, Any] = key(check=lambda v: isinstance(v.get("fingerprint"), str),
                                message="model.fingerprint must be a string")


@dataclass(kw_only=True)
class DiffusionManifest(ManifestHeader):
    """The build of a denoiser: one entry per plan stage."""

    plan: dict[str, Any] = key()
    shapes: dict[str, Any] = key()
    sample_layout: str = key()
    native_layout: str = key(optional=True, check=lambda v: v in ("B,C,F,H,W", "B,F,C,H,W"),
                             message='native_layout must be "B,C,F,H,W" or "B,F,C,H,W"')
    scheduler: dict[str, Any] = key(check=lambda v: "class" in v and "config" in v, message="scheduler needs class and config")
    text_encoder: dict[str, Any] = key()
    versions: dict[str, str] = key(message="versions must map package names to version strings")
    stages: list[StageEntry] = key(check=bool, message="stages must not be empty")
    seconds: Any = key(optional=True)
    targets: Any = key(optional=True)
    dynamic_batch: Any = key(optional=True)
    components: dict[str, ComponentEntry] = key(
        optional=True, message='components must be an object mapping names to {"path", "class", "sha256"}')
    decoder: Any = key(optional=True, check=_decoder_ok,
                       message='decoder must be {"kind": "video_vae", "class": NAME} or {"kind": "pixel_shuffle", "factor": K} with K >= 1')
    device: Any = key(optional=True)
    conditioning: Any = key(optional=True, check=_conditioning_ok,
                            message='conditioning must be {"kind": "image", "channels": C >= 1, "tokens": T, "width": W} '
                                    '(T and W both 0 or both positive), or with "first_frame": true and C = 0; '
                                    '"family", if given, "wan" or "hunyuanvideo15"')

    @staticmethod
    def relations(data: dict, where: str) -> None:
        previous_low = None
        for number, stage in enumerate(data["stages"]):
            high, low = stage["timesteps"]
            if previous_low is not None and high != previous_low - 1:
                problem = "leave a gap after" if high < previous_low - 1 else "overlap the previous stage, which ends at"
                fail(f"{where}: stages[{number}]", f"timesteps {stage['timesteps']} {problem} {previous_low}; "
                                                   f"stage timesteps must start at {previous_low - 1}")
            previous_low = low
        if previous_low != 0:
            fail(where, "the last stage must end at timestep 0")

    @staticmethod
    def files(data: dict) -> list[tuple[str, dict]]:
        """(what, entry) of every file and component the build records."""
        out = [(f"{_name(name)}", dict(entry, directory=True)) for name, entry in data.get("components", {}).items()]
        for stage in data["stages"]:
            for program in program_entries(stage):
                out += [(kind, entry) for kind, entry in program["files"].items()]
        return out


# kind -> its manifest schema (a subclass of ManifestHeader with a `files` method); the
# autoregressive one registers itself from `autoregressive.export`
MANIFESTS: dict[str, type] = {"diffusion": DiffusionManifest}


def register_manifest(kind: str, schema: type) -> None:
    MANIFESTS[kind] = schema


def manifest_kind(data: Any) -> str:
    """The kind a manifest document declares ("diffusion" when it declares none)."""
    if isinstance(data, dict) and data.get("schema") == OLD_AR_SCHEMA:
        return "autoregressive"
    kind = data.get("kind", "diffusion") if isinstance(data, dict) else "diffusion"
    return kind if isinstance(kind, str) else repr(kind)


def validate_manifest(data: Any, where: str = "manifest", kind: str | None = None) -> None:
    """Raise `F3Error` unless `data` is a well-formed f3compile.manifest/1 document (of `kind`, when given)."""
    found = manifest_kind(data)
    if kind is not None and found != kind:
        fail(where, f"is the manifest of an {_name(found)} build, not of an {kind} one")
    if found not in MANIFESTS:
        fail(where, f"kind {_name(found)} is unknown; f3compile builds {', '.join(MANIFESTS)}", FIX)
    if isinstance(data, dict) and data.get("schema") == OLD_AR_SCHEMA:
        data = dict(data, schema=SCHEMA, kind="autoregressive")
    validate(MANIFESTS[found], data, where, FIX)


def build_kind(directory: str | Path) -> str:
    """The kind of model a build directory holds, by its manifest ("diffusion" when it cannot tell:
    that loader then says what is wrong with the directory)."""
    import json

    try:
        data = json.loads((Path(directory) / "manifest.json").read_text())
    except (OSError, ValueError, RecursionError):
        return "diffusion"
    kind = manifest_kind(data)
    return kind if kind in MANIFESTS or kind == "autoregressive" else "diffusion"


def program_entries(stage: dict) -> list[dict]:
    """The stage's program entries: its own (computing every block) then its reuse programs."""
    return [stage] + list(stage.get("reuse", {}).get("programs", []))


def write_manifest(directory: Path, data: dict) -> None:
    validate_manifest(data, "manifest being written")
    write_json_atomic(directory / "manifest.json", data)


def load_manifest(directory: str | Path, check_hashes: bool = True, kind: str = "diffusion") -> dict:
    """Read and validate `directory/manifest.json` as the manifest of a `kind` build; with
    `check_hashes`, refuse changed or missing artifacts and components, before any work."""
    directory = Path(directory)
    path = directory / "manifest.json"
    if not path.is_file():
        raise F3Error(f"{directory} has no manifest.json; run `f3compile compile` or `f3compile export` first")
    data = read_json(path, FIX)
    validate_manifest(data, str(path), kind)
    if check_hashes:
        check_files(directory, MANIFESTS[kind].files(data))
    return data


def check_files(directory: Path, files: list[tuple[str, dict]]) -> None:
    """Each (what, {path, sha256[, directory]}) exists under `directory` and has its sha256."""
    checked = set()  # a file several entries share (a build's ONNX weights) is read once
    try:
        for what, entry in files:
            if (entry["path"], entry["sha256"], bool(entry.get("directory"))) in checked:
                continue
            checked.add((entry["path"], entry["sha256"], bool(entry.get("directory"))))
            target = directory / entry["path"]
            shown = _name(str(target)) + (f" ({what})" if entry.get("directory") else "")
            exists = target.is_dir() if entry.get("directory") else target.is_file()
            if not exists:
                raise F3Error(f"{shown} is missing; {FIX}")
            digest = directory_sha256(target) if entry.get("directory") else sha256_file(target)
            if digest != entry["sha256"]:
                raise F3Error(f"{_name(str(target))} does not match the sha256 in the manifest; {FIX}")
    except OSError as exc:  # e.g. a path too long for the file system
        raise F3Error(f"{_name(str(exc.filename))} cannot be read ({exc.strerror}); {FIX}") from None
