"""Pipeline components shipped with the artifacts (`build/pipeline/`): tokenizer, text encoder,
VAE and scheduler, saved with `save_pretrained` and hashed, so a runtime needs no model source."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import F3Error

COMPONENTS = ("tokenizer", "text_encoder", "vae", "scheduler")


def directory_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        name, content = str(file.relative_to(path)).encode(), file.read_bytes()
        # length-prefixed: moving bytes between a name and the previous file's content changes the hash
        for part in (name, content):
            digest.update(len(part).to_bytes(8, "little"))
            digest.update(part)
    return "sha256:" + digest.hexdigest()


def save_components(model, directory: Path) -> dict:
    """Save the model's tokenizer, text encoder, VAE and scheduler under `directory/`."""
    _quiet()
    pipe = model.pipeline
    entries = {}
    for name in COMPONENTS:
        component = getattr(pipe, name, None) if pipe is not None else (model.scheduler if name == "scheduler" else None)
        if component is None:
            continue
        target = directory / name
        component.save_pretrained(str(target))
        entries[name] = {"path": f"{directory.name}/{name}", "class": type(component).__name__,
                         "sha256": directory_sha256(target)}
    return entries


def _quiet() -> None:
    # loading chatter (weights progress bars, optional accelerators) would drown the tool's output
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        import diffusers
        import transformers

        diffusers.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # pragma: no cover - cosmetic
        pass


def load_component(build: Path, entry: dict, name: str):
    """Load one saved component by its recorded class (transformers or diffusers)."""
    _quiet()
    path = build / entry["path"]
    if directory_sha256(path) != entry["sha256"]:
        raise F3Error(f"{path} does not match the sha256 in the manifest; rebuild the artifacts")
    cls_name = entry["class"]
    if name == "tokenizer":
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path))
    if name == "text_encoder":
        import transformers

        return getattr(transformers, cls_name).from_pretrained(str(path)).eval()
    import diffusers

    cls = getattr(diffusers, cls_name, None)
    if cls is None:
        raise F3Error(f"the manifest names {name} class {cls_name}, which this diffusers does not have")
    if name == "scheduler":
        return cls.from_pretrained(str(path))
    return cls.from_pretrained(str(path)).eval()
