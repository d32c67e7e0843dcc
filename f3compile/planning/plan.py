"""Pruning plans: schema `f3compile.plan/1`, selection from calibration, validation.

Selection (per stage): rank the units of the chosen granularity by their score computed on the
stage's own steps, and prune the lowest `round(ratio × count)`. Ties break by module order.
Frame pruning always keeps at least one key frame per attention (softmax over no keys is
undefined), so at high ratios slightly fewer frames than the ratio asks may be pruned.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._io import read_json, write_json_atomic
from ..calibration import criteria
from ..calibration.stats import CalibrationStats
from ..errors import F3Error
from ..reuse import MAX_PROGRAMS as MAX_REUSE_PROGRAMS
from ..schema import fail, is_number as _is_number, key, name as _name, validate

SCHEMA = "f3compile.plan/1"
GRANULARITIES = ("block", "attention", "head", "frame", "window")
FULL_ATTENTION_GRANULARITIES = ("block", "attention", "head", "window")  # what plans of full 3-D attention take
MAX_REUSE_PERIOD = 64
MAX_STEPS = 100_000  # bound on calibration.steps: `inspect` and `bench` split that many steps into the stages


@dataclass
class Stage:
    """What is pruned while the scheduler timestep lies in [timesteps[0], timesteps[1]] (inclusive)."""

    timesteps: tuple[int, int]
    drop_blocks: list[str] = field(default_factory=list)
    drop_attention: list[str] = field(default_factory=list)
    prune_heads: dict[str, list[int]] = field(default_factory=dict)
    keep_frames: dict[str, list[int]] = field(default_factory=dict)
    # temporal reuse: block id -> period k. Within the stage the block is computed at steps
    # 0, k, 2k, … (counted from the stage's first step); at the others its output is its input plus
    # the residual (output − input) of the last computed step. k = 1 computes every step.
    reuse: dict[str, int] = field(default_factory=dict)
    # full 3-D attention: unit id -> per head the window W (attend within ±W frames) or None (dense)
    windows: dict[str, list[int | None]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = {
            "timesteps": [int(self.timesteps[0]), int(self.timesteps[1])],
            "drop_blocks": list(self.drop_blocks),
            "drop_attention": list(self.drop_attention),
            "prune_heads": {k: list(v) for k, v in self.prune_heads.items()},
            "keep_frames": {k: list(v) for k, v in self.keep_frames.items()},
        }
        if self.reuse:
            data["reuse"] = {k: int(v) for k, v in self.reuse.items()}
        if self.windows:
            data["windows"] = {k: [None if w is None else int(w) for w in v] for k, v in self.windows.items()}
        return data

    @property
    def reused_blocks(self) -> list[str]:
        """Blocks whose residual is reused at some steps (period > 1), in plan order."""
        return [block for block, period in self.reuse.items() if period > 1]

    def contains(self, timestep: int) -> bool:
        return self.timesteps[1] <= timestep <= self.timesteps[0]

    @property
    def is_empty(self) -> bool:
        return not (self.drop_blocks or self.drop_attention or self.prune_heads or self.keep_frames or self.reused_blocks
                    or any(w is not None for v in self.windows.values() for w in v))


@dataclass
class PruningPlan:
    """A validated pruning plan. `load`/`save` read and write plan.json."""

    model: dict[str, str]
    calibration: dict[str, Any]
    granularity: str
    criterion: str
    ratio: float | list[float]  # one for every stage, or one per stage (a schedule)
    stages: list[Stage]
    scores: dict[str, dict[str, Any]]
    budget: dict[str, float] | None = None
    search: dict[str, Any] | None = None
    window: int | None = None  # granularity window: the W of the windowed heads
    keep_mass: float | None = None  # granularity window: heads keeping at least this share were windowed

    # -- (de)serialization -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = {
            "schema": SCHEMA, "model": dict(self.model), "calibration": dict(self.calibration),
            "granularity": self.granularity, "criterion": self.criterion,
            "ratio": list(self.ratio) if isinstance(self.ratio, (list, tuple)) else self.ratio,
            "stages": [stage.to_dict() for stage in self.stages], "scores": self.scores,
        }
        if self.budget is not None:
            data["budget"] = dict(self.budget)
        if self.search is not None:
            data["search"] = dict(self.search)
        if self.window is not None:
            data["window"] = int(self.window)
        if self.keep_mass is not None:
            data["keep_mass"] = float(self.keep_mass)
        return data

    def stage_ratios(self) -> list[float]:
        return list(self.ratio) if isinstance(self.ratio, (list, tuple)) else [self.ratio] * len(self.stages)

    def ratio_text(self) -> str:
        return ",".join(f"{r:g}" for r in self.ratio) if isinstance(self.ratio, (list, tuple)) else f"{self.ratio:g}"

    def save(self, path: str | Path) -> None:
        validate_plan_dict(self.to_dict(), str(path))
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "PruningPlan":
        path = Path(path)
        if not path.is_file():
            raise F3Error(f"plan file {path} does not exist; create one with `f3compile plan`")
        data = read_json(path, "fix it or re-run `f3compile plan`")
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: Any, where: str = "plan") -> "PruningPlan":
        validate_plan_dict(data, where)
        stages = [
            Stage(
                timesteps=(int(s["timesteps"][0]), int(s["timesteps"][1])),
                drop_blocks=list(s["drop_blocks"]), drop_attention=list(s["drop_attention"]),
                prune_heads={k: [int(h) for h in v] for k, v in s["prune_heads"].items()},
                keep_frames={k: [int(f) for f in v] for k, v in s["keep_frames"].items()},
                reuse={k: int(v) for k, v in s.get("reuse", {}).items()},
                windows={k: [None if w is None else int(w) for w in v] for k, v in s.get("windows", {}).items()},
            )
            for s in data["stages"]
        ]
        return cls(
            model=dict(data["model"]), calibration=dict(data["calibration"]), granularity=data["granularity"],
            criterion=data["criterion"],
            ratio=[float(r) for r in data["ratio"]] if isinstance(data["ratio"], list) else float(data["ratio"]),
            stages=stages, scores=data["scores"],
            budget={k: float(v) for k, v in data["budget"].items()} if "budget" in data else None,
            search=dict(data["search"]) if "search" in data else None,
            window=int(data["window"]) if "window" in data else None,
            keep_mass=float(data["keep_mass"]) if "keep_mass" in data else None,
        )

    @classmethod
    def dense(cls, model, units) -> "PruningPlan":
        """The empty plan (one stage, nothing pruned) for `model`: the dense baseline."""
        return cls(
            model={"spec": model.spec, "fingerprint": model.fingerprint},
            calibration={"fingerprint": None, "prompts": 0, "steps": 0, "frames": model.shapes.frames,
                         "height": model.shapes.height, "width": model.shapes.width},
            granularity="block", criterion=criteria.DEFAULT_CRITERION, ratio=0.0,
            stages=[Stage(timesteps=tuple(span)) for span in (model.experts or {}).values()]
            or [Stage(timesteps=(int(model.scheduler.config.num_train_timesteps) - 1, 0))],
            scores={u.id: {"score": 0.0, "per_head": [0.0] * u.heads, "per_frame": [0.0] * u.frames} for u in units}
            | {u.block: {"score": 0.0, "per_head": [], "per_frame": []} for u in units if u.block != u.id},
        )

    # -- queries -----------------------------------------------------------------------------
    def stage_for(self, timestep: int) -> int:
        """The stage whose range holds `timestep` (a flow-matching sampler's first timestep, t =
        num_train_timesteps, belongs to the first stage, as every timestep above the ranges does)."""
        timestep = min(int(timestep), max(stage.timesteps[0] for stage in self.stages))
        for index, stage in enumerate(self.stages):
            if stage.contains(timestep):
                return index
        raise F3Error(f"timestep {timestep} is outside every stage of the plan")

    def check_model(self, model, units, fingerprint: bool = True) -> None:
        """Refuse a plan made for another model, or whose ids/heads/frames do not fit it (`fingerprint`
        False: the structure only, for a denoiser seen without the text encoder it was fingerprinted with)."""
        if fingerprint and self.model.get("fingerprint") != model.fingerprint:
            raise F3Error(
                f"the plan was made for model {_name(self.model.get('spec'))} ({_name(str(self.model.get('fingerprint'))[:19])}…), "
                f"not {model.spec} ({model.fingerprint[:19]}…); calibrate and plan for this model"
                + ("; a model loaded in fp16 fingerprints apart from its fp32 and bf16 loads: load it in fp32 or "
                   "bf16 (f3compile casts to fp16 after fingerprinting)" if getattr(model, "precision", None) == "fp16" else "")
            )
        by_id = {unit.id: unit for unit in units}
        blocks = {unit.block for unit in units}
        for number, stage in enumerate(self.stages):
            for block in list(stage.drop_blocks) + list(stage.reuse):
                if block not in blocks:
                    raise F3Error(f"plan stage {number}: {block!r} is not a temporal block of {model.spec}")
            for kind, ids in (("drop_attention", stage.drop_attention), ("prune_heads", stage.prune_heads),
                              ("keep_frames", stage.keep_frames)):
                for unit_id in ids:
                    if unit_id not in by_id:
                        raise F3Error(f"plan stage {number} {kind}: {unit_id!r} is not a temporal attention of {model.spec}")
            for unit_id, heads in stage.prune_heads.items():
                if max(heads) >= by_id[unit_id].heads:
                    raise F3Error(f"plan stage {number}: head {max(heads)} of {unit_id!r} is out of range (it has {by_id[unit_id].heads})")
            for unit_id, frames in stage.keep_frames.items():
                if max(frames) >= by_id[unit_id].frames:
                    raise F3Error(f"plan stage {number}: frame {max(frames)} of {unit_id!r} is out of range (the model runs {by_id[unit_id].frames})")
            for unit_id, windows in stage.windows.items():
                unit = by_id.get(unit_id)
                if unit is None or not unit.spatiotemporal:
                    raise F3Error(f"plan stage {number} windows: {unit_id!r} is not a full 3-D attention of {model.spec}")
                if len(windows) != unit.heads:
                    raise F3Error(f"plan stage {number} windows: {unit_id!r} lists {len(windows)} heads, it has {unit.heads}")


# -- plan.json: the schema ---------------------------------------------------------------------
def _non_negative(value: Any) -> bool:
    return value is None or (_is_number(value) and value >= 0)


@dataclass
class ScoreDocument:
    """scores[<unit or block id>]: the criterion's score, per head and per key frame (blocks: none)."""

    score: float = key(message="score must be a number, per_head and per_frame lists of numbers")
    per_head: list[float] = key(message="score must be a number, per_head and per_frame lists of numbers")
    per_frame: list[float] = key(message="score must be a number, per_head and per_frame lists of numbers")
    # image-to-video window plans: per head, the share of each query frame's attention on the first frame
    first_frame: list[list[float]] = key(optional=True, message="first_frame must be one list of numbers per head")


