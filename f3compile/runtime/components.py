"""Pipeline components shipped with the artifacts (`build/pipeline/`): tokenizer, text encoder,
VAE and scheduler (a second tokenizer and text encoder where the pipeline has them, and an
image-to-video model's image encoder and image processor), saved with
`save_pretrained` and hashed, so a runtime needs no model source."""

from __future__ import annotations

from pathlib import Path

from .._io import directory_sha256
from ..errors import F3Error

# the second tokenizer and text encoder: HunyuanVideo 1.5's ByT5 for quoted glyph text
COMPONENTS = ("tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2", "vae", "scheduler", "image_encoder",
              "image_processor", "feature_extractor")  # HunyuanVideo 1.5 calls its image processor feature_extractor
TOKENIZERS = ("tokenizer", "tokenizer_2")
TRANSFORMERS = (*TOKENIZERS, "text_encoder", "text_encoder_2", "image_encoder", "image_processor",
                "feature_extractor")  # transformers' classes


def save_components(model, directory: Path) -> dict:
    """Save the model's tokenizer, text encoder, VAE and scheduler (image encoder and processor of an
    image-to-video model) under `directory/`."""
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
    """Load one saved component by its recorded class (transformers or diffusers); its sha256 was
    checked when the manifest was loaded (`manifest.load_manifest`)."""
    _quiet()
    path = build / entry["path"]
    cls_name = entry["class"]
    if name in TOKENIZERS:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path))
    if name in TRANSFORMERS:
        import transformers

        cls = getattr(transformers, cls_name, None)
        if cls is None:
            raise F3Error(f"the manifest names {name} class {cls_name}, which this transformers does not have")
        loaded = cls.from_pretrained(str(path))
        return loaded.eval() if hasattr(loaded, "eval") else loaded
    import diffusers

    cls = getattr(diffusers, cls_name, None)
    if cls is None:
        raise F3Error(f"the manifest names {name} class {cls_name}, which this diffusers does not have")
    if name == "scheduler":
        return cls.from_pretrained(str(path))
    return cls.from_pretrained(str(path)).eval()
