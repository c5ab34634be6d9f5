"""The data variants a causal run trains and is evaluated on: ``single``, ``pair`` and ``pair-corr``.

- ``single``: one real digit (28x28), one structure.
- ``pair``: every digit next to a fixed random partner from the same split (28x56); the two areas are
  independent (see :func:`counterfactory.data.morphomnist.build_structures`).
- ``pair-corr``: every digit next to a partner of **similar area**: the partner is drawn (seeded) among the
  digits whose area rank in the split lies within ±1/8 of the split size, so the two structures' sizes co-vary
  (Pearson r = 0.92 on the train split, 0.91 on val and test) the way the sizes of two organs of one patient do. Nothing in the
  causal model links the two areas (an intervention on one must leave the other), but a generator or a
  regressor trained on such data can mix them up — the regime where a segmentor's per-pixel guide should help.
"""

from __future__ import annotations

import numpy as np

from ..data.morphomnist import MorphoMNIST, StructureData, build_structures, measure, split_indices
from ..errors import input_error

DATA_VARIANTS = {"single": 1, "pair": 2, "pair-corr": 2}  # name → number of structures
CORR_WINDOW = 1 / 8  # pair-corr: partner rank within ± this fraction of the split
CORR_SEED = 11


def data_variant_name(structures: int, pairing: str = "random") -> str:
    """``(structures, pairing)`` → the data variant name (refused when it does not exist)."""
    if structures not in (1, 2):
        raise input_error("structures", structures, "1 (single digit) or 2 (two digits side by side)")
    if pairing not in ("random", "correlated"):
        raise input_error("pairing", pairing, "'random' or 'correlated'")
    if structures == 1:
        if pairing != "random":
            raise input_error("pairing", pairing, "'random' with one structure (pairing applies to two digits)")
        return "single"
    return "pair" if pairing == "random" else "pair-corr"


def correlated_partners(data: MorphoMNIST, idx: np.ndarray, seed: int = CORR_SEED) -> np.ndarray:
    """For every index of a split, a partner (never itself) whose area rank is within ±window of its own."""
    import torch

    n = len(idx)
    if n < 2:
        raise input_error("split size", n, "at least 2 images to make pairs")
    x = torch.from_numpy(data.images[idx].astype(np.float32) / 255.0)[:, None]
    area = measure(x, 1)[0][:, 0].numpy()
    order = np.argsort(area, kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    window = max(1, int(round(n * CORR_WINDOW)))
    rng = np.random.default_rng(seed)
    offset = rng.integers(1, window + 1, n) * rng.choice(np.array([-1, 1]), n)
    target = rank + offset
    target = np.where((target < 0) | (target >= n), rank - offset, target)  # reflect at the ends
    target = np.clip(target, 0, n - 1)
    target = np.where(target == rank, (rank + 1) % n, target)
    return idx[order[target]]


def build_variant(data: MorphoMNIST, split: str, variant: str) -> StructureData:
    """The ``split`` of data variant ``variant`` (one of :data:`DATA_VARIANTS`)."""
    if variant not in DATA_VARIANTS:
        raise input_error("data variant", variant, f"one of {', '.join(DATA_VARIANTS)}")
    if variant != "pair-corr":
        return build_structures(data, split, DATA_VARIANTS[variant])
    idx = split_indices(len(data), split)
    cols = [idx, correlated_partners(data, idx)]
    import torch

    images = np.concatenate([data.images[c] for c in cols], axis=2)
    x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
    area, intensity = measure(x, 2)
    src = np.stack(cols, axis=1)
    return StructureData(images=x, area=area, intensity=intensity, digit=torch.from_numpy(data.labels[src]),
                         source=torch.from_numpy(src), csv_intensity=torch.from_numpy(data.intensity[src]))


def run_data_variant(meta: dict) -> str:
    """The data variant a checkpoint was trained on (older checkpoints: by image width)."""
    if "data_variant" in meta:
        return meta["data_variant"]
    width = int(meta.get("vae_config", meta.get("predictor_config", {})).get("width", 28))
    return "single" if width == 28 else "pair"