@dataclass
class StageDocument:
    """stages[i]: what is pruned while the timestep lies in [high, low]."""

    timesteps: tuple[int, int] = key(check=lambda span: span[0] >= span[1] >= 0,
                                     message=lambda span: f"timesteps must be [high, low] integers with high >= low >= 0, got {span!r}")
    drop_blocks: list[str] = key(message="drop_blocks must be a list of unit ids")
    drop_attention: list[str] = key(message="drop_attention must be a list of unit ids")
    prune_heads: dict[str, Any] = key(message="prune_heads must be an object mapping unit ids to index lists")
    keep_frames: dict[str, Any] = key(message="keep_frames must be an object mapping unit ids to index lists")
    reuse: dict[str, Any] = key(optional=True, message="reuse must be an object mapping temporal block ids to periods")
    windows: dict[str, Any] = key(optional=True, message="windows must be an object mapping unit ids to per-head lists")


@dataclass
class BudgetDocument:
    """How a `--target-speedup` plan was chosen."""

    target_speedup: float = key(check=lambda v: v >= 1.0, message="target_speedup and predicted_speedup must be numbers >= 1")
    predicted_speedup: float = key(check=lambda v: v >= 1.0, message="target_speedup and predicted_speedup must be numbers >= 1")


_STEP = "needs an integer stage of the plan, string block and action, numbers"


