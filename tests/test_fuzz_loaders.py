"""Fuzz the three JSON loaders: malformed input is an `F3Error` with a one-line message, never
another exception; what loads is usable by the code that reads it next.

Loaders: plan files (`PruningPlan.load` / `from_dict`), build manifests (`load_manifest` /
`validate_manifest`) and calibration metadata (`CalibrationStats.load`, calibration.json next to a
real stats.safetensors). Each starts from a valid seed document (made cheaply from builtin:tiny-latte,
no compile) and applies random structural mutations (wrong types at any depth, missing and extra
keys, out-of-range indices, huge, negative and non-finite numbers, odd strings, deep nesting, empty
containers, swapped ids) and byte-level ones (truncation, spliced and non-UTF-8 bytes, another
top level, 5000-digit integers, nesting past the parser's recursion limit). Seeds are fixed
(`derandomize=True`), so a run is reproducible. The full-attention families' transformer
directories (Wan, CogVideoX) are fuzzed the same way through their config.json.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from f3compile.errors import F3Error
from tests.helpers import assert_one_line

EXAMPLES = 1000  # per loader (each example is one mutated document, loaded from a file and, for plans/manifests, as a dict)
SETTINGS = dict(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])

BIGINT = "__f3_fuzz_bigint__"  # replaced by a 5000-digit integer when the document is serialized
ODD_STRINGS = ["", " ", "\n", "a\nb", "\r\n", "\u2028", "\x85", "\x00", "\t", "é", "💥", "\ud800", "'", '"', "\\",
               "../escape", "/absolute", "sha256:", "sha256:00", "random:", "random:7", "random:²", "random:١٢",
               "head", "frame", "fp16", "x" * 300, BIGINT]
SPECIAL_NUMBERS = [0, -1, 1, 2, 7, 8, 9, 999, 1000, 2**31, 2**63, 2**70, -(2**70), 10**30, 0.5, -0.0, 1.0, 2.0,
                   1e308, -1e308, 5e-324, math.nan, math.inf, -math.inf, BIGINT]
SCHEMA_KEYS = ["schema", "model", "calibration", "granularity", "criterion", "ratio", "stages", "scores",
               "timesteps", "drop_blocks", "drop_attention", "prune_heads", "keep_frames", "score", "per_head",
               "per_frame", "fingerprint", "spec", "steps", "frames", "units", "id", "block", "heads", "head_dim",
               "channels", "num_train_timesteps", "prompts", "count", "shapes", "index", "files", "path", "sha256",
               "inputs", "outputs", "name", "components", "decoder", "factor", "kind", "versions", "precision",
               # full 3-D attention: window plans, spatiotemporal units, experts, the native latent layout
               "windows", "window", "keep_mass", "tokens", "text_tokens", "query_fraction", "experts", "expert",
               "native_layout", "video_vae", "class", "temporal_scale",
               # image-to-video: the build's conditioning, the plans' first-frame shares, prompts with images
               "conditioning", "channels", "width", "first_frame", "image", "images"]


def nest(depth: int, leaf=0):
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"a": value}
    return value


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.sampled_from(SPECIAL_NUMBERS),
    st.text(max_size=8), st.sampled_from(ODD_STRINGS),
)
junk = st.one_of(
    st.recursive(scalars, lambda children: st.lists(children, max_size=3)
                 | st.dictionaries(st.text(max_size=6) | st.sampled_from(SCHEMA_KEYS), children, max_size=3),
                 max_leaves=8),
    st.integers(20, 400).map(nest),
)


def _pool(doc, strings: set, ints: set) -> None:
    """Every string (keys too) and integer of `doc`: mutations swap values for others of the same document."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            strings.add(key)
            _pool(value, strings, ints)
    elif isinstance(doc, list):
        for value in doc:
            _pool(value, strings, ints)
    elif isinstance(doc, str):
        strings.add(doc)
    elif isinstance(doc, int) and not isinstance(doc, bool):
        ints.add(doc)


