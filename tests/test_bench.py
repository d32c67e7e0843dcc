"""`bench` measures what it says: rows, ratios, files; not how fast this machine is."""

import json

import pytest

from f3compile.benchmark import bench, time_interleaved
from f3compile.planning import make_plan

from tests.helpers import assert_one_line_error, run


def test_time_interleaved_alternates_and_counts():
    calls = []
    times = time_interleaved(lambda: calls.append("d"), lambda: calls.append("p"), (), repeat=4, warmup=1)
    assert len(times["dense"]) == len(times["pruned"]) == 4
    assert calls[:2] == ["d", "p"] and calls[2:] == ["d", "p", "p", "d", "d", "p", "p", "d"]


def test_bench_rows_for_a_two_stage_block_plan(models, calibrations):
    plan = make_plan(calibrations["tiny-latte"][1], 1.0, "block", stages=2)
    rows = bench(models["tiny-latte"], plan, "torch", repeat=2)
    assert [r["stage"] for r in rows] == [0, 1, "loop"]
    for row in rows[:2]:
        assert row["pruned_params"] < row["dense_params"] and row["pruned_flops"] < row["dense_flops"]
        assert row["predicted_speedup"] == pytest.approx(row["dense_flops"] / row["pruned_flops"])
        assert row["efficiency"] == pytest.approx(row["speedup"] / row["predicted_speedup"])
        assert row["dense_ms"] > 0 and row["pruned_ms"] > 0 and row["repeat"] == 2
    loop = rows[-1]
    assert loop["steps"] == 6 and loop["dense_ms"] == pytest.approx(sum(r["dense_ms"] * r["steps"] for r in rows[:2]))


def test_bench_cli_json_plot_and_errors(capsys, calibrations, tmp_path):
    directory, _ = calibrations["tiny-latte"]
    code, out, err = run(capsys, "bench", "builtin:tiny-latte", "--calibration", directory, "--sweep", "0,1",
                         "--repeat", "1", "--json", tmp_path / "b.json", "--plot", tmp_path / "b.png")
    assert code == 0, err
    data = json.loads((tmp_path / "b.json").read_text())
    loops = [r for r in data["results"] if r["stage"] == "loop"]
    assert [r["ratio"] for r in loops] == [0.0, 1.0]
    assert loops[0]["predicted_speedup"] == pytest.approx(1.0) and loops[1]["predicted_speedup"] > 1.05
    assert {"backend", "stage", "dense_ms", "pruned_ms", "speedup", "predicted_speedup", "efficiency"} <= set(loops[1])
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"
    code, _, err = run(capsys, "bench", "builtin:tiny-latte", "--sweep", "0.5", "--repeat", "1")
    assert_one_line_error(code, err, "--sweep needs --calibration")
    code, _, err = run(capsys, "bench", "builtin:tiny-latte", "--repeat", "1")
    assert_one_line_error(code, err, "pass either --plan")
    code, _, err = run(capsys, "bench", "builtin:tiny-latte", "--width-scale", "0.5", "--sweep", "1", "--calibration", directory)
    assert_one_line_error(code, err, "--width-scale applies")