@dataclass
class SearchStepDocument:
    stage: int = key(check=lambda v: v >= 0, message=_STEP)
    block: str = key(message=_STEP)
    action: str = key(message=_STEP)
    error: float | None = key(message=_STEP)
    predicted_speedup: float = key(message=_STEP)
    estimate: float = key(optional=True, check=lambda v: v >= 0, message=_STEP)
    exchange: bool = key(optional=True, message=_STEP)  # a change of an exchange, after the ranking's moves


@dataclass
class SearchDocument:
    """How a `--search` plan was chosen: its bounds and every accepted step."""

    max_error: float | None = key(check=_non_negative, message="max_error must be null or a non-negative number")
    target_speedup: float | None = key(check=_non_negative, message="target_speedup must be null or a non-negative number")
    actions: list[str] = key(message="actions must be a list of strings")
    prompts: int = key(check=lambda v: v >= 0, message="prompts must be a non-negative integer")
    error: float = key(check=lambda v: v >= 0, message="error, predicted_speedup and seconds must be non-negative numbers")
    predicted_speedup: float = key(check=lambda v: v >= 0,
                                   message="error, predicted_speedup and seconds must be non-negative numbers")
    evaluations: int = key(check=lambda v: v >= 0, message="evaluations must be a non-negative integer")
    seconds: float = key(check=lambda v: v >= 0, message="error, predicted_speedup and seconds must be non-negative numbers")
    accepted: list[SearchStepDocument] = key(message="accepted must be a list")
    precision: str = key(optional=True, check=lambda v: v in ("fp32", "bf16", "fp16"),
                         message="precision must be fp32, bf16 or fp16")
    calls: float = key(optional=True, check=lambda v: v >= 0, message="calls must be a non-negative number")
    loop_calls: int = key(optional=True, check=lambda v: v >= 0, message="loop_calls must be a non-negative integer")
    budget: float = key(optional=True, check=lambda v: v >= 0, message="budget must be a non-negative number")
    samples: int = key(optional=True, check=lambda v: v >= 0, message="samples must be a non-negative integer")
    screened: int = key(optional=True, check=lambda v: v >= 0, message="screened must be a non-negative integer")


def _ratio_ok(ratio: Any) -> bool:
    ratios = ratio if isinstance(ratio, list) and ratio else [ratio]
    return all(_is_number(r) and 0.0 <= r <= 1.0 for r in ratios)


