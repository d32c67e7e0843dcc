"""Fuzz CogVideo's two JSON loaders like the others (`tests/test_fuzz_loaders.py`): a converted
model directory's cogvideo.json (`load_cogvideo`) and an autoregressive build's manifest.json
(`load_ar_manifest`). Malformed input is a one-line `F3Error`; what loads is usable next (a model
runs a forward; a manifest gives the runtime its cache slots)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from f3compile.errors import F3Error
from tests.helpers import assert_one_line
from tests.test_fuzz_loaders import SETTINGS, _pool, encode, mutate

EXAMPLES = 300  # per loader


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    from f3compile.autoregressive.export import build
    from f3compile.models.cogvideo import CONFIG_FILE, convert, load_cogvideo

    root = tmp_path_factory.mktemp("fuzz-cogvideo")
    model = load_cogvideo("builtin:tiny-cogvideo")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.module.state_dict().items()}, str(root / "weights.safetensors"))
    c = model.config
    convert(root / "weights.safetensors", root / "model", **{k: v for k, v in c.to_dict().items()
                                                                if k not in ("num_layers", "hidden_size", "vocab_size",
                                                                             "max_position", "extra_positions")})
    build(model, None, root / "build", target="pt2", verify=False)
    return {"root": root, "config": json.loads((root / "model" / CONFIG_FILE).read_text()),
            "manifest": json.loads((root / "build" / "manifest.json").read_text())}


def _load_model(directory):
    from f3compile.autoregressive.program import reference_logits
    from f3compile.models.cogvideo import load_cogvideo

    model = load_cogvideo(str(directory))
    logits = reference_logits(model.module, torch.zeros((1, model.config.text_length + 2), dtype=torch.int64))
    assert torch.isfinite(logits).all()


def _load_manifest(directory):
    from f3compile.autoregressive.export import load_ar_manifest
    from f3compile.autoregressive.program import slot_tables
    from f3compile.models.cogvideo import CogVideoConfig

    data = load_ar_manifest(directory)
    config = CogVideoConfig.from_dict(data["config"], "manifest")
    tables = slot_tables(config, data["cache"]["tensors"])
    assert len(tables) == len(data["cache"]["tensors"])
    assert all(int(t.max()) < spec["shape"][3] for t, spec in zip(tables, data["cache"]["tensors"]))


@pytest.mark.parametrize("which", ["config", "manifest"])
def test_fuzz_cogvideo_loader(seeds, which):
    root = seeds["root"]
    seed = seeds[which]
    pool = (set(), set())
    _pool(seed, *pool)
    source = root / ("model" if which == "config" else "build")
    name = "cogvideo.json" if which == "config" else "manifest.json"
    work = root / f"work-{which}"
    shutil.copytree(source, work, dirs_exist_ok=True)
    load = _load_model if which == "config" else _load_manifest

    @settings(**{**SETTINGS, "max_examples": EXAMPLES})
    @given(st.data())
    def run(data):
        doc = mutate(data, seed, pool)
        raw, _ = encode(data, doc)
        (work / name).write_bytes(raw)
        try:
            load(work)
        except F3Error as exc:
            assert_one_line(exc)

    run()