def _variant(data, value, pool):
    """A value that is wrong (or subtly different) in a way that fits `value`'s type."""
    strings, ints = pool
    if data.draw(st.integers(0, 3)) == 0:
        return data.draw(junk)
    if isinstance(value, bool) or value is None:
        return data.draw(scalars)
    if isinstance(value, int):
        return data.draw(st.sampled_from([value - 1, value + 1, -value, value * 1000 + 7, float(value), str(value),
                                          True, None, [value], *SPECIAL_NUMBERS, *ints]))
    if isinstance(value, float):
        options = [math.nan, math.inf, -math.inf, -value, value + 1, 1e308, str(value), None, True, [value], -1, 2]
        if math.isfinite(value):
            options += [int(value), value * 1e300]
        return data.draw(st.sampled_from(options))
    if isinstance(value, str):
        return data.draw(st.sampled_from([value + ".x", value[:-1], value.upper(), value + "\n", "../" + value,
                                          "/" + value, " " + value, [value], {value: value}, None, 0,
                                          *ODD_STRINGS, *strings]))
    if isinstance(value, list):
        options = [[], value + value, value[:-1], value[::-1], {}, value + [data.draw(junk)], [data.draw(junk)],
                   [value], value * 50, "".join(map(str, value))]
        if value:
            options += [[value[0]] * 3, value[:1], [value[0], value[0]]]
        return data.draw(st.sampled_from(options))
    if isinstance(value, dict):
        items = list(value.items())
        options = [{}, list(value.values()), list(value), dict(items[1:]), dict(items[:-1]),
                   {**value, data.draw(st.sampled_from(SCHEMA_KEYS) | st.text(max_size=6)): data.draw(junk)}, [value]]
        if items:
            key = data.draw(st.sampled_from([k for k, _ in items]))
            renamed = data.draw(st.sampled_from([key + "_", key.upper(), "", key + "\n", *SCHEMA_KEYS, *strings]))
            options += [{(renamed if k == key else k): v for k, v in items}]
        return data.draw(st.sampled_from(options))
    return data.draw(junk)


def mutate(data, seed, pool, max_mutations: int = 3):
    """Apply 0..max_mutations random mutations to a deep copy of `seed` (0 keeps it valid)."""
    doc = copy.deepcopy(seed)
    for _ in range(data.draw(st.sampled_from([1, 1, 1, 2, 2, 3, 0][: max_mutations * 2 + 1]))):
        parent, key, node = None, None, doc
        while isinstance(node, (dict, list)) and node and data.draw(st.integers(0, 4)) > 0:  # mostly go deeper
            key = data.draw(st.sampled_from(list(node) if isinstance(node, dict) else range(len(node))))
            parent, node = node, node[key]
        op = data.draw(st.sampled_from(["replace", "replace", "replace", "delete", "insert"]))
        if parent is None:
            doc = _variant(data, doc, pool)
        elif op == "delete":
            del parent[key]
        elif op == "insert" and isinstance(parent, dict):
            parent[data.draw(st.sampled_from(SCHEMA_KEYS) | st.text(max_size=6))] = data.draw(junk)
        elif op == "insert":
            parent.insert(key, data.draw(st.sampled_from([copy.deepcopy(node)]) | junk))
        else:
            parent[key] = _variant(data, node, pool)
    return doc


def _contains(doc, value) -> bool:
    if isinstance(doc, dict):
        return any(k == value or _contains(v, value) for k, v in doc.items())
    if isinstance(doc, list):
        return any(_contains(v, value) for v in doc)
    return doc == value if isinstance(doc, str) else False


TEXT_MODES = ["json"] * 20 + ["truncate", "truncate", "splice", "byte", "top", "deep", "bom", "utf16", "empty"]
SPLICES = [b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x00", b",", b"]", b"}", b'"', b":", b"NaN",
           b"-", b"1e999", b"\\u", b"\\ud800", b"[" * 50, b"9" * 5000]
TOPS = [b"[]", b"[1, 2]", b"42", b"-1e308", b'"plan"', b"null", b"true", b"NaN", b"-Infinity", b"{}", b"[{}]"]


def encode(data, doc) -> tuple[bytes, bool]:
    """The document as file bytes, possibly damaged; the flag says whether the bytes are exactly `doc`."""
    text = json.dumps(doc, indent=data.draw(st.sampled_from([None, 2])))
    if _contains(doc, BIGINT):
        text = text.replace(json.dumps(BIGINT), "9" * 5000)
    raw = text.encode()
    mode = data.draw(st.sampled_from(TEXT_MODES))
    if mode == "json":
        return raw, not _contains(doc, BIGINT)
    if mode == "truncate":
        return raw[: data.draw(st.integers(0, len(raw) - 1))], False
    if mode == "splice":
        at = data.draw(st.integers(0, len(raw)))
        return raw[:at] + data.draw(st.sampled_from(SPLICES)) + raw[at:], False
    if mode == "byte":
        at = data.draw(st.integers(0, len(raw) - 1))
        return raw[:at] + bytes([data.draw(st.integers(0, 255))]) + raw[at + 1:], False
    if mode == "top":
        return data.draw(st.sampled_from(TOPS + [json.dumps([doc]).encode(), json.dumps(text).encode()])), False
    if mode == "deep":
        depth = data.draw(st.sampled_from([2_000, 100_000]))
        opener = data.draw(st.sampled_from([b"[", b'{"a":']))
        return opener * depth + b"0" + (b"]" if opener == b"[" else b"}") * depth, False
    if mode == "bom":
        return b"\xef\xbb\xbf" + raw, False
    if mode == "utf16":
        return text.encode("utf-16"), False
    return b"", False