@dataclass
class PlanDocument:
    """plan.json (`f3compile.plan/1`); `relations` checks what spans fields."""

    schema: str = key(check=lambda v: v == SCHEMA, message=lambda v: f"schema is {v!r}, expected {SCHEMA!r}")
    model: dict[str, Any] = key(check=lambda v: isinstance(v.get("fingerprint"), str),
                                message="model must be an object with a string fingerprint")
    calibration: dict[str, Any] = key(message="calibration must be an object")
    granularity: Any = key(check=lambda v: v in GRANULARITIES,
                           message=lambda v: f"granularity {v!r} is unknown; use one of {', '.join(GRANULARITIES)}")
    criterion: Any = key(check=criteria.is_criterion, message=lambda v: f"criterion {v!r} is unknown; use one of "
                                                                          "cross_frame_mass, output_norm, random:SEED")
    ratio: Any = key(check=_ratio_ok, message=lambda v: f"ratio must be a number in [0, 1] or a list of them "
                                                        f"(one per stage), got {v!r}")
    scores: dict[str, ScoreDocument] = key(message="scores must be an object keyed by unit id")
    stages: list[StageDocument] = key(check=bool, message="stages must be a non-empty list")
    budget: BudgetDocument = key(optional=True)
    search: SearchDocument = key(optional=True)
    window: int = key(optional=True, check=lambda v: v >= 0, message="window must be a non-negative integer")
    keep_mass: float = key(optional=True, check=lambda v: 0 <= v <= 1, message="keep_mass must be a number in [0, 1]")

    @staticmethod
    def relations(data: dict, where: str) -> None:
        scores, stages, ratio = data["scores"], data["stages"], data["ratio"]
        attention_ids = {k for k, v in scores.items() if v["per_head"]}
        if not attention_ids:
            fail(where, "scores must list the temporal attentions (entries with per_head scores)")
        block_ids = {k for k in scores if k not in attention_ids and any(a.startswith(k + ".") for a in attention_ids)}
        # an attention inside no listed block is its own block (no module holds it alone)
        block_ids |= {a for a in attention_ids if not any(a.startswith(k + ".") for k in scores)}
        previous_low = None
        for number, stage in enumerate(stages):
            at = f"{where}: stages[{number}]"
            span = stage["timesteps"]
            if previous_low is not None and span[0] != previous_low - 1:
                fail(at, f"timesteps {span} must start right below the previous stage's low end ({previous_low})")
            previous_low = span[1]
            for block in stage["drop_blocks"]:
                if block not in block_ids:
                    fail(at, f"drop_blocks: {block!r} is not a temporal block in this plan's scores")
            for unit_id in stage["drop_attention"]:
                if unit_id not in attention_ids:
                    fail(at, f"drop_attention: {unit_id!r} is not a temporal attention in this plan's scores")
            for field_name, size_key in (("prune_heads", "per_head"), ("keep_frames", "per_frame")):
                for unit_id, indices in stage[field_name].items():
                    if unit_id not in attention_ids:
                        fail(at, f"{field_name}: {unit_id!r} is not a temporal attention in this plan's scores")
                    _index_list(indices, len(scores[unit_id][size_key]), at, f"{field_name}[{unit_id!r}]")
            if "reuse" in stage:
                _check_reuse(stage, block_ids, at)
            for unit_id, windows in stage.get("windows", {}).items():
                if unit_id not in attention_ids:
                    fail(at, f"windows: {_name(unit_id)} is not an attention in this plan's scores")
                heads = len(scores[unit_id]["per_head"])
                if not isinstance(windows, list) or len(windows) != heads or not all(
                        w is None or (isinstance(w, int) and not isinstance(w, bool) and w >= 0) for w in windows):
                    fail(at, f"windows[{_name(unit_id)}] must list {heads} entries, each null (dense) or a window >= 0")
        if previous_low != 0:
            fail(where, f"the last stage must end at timestep 0, not {previous_low}")
        if isinstance(ratio, list) and len(ratio) != len(stages):
            fail(where, f"ratio lists {len(ratio)} values for {len(stages)} stages; give one per stage")
        steps, most = data["calibration"].get("steps"), min(stages[0]["timesteps"][0] + 1, MAX_STEPS)
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or not 0 <= steps <= most):
            fail(where, f"calibration.steps must be null or an integer in [0, {most}] (at most one per timestep), got {steps!r}")
        for number, step in enumerate(data.get("search", {}).get("accepted", [])):
            if step["stage"] >= len(stages):
                fail(f"{where}: search: accepted[{number}]", _STEP)


def _check_reuse(stage: dict, block_ids: set[str], at: str) -> None:
    for block, period in stage["reuse"].items():
        if block not in block_ids:
            fail(at, f"reuse: {_name(block)} is not a temporal block in this plan's scores")
        if not (isinstance(period, int) and not isinstance(period, bool) and 1 <= period <= MAX_REUSE_PERIOD):
            fail(at, f"reuse[{_name(block)}] must be an integer period in [1, {MAX_REUSE_PERIOD}], got {period!r}")
        if block in stage["drop_blocks"]:
            fail(at, f"reuse: {_name(block)} is also in drop_blocks; a block is either dropped or reused")
    try:
        reuse_patterns(stage["reuse"])
    except F3Error as exc:
        fail(at, str(exc))


