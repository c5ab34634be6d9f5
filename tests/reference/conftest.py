"""Fixtures for the reference-insertion tests: a tiny trained reference adapter and a hand-made dataset whose
defect boxes have known sizes (so replacement donors within ±15 % exist)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from counterfactory.data.mvtec import write_mvtec_sample

# held-out (last two thirds, by id) defects: sizes (w, h) chosen so that replacement has donors
DENT_SIZES = [(12, 12), (9, 9), (10, 10), (11, 10), (10, 11), (20, 8)]


def _texture(rng: np.random.Generator, size: int = 64, border: int = 6) -> np.ndarray:
    """A bright noisy surface with a dark band on the left (background for the foreground test)."""
    base = 0.55 + 0.05 * rng.standard_normal((size, size))
    base[:, :border] = 0.03
    return np.clip(np.repeat(base[..., None], 3, axis=2), 0, 1).astype(np.float32)


@pytest.fixture(scope="session")
def boxes_data(tmp_path_factory):
    """MVTec layout, 64 px: 3 train/good, 3 test/good, 6 'dent' defects (dark rectangles of DENT_SIZES)."""
    root = tmp_path_factory.mktemp("boxes_data") / "tiles"
    rng = np.random.default_rng(0)
    for i in range(3):
        write_mvtec_sample(root, "train", "good", f"{i:03d}", _texture(rng))
        write_mvtec_sample(root, "test", "good", f"{i:03d}", _texture(rng))
    for i, (w, h) in enumerate(DENT_SIZES):
        img = _texture(rng)
        x0, y0 = 20 + i, 18 + 2 * i
        img[y0 : y0 + h, x0 : x0 + w] *= 0.3
        mask = np.zeros((64, 64), dtype=np.float32)
        mask[y0 : y0 + h, x0 : x0 + w] = 1
        write_mvtec_sample(root, "test", "dent", f"{i:03d}", img, mask)
    return root


@pytest.fixture(scope="session")
def ref_adapter(tmp_path_factory, tiny_base, tiny_data):
    """A reference adapter trained 2 steps on the tiny base (no EMA, large lr: it differs from the base)."""
    from counterfactory.training.reference import ReferenceTrainConfig, train_reference
    from counterfactory.training.trainer import LoopConfig

    out = tmp_path_factory.mktemp("ref_adapter") / "adapter"
    cfg = ReferenceTrainConfig(out=str(out), data=str(tiny_data), base=str(tiny_base), lora_rank=2, batch_size=2,
                               reference_size=32, loop=LoopConfig(steps=2, lr=1e-2, warmup_steps=1, ema_decay=0.0,
                                                                  checkpoint_every=2))
    train_reference(cfg, progress=False)
    return out


@pytest.fixture(scope="session")
def pipe(tiny_base, ref_adapter):
    from counterfactory.pipelines.reference_inpaint import ReferenceInpaintPipeline

    p = ReferenceInpaintPipeline.from_compact(ref_adapter, base=tiny_base)
    p.set_progress_bar_config(disable=True)
    return p


def rand_image(seed: int, c: int = 3, h: int = 48, w: int = 64) -> torch.Tensor:
    return torch.rand(c, h, w, generator=torch.Generator().manual_seed(seed))
