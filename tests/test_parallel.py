"""Calibration and search split by prompt: torchrun ranks (gloo, real processes), compensated sums,
and faults (a killed rank, ranks given different inputs).

Shards and `merge` are tested in tests/calibration/test_parts.py.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from f3compile.errors import F3Error
from f3compile.parallel import Part, Sums
from tests.ranks import MODELS

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                           "MASTER_PORT", "PYTEST_XDIST_WORKER")}
    return env | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)} | {k: str(v) for k, v in extra.items()}


def _torchrun(*argv, processes: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
            "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), *map(str, argv)]


def _without_seconds(path: Path) -> dict:
    data = json.loads(path.read_text())
    data.pop("seconds", None)
    if isinstance(data.get("search"), dict):
        data["search"].pop("seconds")
    return data


# -- compensated sums ----------------------------------------------------------------------------
def test_sums_are_the_exact_sum_in_any_order_and_grouping():
    """Terms over 60 binary orders of magnitude: every order and grouping gives the exactly rounded
    sum (math.fsum is the independent reference), where plain fp64 addition does not."""
    rng = random.Random(0)
    terms = [torch.tensor([rng.uniform(0.5, 1.0) * 2.0 ** rng.randint(-40, 20) for _ in range(6)],
                          dtype=torch.float32) for _ in range(200)]
    exact = [math.fsum(float(t[i]) for t in terms) for i in range(6)]
    results, naive = [], []
    for trial in range(4):
        order = terms[:]
        rng.shuffle(order)
        cut = rng.randint(1, len(order) - 1)  # two ranks' shares, merged
        first, second = Sums(), Sums()
        for term in order[:cut]:
            first.add({"x": term})
        for term in order[cut:]:
            second.add({"x": term})
        first.merge(second)
        results.append(first.value("x", torch.float64))
        naive.append(sum(t.double() for t in order))
    for result in results:
        assert result.tolist() == exact
    assert any(not torch.equal(naive[0], other) for other in naive[1:])  # what compensation is for


def test_sums_round_trip_through_a_vector_and_shard_tensors():
    sums = Sums()
    sums.add({"a": torch.ones(2, 3), "b": torch.tensor([0.1])})
    sums.add({"a": torch.full((2, 3), 1e-9), "b": torch.tensor([1e8])})
    back = sums.unflat(sums.flat())
    again = Sums.from_tensors(sums.tensors(), "x")
    for other in (back, again):
        assert other.names() == ["a", "b"]
        for name in ("a", "b"):
            assert torch.equal(other.hi[name], sums.hi[name]) and torch.equal(other.lo[name], sums.lo[name])
    with pytest.raises(ValueError):
        sums.add({"a": torch.ones(2, 3)})


# -- who runs what ---------------------------------------------------------------------------------
@pytest.mark.parametrize("items,parts", [(3, 2), (7, 3), (5, 5), (100, 8)])
def test_parts_cover_every_item_once_in_order(items, parts):
    spans = [Part(k, parts).span(items) for k in range(parts)]
    assert [i for span in spans for i in span] == list(range(items))
    assert all(len(span) >= 1 for span in spans)
    assert max(map(len, spans)) - min(map(len, spans)) <= 1


@pytest.mark.parametrize("text", ["2/2", "-1/2", "1", "a/b", "1/0", "0/2/3"])
def test_bad_shard_is_refused(text):
    with pytest.raises(F3Error, match="must be K/N"):
        Part.parse(text)


def test_more_parts_than_batches_is_refused():
    with pytest.raises(F3Error, match="3 prompt batches cannot be split into 4 parts"):
        Part(0, 4).span(3)


# -- torchrun: the one-process result -----------------------------------------------------------
@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory):
    """tests/ranks.py run as one process and as two torchrun ranks (gloo)."""
    root = tmp_path_factory.mktemp("ranks")
    script = ROOT / "tests" / "ranks.py"
    for name, command in (("one", [sys.executable, script, root / "one"]),
                          ("two", _torchrun(script, root / "two"))):
        result = subprocess.run([str(c) for c in command], env=_env(), capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    return root / "one", root / "two"


@pytest.mark.parametrize("name", [name for name, _ in MODELS])
def test_two_ranks_write_the_one_process_calibration(one_and_two, name):
    one, two = (directory / name for directory in one_and_two)
    assert (two / "stats.safetensors").read_bytes() == (one / "stats.safetensors").read_bytes()
    assert _without_seconds(two / "calibration.json") == _without_seconds(one / "calibration.json")
    assert not [p.name for p in two.parent.iterdir() if p.name.startswith(".")]  # nothing hidden left behind


def test_two_ranks_search_the_one_process_plan(one_and_two):
    one, two = (directory / "search.json" for directory in one_and_two)
    plan = _without_seconds(one)
    assert plan["search"]["accepted"]  # the search chose something: its path is compared, not an empty plan
    assert _without_seconds(two) == plan


# -- faults --------------------------------------------------------------------------------------
def _ranks(argv, size: int = 2):
    """`python -m f3compile ARGV` as ranks 0..size-1 of one group, without torchrun (so that a test
    can kill one); `argv` is a list, or a function of the rank giving one."""
    port = _free_port()
    return [subprocess.Popen([sys.executable, "-m", "f3compile", *map(str, argv(rank) if callable(argv) else argv)],
                             cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=_env(RANK=rank, LOCAL_RANK=rank, WORLD_SIZE=size, MASTER_ADDR="127.0.0.1",
                                      MASTER_PORT=port)) for rank in range(size)]


def _lines(err: str) -> list[str]:
    """stderr without the progress bar's carriage-return updates."""
    return [line.split("\r")[-1] for line in err.strip().splitlines() if line.split("\r")[-1].strip()]