def reuse_patterns(reuse: dict[str, int]) -> list[tuple[str, ...]]:
    """The distinct sets of reused blocks over a stage's steps, in order of first appearance.

    At step j of the stage (0 = its first step) the blocks with j % k != 0 reuse their residual.
    Step 0 computes everything, so the first pattern is () (the compute program). Each pattern
    becomes one static program; periods that share no structure multiply them, so at most
    MAX_REUSE_PROGRAMS are allowed per stage."""
    from ..reuse import step_patterns

    try:
        return step_patterns(reuse, MAX_REUSE_PROGRAMS)
    except ValueError:
        periods = sorted({k for k in reuse.values() if k > 1})
        raise F3Error(f"reuse periods {periods} need more than {MAX_REUSE_PROGRAMS} programs in one stage; "
                      "use one period per stage (or periods that divide each other)") from None


def _index_list(value: Any, size: int, where: str, what: str) -> None:
    if not isinstance(value, list) or not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        fail(where, f"{what} must be a non-empty list of integers")
    if len(set(value)) != len(value):
        fail(where, f"{what} has duplicates")
    bad = [v for v in value if not 0 <= v < size]
    if bad:
        fail(where, f"{what} {bad[0]} is out of range [0, {size - 1}]")


def validate_plan_dict(data: Any, where: str = "plan") -> None:
    """Validation of a plan.json document against `PlanDocument`; raises `F3Error` naming the problem."""
    validate(PlanDocument, data, where)


# -- selection ------------------------------------------------------------------------------
def plan_stages_of(stats: CalibrationStats, stages: int) -> list[tuple[list[int], tuple[int, int]]]:
    """(step indices, inclusive timestep range) of each stage. A model with experts (Wan 2.2,
    `experts` in calibration.json) gets `stages` stages per expert, each within its expert's range, so
    every expert is planned on its own steps and every stage runs one expert's program."""
    experts = stats.meta.get("experts")
    if not experts:
        groups = split_steps(len(stats.timesteps), stages)
        return list(zip(groups, stage_ranges(stats.timesteps, groups, stats.num_train_timesteps)))
    out = []
    for name, (high, low) in sorted(experts.items(), key=lambda item: -item[1][0]):
        steps = [i for i, t in enumerate(stats.timesteps) if low <= t <= high]
        if len(steps) < stages:
            raise F3Error(f"expert {name} ran {len(steps)} of the calibration's steps, fewer than --stages {stages}; "
                          "calibrate with more steps or plan fewer stages")
        top = high
        for index, group in enumerate(split_steps(len(steps), stages)):
            group = [steps[i] for i in group]
            bottom = low if index == stages - 1 else int(stats.timesteps[group[-1]])
            out.append((group, (int(top), int(bottom))))
            top = bottom - 1
    return out


def active_units(stats: CalibrationStats, units, steps: list[int]) -> list:
    """The units that ran at `steps` (with experts, the running expert's)."""
    return [unit for unit in units if float(stats.unit(unit.id, "calls")[steps].sum()) > 0]


def split_steps(num_steps: int, num_stages: int) -> list[list[int]]:
    """Step indices split into `num_stages` contiguous, near-equal groups."""
    return [list(map(int, group)) for group in np.array_split(np.arange(num_steps), num_stages)]


def stage_ranges(timesteps: list[int], groups: list[list[int]], num_train_timesteps: int) -> list[tuple[int, int]]:
    """Inclusive timestep ranges covering [num_train_timesteps - 1, 0] without gaps."""
    ranges = []
    high = num_train_timesteps - 1
    for number, group in enumerate(groups):
        low = 0 if number == len(groups) - 1 else int(timesteps[group[-1]])
        ranges.append((high, low))
        high = low - 1
    return ranges


def _n_pruned(ratio: float, count: int) -> int:
    return min(count, int(math.floor(ratio * count + 0.5)))