# -- seeds ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return make_env(tmp_path_factory.mktemp("fuzz"))


def make_env(root: Path) -> dict:
    """builtin:tiny-latte, its units, a real 2-step calibration, a seed plan and a seed build."""
    from f3compile.calibration import CalibrationConfig, CalibrationStats, calibrate
    from f3compile.models import find_temporal_units, load_model
    from f3compile.planning import make_plan
    from f3compile.planning.cost import ModelCost

    model = load_model("builtin:tiny-latte")
    units = find_temporal_units(model)
    calibrate(model, ["a red circle moving left"], CalibrationConfig(steps=2, heatmaps=False), output_dir=root / "calib")
    stats = CalibrationStats.load(root / "calib")

    plan = make_plan(stats, 0.5, "head", stages=2).to_dict()
    (u0, u1), (b0, b1) = [u.id for u in units], [b.id for b in stats.blocks]
    plan["stages"][0].update(drop_blocks=[b1], prune_heads={u0: [1]}, keep_frames={u0: [0, 3, 7]}, reuse={b0: 2})
    plan["stages"][1].update(drop_attention=[u0], prune_heads={u1: [0]}, keep_frames={u1: [2, 5]})
    # the full-attention fields (a window plan's): valid as a document, refused for this temporal model
    plan["stages"][1]["windows"] = {u1: [0] + [None] * (len(plan["scores"][u1]["per_head"]) - 1)}
    plan.update(window=0, keep_mass=0.5)
    # (calibration.json: mutations add the spatiotemporal unit keys, tokens and text_tokens, from SCHEMA_KEYS)

    build = root / "build"
    for name in ("stage0/denoiser.pt2", "stage0/denoiser.reuse1.pt2", "stage1/denoiser.pt2", "stage1/denoiser.onnx"):
        (build / name).parent.mkdir(parents=True, exist_ok=True)
        (build / name).write_bytes(name.encode())
    (build / "pipeline" / "scheduler").mkdir(parents=True)
    (build / "pipeline" / "scheduler" / "scheduler_config.json").write_text("{}")
    manifest = seed_manifest(build, plan)

    return {"model": model, "units": units, "cost": ModelCost.measure(model, units), "stats": stats,
            "calib": root / "calib", "plan": plan, "build": build, "manifest": manifest, "root": root}


