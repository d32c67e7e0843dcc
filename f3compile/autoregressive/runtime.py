"""Run a CogVideo build directory as a deployment would: manifest + prefill/decode artifacts, the
loops of `sampling` (`generate_tokens` for stage 1, `interpolate_video` for a stage-2 build), and
the stand-in decoder named by the manifest's sizes."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import F3Error
from ..models.cogvideo import ByteTextTokenizer, CogVideoConfig, PaletteDecoder
from .export import load_ar_manifest, onnx_callables
from .program import Session, slot_tables
from .sampling import Strategy, generate_tokens, interpolate_video, interpolation_text

BACKENDS = ("torch", "onnxruntime")


class ARRuntime:
    """`generate(prompt)` → image tokens; `decode(tokens)` → frames."""

    def __init__(self, build_dir: str | Path, backend: str = "torch"):
        self.directory = Path(build_dir)
        self.manifest = load_ar_manifest(self.directory)
        self.config = CogVideoConfig.from_dict(self.manifest["config"], "manifest config")
        self.batch = int(self.manifest["batch"])
        if backend not in BACKENDS:
            raise F3Error(f"autoregressive builds run on {', '.join(BACKENDS)}, not {backend!r}")
        programs = self.manifest["programs"]
        if backend == "onnxruntime":
            if "onnx" not in programs["prefill"]["files"]:
                raise F3Error(f"{self.directory} has no ONNX programs; build it with `f3compile export --target onnx`")
            self.prefill, self.decode_step = onnx_callables(self.directory, self.manifest)
        else:
            import torch.export

            self.prefill = torch.export.load(str(self.directory / programs["prefill"]["files"]["pt2"]["path"])).module()
            self.decode_step = torch.export.load(str(self.directory / programs["decode"]["files"]["pt2"]["path"])).module()
        self.backend = backend
        self.tables = slot_tables(self.config, self.manifest["cache"]["tensors"])

    @property
    def cache_bytes(self) -> int:
        return int(self.manifest["cache"]["bytes"])

    @property
    def stage(self) -> int:
        return self.config.stage

    @torch.no_grad()
    def generate(self, prompt: str, seed: int = 0, strategy: Strategy | None = None) -> torch.Tensor:
        """(frames, grid²) image tokens of one video (the build's batch runs the prompt in every row)."""
        text = ByteTextTokenizer(self.config)([prompt] * self.batch)
        session = Session(self.prefill, self.decode_step, self.tables)
        return generate_tokens(self.config, session, text, seed=seed, strategy=strategy)[0]

    @torch.no_grad()
    def interpolate(self, prompt: str, frames: torch.Tensor, rounds: int = 3, seed: int = 0,
                    strategy: Strategy | None = None) -> torch.Tensor:
        """A stage-2 build: (K, grid²) key-frame tokens → ((K − 1)·2^rounds + 1, grid²)."""
        c = self.config
        if c.stage != 2:
            raise F3Error(f"{self.directory} is a stage-1 build; interpolation needs a stage-2 build")
        if frames.shape[-1] != c.frame_tokens:
            raise F3Error(f"the key frames have {frames.shape[-1]} tokens each, {self.directory} takes {c.frame_tokens}")
        tokenizer = ByteTextTokenizer(c)
        rows = frames.unsqueeze(0).expand(self.batch, -1, -1)
        out = interpolate_video(c, lambda: Session(self.prefill, self.decode_step, self.tables),
                                lambda duration: tokenizer([interpolation_text(prompt, duration)] * self.batch),
                                rows, rounds=rounds, seed=seed, strategy=strategy)
        return out[0]

    def frames(self, tokens: torch.Tensor) -> torch.Tensor:
        """(frames, H, W, 3) in [0, 1] for `save_video`."""
        return PaletteDecoder(self.config)(tokens.unsqueeze(0))[0].permute(0, 2, 3, 1)
