"""Random inpainting masks for self-supervised base training: strokes, blobs and boxes.

Inpainting models learn to fill arbitrary regions from masks like these (free-form strokes as in
LaMa / SD-inpainting training, plus blobs and boxes). Thin strokes matter here: cracks and scratches are thin.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

MASK_KINDS = ("stroke", "blob", "box")


def _stroke(rng: np.random.Generator, size: int) -> np.ndarray:
    m = np.zeros((size, size), np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    for _ in range(rng.integers(1, 4)):
        p = rng.uniform(0.15, 0.85, 2) * size
        theta = rng.uniform(0, 2 * np.pi)
        width = rng.choice([rng.uniform(0.6, 1.6), rng.uniform(1.5, 5.0)]) * size / 64
        for _ in range(rng.integers(2, 6)):
            theta += rng.normal(0, 0.6)
            length = rng.uniform(0.08, 0.3) * size
            q = p + length * np.array([np.cos(theta), np.sin(theta)])
            d = q - p
            t = np.clip(((xx - p[0]) * d[0] + (yy - p[1]) * d[1]) / max(float(d @ d), 1e-6), 0, 1)
            dist = np.hypot(xx - (p[0] + t * d[0]), yy - (p[1] + t * d[1]))
            m = np.maximum(m, (dist <= width).astype(np.float32))
            p = np.clip(q, 0, size - 1)
    return m


def _blob(rng: np.random.Generator, size: int) -> np.ndarray:
    noise = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), sigma=size / 16)
    yy, xx = np.mgrid[0:size, 0:size] / size
    c = rng.uniform(0.25, 0.75, 2)
    r = rng.uniform(0.08, 0.28)
    field = 1 - np.hypot(xx - c[0], yy - c[1]) / r + noise / (noise.std() + 1e-6) * 0.35
    return (field > 0).astype(np.float32)


def _box(rng: np.random.Generator, size: int) -> np.ndarray:
    m = np.zeros((size, size), np.float32)
    w, h = (rng.uniform(0.1, 0.5, 2) * size).astype(int) + 1
    x0, y0 = rng.integers(0, size - w + 1), rng.integers(0, size - h + 1)
    m[y0 : y0 + h, x0 : x0 + w] = 1
    return m


def random_mask(rng: np.random.Generator, size: int, kinds: tuple[str, ...] = MASK_KINDS,
                min_area: float = 0.005, max_area: float = 0.5) -> np.ndarray:
    """A (size,size) float32 {0,1} mask of one random kind, area within [min_area, max_area] of the image."""
    makers = {"stroke": _stroke, "blob": _blob, "box": _box}
    for _ in range(20):
        m = makers[kinds[rng.integers(len(kinds))]](rng, size)
        a = float(m.mean())
        if min_area <= a <= max_area:
            return m
    m = np.zeros((size, size), np.float32)
    q = size // 4
    m[q : 3 * q, q : 3 * q] = 1
    return m
