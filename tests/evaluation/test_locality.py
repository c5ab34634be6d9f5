"""Locality metrics: exact values on hand-made edits."""

from __future__ import annotations

import math

import pytest
import torch

from counterfactory.errors import InputError
from counterfactory.evaluation.locality import LOCALITY_KEYS, locality_metrics, locality_per_image


def _pair(seed=0, b=2, size=32):
    g = torch.Generator().manual_seed(seed)
    src = torch.rand(b, 3, size, size, generator=g)
    mask = torch.zeros(b, 1, size, size)
    mask[:, :, 8:16, 8:20] = 1
    return src, mask


def test_paste_back_edit_is_perfectly_local():
    src, mask = _pair()
    res = torch.where(mask > 0.5, 1.0 - src, src)  # change every mask pixel a lot, nothing outside
    m = locality_metrics(src, res, mask, change_threshold=0.0)
    assert set(LOCALITY_KEYS) <= set(m)
    assert m["outside_mask_max_abs_change"] == 0.0
    assert m["outside_mask_mean_abs_change"] == 0.0
    assert m["outside_psnr"] == math.inf
    assert m["outside_ssim"] == pytest.approx(1.0, abs=1e-9)
    changed = ((res - src).abs().amax(1, keepdim=True) > 0).float()
    frac = float((changed * mask).sum() / mask.sum())
    assert m["mask_changed_fraction"] == pytest.approx(frac)
    assert m["change_mask_iou"] == pytest.approx(frac)
    assert m["outside_changed_fraction"] == 0.0 and m["n"] == 2


def test_known_values_outside_change():
    src, mask = _pair(b=1)
    res = src.clone()
    res[:, :, 0, 0] = (src[:, :, 0, 0] + 0.5).clamp(max=1.0)  # one outside pixel
    res = torch.where(mask > 0.5, (src + 0.2).clamp(max=1.0), res)
    per = locality_per_image(src, res, mask, change_threshold=0.1)
    d = (res - src).abs()[0, :, 0, 0]
    n_out = 32 * 32 - 8 * 12
    assert per["outside_mask_max_abs_change"].item() == pytest.approx(float(d.max()), abs=1e-6)
    assert per["outside_mask_mean_abs_change"].item() == pytest.approx(float(d.sum()) / (n_out * 3), rel=1e-5)
    mse = float((d**2).sum()) / (n_out * 3)
    assert per["outside_psnr"].item() == pytest.approx(10 * math.log10(1 / mse), rel=1e-5)
    assert per["outside_ssim"].item() < 1.0
    assert per["change_mask_iou"].item() <= 1.0


def test_no_change_and_empty_mask():
    src, mask = _pair(b=1)
    per = locality_per_image(src, src, torch.zeros_like(mask))
    assert math.isnan(per["mask_changed_fraction"].item())
    assert per["change_mask_iou"].item() == 1.0  # nothing changed, nothing asked


def test_bad_shapes_raise_input_error():
    src, mask = _pair()
    with pytest.raises(InputError):
        locality_metrics(src, src[:, :, :16], mask)
    with pytest.raises(InputError):
        locality_metrics(src, src, mask[:, :, :16])
    with pytest.raises(InputError):
        locality_metrics(src, src, mask, change_threshold=2.0)
