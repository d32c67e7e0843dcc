"""Run one fixed set of CLI commands with two checkouts of f3compile and compare what they wrote.

    python tools/compare_checkouts.py OLD_CHECKOUT NEW_CHECKOUT --work /tmp/compare

Each checkout runs as `python -m f3compile.cli` with `PYTHONPATH=CHECKOUT` (the same interpreter
and libraries for both), in its own directory under --work. The commands cover calibrate, plan,
inspect, compile, export and bench on builtin:tiny-unet3d, builtin:tiny-latte and
builtin:tiny-cogvideo, a temporal-reuse plan and a searched plan. Then, per output:

  calibration   stats.safetensors byte for byte; calibration.json equal but for `seconds`, `versions`
  plan          plan.json byte for byte (a searched plan: equal but for `search.seconds`)
  inspect       the printed text equal
  program       every .pt2 and .onnx at the same relative path, run on the same random inputs:
                outputs equal within 1e-6 relative L2 (`torch.export` programs load with
                `torch.export.load`, ONNX files run with onnxruntime)
  components    every other file of a build (pipeline components, ...) byte for byte, except
                manifest.json and verify.json, which are compared but reported only (their
                format may change; their numbers are timings and hashes)
  bench         every field of the JSON but the timings (FLOPs, parameters, steps, shapes)

Exit status 0 when every compared output is equal, 1 otherwise. Nothing here imports either
checkout: the programs are loaded with torch and onnxruntime alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

PROMPTS = "a red circle moving left\na blue square moving up\n"
RELATIVE_TOLERANCE = 1e-6

# (name, argv): run in this order in each checkout's work directory; paths are relative to it
COMMANDS: list[tuple[str, list[str]]] = []
for _model, _short in (("tiny-unet3d", "unet3d"), ("tiny-latte", "latte")):
    COMMANDS += [
        (f"calibrate-{_short}", ["calibrate", f"builtin:{_model}", "--prompts", "prompts.txt", "--steps", "4",
                                 "--guidance-scale", "5", "--no-heatmaps", "-o", f"calib-{_short}"]),
        (f"plan-{_short}", ["plan", f"calib-{_short}", "--ratio", "0.5", "--granularity", "head", "--stages", "2",
                            "-o", f"plan-{_short}.json"]),
        (f"inspect-{_short}", ["inspect", f"plan-{_short}.json", "--model", f"builtin:{_model}"]),
        (f"compile-{_short}", ["compile", f"builtin:{_model}", "--plan", f"plan-{_short}.json", "-o", f"build-{_short}"]),
        (f"export-{_short}", ["export", f"builtin:{_model}", "--plan", f"plan-{_short}.json", "--target", "onnx",
                              "-o", f"export-{_short}"]),
        (f"bench-{_short}", ["bench", f"builtin:{_model}", "--plan", f"plan-{_short}.json", "--backend", "torch",
                             "onnxruntime", "--repeat", "1", "--json", f"bench-{_short}.json"]),
    ]
COMMANDS += [
    ("plan-reuse", ["plan", "calib-unet3d", "--ratio", "0.5", "--granularity", "block", "--reuse", "2", "--stages", "2",
                    "-o", "plan-reuse.json"]),
    ("inspect-reuse", ["inspect", "plan-reuse.json", "--model", "builtin:tiny-unet3d"]),
    ("compile-reuse", ["compile", "builtin:tiny-unet3d", "--plan", "plan-reuse.json", "-o", "build-reuse"]),
    ("export-reuse", ["export", "builtin:tiny-unet3d", "--plan", "plan-reuse.json", "-o", "export-reuse"]),
    ("bench-reuse", ["bench", "builtin:tiny-unet3d", "--plan", "plan-reuse.json", "--repeat", "1",
                     "--json", "bench-reuse.json"]),
    ("plan-search", ["plan", "calib-unet3d", "--search", "--prompts", "prompts.txt", "--max-error", "0.05",
                     "--stages", "2", "-o", "plan-search.json"]),
    ("compile-search", ["compile", "builtin:tiny-unet3d", "--plan", "plan-search.json", "-o", "build-search"]),
    ("calibrate-cogvideo", ["calibrate", "builtin:tiny-cogvideo", "--prompts", "prompts.txt", "-o", "calib-cogvideo"]),
    ("plan-cogvideo", ["plan", "calib-cogvideo", "--ratio", "0.5", "--granularity", "head", "-o", "plan-cogvideo.json"]),
    ("inspect-cogvideo", ["inspect", "plan-cogvideo.json", "--model", "builtin:tiny-cogvideo"]),
    ("compile-cogvideo", ["compile", "builtin:tiny-cogvideo", "--plan", "plan-cogvideo.json", "-o", "build-cogvideo"]),
    ("export-cogvideo", ["export", "builtin:tiny-cogvideo", "--plan", "plan-cogvideo.json", "-o", "export-cogvideo"]),
    ("bench-cogvideo", ["bench", "builtin:tiny-cogvideo", "--plan", "plan-cogvideo.json", "--repeat", "1",
                        "--videos", "0", "--json", "bench-cogvideo.json"]),
]
REPORTED_ONLY = {"manifest.json", "verify.json"}
TIMING_KEYS = ("_ms", "_s", "speedup", "efficiency", "peak_rss_mb", "seconds")


def run_all(checkout: Path, work: Path, python: str) -> dict[str, dict]:
    """Run COMMANDS with `checkout` on the path; returns name -> {code, seconds, stdout}."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "prompts.txt").write_text(PROMPTS)
    env = dict(os.environ, PYTHONPATH=str(checkout.resolve()), PYTHONHASHSEED="0")
    results = {}
    for name, argv in COMMANDS:
        started = time.perf_counter()
        done = subprocess.run([python, "-m", "f3compile.cli", *argv], cwd=work, env=env, capture_output=True, text=True)
        results[name] = {"code": done.returncode, "seconds": time.perf_counter() - started, "stdout": done.stdout}
        print(f"  {checkout.name:>12} {name:<20} exit {done.returncode} ({results[name]['seconds']:.1f}s)", flush=True)
        if done.returncode != 0:
            print(done.stderr[-2000:], file=sys.stderr)
    return results


