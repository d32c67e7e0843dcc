"""The quality measures of `f3compile eval` against independent references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from f3compile.evaluation import metrics
from f3compile.models.reference.domain import Labels, make_clips, render_clip

FRECHET_REL = 1e-6  # float64 eigendecomposition vs scipy's sqrtm


def test_frechet_matches_scipy_reference():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 16))
    b = rng.normal(loc=0.3, scale=1.5, size=(150, 16)) @ rng.normal(size=(16, 16)) * 0.5
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * linalg.sqrtm(cov_a @ cov_b).real)
    assert metrics.frechet_distance(a, b) == pytest.approx(expected, rel=FRECHET_REL)


def test_frechet_is_zero_for_identical_sets_and_grows_with_shift():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(300, 8))
    assert abs(metrics.frechet_distance(a, a)) < 1e-8
    assert metrics.frechet_distance(a, a + 1.0) == pytest.approx(8.0, rel=1e-6)  # ‖Δμ‖² = 8, same covariance


def test_psnr_known_value_and_cap():
    a = torch.zeros(2, 8, 4, 4, 3)
    b = a.clone()
    b[0] += 0.1  # MSE 0.01 -> 20 dB
    values = metrics.psnr(a, b)
    assert values[0].item() == pytest.approx(20.0, abs=1e-4)
    assert values[1].item() == pytest.approx(100.0)


def test_temporal_consistency_high_for_real_clips_low_for_shuffled_noise():
    clips = torch.from_numpy(make_clips(20, seed=3)[0])
    real = metrics.temporal_consistency(clips)
    assert real.shape == (20,)
    assert real.min().item() > 0.9  # rigid motion of ≤ 1 px per frame is compensated
    # a clip whose frames show different shapes and colours is inconsistent
    mixed = torch.stack([torch.from_numpy(render_clip(Labels(s, c, "static"), seed=i))[0]
                         for i, (s, c) in enumerate([("circle", "red"), ("square", "blue"), ("triangle", "green"),
                                                     ("circle", "yellow")] * 2)])
    assert metrics.temporal_consistency(mixed[None]).item() < real.min().item() - 0.2


def test_accuracy_counts_each_attribute_and_all():
    truth = [{"color": "red", "shape": "circle", "direction": "left"},
             {"color": "blue", "shape": "square", "direction": "up"}]
    predicted = {"color": ["red", "blue"], "shape": ["circle", "circle"], "direction": ["left", "up"]}
    assert metrics.accuracy(predicted, truth) == {"color": 1.0, "shape": 0.5, "direction": 1.0, "all": 0.5}


def _ssim_by_loops(a: np.ndarray, b: np.ndarray, size: int, sigma: float = 1.5) -> float:
    """SSIM of two single-channel images by explicit loops over window positions (float64)."""
    coords = np.arange(size) - (size - 1) / 2
    g = np.exp(-coords**2 / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    values = []
    for i in range(a.shape[0] - size + 1):
        for j in range(a.shape[1] - size + 1):
            x, y = a[i:i + size, j:j + size], b[i:i + size, j:j + size]
            mx, my = (w * x).sum(), (w * y).sum()
            vx, vy = (w * (x - mx) ** 2).sum(), (w * (y - my) ** 2).sum()
            cxy = (w * (x - mx) * (y - my)).sum()
            c1, c2 = 0.01**2, 0.03**2
            values.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_matches_a_loop_reference_and_is_one_for_identical_videos():
    generator = torch.Generator().manual_seed(0)
    a = torch.rand((2, 3, 12, 10, 3), generator=generator)
    b = (a + 0.1 * torch.randn(a.shape, generator=generator)).clamp(0, 1)
    ours = metrics.ssim(a, b)
    for video in range(2):
        expected = np.mean([_ssim_by_loops(a[video, f, :, :, c].double().numpy(), b[video, f, :, :, c].double().numpy(), 7)
                            for f in range(3) for c in range(3)])
        assert float(ours[video]) == pytest.approx(expected, rel=1e-5)
    assert torch.allclose(metrics.ssim(a, a), torch.ones(2))
    assert float(metrics.ssim(a, (a + 0.3 * torch.randn(a.shape, generator=generator)).clamp(0, 1)).mean()) < float(ours.mean())


def test_relative_l2_per_row():
    b = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    a = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    assert metrics.relative_l2(a, b).tolist() == [0.0, 1.0]
