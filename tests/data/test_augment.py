"""Mask-aware augmentation: one transform for image and mask, masks stay binary, defects are never cut off."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from counterfactory.data.augment import AugmentConfig, AugmentParams, MaskAwareAugment
from counterfactory.data.surfaces import render_sample
from counterfactory.errors import ConfigError, InputError

from .helpers import blob_mask


def _forward(params: AugmentParams, h: int, w: int, ys, xs):
    """Independent re-derivation of where pixel centres go: flips, rotate+scale about the centre, shift."""
    x = xs + 0.5
    y = ys + 0.5
    if params.hflip:
        x = w - x
    if params.vflip:
        y = h - y
    a = math.radians(params.angle)
    cx, cy = x - w / 2, y - h / 2
    qx = params.scale * (math.cos(a) * cx - math.sin(a) * cy) + w / 2 + params.tx
    qy = params.scale * (math.sin(a) * cx + math.cos(a) * cy) + h / 2 + params.ty
    return qx, qy


def _cases():
    """(image (3,H,W), mask (1,H,W)) pairs: synthetic defects, blobs near edges and corners, non-square."""
    out = []
    for i, t in enumerate(("crack", "scratch", "spot", "chip")):
        img, m = render_sample(np.random.default_rng(i), 64, t)
        out.append((torch.from_numpy(img).permute(2, 0, 1).contiguous(), torch.from_numpy(m)[None]))
    rng = np.random.default_rng(0)
    for h, w, cy, cx, r in [(48, 48, 4, 4, 3), (48, 48, 24, 46, 5), (40, 72, 20, 36, 6), (64, 64, 60, 10, 4)]:
        out.append(
            (
                torch.from_numpy(rng.random((3, h, w), dtype=np.float32)),
                torch.from_numpy(blob_mask(h, w, cy, cx, r))[None],
            )
        )
    return out


CASES = _cases()
AUG = MaskAwareAugment(
    AugmentConfig(hflip=True, vflip=True, rotate_degrees=25.0, scale=(0.9, 1.1), translate=True)
)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_properties_over_many_draws(case):
    image, mask = CASES[case]
    h, w = mask.shape[-2:]
    g = torch.Generator().manual_seed(case)
    rotated = 0
    for _ in range(12):
        img2, m2, p = AUG(image, mask, g)
        assert img2.shape == image.shape and m2.shape == mask.shape
        # mask stays binary
        assert set(torch.unique(m2).tolist()) <= {0.0, 1.0}
        # re-applying the same params gives the same result (the property the trainer relies on)
        img3, m3 = AUG.apply(p, image, mask)
        assert torch.equal(img2, img3) and torch.equal(m2, m3)
        # the mask moved with the image: transform the mask as an image channel (bilinear) with the same
        # params; where that is clearly in / out, the nearest-neighbour mask agrees
        soft, _ = AUG.apply(p, mask.float())
        assert torch.all(m2[soft >= 0.999] == 1) and torch.all(m2[soft <= 0.001] == 0)
        # defect never cropped out: every defect pixel centre lands inside the frame
        ys, xs = np.nonzero(mask[0].numpy())
        qx, qy = _forward(p, h, w, ys, xs)
        assert qx.min() >= 0 and qx.max() <= w and qy.min() >= 0 and qy.max() <= h
        assert m2.sum() >= 0.6 * mask.sum() * p.scale**2
        # geometric only: values are interpolations of the source (no photometric change)
        assert img2.min() >= image.min() - 1e-6 and img2.max() <= image.max() + 1e-6
        # parameters stay in their configured ranges
        assert abs(p.angle) <= 25.0 and 0.9 <= p.scale <= 1.1
        rotated += p.angle != 0.0
    assert rotated > 0


def test_flip_only_is_exact_and_same_seed_same_result():
    image, mask = CASES[2]
    p = AugmentParams(hflip=True, vflip=True)
    img2, m2 = AUG.apply(p, image, mask)
    assert torch.equal(img2, image.flip(-1).flip(-2)) and torch.equal(m2, mask.flip(-1).flip(-2))
    a = AUG(image, mask, torch.Generator().manual_seed(3))
    b = AUG(image, mask, torch.Generator().manual_seed(3))
    assert a[2] == b[2] and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_switches_are_respected():
    image, mask = CASES[1]
    aug = MaskAwareAugment(
        AugmentConfig(hflip=False, vflip=False, rotate_degrees=0.0, scale=(1.0, 1.0), translate=False)
    )
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        img2, m2, p = aug(image, mask, g)
        assert p == AugmentParams() and torch.equal(img2, image) and torch.equal(m2, mask)
    only_h = MaskAwareAugment(
        AugmentConfig(hflip=True, vflip=False, rotate_degrees=0.0, scale=(1.0, 1.0), translate=False)
    )
    ps = [only_h(image, mask, g)[2] for _ in range(16)]
    assert any(p.hflip for p in ps) and not any(p.vflip for p in ps)


def test_defect_filling_the_frame_falls_back_to_flips():
    mask = torch.ones(1, 32, 32)
    image = torch.rand(3, 32, 32)
    aug = MaskAwareAugment(
        AugmentConfig(rotate_degrees=25.0, scale=(1.0, 1.1))
    )  # no zoom-out that would fit it
    img2, m2, p = aug(image, mask, torch.Generator().manual_seed(0))
    assert p.angle == 0 and p.scale == 1 and p.tx == 0 and p.ty == 0
    assert torch.equal(m2, mask)


def test_no_mask_and_bad_input():
    image = torch.rand(3, 32, 32)
    img2, m2, p = AUG(image, None, torch.Generator().manual_seed(0))
    assert m2 is None and img2.shape == image.shape
    with pytest.raises(InputError, match="mask size"):
        AUG(image, torch.zeros(1, 16, 16))
    with pytest.raises(InputError, match="image"):
        AUG(torch.rand(32, 32), None)
    for bad in (
        dict(rotate_degrees=-5),
        dict(scale=(1.2, 0.8)),
        dict(scale=(0.0, 1.0)),
        dict(hflip="yes"),
        dict(max_translate=2),
    ):
        with pytest.raises(ConfigError):
            AugmentConfig(**bad)


def test_dihedral_gives_the_eight_symmetries_and_refuses_other_k():
    from counterfactory.data.augment import dihedral
    from counterfactory.errors import InputError

    x = torch.arange(6.0).view(1, 2, 3)
    outs = [dihedral(x, k) for k in range(8)]
    assert len({tuple(o.flatten().tolist()) + tuple(o.shape) for o in outs}) == 8  # all distinct
    assert torch.equal(outs[0], x) and torch.equal(outs[4], x.flip(-1))
    assert torch.equal(outs[1], torch.rot90(x, 1, dims=(-2, -1)))
    assert all(torch.equal(dihedral(dihedral(x, k), k), x) for k in range(4, 8))  # every mirror is its own inverse
    for bad in (-1, 8, 2.0, True, "1"):
        with pytest.raises(InputError, match="k="):
            dihedral(x, bad)
