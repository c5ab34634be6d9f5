"""Perlin and copy-paste synthetic anomalies: deterministic, masks match the changed pixels."""

from __future__ import annotations

import torch

from counterfactory.evaluation.anomalies import copy_paste_anomaly, perlin_anomaly, perlin_mask, perlin_noise


def test_perlin_noise_is_smooth_bounded_and_seeded():
    n1 = perlin_noise((64, 48), (4, 3), torch.Generator().manual_seed(0))
    n2 = perlin_noise((64, 48), (4, 3), torch.Generator().manual_seed(0))
    assert n1.shape == (64, 48) and torch.equal(n1, n2)
    assert n1.abs().max() <= 1.5
    assert (n1[1:] - n1[:-1]).abs().max() < 0.3  # smooth: neighbouring pixels differ little


def test_perlin_anomaly_changes_only_inside_its_mask():
    img = torch.full((3, 64, 64), 0.5)
    pool = [torch.randint(0, 256, (3, 80, 80), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))]
    for seed in range(6):
        out, mask = perlin_anomaly(img, torch.Generator().manual_seed(seed), texture_pool=pool)
        assert mask.shape == (1, 64, 64) and mask.sum() >= 1
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(out * (1 - mask), img * (1 - mask))
        again, _ = perlin_anomaly(img, torch.Generator().manual_seed(seed), texture_pool=pool)
        assert torch.equal(out, again)
    assert perlin_mask((32, 32), torch.Generator().manual_seed(0)).sum() > 0


def test_perlin_texture_is_gray_on_gray_images():
    img = torch.full((3, 32, 32), 0.4)
    for seed in range(8):
        out, _ = perlin_anomaly(img, torch.Generator().manual_seed(seed), texture_pool=None)
        assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


def test_copy_paste_moves_the_defect_with_its_contrast():
    bg = torch.full((3, 48, 48), 0.7)
    src = torch.full((3, 40, 40), 0.3)
    dmask = torch.zeros(1, 40, 40)
    dmask[:, 10:14, 5:30] = 1
    src[:, 10:14, 5:30] = 0.1  # dark defect, 0.2 below its background
    out, mask = copy_paste_anomaly(bg, src, dmask, torch.Generator().manual_seed(0))
    assert mask.sum() == dmask.sum()
    assert torch.equal(out * (1 - mask), bg * (1 - mask))
    inside = out[:, mask[0] > 0]
    assert torch.allclose(inside, torch.full_like(inside, 0.5), atol=1e-6)  # 0.7 background − 0.2 contrast
