"""What a painted region looks like against its surroundings: contrast and grain, for real and generated defects.

Two per-image numbers, comparable between a generated defect and a real one of the same type:

- :func:`ring_contrast`: mean luminance inside the mask minus the mean in a ring just outside it (signed; real
  cracks and blowholes on Magnetic Tile are darker than their surroundings, so negative).
- :func:`grain_ratio`: mean absolute high-pass luminance (image minus its 5×5 box blur) in the mask's interior,
  over the same in a ring around the mask. About 1 when the region carries the surface's grain; far below 1 for
  a smooth fill; above 1 for fine detail such as thin cracks. A generator whose fills are smoother than the
  real defects of the type gives a detector a cue ("smooth patch = defect") that real defects do not carry.
"""

from __future__ import annotations

import torch

from ..io.images import high_pass
from ..io.masks import dilate

APPEARANCE_KEYS = ("ring_contrast", "grain_ratio")


def _luminance(image: torch.Tensor) -> torch.Tensor:
    return image.mean(dim=0)


def ring_contrast(image: torch.Tensor, mask: torch.Tensor, width: int = 3) -> float:
    """(3,H,W) image in [0,1], (1,H,W) mask → inside mean − ring mean of the luminance (NaN if either is empty)."""
    lum = _luminance(image)
    m = mask[0] > 0.5
    ring = (dilate(mask, width)[0] > 0.5) & ~m
    if m.sum() == 0 or ring.sum() == 0:
        return float("nan")
    return float(lum[m].mean() - lum[ring].mean())


def grain_ratio(image: torch.Tensor, mask: torch.Tensor, width: int = 4, border: int = 2) -> float:
    """High-pass energy in the mask's interior (``border`` px in from its edge) over that in a ring
    ``border``..``width`` px outside it. NaN when the interior has fewer than 4 pixels (a mask thinner than
    2·border: the edge of the fill would dominate) or the ring is empty."""
    hp = high_pass(_luminance(image)[None]).abs()[0]
    m = mask[0] > 0.5
    interior = m & ~(dilate((~m).float()[None], border)[0] > 0.5)
    ring = (dilate(mask, width)[0] > 0.5) & ~(dilate(mask, border)[0] > 0.5)
    if interior.sum() < 4 or ring.sum() == 0:
        return float("nan")
    return float(hp[interior].mean() / hp[ring].mean().clamp_min(1e-8))


def appearance(image: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    return {"ring_contrast": ring_contrast(image, mask), "grain_ratio": grain_ratio(image, mask)}