def test_a_killed_rank_stops_the_others_with_one_line_and_nothing_written(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"a red circle moving left, take {i}" for i in range(6)) + "\n")
    output = tmp_path / "calib"
    first, second = _ranks(["calibrate", "builtin:tiny-unet3d", "--prompts", prompts, "--steps", 15,
                            "--no-heatmaps", "-o", output])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until both sample (rank 0 draws its progress bar)
        time.sleep(0.5)
        assert first.poll() is None and second.poll() is None, "a rank ended before it was killed"
        if _progress_started(first):
            break
    time.sleep(1.0)
    second.send_signal(signal.SIGKILL)
    _, err = first.communicate(timeout=180)
    err = getattr(first, "_early", "") + err
    second.wait(timeout=30)
    assert first.returncode == 2, err[-2000:]
    lines = _lines(err)
    assert lines[-1].startswith("error: rank 0 of 2: another rank stopped") and "nothing was written" in lines[-1]
    assert [line for line in lines if not line.startswith("calibrate:")] == [lines[-1]], err[-2000:]
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.txt"]  # no output, no hidden temporary


def _progress_started(process) -> bool:
    """True once rank 0 has written to stderr (its progress bar), read without blocking."""
    import select

    readable, _, _ = select.select([process.stderr], [], [], 0)
    if not readable:
        return False
    process._early = getattr(process, "_early", "") + os.read(process.stderr.fileno(), 4096).decode(errors="replace")
    return "calibrate:" in process._early


