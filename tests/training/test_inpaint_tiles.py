"""Adapter training crops tiles of large defects the way generation paints them (``max_window_scale``)."""

import numpy as np
import pytest
import torch

from counterfactory.errors import ConfigError
from counterfactory.training.inpaint import AdapterTrainConfig, _tile_around


def test_training_tiles_are_bounded_and_paint_only_their_cell():
    mask = torch.zeros(300, 300)
    mask[150:152, 10:290] = 1
    rng = np.random.default_rng(0)
    for _ in range(20):
        win = _tile_around(mask, (300, 300), 0.5, 32, 64, rng)
        assert win.size <= 64 and win.region is not None
        painted = win.paint_mask(mask[None])
        assert painted.sum() > 0  # the cell holds defect pixels
        full = mask[None][..., win.box[1] : win.box[3], win.box[0] : win.box[2]]
        assert painted.sum() <= full.sum()


def test_max_window_scale_is_checked():
    with pytest.raises(ConfigError, match="max_window_scale"):
        AdapterTrainConfig(out="x", data="y", max_window_scale=0.5)