def seed_manifest(build: Path, plan: dict) -> dict:
    from f3compile._io import sha256_file
    from f3compile.manifest import SCHEMA, validate_manifest
    from f3compile.runtime.components import directory_sha256

    def file(path):
        return {"path": path, "sha256": sha256_file(build / path)}

    io = {"inputs": [{"name": "sample", "shape": [2, 4, 8, 2, 2], "dtype": "float32"},
                     {"name": "timestep", "shape": [], "dtype": "int64"},
                     {"name": "encoder_hidden_states", "shape": [2, 8, 16], "dtype": "float32"}],
          "outputs": [{"name": "noise_pred", "shape": [2, 4, 8, 2, 2], "dtype": "float32"}]}
    block = next(iter(plan["stages"][0]["reuse"]))
    residual = {"name": f"residual.{block}", "shape": [256, 8, 16], "dtype": "float32"}
    stages = [
        {"index": 0, "timesteps": plan["stages"][0]["timesteps"], "plan": plan["stages"][0],
         "files": {"pt2": file("stage0/denoiser.pt2")}, "parameters": 1234, "passes": ["prune_heads"],
         "precision": "fp32", "inputs": copy.deepcopy(io["inputs"]), "outputs": copy.deepcopy(io["outputs"]) + [residual],
         "reuse": {"periods": {block: 2}, "residual_bytes": 131072, "programs": [
             {"reused": [block], "files": {"pt2": file("stage0/denoiser.reuse1.pt2")}, "parameters": 1000,
              "inputs": copy.deepcopy(io["inputs"]) + [dict(residual)], "outputs": copy.deepcopy(io["outputs"])}]}},
        {"index": 1, "timesteps": plan["stages"][1]["timesteps"], "plan": plan["stages"][1],
         "files": {"pt2": file("stage1/denoiser.pt2"), "onnx": file("stage1/denoiser.onnx")}, "parameters": 1000,
         "precision": "fp16", "verify": {"onnx_vs_torch": {"relative_l2_error": 1e-6}}, "expert": "transformer_2",
         **copy.deepcopy(io)},
    ]
    manifest = {
        "schema": SCHEMA,
        "model": {"spec": "builtin:tiny-latte", "fingerprint": plan["model"]["fingerprint"], "family": "latte"},
        "plan": {"path": "plan.json", "fingerprint": "sha256:00", "granularity": "head", "ratio": 0.5},
        "shapes": {"batch": 1, "frames": 8, "height": 16, "width": 16, "cfg_batch": 2},
        "sample_layout": "bcfhw",
        "native_layout": "B,F,C,H,W",
        "scheduler": {"class": "DDIMScheduler", "config": {"num_train_timesteps": 1000}},
        "text_encoder": {"class": None, "tokenizer_class": None, "max_length": 8, "hidden_size": 16,
                         "padding": "max_length", "negative_prompt": "", "family": "latte", "style": "hashed"},
        "decoder": {"kind": "pixel_shuffle", "factor": 2, "range": [-1, 1]},
        "versions": {"f3compile": "0.1.0", "torch": "2.9.0"},
        "stages": stages,
        "device": "cpu", "targets": ["onnx"], "dynamic_batch": [2, 2, 8], "seconds": 1.5,
        "conditioning": {"kind": "image", "channels": 20, "tokens": 17, "width": 32},
        "components": {"scheduler": {"path": "pipeline/scheduler", "class": "DDIMScheduler",
                                     "sha256": directory_sha256(build / "pipeline" / "scheduler")}},
    }
    validate_manifest(manifest)
    return manifest


def test_seeds_are_valid(env):
    from f3compile.calibration import CalibrationStats
    from f3compile.manifest import load_manifest
    from f3compile.planning import PruningPlan

    path = env["root"] / "seed-plan.json"
    path.write_text(json.dumps(env["plan"]))
    plan = PruningPlan.load(path)
    assert plan.stages[0].drop_blocks and plan.stages[1].drop_attention
    assert all(s.prune_heads and s.keep_frames for s in plan.stages) and plan.stages[0].reused_blocks
    check_plan(plan, env)
    (env["build"] / "manifest.json").write_text(json.dumps(env["manifest"]))
    check_manifest(load_manifest(env["build"]), env)
    check_calibration(CalibrationStats.load(env["calib"]), strict=True)


# -- what "loads" must mean: the next reader does not crash -----------------------------------
def check_plan(plan, env) -> None:
    """A loaded plan round-trips, renders (`inspect`), maps every stage boundary to its stage,
    and is either refused for the model with an F3Error or has its savings counted."""
    from f3compile.planning import PruningPlan
    from f3compile.planning.inspect import render

    text = json.dumps(plan.to_dict())
    assert json.dumps(PruningPlan.from_dict(json.loads(text)).to_dict()) == text
    assert render(plan).startswith("plan: ")
    for number, stage in enumerate(plan.stages):
        assert plan.stage_for(stage.timesteps[0]) == number and plan.stage_for(stage.timesteps[1]) == number
    try:
        plan.check_model(env["model"], env["units"])
    except F3Error as exc:
        assert_one_line(exc)
        return
    for stage in plan.stages:
        env["cost"].stage_removed(stage)
        env["cost"].stage_removed(stage, 3)


def check_manifest(data, env) -> None:
    """A valid manifest has what a runtime reads before it loads artifacts: integer, gap-free
    stage timesteps ending at 0, I/O entries as objects, version strings, file and component
    entries with paths inside the build directory; and the hash check refuses with an F3Error or passes."""
    from f3compile.manifest import INPUT_NAMES, load_manifest

    previous_low = None
    for stage in data["stages"]:
        high, low = stage["timesteps"]
        assert all(isinstance(t, int) and not isinstance(t, bool) for t in (high, low)) and high >= low >= 0
        assert previous_low is None or high == previous_low - 1
        previous_low = low
        assert [i["name"] for i in stage["inputs"]] == INPUT_NAMES and stage["outputs"][0]["name"] == "noise_pred"
        periods = stage.get("reuse", {}).get("periods", {})
        assert all(isinstance(k, int) and k > 1 for k in periods.values())  # the runtime takes step % k
        for program in stage.get("reuse", {}).get("programs", []):  # what the runtime indexes by
            assert set(program["reused"]) <= set(periods)
            assert [i["name"] for i in program["inputs"]][3:] == [f"residual.{b}" for b in program["reused"]]
        for entry in [e for program in [stage] + stage.get("reuse", {}).get("programs", []) for e in program["files"].values()]:
            assert isinstance(entry["path"], str) and entry["sha256"].startswith("sha256:")
            assert not Path(entry["path"]).is_absolute() and ".." not in Path(entry["path"]).parts
    assert previous_low == 0
    assert all(isinstance(version, str) for version in data["versions"].values())  # the runtime compares them
    for entry in data.get("components", {}).values():
        assert isinstance(entry["path"], str) and not Path(entry["path"]).is_absolute() and ".." not in Path(entry["path"]).parts
    try:
        load_manifest(env["build"], check_hashes=True)
    except F3Error as exc:
        assert_one_line(exc)


