"""The CLI end to end: outputs, exit statuses, one-line errors, no partial files."""

import json
import os
import subprocess
import sys

import pytest

from f3compile.cli import main
from tests.helpers import TINY, assert_one_line_error, run


@pytest.mark.parametrize("name", TINY)
def test_calibrate_plan_inspect_on_builtins(capsys, tmp_path, prompts_file, name):
    code, out, _ = run(capsys, "calibrate", f"builtin:{name}", "--prompts", prompts_file, "-o", tmp_path / "calib", "--steps", "4")
    assert code == 0 and "calibrated" in out
    assert {p.name for p in (tmp_path / "calib").iterdir()} == {"stats.safetensors", "calibration.json", "heatmaps"}
    for granularity in ("block", "attention", "head", "frame"):
        for stages in ("1", "2"):
            plan = tmp_path / f"{granularity}-{stages}.json"
            code, out, _ = run(capsys, "plan", tmp_path / "calib", "--ratio", "0.5", "--granularity", granularity,
                               "--stages", stages, "-o", plan)
            assert code == 0, out
            assert json.loads(plan.read_text())["granularity"] == granularity
    code, out, _ = run(capsys, "inspect", tmp_path / "head-2.json", "--model", f"builtin:{name}")
    assert code == 0 and "stage 1:" in out and "FLOP-predicted speedup" in out
    code, out, _ = run(capsys, "inspect", tmp_path / "block-1.json")
    assert code == 0 and "pass --model" in out


def test_saved_pipeline_directory_through_the_cli(capsys, tmp_path, prompts_file, models):
    models["tiny-animatediff"].pipeline.save_pretrained(tmp_path / "pipe")
    assert run(capsys, "calibrate", tmp_path / "pipe", "--prompts", prompts_file, "-o", tmp_path / "c", "--steps", "3")[0] == 0
    assert run(capsys, "plan", tmp_path / "c", "--ratio", "0.25", "--granularity", "attention", "-o", tmp_path / "p.json")[0] == 0
    code, out, _ = run(capsys, "inspect", tmp_path / "p.json", "--model", tmp_path / "pipe")
    assert code == 0 and "pruned (attention)" in out