def make_plan(
    stats: CalibrationStats,
    ratio: float,
    granularity: str = "head",
    criterion: str = criteria.DEFAULT_CRITERION,
    stages: int = 1,
    seed: int = 0,
    reuse: int | None = None,
    window: int | None = None,
    keep_mass: float | None = None,
) -> PruningPlan:
    """Rank units by `criterion` on each stage's steps and prune the lowest `ratio` fraction.

    Granularity ``window`` (full 3-D attention): rank heads by the attention mass outside ±`window`
    frames and window the lowest `ratio` of them, or every head keeping at least `keep_mass` inside.

    ``criterion="random"`` draws the scores from `seed` instead (the plan records ``random:SEED``).
    With `reuse` K (block granularity) the selected blocks are not dropped but reused with period
    K (computed at every K-th step of their stage).
    """
    full = [unit for unit in stats.units if unit.spatiotemporal]
    if granularity == "window" or window is not None or keep_mass is not None:
        return _window_plan(stats, ratio, granularity, window, keep_mass, criterion, stages, seed, reuse)
    if full and granularity not in FULL_ATTENTION_GRANULARITIES:
        raise F3Error(f"--granularity {granularity} does not apply to full 3-D attention ({full[0].id}); use "
                      f"{', '.join(FULL_ATTENTION_GRANULARITIES)}")
    ratios = list(ratio) if isinstance(ratio, (list, tuple)) else [ratio]
    if not ratios or not all(_is_number(r) and 0.0 <= r <= 1.0 for r in ratios):
        raise F3Error(f"--ratio must be in [0, 1] (or one such value per stage), got {ratio}")
    if len(ratios) > 1 and len(ratios) != stages:
        raise F3Error(f"--ratio gives {len(ratios)} values for --stages {stages}; give one value or one per stage")
    if len(ratios) == 1 and isinstance(ratio, (list, tuple)):
        ratio = ratios[0]
    if granularity not in GRANULARITIES:
        raise F3Error(f"--granularity {granularity!r} is unknown; use one of {', '.join(GRANULARITIES)}")
    if criterion == "random":
        criterion = f"random:{int(seed)}"
    if not criteria.is_criterion(criterion):
        raise F3Error(f"--criterion {criterion!r} is unknown; use one of {', '.join(criteria.CRITERIA)}")
    if criterion.startswith("random:") and granularity == "frame":
        raise F3Error("random plans are made at block, attention or head granularity, not frame")
    if reuse is not None and (isinstance(reuse, bool) or not isinstance(reuse, int) or not 2 <= reuse <= MAX_REUSE_PERIOD):
        raise F3Error(f"--reuse must be an integer period in [2, {MAX_REUSE_PERIOD}], got {reuse}")
    if reuse is not None and granularity != "block":
        raise F3Error("--reuse reuses whole temporal blocks; use --granularity block")
    if criterion in criteria.BLOCK_ONLY and granularity != "block":
        raise F3Error(f"--criterion {criterion} ranks temporal blocks; use --granularity block")
    steps = len(stats.timesteps)
    if not 1 <= stages <= steps:
        raise F3Error(f"--stages must be between 1 and the calibration's {steps} steps, got {stages}")
    units, blocks = stats.units, stats.blocks
    order = {unit.id: index for index, unit in enumerate(units)}
    plan_stages = []
    stage_ratio = ratios * stages if len(ratios) == 1 else ratios
    all_units, all_blocks = units, blocks
    for number, (group, span) in enumerate(plan_stages_of(stats, stages)):
        ratio_here = stage_ratio[number % stages]  # with experts: the same ratios for each expert's stages
        units = active_units(stats, all_units, group)
        blocks = [b for b in all_blocks if any(u.id in b.units for u in units)]
        stage = Stage(timesteps=span)
        if granularity == "block":
            ranked = sorted(blocks, key=lambda b: (criteria.block_score(stats, b.id, criterion, group), order[b.units[0]]))
            chosen = sorted((b.id for b in ranked[: _n_pruned(ratio_here, len(blocks))]), key=lambda b: [x.id for x in blocks].index(b))
            if reuse is None:
                stage.drop_blocks = chosen
            else:
                stage.reuse = {block: reuse for block in chosen}
        elif granularity == "attention":
            ranked = sorted(units, key=lambda u: (criteria.unit_score(stats, u.id, criterion, group), order[u.id]))
            stage.drop_attention = sorted((u.id for u in ranked[: _n_pruned(ratio_here, len(units))]), key=order.__getitem__)
        elif granularity == "head":
            candidates = [
                (float(score), order[unit.id], head, unit.id)
                for unit in units
                for head, score in enumerate(criteria.head_scores(stats, unit.id, criterion, group))
            ]
            candidates.sort()
            chosen: dict[str, list[int]] = {}
            for _, _, head, unit_id in candidates[: _n_pruned(ratio_here, len(candidates))]:
                chosen.setdefault(unit_id, []).append(head)
            stage.prune_heads = {u: sorted(chosen[u]) for u in sorted(chosen, key=order.__getitem__)}
        else:  # frame
            candidates = [
                (float(score), order[unit.id], frame, unit.id)
                for unit in units
                for frame, score in enumerate(criteria.frame_scores(stats, unit.id, group))
            ]
            candidates.sort()
            pruned: dict[str, set[int]] = {}
            for _, _, frame, unit_id in candidates[: _n_pruned(ratio_here, len(candidates))]:
                pruned.setdefault(unit_id, set()).add(frame)
            keep = {}
            for unit in units:
                dropped = pruned.get(unit.id, set())
                if not dropped:
                    continue
                kept = [f for f in range(unit.frames) if f not in dropped]
                if not kept:  # keep the key frame that receives the most attention
                    kept = [int(criteria.frame_scores(stats, unit.id, group).argmax())]
                keep[unit.id] = kept
            stage.keep_frames = keep
        plan_stages.append(stage)

    units, blocks = all_units, all_blocks
    scores: dict[str, dict[str, Any]] = {}
    for unit in units:
        scores[unit.id] = {
            "score": round(criteria.unit_score(stats, unit.id, criterion), 6),
            "per_head": [round(float(x), 6) for x in criteria.head_scores(stats, unit.id, criterion)],
            "per_frame": [round(float(x), 6) for x in criteria.frame_scores(stats, unit.id)],
        }
    for block in blocks:
        if block.id in scores:  # an attention that is its own block: one entry, with its per-head scores
            continue
        scores[block.id] = {"score": round(criteria.block_score(stats, block.id, criterion), 6), "per_head": [], "per_frame": []}
    meta = stats.meta
    return PruningPlan(
        model={"spec": meta["model"]["spec"], "fingerprint": meta["model"]["fingerprint"]},
        calibration={
            "fingerprint": meta.get("stats_sha256"), "prompts": meta["prompts"]["count"],
            "steps": meta["steps"], "frames": meta["shapes"]["frames"],
            "height": meta["shapes"].get("height"), "width": meta["shapes"].get("width"),
        },
        granularity=granularity, criterion=criterion,
        ratio=([float(stage_ratio[i % stages]) for i in range(len(plan_stages))] if len(ratios) > 1 else float(ratios[0])),
        stages=plan_stages, scores=scores,
    )


