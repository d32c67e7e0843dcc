"""Video quality measures of the moving-shapes domain (all on (N, F, H, W, 3) frames in [0, 1])."""

from __future__ import annotations

import numpy as np
import torch

from ..models.reference.domain import BACKGROUND


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a (N, D) and b (M, D).

    ‖μa − μb‖² + tr(Σa + Σb − 2 (Σa^½ Σb Σa^½)^½), with the matrix square roots taken by
    symmetric eigendecomposition (both covariances are PSD), in float64.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)

    def sqrt_psd(m: np.ndarray) -> np.ndarray:
        values, vectors = np.linalg.eigh((m + m.T) / 2)
        return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T

    root_a = sqrt_psd(cov_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-video PSNR in dB between frame tensors a and b (N, F, H, W, 3) in [0, 1]; capped at 100."""
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).float()


def temporal_consistency(frames: torch.Tensor, max_shift: int = 2) -> torch.Tensor:
    """Per-video motion-compensated frame-to-frame similarity in [−1, 1] (1: rigid motion).

    For each pair of consecutive frames, the foreground (frame − background colour) of frame t is
    shifted by every integer (dx, dy) with |dx|, |dy| ≤ `max_shift`; the best cosine similarity
    with frame t+1's foreground is kept. A shape that translates without changing colour, size
    or outline scores ≈ 1; flicker, morphing and appearing/vanishing objects score lower.
    Frames without foreground in both frames count as 1 (nothing to be inconsistent about).
    """
    background = torch.tensor(BACKGROUND, dtype=torch.float32)
    fg = (frames.float() - background).permute(0, 1, 4, 2, 3)  # (N, F, 3, H, W)
    before, after = fg[:, :-1], fg[:, 1:]
    padded = torch.nn.functional.pad(before.flatten(0, 1), (max_shift,) * 4).unflatten(0, before.shape[:2])
    height, width = fg.shape[-2:]
    best = torch.full(before.shape[:2], -1.0)
    after_flat = after.flatten(2)
    for dy in range(2 * max_shift + 1):
        for dx in range(2 * max_shift + 1):
            shifted = padded[..., dy:dy + height, dx:dx + width].flatten(2)
            cosine = torch.nn.functional.cosine_similarity(shifted, after_flat, dim=-1, eps=1e-8)
            best = torch.maximum(best, cosine)
    empty = (before.flatten(2).norm(dim=-1) < 1e-3) & (after_flat.norm(dim=-1) < 1e-3)
    best = torch.where(empty, torch.ones_like(best), best)
    return best.mean(1)


def accuracy(predicted: dict[str, list[str]], truth: list[dict]) -> dict[str, float]:
    """Share of videos whose predicted colour / shape / direction / all three match `truth`."""
    names = ("color", "shape", "direction")
    hits = {name: [p == t[name] for p, t in zip(predicted[name], truth)] for name in names}
    result = {name: float(np.mean(hits[name])) for name in names}
    result["all"] = float(np.mean([all(hits[name][i] for name in names) for i in range(len(truth))]))
    return result


def bootstrap_accuracy(predicted: dict[str, list[str]], truth: list[dict], groups: list[int],
                       resamples: int = 2000, seed: int = 0, level: float = 0.95) -> dict[str, list[float]]:
    """Percentile bootstrap interval of each accuracy in `accuracy`, resampling whole groups.

    `groups[i]` names the prompt video i was generated for: the prompts are resampled with
    replacement (each drawn prompt brings all its seeds' videos), so the interval accounts for
    videos of one prompt being correlated. Fixed `seed`: the same data give the same interval."""
    names = ("color", "shape", "direction")
    hits = {name: np.array([p == t[name] for p, t in zip(predicted[name], truth)], dtype=np.float64) for name in names}
    hits["all"] = np.prod([hits[name] for name in names], axis=0)
    groups = np.asarray(groups)
    labels = np.unique(groups)
    members = [np.flatnonzero(groups == label) for label in labels]
    sums = {name: np.array([values[m].sum() for m in members]) for name, values in hits.items()}
    sizes = np.array([len(m) for m in members], dtype=np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(labels), size=(resamples, len(labels)))
    tail = (1 - level) / 2 * 100
    out = {}
    for name, per_group in sums.items():
        means = per_group[draws].sum(1) / sizes[draws].sum(1)
        out[name] = [float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))]
    return out


def relative_l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row ‖a − b‖ / ‖b‖ (rows along the first axis), in float64."""
    diff = (a.double() - b.double()).flatten(1).norm(dim=1)
    return (diff / b.double().flatten(1).norm(dim=1).clamp_min(1e-12)).float()


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7, sigma: float = 1.5) -> torch.Tensor:
    """Per-video structural similarity of frames a and b (N, F, H, W, 3) in [0, 1].

    Wang et al. (2004): Gaussian-weighted local means, variances and covariance (σ = `sigma`,
    a `window`×`window` window, shrunk to fit small frames, valid positions only), constants
    C1 = (0.01)², C2 = (0.03)² for a data range of 1; the SSIM map averaged over positions, colour
    channels and frames.
    """
    size = min(window, a.shape[2], a.shape[3])
    size -= (size + 1) % 2  # odd
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-coords**2 / (2 * sigma**2))
    g = (g / g.sum())
    kernel = (g[:, None] * g[None, :])[None, None]  # (1, 1, k, k)

    def planes(x: torch.Tensor) -> torch.Tensor:  # (N*F*3, 1, H, W)
        return x.double().permute(0, 1, 4, 2, 3).reshape(-1, 1, x.shape[2], x.shape[3])

    x, y = planes(a), planes(b)

    def blur(z: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(z, kernel)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    value = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return value.reshape(a.shape[0], -1).mean(1).float()