def test_ranks_given_different_prompts_refuse_with_one_line(tmp_path):
    for rank in (0, 1):
        (tmp_path / f"p{rank}.txt").write_text(f"a red circle moving left\nprompt of rank {rank}\n")
    processes = _ranks(lambda rank: ["calibrate", "builtin:tiny-unet3d", "--prompts", tmp_path / f"p{rank}.txt",
                                      "--steps", 1, "-o", tmp_path / "calib"])
    for process in processes:
        _, err = process.communicate(timeout=180)
        assert process.returncode == 2
        assert _lines(err) == ["error: the 2 processes were given different models, prompts or settings; start "
                               "every rank with the same command"], err[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p0.txt", "p1.txt"]


def test_a_rank_refused_before_sampling_stops_the_other_at_once(tmp_path):
    """Rank 1's prompts file is missing: it refuses in one line, and rank 0 (which joined the group
    before reading its inputs) stops at the first exchange instead of waiting for it."""
    (tmp_path / "p0.txt").write_text("a red circle moving left\na blue square moving right\n")
    processes = _ranks(lambda rank: ["calibrate", "builtin:tiny-unet3d", "--prompts", tmp_path / f"p{rank}.txt",
                                     "--steps", 1, "-o", tmp_path / "calib"])
    errors = [process.communicate(timeout=180)[1] for process in processes]
    assert [process.returncode for process in processes] == [2, 2]
    assert _lines(errors[1]) == [f"error: prompts file {tmp_path / 'p1.txt'} does not exist; pass a text file with one "
                                 "prompt per line"]
    lines = _lines(errors[0])
    assert len(lines) == 1 and lines[0].startswith("error: rank 0 of 2: another rank stopped while comparing"), errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p0.txt"]


def test_an_unknown_device_under_torchrun_is_refused_in_one_line(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a\nb\n")
    for process in _ranks(["calibrate", "builtin:tiny-unet3d", "--prompts", prompts, "--device", "gpu",
                           "-o", tmp_path / "calib"]):
        _, err = process.communicate(timeout=180)
        assert process.returncode == 2
        assert _lines(err) == ["error: --device 'gpu' is not a device torch knows; use cpu or cuda"]


def test_shard_under_torchrun_is_refused(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a\nb\n")
    processes = _ranks(["calibrate", "builtin:tiny-unet3d", "--prompts", prompts, "--shard", "0/2",
                        "-o", tmp_path / "calib"])
    for process in processes:
        _, err = process.communicate(timeout=180)
        assert process.returncode == 2
        assert _lines(err) == ["error: --shard is for separate processes (array jobs); under torchrun the ranks "
                               "split the prompts: drop --shard"]


# -- on a GPU ----------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_calibration_and_search_on_cuda_match_the_cpu(tmp_path):
    """`--device cuda` samples on the GPU: statistics within REL_CUDA of the CPU's (TF32 off), the
    same searched steps, and the model back on the CPU afterwards. (NCCL needs a GPU per rank: one
    GPU cannot hold two ranks, so the two-rank run is the gloo test above.)"""
    import f3compile as f3
    from tests.ranks import PROMPTS

    REL_CUDA = 1e-4
    matmul, conv = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        model = f3.load("builtin:tiny-unet3d")
        results, plans = {}, {}
        for device in ("cpu", "cuda"):
            config = f3.CalibrationConfig(steps=3, heatmaps=False, device=device)
            results[device] = f3.calibrate(model, PROMPTS, config, output_dir=tmp_path / device)
            assert next(model.denoiser.parameters()).device.type == "cpu"
            assert model.cache_key is not None  # moved and back: the same weights, the compile cache still valid
            options = f3.PlanOptions(search=True, max_error=0.05, actions=("drop", "reuse"), stages=1, device=device)
            plans[device] = f3.plan(tmp_path / device, options, model=model, prompts=PROMPTS)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, conv
    for name, cpu in results["cpu"].tensors.items():
        cuda = results["cuda"].tensors[name]
        assert float((cuda - cpu).norm()) <= REL_CUDA * max(float(cpu.norm()), 1e-12), name
    steps = [[(s["stage"], s["block"], s["action"]) for s in plans[d].search["accepted"]] for d in ("cpu", "cuda")]
    assert steps[0] == steps[1]
    for ours, theirs in zip(plans["cuda"].search["accepted"], plans["cpu"].search["accepted"]):
        assert abs(ours["error"] - theirs["error"]) <= 1e-4
