"""The contract of a model kind: the verbs of the CLI and the public API for one way of running models.

`f3compile.api` finds the kind of what it is given (a spec, a loaded model, a calibration, a build
directory) in `models.registry` and calls the kind's methods; nothing above this layer branches on
the kind of a model. The API calls a verb's `check_*` first, before it loads anything, so a
refusal costs nothing and leaves nothing written; the verb itself then runs on loaded inputs. A
kind that cannot do a verb says so in one line (`refuse`). A new kind subclasses `ModelKind`,
implements what it supports and registers itself in `models.registry` (docs/ARCHITECTURE.md,
"Add a model family").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import F3Error


class ModelKind:
    """The verbs for one kind of model. Every method not overridden refuses in one line."""

    name = "model"

    def refuse(self, verb: str, hint: str = "") -> None:
        raise F3Error(f"{verb} does not take {self.name} models" + (f"; {hint}" if hint else ""))

    # -- models -----------------------------------------------------------------------------
    def load(self, spec: str, precision: str | None = None) -> Any:
        """The model `spec` names (a builtin or a directory of this kind), its weights in `precision`
        (fp32, bf16, fp16; None: fp32)."""
        self.refuse("load")

    def owns(self, model: Any) -> bool:
        """True when `model` is a loaded model of this kind."""
        return getattr(model, "kind", None) == self.name

    # -- upfront checks: called before anything is loaded, so a refusal costs nothing ---------
    def check_calibrate(self, config, latents: bool, key_model: bool) -> None:
        """Refuse calibration settings this kind cannot use."""

    def check_compile(self, options) -> None:
        """Refuse compile options this kind cannot build."""

    def check_export(self, options, config) -> None:
        """Refuse export options this kind cannot build."""

    def check_generate(self, options) -> None:
        """Refuse generate options this kind's builds cannot take."""

    def check_bench(self, options) -> None:
        """Refuse bench options this kind cannot time."""

    def check_evaluate(self, spec: str) -> None:
        """Refuse `eval` where this kind has no quality measures."""

    # -- calibrate ----------------------------------------------------------------------------
    def calibrate(self, model, prompts: list[str], config, *, latents=None, key_model=None, output_dir=None,
                  prompts_sha256: str | None = None, progress: bool = False, shard=None):
        """Record attention on the real sampling loop; returns `CalibrationStats` (under torchrun, the
        ranks' together; with `shard` K/N, the K-th part's partial sums for `merge`)."""
        self.refuse("calibrate")

    def summary_of_calibration(self, stats) -> str:
        return f"calibrated {len(stats.units)} temporal attention units on {stats.meta['prompts']['count']} prompts"

    # -- plan ---------------------------------------------------------------------------------
    def check_plan_options(self, options) -> None:
        """Refuse plan options this kind cannot build (before any work)."""

    def inspect(self, plan, model=None, shapes=None) -> str:
        """The text `f3compile inspect` prints."""
        self.refuse("inspect")

    # -- compile and export ------------------------------------------------------------------
    def compile(self, model, plan, options, *, plan_path: Path | None = None, output_dir: Path | None = None):
        """Compile `plan` (None: dense); with `output_dir`, also write the build. Returns the compiled model."""
        self.refuse("compile")

    def export(self, source, plan, options, config, output_dir: Path, *, plan_path: Path | None = None,
               progress: bool = False) -> dict:
        """Build, verify and write the artifacts of `config.target`; returns the manifest."""
        self.refuse("export")

    def describe_build(self, manifest: dict, output: Path, verb: str) -> list[str]:
        """The lines `compile` and `export` (`verb`) print about the build they wrote to `output`."""
        return []

    def build_summary(self, manifest: dict, output: Path, verb: str, config=None) -> str:
        """The final line's description of a build written to `output` (`verb`: compile or export)."""
        return f"built {output}"

    # -- run ----------------------------------------------------------------------------------
    def runtime(self, build: Path, backend: str = "torch", device: str = "cpu"):
        """The runtime of a build directory of this kind."""
        self.refuse("generate")

    def generate(self, build: Path, prompt: str, options):
        """A `Video` generated from the build."""
        self.refuse("generate")

    def bench(self, model, plans: list, options) -> "BenchResult":
        """Dense vs pruned, side by side."""
        self.refuse("bench")

    def evaluate(self, model, variants: list, prompts: list[dict], config, measures: str, log) -> dict:
        self.refuse("eval")


class BenchResult:
    """Rows of a benchmark (the JSON `bench --json` writes), their text and a one-line summary."""

    def __init__(self, rows: list[dict], text: str, summary: str, extra: dict | None = None):
        self.rows, self.text, self.summary, self.extra = rows, text, summary, extra or {}

    def to_json(self, spec: str) -> dict:
        return {"model": spec, **self.extra, "results": self.rows}


class Video:
    """Frames generated from a build: (F, H, W, 3) in [0, 1]; `latents` where the model has them."""

    def __init__(self, frames, summary: str, latents=None):
        self.frames, self.summary, self.latents = frames, summary, latents

    def save(self, path: Path, fps: int = 8) -> None:
        """Write .gif, .mp4 or .png (frames side by side) atomically: a hidden temporary file beside
        `path`, renamed into place."""
        from ..runtime import save_video

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp{path.suffix.lower()}")
        try:
            save_video(self.frames, tmp, fps=fps)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)

    def save_latents(self, path: Path) -> None:
        """Write the final latents as safetensors."""
        if self.latents is None:
            raise F3Error("this build generates no latents to save")
        from safetensors.torch import save_file

        save_file({"latents": self.latents.contiguous()}, str(path))