def check_calibration(stats, strict: bool) -> None:
    """Plans can be made from a loaded calibration at every granularity and with every criterion;
    with `strict`, they are valid plans (a unit that is its own block included). Units recorded as
    full 3-D attention (tokens > 0) take the granularities that apply to them, windows included."""
    from f3compile.planning import GRANULARITIES, make_plan
    from f3compile.planning.plan import FULL_ATTENTION_GRANULARITIES, validate_plan_dict

    assert stats.units and stats.blocks and stats.timesteps and stats.num_train_timesteps
    stages = min(2, len(stats.timesteps))
    full = any(unit.spatiotemporal for unit in stats.units)
    granularities = FULL_ATTENTION_GRANULARITIES if full else [g for g in GRANULARITIES if g != "window"]
    cases = [(g, "cross_frame_mass") for g in granularities] + ([] if full else [("head", "output_norm")]) + [("block", "random")]
    for granularity, criterion in cases:
        try:
            window = 0 if granularity == "window" else None
            validate_plan_dict(make_plan(stats, 0.5, granularity, criterion, stages=stages, window=window).to_dict())
        except F3Error as exc:
            assert_one_line(exc)
            assert not strict, exc


# -- the fuzzers ------------------------------------------------------------------------------
def _outcome(call):
    """'ok' and the value, or 'F3Error' and the exception; anything else propagates (a bug)."""
    try:
        return "ok", call()
    except F3Error as exc:
        assert_one_line(exc)
        return "F3Error", exc


def plan_case(env: dict) -> tuple:
    """(one fuzz example, counts) for plan files: load from bytes; as a dict when the bytes are exact."""
    from f3compile.planning import PruningPlan
    from f3compile.planning.plan import validate_plan_dict

    seed = env["plan"]
    pool = (set(), set())
    _pool(seed, *pool)
    path = env["root"] / "plan.json"
    count = {"examples": 0, "loaded": 0}

    def example(data):
        count["examples"] += 1
        doc = mutate(data, seed, pool)
        raw, exact = encode(data, doc)
        path.write_bytes(raw)
        status, plan = _outcome(lambda: PruningPlan.load(path))
        if status == "ok":
            count["loaded"] += 1
            check_plan(plan, env)
        if exact:  # the dict API agrees with the file API
            assert _outcome(lambda: PruningPlan.from_dict(doc))[0] == status
            assert _outcome(lambda: validate_plan_dict(doc))[0] == status

    return example, count


def manifest_case(env: dict) -> tuple:
    """Manifests: load_manifest from bytes (hashes checked separately on what loads); validate_manifest on the dict."""
    from f3compile.manifest import load_manifest, validate_manifest

    seed = env["manifest"]
    pool = (set(), set())
    _pool(seed, *pool)
    build = env["build"]
    count = {"examples": 0, "loaded": 0}

    def example(data):
        count["examples"] += 1
        doc = mutate(data, seed, pool)
        raw, exact = encode(data, doc)
        (build / "manifest.json").write_bytes(raw)
        status, loaded = _outcome(lambda: load_manifest(build, check_hashes=False))
        if status == "ok":
            count["loaded"] += 1
            check_manifest(loaded, env)
        if exact:
            assert _outcome(lambda: validate_manifest(doc))[0] == status

    return example, count


