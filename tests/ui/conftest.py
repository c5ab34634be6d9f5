"""Fixtures for the web-app tests: a tiny reference adapter (the defect adapter comes from tests/conftest.py)
and a test image."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def ui_ref_adapter(tmp_path_factory, tiny_base, tiny_data):
    """A reference adapter trained 2 steps on the tiny base."""
    from counterfactory.training.reference import ReferenceTrainConfig, train_reference
    from counterfactory.training.trainer import LoopConfig

    out = tmp_path_factory.mktemp("ui_ref_adapter") / "adapter"
    cfg = ReferenceTrainConfig(out=str(out), data=str(tiny_data), base=str(tiny_base), lora_rank=2, batch_size=2,
                               reference_size=32, loop=LoopConfig(steps=2, lr=1e-2, warmup_steps=1, ema_decay=0.0,
                                                                  checkpoint_every=2))
    train_reference(cfg, progress=False)
    return out


def surface(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """A noisy gray surface, float32 (H,W,3) in [0,1], exactly representable in 8 bits."""
    rng = np.random.default_rng(seed)
    g = np.clip(0.5 + 0.12 * rng.standard_normal((h, w, 1)), 0, 1)
    return (np.round(g * 255) / 255).astype(np.float32).repeat(3, axis=2)
