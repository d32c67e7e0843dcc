"""The probe: a small video classifier of the moving-shapes domain (colour, shape, direction).

Trained on real clips only (`tools/train_reference.py probe`). Its accuracy on generated videos
measures text-video alignment; its penultimate features define the Fréchet distance of
`f3compile eval` (the FVD analogue of this domain).
"""

from __future__ import annotations

import torch
from torch import nn

from .domain import COLORS, DIRECTIONS, SHAPES

FEATURES = 128
HEADS = {"color": tuple(COLORS), "shape": SHAPES, "direction": DIRECTIONS}


class Probe(nn.Module):
    """(B, F, H, W, 3) frames in [0, 1] → features (B, 128) and logits per attribute."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(3, 32, 3, padding=1), nn.GELU(),
            nn.Conv3d(32, 64, 3, stride=(1, 2, 2), padding=1), nn.GELU(),
            nn.Conv3d(64, 128, 3, stride=(2, 2, 2), padding=1), nn.GELU(),
            nn.Conv3d(128, 128, 3, padding=1), nn.GELU(),
        )
        self.features = nn.Sequential(nn.Linear(128, FEATURES), nn.GELU())
        self.heads = nn.ModuleDict({name: nn.Linear(FEATURES, len(classes)) for name, classes in HEADS.items()})

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.permute(0, 4, 1, 2, 3) * 2 - 1  # (B, 3, F, H, W) in [-1, 1]
        return self.features(self.body(x).mean(dim=(2, 3, 4)))

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        features = self.embed(frames)
        return features, {name: head(features) for name, head in self.heads.items()}

    @torch.no_grad()
    def classify(self, frames: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, dict[str, list[str]]]:
        """(features (N, 128), predicted labels per attribute) for frames (N, F, H, W, 3)."""
        features, predictions = [], {name: [] for name in HEADS}
        for start in range(0, len(frames), batch):
            f, logits = self(frames[start:start + batch].float())
            features.append(f)
            for name, classes in HEADS.items():
                predictions[name] += [classes[i] for i in logits[name].argmax(-1).tolist()]
        return torch.cat(features), predictions


def load_probe() -> Probe:
    """The committed probe, its weights checked against the recorded sha256."""
    from safetensors.torch import load_file

    from .models import checked_weights

    probe = Probe()
    probe.load_state_dict(load_file(str(checked_weights("probe"))))
    return probe.eval()