def calibration_case(env: dict) -> tuple:
    """Calibration metadata: calibration.json mutated next to the real stats.safetensors."""
    from f3compile.calibration import CalibrationStats

    seed = json.loads((env["calib"] / "calibration.json").read_text())
    pool = (set(), set())
    _pool(seed, *pool)
    directory = env["root"] / "calib-fuzz"
    directory.mkdir(exist_ok=True)
    (directory / "stats.safetensors").write_bytes((env["calib"] / "stats.safetensors").read_bytes())
    count = {"examples": 0, "loaded": 0}

    def example(data):
        count["examples"] += 1
        doc = mutate(data, seed, pool)
        raw, _ = encode(data, doc)
        (directory / "calibration.json").write_bytes(raw)
        status, stats = _outcome(lambda: CalibrationStats.load(directory))
        if status == "ok":
            count["loaded"] += 1
            check_calibration(stats, strict=True)

    return example, count


@pytest.mark.parametrize("case", [plan_case, manifest_case, calibration_case], ids=["plan", "manifest", "calibration"])
def test_fuzz_loader(env, case):
    example, count = case(env)
    given(st.data())(settings(**SETTINGS)(example))()
    assert count["examples"] >= EXAMPLES and 0 < count["loaded"] < count["examples"], count


# -- what the fuzzing found, pinned (each raised another exception, or loaded and broke a reader) --
def _set(*path_and_value):
    *path, value = path_and_value

    def apply(doc):
        node = doc
        for key in path[:-1]:
            node = node[key]
        if value is _DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return apply


_DELETE = object()
DEEP = b"[" * 100_000 + b"]" * 100_000
U0, U1, B0 = "temporal_transformer_blocks.0.attn1", "temporal_transformer_blocks.1.attn1", "temporal_transformer_blocks.0"

FOUND = [  # (loader, damage: bytes or a mutation of the seed, expected message part)
    ("plan", DEEP, "nested too deeply"),                                          # RecursionError
    ("plan", b"\xff" + b"{}", "not UTF-8 text"),                                  # UnicodeDecodeError
    ("plan", _set("ratio", BIGINT), "Exceeds the limit (4300 digits)"),           # ValueError (int digits)
    ("plan", _set("a\nb", 1), "unknown key(s) 'a\\nb'"),                          # a two-line message
    ("plan", _set("\ud800", 1), "unknown key(s) '\\ud800'"),                      # unprintable message
    ("plan", _set("scores", U0, "score", [1]), "score must be a number"),         # inspect: TypeError
    ("plan", _set("scores", U0, "per_head", 5), "lists of numbers"),              # TypeError (len of int)
    ("plan", _set("calibration", "steps", {}), "calibration.steps"),             # inspect: TypeError
    ("plan", _set("calibration", "steps", 10**30), "calibration.steps"),         # inspect: ValueError (np.arange)
    ("plan", lambda d: d.update(scores={}, stages=[dict(d["stages"][0], drop_blocks=[], drop_attention=[],
                                                        prune_heads={}, keep_frames={}, timesteps=[999, 0])]),
     "scores must list the temporal attentions"),                                 # inspect: ValueError (max of [])
    ("manifest", DEEP, "nested too deeply"),
    ("manifest", _set("stages", 0, "timesteps", [999]), "timesteps must be [high, low]"),        # ValueError (unpack)
    ("manifest", _set("stages", 0, "timesteps", ["x", 501]), "timesteps must be [high, low]"),   # loaded
    ("manifest", _set("stages", 1, "inputs", ["sample", "timestep", "encoder_hidden_states"]), "inputs must be"),  # AttributeError
    ("manifest", _set("\x1cb", 1), "unknown key(s) '\\x1cb'"),                                   # a two-line message
    ("manifest", _set("components", []), "components must be an object"),                       # AttributeError
    ("manifest", _set("components", "scheduler", "path", _DELETE), "components.scheduler needs"),  # KeyError
    ("manifest", _set("components", "scheduler", "path", "../../elsewhere"), "must stay inside"),  # loaded
    ("manifest", _set("versions", "torch", 2), "versions must map"),                             # loaded (Runtime: AttributeError)
    ("manifest", _set("stages", 0, "files", "pt2", "path", "9" * 5000), "cannot be read (File name too long)"),  # OSError
    ("manifest", _set("stages", 0, "files", "pt2", "path", "stage0/a\nb"), "a\\nb' is missing"),  # a two-line message
    ("calibration", DEEP, "nested too deeply"),
    ("calibration", _set("units", 0, "channels", _DELETE), "units[0] must be an object"),       # TypeError
    ("calibration", _set("units", 5), "units must be a non-empty list"),                        # TypeError
    ("calibration", _set("num_train_timesteps", math.nan), "num_train_timesteps"),              # ValueError (int(nan))
    ("calibration", _set("model", _DELETE), "model must be an object"),                         # make_plan: KeyError
    ("calibration", _set("prompts", []), "prompts.count"),                                      # make_plan: TypeError
    ("calibration", _set("timesteps", [501, 1, 0]), "has shape [2, 2, 8, 8]"),                  # make_plan: IndexError
    ("calibration", _set("steps", 10**30), "steps must be an integer in [1, 1000]"),             # an invalid plan
    ("calibration", _set("timesteps", [6, 501]), "decreasing"),                                 # an invalid plan
    ("calibration", _set("units", 0, "heads", 3), "has shape [2, 2, 8, 8]"),                    # plans out of range
    ("calibration", _set("units", 1, "block", "te,mporal_transformer_blocks.1"), "a module that encloses it"),  # KeyError
]