def _without(data, drop: set[str]):
    if isinstance(data, dict):
        return {k: _without(v, drop) for k, v in data.items() if k not in drop}
    if isinstance(data, list):
        return [_without(v, drop) for v in data]
    return data


def _timeless(data):
    if isinstance(data, dict):
        return {k: _timeless(v) for k, v in data.items() if not any(k.endswith(t) for t in TIMING_KEYS)}
    if isinstance(data, list):
        return [_timeless(v) for v in data]
    return data


def _random_inputs(specs, seed: int):
    import torch

    generator = torch.Generator().manual_seed(seed)
    inputs = []
    for shape, dtype in specs:
        if dtype.is_floating_point:
            inputs.append(torch.randn(shape, generator=generator).to(dtype))
        else:  # token ids and positions: small valid values
            inputs.append(torch.randint(0, 2, shape, generator=generator).to(dtype))
    return inputs


def _relative(a, b) -> float:
    import torch

    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    if a.shape != b.shape:
        return float("inf")
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def compare_pt2(old: Path, new: Path) -> float:
    import torch

    programs = [torch.export.load(str(path)) for path in (old, new)]
    placeholders = [n for n in programs[0].graph.nodes if n.op == "placeholder"]
    user = set(programs[0].graph_signature.user_inputs)
    specs = [(tuple(n.meta["val"].shape), n.meta["val"].dtype) for n in placeholders if n.name in user]
    inputs = _random_inputs(specs, seed=7)
    with torch.no_grad():
        outputs = [program.module()(*[t.clone() for t in inputs]) for program in programs]
    pairs = [(o, n) for o, n in zip(*(out if isinstance(out, (tuple, list)) else [out] for out in outputs))]
    if len(pairs) != len(outputs[1] if isinstance(outputs[1], (tuple, list)) else [outputs[1]]):
        return float("inf")
    return max(_relative(n, o) for o, n in pairs)


def compare_onnx(old: Path, new: Path) -> float:
    import numpy as np
    import onnxruntime as ort
    import torch

    sessions = [ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]) for path in (old, new)]
    types = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(int64)": torch.int64,
             "tensor(int32)": torch.int32}
    specs = [(tuple(i.shape), types[i.type]) for i in sessions[0].get_inputs()]
    if [i.name for i in sessions[0].get_inputs()] != [i.name for i in sessions[1].get_inputs()]:
        return float("inf")
    feed = {i.name: np.ascontiguousarray(t.numpy()) for i, t in zip(sessions[0].get_inputs(), _random_inputs(specs, 7))}
    outputs = [session.run(None, feed) for session in sessions]
    if len(outputs[0]) != len(outputs[1]):
        return float("inf")
    return max(_relative(n, o) for o, n in zip(*outputs))