@pytest.fixture(scope="module")
def unet3d_plan(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cli")
    prompts = directory / "p.txt"
    prompts.write_text("a red circle\n")
    assert main(["calibrate", "builtin:tiny-unet3d", "--prompts", str(prompts), "-o", str(directory / "calib"),
                 "--steps", "3", "--no-heatmaps"]) == 0
    assert main(["plan", str(directory / "calib"), "--ratio", "0.5", "-o", str(directory / "plan.json")]) == 0
    return directory


def test_bad_inputs_give_one_line_errors_and_no_files(capsys, tmp_path, unet3d_plan, prompts_file):
    out_dir = tmp_path / "out"
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    plan = json.loads((unet3d_plan / "plan.json").read_text())
    unknown_id = json.loads(json.dumps(plan))
    unknown_id["stages"][0]["drop_attention"] = ["down_blocks.9.nothing"]
    (tmp_path / "unknown_id.json").write_text(json.dumps(unknown_id))
    unknown_key = dict(plan, surprise=True)
    (tmp_path / "unknown_key.json").write_text(json.dumps(unknown_key))
    heads = json.loads(json.dumps(plan))
    heads["stages"][0]["prune_heads"] = {"transformer_in.transformer_blocks.0.attn1": [99]}
    (tmp_path / "heads.json").write_text(json.dumps(heads))
    frames = json.loads(json.dumps(plan))
    frames["stages"][0]["keep_frames"] = {"transformer_in.transformer_blocks.0.attn1": [42]}
    (tmp_path / "frames.json").write_text(json.dumps(frames))
    (tmp_path / "broken.json").write_text('{"schema": ')
    cases = [
        (["calibrate", "builtin:tiny-latte", "--prompts", tmp_path / "missing.txt", "-o", out_dir], "does not exist"),
        (["calibrate", "builtin:tiny-latte", "--prompts", empty, "-o", out_dir], "has no prompts"),
        (["calibrate", "builtin:no-such-model", "--prompts", prompts_file, "-o", out_dir], "unknown builtin model"),
        (["calibrate", tmp_path / "nowhere", "--prompts", prompts_file, "-o", out_dir], "does not exist"),
        (["plan", unet3d_plan / "calib", "--ratio", "1.2", "-o", out_dir / "p.json"], "--ratio must be in [0, 1]"),
        (["plan", unet3d_plan / "calib", "--ratio", "0.5", "--granularity", "layer", "-o", out_dir / "p.json"], "invalid choice"),
        (["plan", unet3d_plan / "calib", "--ratio", "0.5", "--criterion", "vibes", "-o", out_dir / "p.json"], "invalid choice"),
        (["plan", tmp_path, "--ratio", "0.5", "-o", out_dir / "p.json"], "is not a calibration directory"),
        (["plan", unet3d_plan / "calib", "--ratio", "0,x", "-o", out_dir / "p.json"], "comma-separated numbers"),
        (["plan", unet3d_plan / "calib", "--ratio", "0,0.5", "-o", out_dir / "p.json"], "gives 2 values for --stages 1"),
        (["plan", unet3d_plan / "calib", "-o", out_dir / "p.json"], "exactly one of --ratio"),
        (["plan", unet3d_plan / "calib", "--ratio", "0.5", "--target-speedup", "1.2", "-o", out_dir / "p.json"],
         "exactly one of --ratio"),
        (["plan", unet3d_plan / "calib", "--target-speedup", "9", "--granularity", "block", "-o", out_dir / "p.json"],
         "out of reach"),
        (["plan", unet3d_plan / "calib", "--target-speedup", "1.1", "--granularity", "frame", "-o", out_dir / "p.json"],
         "not frame"),
        (["plan", unet3d_plan / "calib", "--target-speedup", "1.1", "--model", "builtin:tiny-latte", "-o",
          out_dir / "p.json"], "recorded on another model"),
        (["inspect", unet3d_plan / "plan.json", "--model", "builtin:tiny-latte"], "was made for model builtin:tiny-unet3d"),
        (["inspect", tmp_path / "unknown_id.json"], "not a temporal attention"),
        (["inspect", tmp_path / "unknown_key.json"], "unknown key(s) surprise"),
        (["inspect", tmp_path / "heads.json"], "out of range"),
        (["inspect", tmp_path / "frames.json"], "out of range"),
        (["inspect", tmp_path / "broken.json"], "not valid JSON"),
    ]
    for argv, message in cases:
        code, _, err = run(capsys, *argv)
        assert_one_line_error(code, err, message)
        assert not out_dir.exists(), argv
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert not leftovers


def test_plan_records_model_and_calibration_fingerprints(capsys, tmp_path, unet3d_plan):
    """A plan carries the fingerprints that `inspect --model` and `compile` check against."""
    calib = json.loads((unet3d_plan / "calib" / "calibration.json").read_text())
    assert json.loads((unet3d_plan / "plan.json").read_text())["model"]["fingerprint"] == calib["model"]["fingerprint"]
    assert json.loads((unet3d_plan / "plan.json").read_text())["calibration"]["fingerprint"] == calib["stats_sha256"]


def test_console_script_help_and_error_exit_status(tmp_path):
    env = dict(os.environ)
    exe = [sys.executable, "-m", "f3compile.cli"]
    done = subprocess.run(exe + ["--help"], capture_output=True, text=True, env=env)
    assert done.returncode == 0
    for verb in ("calibrate", "plan", "inspect"):
        assert verb in done.stdout
    done = subprocess.run(exe + ["plan", str(tmp_path), "--ratio", "0.5", "-o", str(tmp_path / "p.json")],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "Traceback" not in done.stderr
    help_plan = subprocess.run(exe + ["plan", "--help"], capture_output=True, text=True, env=env).stdout
    assert "example: f3compile plan" in help_plan


def test_scheduled_and_budget_plans_from_the_cli(capsys, tmp_path, unet3d_plan):
    code, out, err = run(capsys, "plan", unet3d_plan / "calib", "--ratio", "0,0.5,1", "--stages", "3",
                         "--granularity", "block", "-o", tmp_path / "schedule.json")
    assert code == 0 and "ratio 0,0.5,1, 3 stage(s)" in out, err
    code, out, _ = run(capsys, "inspect", tmp_path / "schedule.json")
    assert code == 0 and "ratio 0.5" in out and "ratio 1\n" in out
    code, out, err = run(capsys, "plan", unet3d_plan / "calib", "--target-speedup", "1.1", "--stages", "3",
                         "--granularity", "block", "-o", tmp_path / "budget.json")
    assert code == 0 and "FLOP-predicted" in out, err
    plan = json.loads((tmp_path / "budget.json").read_text())
    assert plan["budget"]["target_speedup"] == 1.1 and plan["budget"]["predicted_speedup"] >= 1.1
    code, out, _ = run(capsys, "inspect", tmp_path / "budget.json", "--model", "builtin:tiny-unet3d")
    assert code == 0 and "budget: target speedup 1.1x" in out
    predicted = float(out.rsplit("FLOP-predicted speedup ", 1)[1].split("x")[0])
    assert predicted == pytest.approx(plan["budget"]["predicted_speedup"], abs=1e-3)