@pytest.mark.parametrize("loader, damage, message", FOUND, ids=[f"{n}-{c[0]}" for n, c in enumerate(FOUND)])
def test_found_cases_are_one_line_f3errors(env, tmp_path, loader, damage, message):
    from f3compile.calibration import CalibrationStats
    from f3compile.manifest import load_manifest
    from f3compile.planning import PruningPlan

    if isinstance(damage, bytes):
        raw = damage
    else:
        doc = copy.deepcopy(env[loader] if loader != "calibration" else json.loads((env["calib"] / "calibration.json").read_text()))
        damage(doc)
        raw = json.dumps(doc).replace(json.dumps(BIGINT), "9" * 5000).encode()
    if loader == "plan":
        (tmp_path / "plan.json").write_bytes(raw)
        call = lambda: PruningPlan.load(tmp_path / "plan.json")  # noqa: E731
    elif loader == "manifest":
        build = tmp_path / "build"
        for file in env["build"].rglob("*"):
            if file.is_file() and file.name != "manifest.json":
                (build / file.relative_to(env["build"])).parent.mkdir(parents=True, exist_ok=True)
                (build / file.relative_to(env["build"])).write_bytes(file.read_bytes())
        (build / "manifest.json").write_bytes(raw)
        call = lambda: load_manifest(build, check_hashes=True)  # noqa: E731
    else:
        (tmp_path / "calibration.json").write_bytes(raw)
        (tmp_path / "stats.safetensors").write_bytes((env["calib"] / "stats.safetensors").read_bytes())
        call = lambda: CalibrationStats.load(tmp_path)  # noqa: E731
    with pytest.raises(F3Error) as caught:
        call()
    assert_one_line(caught.value)
    assert message in str(caught.value)


@pytest.mark.parametrize("model", [{"spec": "builtin:tiny-latte", "fingerprint": "sha256:other\n"},
                                   {"spec": ["x\ny"], "fingerprint": "sha256:other"}])
def test_plan_for_another_model_is_refused_in_one_line(env, model):
    """Found by fuzzing: the refusal quoted the plan's spec and fingerprint raw (newlines and all)."""
    from f3compile.planning import PruningPlan

    doc = copy.deepcopy(env["plan"])
    doc["model"] = model
    with pytest.raises(F3Error, match="the plan was made for model") as caught:
        PruningPlan.from_dict(doc).check_model(env["model"], env["units"])
    assert_one_line(caught.value)


def test_odd_ids_are_quoted_in_model_checks(env):
    """Ids that pass the plan's own validation but are unknown to the model are quoted (one line)."""
    from f3compile.planning import PruningPlan

    doc = copy.deepcopy(env["plan"])
    doc["scores"]["x\ny"] = copy.deepcopy(doc["scores"][U0])
    doc["stages"][0]["drop_attention"] = ["x\ny"]
    with pytest.raises(F3Error, match="is not a temporal attention of") as caught:
        PruningPlan.from_dict(doc).check_model(env["model"], env["units"])
    assert_one_line(caught.value)
    assert "'x\\ny'" in str(caught.value)


def test_manifest_hash_checks(env, tmp_path):
    """load_manifest with check_hashes: a changed artifact, a missing file or component, by hand."""
    import shutil

    from f3compile.manifest import load_manifest

    build = tmp_path / "build"
    shutil.copytree(env["build"], build)
    (build / "manifest.json").write_text(json.dumps(env["manifest"]))
    assert load_manifest(build)["stages"][1]["files"]["onnx"]["path"] == "stage1/denoiser.onnx"
    cases = [
        (lambda: (build / "stage1" / "denoiser.onnx").write_bytes(b"changed"), "does not match the sha256"),
        (lambda: (build / "stage1" / "denoiser.onnx").unlink(), "is missing"),
        (lambda: shutil.rmtree(build / "pipeline"), "(scheduler) is missing"),
    ]
    for damage, message in cases:
        damage()
        with pytest.raises(F3Error) as caught:
            load_manifest(build)
        assert_one_line(caught.value)
        assert message in str(caught.value)
        load_manifest(build, check_hashes=False)  # the document itself is still valid


