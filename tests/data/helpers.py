"""Small dataset folders built in code for the data tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from counterfactory.data.mvtec import write_mvtec_sample


def blob_mask(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r).astype(np.float32)


def noise_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.uniform(0.2, 0.8, (h, w, 3)).astype(np.float32)


def make_mvtec(
    root: Path, types=("crack", "spot"), n_per_type: int = 4, n_good: int = 3, size: int = 32, stems=None
) -> Path:
    """A tiny MVTec category at ``root`` (train/good, test/good, test/<type> + ground_truth)."""
    rng = np.random.default_rng(0)
    for i in range(n_good):
        write_mvtec_sample(root, "train", "good", f"{i:03d}", noise_image(rng, size, size))
        write_mvtec_sample(root, "test", "good", f"{i:03d}", noise_image(rng, size, size))
    for t in types:
        for i, stem in enumerate(stems or [f"{k:03d}" for k in range(n_per_type)]):
            m = blob_mask(size, size, size / 2, size / 2, 3 + i % 3)
            write_mvtec_sample(root, "test", t, stem, noise_image(rng, size, size), m)
    return root


def make_magnetic_tile(root: Path, n: dict | None = None, size: int = 24) -> Path:
    """A tiny Magnetic Tile folder: MT_<Type>/Imgs/<stem>.jpg + noisy same-stem .png masks; MT_Free all-zero masks."""
    n = n or {"Blowhole": 4, "Crack": 3, "Free": 6}
    rng = np.random.default_rng(1)
    for t, k in n.items():
        d = root / f"MT_{t}" / "Imgs"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(k):
            stem = f"exp1_num_{(i + 1) * 7}"
            Image.fromarray((rng.uniform(0.2, 0.8, (size, size + 4)) * 255).astype(np.uint8)).convert(
                "RGB"
            ).save(d / f"{stem}.jpg")
            if t == "Free":
                m = np.zeros((size, size + 4), np.uint8)
            else:  # noisy like the real masks: background 0..40, defect 200..255
                m = rng.integers(0, 40, (size, size + 4)).astype(np.uint8)
                m[5:10, 6:12] = rng.integers(200, 256, (5, 6))
            Image.fromarray(m).save(d / f"{stem}.png")
    return root