def compare(old: Path, new: Path, old_runs: dict, new_runs: dict) -> list[tuple[str, str, bool, str]]:
    """Rows (output, check, equal, detail)."""
    rows = []
    for name, _ in COMMANDS:
        ok = old_runs[name]["code"] == new_runs[name]["code"] == 0
        rows.append((name, "exit status", ok, f"{old_runs[name]['code']} / {new_runs[name]['code']}"))
        if name.startswith("inspect-"):
            rows.append((name, "printed text", old_runs[name]["stdout"] == new_runs[name]["stdout"], ""))
    for calib in sorted(p.name for p in old.glob("calib-*")):
        a, b = old / calib, new / calib
        same = (b / "stats.safetensors").is_file() and (a / "stats.safetensors").read_bytes() == (b / "stats.safetensors").read_bytes()
        rows.append((calib, "stats.safetensors bytes", same, ""))
        meta = [_without(json.loads((d / "calibration.json").read_text()), {"seconds", "versions"}) for d in (a, b)
                if (d / "calibration.json").is_file()]
        rows.append((calib, "calibration.json", len(meta) == 2 and meta[0] == meta[1], ""))
    for plan in sorted(p.name for p in old.glob("plan-*.json")):
        a, b = old / plan, new / plan
        if not b.is_file():
            rows.append((plan, "plan", False, "missing"))
            continue
        if "search" in json.loads(a.read_text()):
            docs = [json.loads(p.read_text()) for p in (a, b)]
            for doc in docs:
                doc["search"].pop("seconds", None)
            rows.append((plan, "plan but search.seconds", docs[0] == docs[1], ""))
        else:
            rows.append((plan, "plan bytes", a.read_bytes() == b.read_bytes(), ""))
    for build in sorted(p.name for p in old.iterdir() if p.is_dir() and p.name.startswith(("build-", "export-"))):
        a, b = old / build, new / build
        files_a = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
        files_b = sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file()) if b.is_dir() else []
        rows.append((build, "same files", files_a == files_b, "" if files_a == files_b else
                     f"only old: {sorted(set(files_a) - set(files_b))[:3]}, only new: {sorted(set(files_b) - set(files_a))[:3]}"))
        for relative in files_a:
            if relative not in files_b:
                continue
            path_a, path_b = a / relative, b / relative
            if relative.endswith(".pt2") and not relative.endswith(".aoti.pt2"):
                error = compare_pt2(path_a, path_b)
                rows.append((f"{build}/{relative}", "outputs rel. L2", error <= RELATIVE_TOLERANCE, f"{error:.1e}"))
            elif relative.endswith(".onnx"):
                error = compare_onnx(path_a, path_b)
                rows.append((f"{build}/{relative}", "outputs rel. L2", error <= RELATIVE_TOLERANCE, f"{error:.1e}"))
            elif relative.endswith(".onnx.data"):
                continue  # the weights of an .onnx, compared by running it
            elif Path(relative).name in REPORTED_ONLY:
                docs = [_without(json.loads(p.read_text()), {"seconds", "versions", "sha256", "fingerprint"})
                        for p in (path_a, path_b)]
                rows.append((f"{build}/{relative}", "reported only", True, "equal" if docs[0] == docs[1] else "differs"))
            else:
                rows.append((f"{build}/{relative}", "bytes", path_a.read_bytes() == path_b.read_bytes(), ""))
    for bench in sorted(p.name for p in old.glob("bench-*.json")):
        a, b = old / bench, new / bench
        docs = [_timeless(json.loads(p.read_text())) for p in (a, b) if p.is_file()]
        rows.append((bench, "all but timings", len(docs) == 2 and docs[0] == docs[1], ""))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path, help="checkout of the reference version")
    parser.add_argument("new", type=Path, help="checkout of the version to compare")
    parser.add_argument("--work", type=Path, required=True, help="directory for both runs' outputs (created)")
    parser.add_argument("--python", default=sys.executable, help="interpreter with f3compile's dependencies")
    parser.add_argument("--compare-only", action="store_true", help="compare the outputs of an earlier run")
    parser.add_argument("--rerun", choices=("old", "new"),
                        help="run only this side again and compare with the other side's earlier run")
    args = parser.parse_args(argv)
    for checkout in (args.old, args.new):
        if not (checkout / "f3compile" / "cli.py").is_file():
            print(f"error: {checkout} is not an f3compile checkout (no f3compile/cli.py)", file=sys.stderr)
            return 2
    old_dir, new_dir = args.work / "old", args.work / "new"
    runs = {}
    for side, checkout, work in (("old", args.old, old_dir), ("new", args.new, new_dir)):
        runs_file = args.work / f"runs-{side}.json"
        if args.compare_only or (args.rerun and args.rerun != side):
            if not runs_file.is_file():
                print(f"error: {runs_file} is missing; run both sides first (without --compare-only/--rerun)",
                      file=sys.stderr)
                return 2
            runs[side] = json.loads(runs_file.read_text())
        else:
            if work.exists():
                shutil.rmtree(work)
            runs[side] = run_all(checkout, work, args.python)
            runs_file.write_text(json.dumps(runs[side], indent=2))
    rows = compare(old_dir, new_dir, runs["old"], runs["new"])
    width = max(len(r[0]) for r in rows)
    for output, check, equal, detail in rows:
        print(f"{'equal' if equal else 'DIFFERS':<8} {output:<{width}}  {check}{'  ' + detail if detail else ''}")
    differing = [r for r in rows if not r[2]]
    seconds = {side: sum(r["seconds"] for r in runs[side].values()) for side in ("old", "new")}
    print(f"{len(rows) - len(differing)} of {len(rows)} checks equal; commands took {seconds['old']:.0f}s (old) "
          f"and {seconds['new']:.0f}s (new)")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