# -- the CLI: one line `error: …`, exit status 2 ------------------------------------------------
def test_cli_turns_bad_files_into_one_line_errors(env, tmp_path, capsys):
    from tests.helpers import assert_one_line_error, run

    plan = copy.deepcopy(env["plan"])
    plan["calibration"]["steps"] = 1e308  # `inspect` split 1e308 steps into stages (ValueError)
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    (tmp_path / "deep.json").write_bytes(DEEP)
    build = tmp_path / "build"
    build.mkdir()
    manifest = copy.deepcopy(env["manifest"])
    manifest["stages"][0]["timesteps"] = [999]  # ValueError: not enough values to unpack
    (build / "manifest.json").write_text(json.dumps(manifest))
    calib = tmp_path / "calib"
    calib.mkdir()
    meta = json.loads((env["calib"] / "calibration.json").read_text())
    del meta["units"][0]["channels"]  # TypeError: TemporalUnit() missing 1 required argument
    (calib / "calibration.json").write_text(json.dumps(meta))
    (calib / "stats.safetensors").write_bytes((env["calib"] / "stats.safetensors").read_bytes())
    out = tmp_path / "out"
    cases = [
        (["inspect", tmp_path / "plan.json"], "calibration.steps must be null or an integer"),
        (["inspect", tmp_path / "deep.json"], "nested too deeply"),
        (["generate", build, "--prompt", "x", "-o", out / "v.gif"], "timesteps must be [high, low]"),
        (["plan", calib, "--ratio", "0.5", "-o", out / "p.json"], "units[0] must be an object"),
    ]
    for argv, message in cases:
        code, _, err = run(capsys, *argv)
        assert_one_line_error(code, err, message)
    assert not out.exists()


# -- the full-attention model directories ----------------------------------------------------------
MODEL_EXAMPLES = 40  # each example loads a tiny transformer from disk (about 0.2 s)


@pytest.mark.parametrize("builtin", ["tiny-wan", "tiny-cogvideox", "tiny-wan-i2v", "tiny-hunyuanvideo1.5",
                                     "tiny-hunyuanvideo1.5-i2v"])
def test_fuzz_full_attention_transformer_configs(tmp_path_factory, builtin):
    """A bare transformer directory whose config.json is damaged (structurally or byte by byte) loads
    as a model that runs, or is refused with a one-line F3Error; never another exception. An
    image-to-video transformer is fuzzed inside its pipeline directory (a bare one is always refused)."""
    import shutil

    import torch

    from f3compile.models import load_model
    from f3compile.models.base import resolve_shapes
    from f3compile.models.loading import build_builtin

    root = tmp_path_factory.mktemp(f"fuzz-{builtin}")
    pipe, _ = build_builtin(builtin)
    whole = "i2v" in builtin
    pipe.save_pretrained(root / "seed") if whole else pipe.transformer.save_pretrained(root / "seed")
    config = "transformer/config.json" if whole else "config.json"
    seed = json.loads((root / "seed" / config).read_text())
    pool = (set(), set())
    _pool(seed, *pool)
    count = {"examples": 0, "loaded": 0}

    def example(data):
        count["examples"] += 1
        directory = root / f"case{count['examples']}"
        shutil.copytree(root / "seed", directory)
        raw, _ = encode(data, mutate(data, seed, pool, max_mutations=2))
        (directory / config).write_bytes(raw)
        status, model = _outcome(lambda: load_model(str(directory)))
        if status == "ok":  # runs at a shape every verb accepts (`resolve_shapes`), or refuses the shape in one line
            status, shapes = _outcome(lambda: resolve_shapes(model, 9, 32, 32))
        if status == "ok":
            count["loaded"] += 1
            sample, timestep, ehs = model.example_inputs(shapes)
            with torch.no_grad():
                out = model.denoise(sample, timestep, ehs)
            assert out.shape == (sample.shape[0], model.latent_channels, *sample.shape[2:])
        shutil.rmtree(directory)

    examples = MODEL_EXAMPLES // 2 if whole else MODEL_EXAMPLES  # a pipeline directory loads in about 0.3 s
    given(st.data())(settings(**{**SETTINGS, "max_examples": examples})(example))()
    assert count["examples"] >= examples and 0 < count["loaded"] < count["examples"], count