def _window_plan(stats: CalibrationStats, ratio, granularity: str, window: int | None, keep_mass: float | None,
                 criterion: str, stages: int, seed: int, reuse: int | None = None) -> PruningPlan:
    """Granularity window: per stage, the heads of full 3-D attention units attend within ±`window`;
    with `reuse` K, every transformer block is also reused with period K (computed, windowed, on
    every K-th step of its stage; its residual carried in between)."""
    if granularity != "window":
        raise F3Error("--window and --keep-mass make window plans; add --granularity window")
    if window is None or isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise F3Error(f"--granularity window needs --window W, a frame distance >= 0 (0: each query's own frame), got {window}")
    if (ratio is None) == (keep_mass is None):
        raise F3Error("a window plan takes exactly one of --ratio R (the lowest-scored share of heads) and "
                      "--keep-mass M (every head that keeps at least M of its attention inside the window)")
    if keep_mass is not None and not (_is_number(keep_mass) and 0.0 <= keep_mass <= 1.0):
        raise F3Error(f"--keep-mass must be in [0, 1], got {keep_mass}")
    units = [unit for unit in stats.units if unit.spatiotemporal]
    if not units:
        raise F3Error("--granularity window needs full 3-D attention (Wan, CogVideoX, HunyuanVideo 1.5); this "
                      "calibration has temporal "
                      "attention only: use block, attention, head or frame")
    if criterion == "random":
        criterion = f"random:{int(seed)}"
    if not criteria.is_criterion(criterion) or criterion in criteria.BLOCK_ONLY:
        raise F3Error(f"--criterion {criterion!r} does not rank heads; use cross_frame_mass, output_norm or random")
    if keep_mass is not None and criterion != "cross_frame_mass":
        raise F3Error("--keep-mass reads the attention mass inside the window: use --criterion cross_frame_mass")
    if reuse is not None and (isinstance(reuse, bool) or not isinstance(reuse, int) or not 2 <= reuse <= MAX_REUSE_PERIOD):
        raise F3Error(f"--reuse must be an integer period in [2, {MAX_REUSE_PERIOD}], got {reuse}")
    steps = len(stats.timesteps)
    if not 1 <= stages <= steps:
        raise F3Error(f"--stages must be between 1 and the calibration's {steps} steps, got {stages}")
    ratios = None
    if ratio is not None:
        ratios = list(ratio) if isinstance(ratio, (list, tuple)) else [ratio]
        if not ratios or not all(_is_number(r) and 0.0 <= r <= 1.0 for r in ratios):
            raise F3Error(f"--ratio must be in [0, 1] (or one such value per stage), got {ratio}")
        if len(ratios) > 1 and len(ratios) != stages:
            raise F3Error(f"--ratio gives {len(ratios)} values for --stages {stages}; give one value or one per stage")
        ratios = ratios * stages if len(ratios) == 1 else ratios
    order = {unit.id: index for index, unit in enumerate(units)}
    plan_stages, stage_heads = [], []
    for number, (group, span) in enumerate(plan_stages_of(stats, stages)):
        stage = Stage(timesteps=span)
        stage_heads.append(sum(unit.heads for unit in active_units(stats, units, group)))
        candidates = sorted(  # with experts: the heads of the expert that runs the stage
            (float(score), order[unit.id], head, unit.id)
            for unit in active_units(stats, units, group)
            for head, score in enumerate(criteria.window_scores(stats, unit.id, window, criterion, group)))
        if ratios is not None:
            chosen = candidates[: _n_pruned(ratios[number % stages], len(candidates))]
        else:
            chosen = [c for c in candidates if c[0] <= 1.0 - keep_mass + 1e-9]
        picked: dict[str, set[int]] = {}
        for _, _, head, unit_id in chosen:
            picked.setdefault(unit_id, set()).add(head)
        by_id = {unit.id: unit for unit in units}
        stage.windows = {unit_id: [window if head in picked[unit_id] else None for head in range(by_id[unit_id].heads)]
                         for unit_id in sorted(picked, key=order.__getitem__)}
        if reuse is not None:
            stage.reuse = {unit.block: reuse for unit in active_units(stats, units, group)}
        plan_stages.append(stage)
    scores: dict[str, dict[str, Any]] = {}
    for unit in units:
        per_head = criteria.window_scores(stats, unit.id, window, criterion)
        scores[unit.id] = {"score": round(float(per_head.mean()), 6), "per_head": [round(float(x), 6) for x in per_head],
                           "per_frame": [round(float(x), 6) for x in criteria.frame_scores(stats, unit.id)]}
        if "images" in stats.meta:  # the first frame is the conditioning image: say what a window hides of it
            scores[unit.id]["first_frame"] = [[round(float(x), 6) for x in row]
                                              for row in criteria.first_frame_mass(stats, unit.id)]
        if unit.block != unit.id:
            scores[unit.block] = {"score": round(float(per_head.mean()), 6), "per_head": [], "per_frame": []}
    meta = stats.meta
    chosen_ratio = 0.0 if ratios is None else (  # one per stage (with experts: the same list for each expert)
        ratios[0] if len(set(ratios)) == 1 else [float(ratios[i % stages]) for i in range(len(plan_stages))])
    if ratios is None:  # the share of heads windowed, per stage
        shares = [sum(w is not None for v in stage.windows.values() for w in v) / max(total, 1)
                  for stage, total in zip(plan_stages, stage_heads)]
        chosen_ratio = round(shares[0], 6) if len(set(shares)) == 1 else [round(x, 6) for x in shares]
    return PruningPlan(
        model={"spec": meta["model"]["spec"], "fingerprint": meta["model"]["fingerprint"]},
        calibration={"fingerprint": meta.get("stats_sha256"), "prompts": meta["prompts"]["count"],
                     "steps": meta["steps"], "frames": meta["shapes"]["frames"],
                     "height": meta["shapes"].get("height"), "width": meta["shapes"].get("width")},
        granularity="window", criterion=criterion, ratio=chosen_ratio, stages=plan_stages, scores=scores,
        window=window, keep_mass=keep_mass,
    )


