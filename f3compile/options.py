"""Typed options of the verbs: one dataclass per verb, every field with a default and a one-line
description. The CLI fills them from its flags; Python callers build them directly. The older
per-stage configs (`CalibrationConfig`, `ExportConfig`, `EvalConfig`) are the options of
calibrate, export and eval."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import option
from .errors import F3Error


@dataclass
class Shapes:
    """Video shapes a verb runs at; None: the model's own."""

    frames: int | None = option(None, "frames per video (default: the model's)")
    height: int | None = option(None, "video height in pixels (default: the model's)")
    width: int | None = option(None, "video width in pixels (default: the model's)")
    batch: int = option(1, "prompts per call; the programs' batch is twice this (classifier-free guidance)")

    @property
    def given(self) -> bool:
        """True when a frame count or size was asked for."""
        return any(value is not None for value in (self.frames, self.height, self.width))


@dataclass
class PlanOptions:
    """How `plan` chooses what to prune: one of a ratio (or one per stage), a target speedup, or a search."""

    ratio: float | list[float] | None = option(None, "fraction of units to prune in [0, 1], or one per stage")
    target_speedup: float | None = option(None, "prune the lowest-scored (unit, stage) pairs until the "
                                                "FLOP-predicted speedup reaches it (with search: its target)")
    search: bool = option(False, "choose per (stage, block) the action with the least measured error")
    max_error: float | None = option(None, "search: bound on the final latents' relative L2 error vs dense")
    actions: tuple[str, ...] | None = option(None, "search: actions to try (default drop, reuse, heads; full 3-D "
                                                    "attention: drop, reuse, window)")
    windows: tuple[int, ...] = option((0, 1, 2), "search: one window action per frame distance W")
    reuse: int | None = option(None, "temporal reuse period K of the selected blocks (search: of the reuse action)")
    reuse_periods: tuple[int, ...] | None = option(None, "search: one reuse action per period")
    search_budget: float | None = option(None, "search: denoiser calls per prompt, in sampling loops (default 20): "
                                               "the dense loop, the estimates on its trajectory and the measured plans")
    granularity: str = option("head", "unit level: block, attention, head, frame or window (full 3-D attention)")
    window: int | None = option(None, "granularity window: windowed heads attend within ±W frames (0: own frame)")
    keep_mass: float | None = option(None, "granularity window: window every head keeping at least this share inside")
    criterion: str | None = option(None, "score (default cross_frame_mass; with reuse: residual_change)")
    stages: int = option(1, "timestep stages, each ranked on its own steps")
    seed: int = option(0, "seed of the random criterion (a control plan)")
    device: str = option("cpu", "search: where the model samples (cpu or cuda; under torchrun, each rank's own GPU)")
    precision: str | None = option(None, "search: fp32, bf16 or fp16: the dtype the denoiser and text encoder are loaded and run in (default: bf16 on cuda, fp32 on the cpu)")

    @property
    def kind(self) -> str:
        """"search", "budget" or "ratio"."""
        return "search" if self.search else "budget" if self.target_speedup is not None else "ratio"

    def check(self, with_prompts: bool) -> None:
        """The combinations `plan` accepts (`with_prompts`: prompts were given for a search)."""
        if not self.search and self.device != "cpu":
            raise F3Error("--device belongs to --search (the only plan that runs the model); drop it")
        if self.precision is not None and self.kind == "ratio":
            raise F3Error("--precision belongs to --search and --target-speedup (the plans that load the model); drop it")
        if self.search:
            if self.ratio is not None:
                raise F3Error("--search chooses what to prune itself; drop --ratio (bound it with --max-error/--target-speedup)")
            if not with_prompts:
                raise F3Error("--search runs the model on prompts: pass --prompts (the calibration prompts)")
            if self.reuse is not None and self.reuse_periods is not None:
                raise F3Error("give --search one of --reuse K and --reuse-periods K1,K2,...")
        elif self.keep_mass is not None:
            if self.ratio is not None or self.target_speedup is not None:
                raise F3Error("give one of --keep-mass M, --ratio R and --target-speedup S")
        elif (self.ratio is None) == (self.target_speedup is None):
            raise F3Error("give exactly one of --ratio R (or R1,R2,... one per stage) and --target-speedup S, or --search")
        elif (self.max_error is not None or with_prompts or self.reuse_periods is not None
              or self.search_budget is not None):
            raise F3Error("--max-error, --prompts, --reuse-periods and --search-budget belong to --search")


@dataclass
class CompileOptions:
    """Where and how `compile` builds its programs."""

    shapes: Shapes = option(None, "video shapes (default: the model's)")
    precision: str = option("fp32", "dtype of the programs' weights: fp32, fp16 or bf16")
    device: str = option("cpu", "cpu or cuda: capture and compile where the programs will run")

    def __post_init__(self):
        self.shapes = self.shapes or Shapes()


@dataclass
class GenerateOptions:
    """How `generate` samples from a build."""

    seed: int = option(0, "seed of the starting noise and of sampling")
    steps: int = option(25, "denoising steps")
    guidance_scale: float = option(7.5, "classifier-free guidance scale")
    backend: str = option("torch", "artifact runtime: torch, aoti, onnxruntime or tensorrt")
    device: str = option("cpu", "cpu or cuda: where the programs and the loop run")
    latents: Path | None = option(None, "start from these latents instead of noise (.pt or one-tensor .safetensors)")
    save_latents: bool = option(False, "keep the final latents (to write them beside the video)")
    interpolate: Path | None = option(None, "CogVideo: a stage-2 build that fills frames between the stage-1 build's")
    rounds: int = option(3, "with interpolate: rounds, each doubling the frame rate")
    progress: bool = option(False, "show a bar of the denoising steps on stderr")
    image: Path | None = option(None, "image-to-video builds: the image the video starts from")


@dataclass
class BenchOptions:
    """What `bench` times and where."""

    backends: tuple[str, ...] = option(("torch",), "backends to time: torch, eager (the plan applied in place), aoti, onnxruntime, tensorrt")
    device: str = option("cpu", "cpu or cuda (CUDA events, peak device memory)")
    precision: str | None = option(None, "fp32, bf16 or fp16: the dtype the model is loaded in and its programs run in "
                                         "(default: bf16 on cuda, fp32 on the cpu)")
    shape: str | None = option(None, "FRAMESxHEIGHTxWIDTH in pixels (default: the plan's calibration, else the model's)")
    repeat: int = option(10, "timed calls per variant")
    videos: int = option(1, "autoregressive models: whole videos per variant")
    plot: Path | None = option(None, "also write a speedup plot (PNG) here")
    sweep: list[float] | None = option(None, "ratios to plan and bench (needs calibration)")
    calibration: Path | None = option(None, "calibration directory for a sweep")
    granularity: str = option("block", "for a sweep")
    criterion: str = option("cross_frame_mass", "for a sweep")
    stages: int = option(1, "for a sweep")


@dataclass
class SweepOptions:
    """Plans `eval` makes from a calibration: every ratio × granularity × stage count × criterion,
    and `random` random-score plans of each ratio × granularity × stage count."""

    ratios: tuple[float, ...] = option((0.25, 0.5, 0.75, 1.0), "pruning ratios")
    granularities: tuple[str, ...] = option(("block", "attention", "head"), "unit levels")
    stages: tuple[int, ...] = option((1, 2), "stage counts")
    criteria: tuple[str, ...] = option(("cross_frame_mass",), "criteria")
    random: int = option(0, "random plans per ratio × granularity × stage count")
