"""Contrast and grain of a masked region against its surroundings (evaluation/appearance.py)."""

from __future__ import annotations

import math

import torch

from counterfactory.evaluation.appearance import appearance, grain_ratio, ring_contrast


def _grain(seed: int, size: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (0.5 + 0.1 * torch.randn(1, size, size, generator=g)).clamp(0, 1).expand(3, -1, -1).clone()


def _box(size: int = 64, lo: int = 20, hi: int = 44) -> torch.Tensor:
    m = torch.zeros(1, size, size)
    m[:, lo:hi, lo:hi] = 1
    return m


def test_grain_kept_is_about_one_smooth_fill_is_far_below():
    img, mask = _grain(0), _box()
    assert 0.85 < grain_ratio(img, mask) < 1.15  # the region is the same noise as around it
    smooth = img.clone()
    smooth[:, 20:44, 20:44] = 0.5
    assert grain_ratio(smooth, mask) < 0.05
    fine = img.clone()
    fine[:, 20:44, 20:44] = (0.5 + 0.3 * torch.randn(1, 24, 24, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert grain_ratio(fine, mask) > 1.5


def test_contrast_sign_and_undefined_cases():
    img, mask = _grain(2), _box()
    dark = img.clone()
    dark[:, 20:44, 20:44] -= 0.3
    assert ring_contrast(dark, mask) < -0.25 < abs(ring_contrast(img, mask)) - 0.25
    thin = torch.zeros(1, 64, 64)
    thin[:, 10:50, 30:32] = 1  # 2 px wide: no interior 2 px in from the edge
    assert math.isnan(grain_ratio(img, thin)) and not math.isnan(ring_contrast(img, thin))
    assert math.isnan(ring_contrast(img, torch.zeros(1, 64, 64)))
    assert set(appearance(img, mask)) == {"ring_contrast", "grain_ratio"}