def carry_over(plan: PruningPlan, units, spec: str) -> PruningPlan:
    """`plan`, made for another model, mapped onto `units` (of `spec`) by relative depth: target unit
    i of n takes the plan of source unit floor(i·m/n) of m, with the same share of its heads at
    each window (rounded; the first heads take them), the same drop/reuse of its block and the same
    attention drop. What a plan means per head elsewhere (pruned heads, kept frames) is not carried.

    This is how a plan calibrated on a small model predicts FLOPs at a published size
    (`inspect PLAN --model builtin:arch-…`)."""
    sources = [uid for uid, entry in plan.scores.items() if entry["per_head"]]
    if not sources or not units:
        raise F3Error("the plan lists no attention units to carry over")
    block_of = {uid: next((b for b in plan.scores if not plan.scores[b]["per_head"] and uid.startswith(b + ".")), uid)
                for uid in sources}
    mapping = {unit.id: sources[index * len(sources) // len(units)] for index, unit in enumerate(units)}
    stages = []
    for number, stage in enumerate(plan.stages):
        if stage.prune_heads or stage.keep_frames:
            raise F3Error(f"plan stage {number} prunes heads or frames, which do not carry over to {spec}; "
                          "inspect it on the model it was made for")
        new = Stage(timesteps=stage.timesteps)
        for unit in units:
            source = mapping[unit.id]
            source_block = block_of[source]
            if source_block in stage.drop_blocks:
                new.drop_blocks.append(unit.block)
            if source in stage.drop_attention:
                new.drop_attention.append(unit.id)
            if source_block in stage.reuse:
                new.reuse[unit.block] = stage.reuse[source_block]
            windows = stage.windows.get(source)
            if windows:
                counts: dict = {}
                for window in windows:
                    counts[window] = counts.get(window, 0) + 1
                carried: list = []
                for window in sorted((w for w in counts if w is not None)):
                    carried += [window] * round(counts[window] * unit.heads / len(windows))
                carried = (carried + [None] * unit.heads)[: unit.heads]
                if any(w is not None for w in carried):
                    new.windows[unit.id] = carried
        new.drop_blocks = list(dict.fromkeys(new.drop_blocks))
        stages.append(new)
    scores = {unit.id: {"score": 0.0, "per_head": [0.0] * unit.heads, "per_frame": [0.0] * unit.frames} for unit in units}
    scores |= {unit.block: {"score": 0.0, "per_head": [], "per_frame": []} for unit in units if unit.block != unit.id}
    return dataclasses.replace(plan, stages=stages, scores=scores,
                               model={"spec": spec, "carried_from": plan.model.get("spec")})
