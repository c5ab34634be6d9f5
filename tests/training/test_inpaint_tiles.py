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


def _masks() -> dict[str, np.ndarray]:
    crack = np.zeros((300, 300), np.float32)
    crack[150:152, 10:290] = 1
    blobs = np.zeros((160, 200), np.float32)  # two blobs and a diagonal line, on a non-square image
    blobs[20:60, 30:70] = 1
    blobs[100:140, 120:190] = 1
    for i in range(150):
        blobs[min(5 + i, 159), min(10 + i, 199)] = 1
    ell = np.zeros((120, 90), np.float32)
    ell[10:110, 40:43] = 1
    ell[100:103, 5:85] = 1
    return {"crack": crack, "blobs": blobs, "ell": ell}


# (box, region) of every tile tile_windows cuts: a change to the cell rule both sides share shows here
SAMPLING_TILES = {
    ("crack", 0.5, 32, 64): [
        ((0, 119, 64, 183), (10, 150, 42, 152)), ((26, 119, 90, 183), (42, 150, 74, 152)),
        ((58, 119, 122, 183), (74, 150, 106, 152)), ((90, 119, 154, 183), (106, 150, 138, 152)),
        ((122, 119, 186, 183), (138, 150, 170, 152)), ((154, 119, 218, 183), (170, 150, 202, 152)),
        ((186, 119, 250, 183), (202, 150, 234, 152)), ((218, 119, 282, 183), (234, 150, 266, 152)),
        ((252, 127, 300, 175), (266, 150, 290, 152))],
    ("blobs", 0.3, 16, 48): [
        ((1, 0, 48, 47), (10, 5, 39, 34)), ((30, 4, 77, 51), (39, 5, 68, 34)), ((58, 16, 81, 39), (68, 5, 97, 34)),
        ((14, 26, 56, 68), (10, 34, 39, 63)), ((30, 25, 77, 72), (39, 34, 68, 63)),
        ((48, 26, 90, 68), (68, 34, 97, 63)), ((59, 54, 106, 101), (68, 63, 97, 92)),
        ((88, 83, 135, 130), (97, 92, 126, 121)), ((117, 87, 164, 134), (126, 92, 155, 121)),
        ((146, 87, 193, 134), (155, 92, 184, 121)), ((166, 94, 200, 128), (184, 92, 190, 121)),
        ((108, 115, 139, 146), (97, 121, 126, 150)), ((117, 112, 164, 159), (126, 121, 155, 150)),
        ((146, 107, 193, 154), (155, 121, 184, 150)), ((169, 115, 200, 146), (184, 121, 190, 150)),
        ((150, 144, 166, 160), (155, 150, 184, 155))],
    ("ell", 0.25, 24, 40): [
        ((22, 4, 61, 43), (31, 10, 57, 36)), ((22, 30, 61, 69), (31, 36, 57, 62)), ((22, 56, 61, 95), (31, 62, 57, 88)),
        ((0, 81, 39, 120), (5, 88, 31, 110)), ((24, 80, 63, 119), (31, 88, 57, 110)),
        ((50, 81, 89, 120), (57, 88, 83, 110)), ((66, 90, 90, 114), (83, 88, 85, 110))],
    ("ell", 0.0, 8, 30): [
        ((26, 10, 56, 40), (35, 10, 65, 40)), ((26, 40, 56, 70), (35, 40, 65, 70)),
        ((26, 70, 56, 100), (35, 70, 65, 100)), ((5, 86, 35, 116), (5, 100, 35, 110)),
        ((35, 90, 65, 120), (35, 100, 65, 110)), ((65, 92, 85, 112), (65, 100, 85, 110))],
}

# four draws of _tile_around per (mask, margin, res, max_size, rng seed), pinned likewise
TRAINING_TILES = {
    ("crack", 0.5, 32, 64, 0): [
        ((174, 119, 238, 183), (190, 135, 222, 167)), ((54, 119, 118, 183), (70, 135, 102, 167)),
        ((0, 129, 44, 173), (0, 135, 32, 167)), ((129, 119, 193, 183), (145, 134, 177, 166))],
    ("blobs", 0.3, 16, 48, 1): [
        ((134, 87, 181, 134), (143, 92, 172, 121)), ((162, 93, 199, 130), (171, 94, 200, 123)),
        ((132, 101, 179, 148), (141, 110, 170, 139)), ((114, 118, 142, 146), (108, 123, 137, 152))],
    ("ell", 0.25, 24, 40, 2): [
        ((0, 81, 39, 120), (6, 89, 32, 115)), ((22, 36, 61, 75), (27, 43, 53, 69)),
        ((22, 10, 61, 49), (28, 16, 54, 42)), ((22, 42, 61, 81), (29, 49, 55, 75))],
    ("ell", 0.0, 64, 30, 3): [
        ((2, 86, 32, 116), (0, 87, 30, 117)), ((26, 10, 56, 40), (25, 10, 55, 40)),
        ((26, 26, 56, 56), (27, 26, 57, 56)), ((26, 36, 56, 66), (27, 36, 57, 66))],
}


@pytest.mark.parametrize("case", list(SAMPLING_TILES))
def test_sampling_tiles_are_unchanged(case):
    from counterfactory.io.masks import tile_windows

    name, margin, min_size, max_size = case
    mask = _masks()[name]
    wins = tile_windows(mask, mask.shape, margin, min_size, max_size)
    assert [(w.box, w.region) for w in wins] == SAMPLING_TILES[case]


@pytest.mark.parametrize("case", list(TRAINING_TILES))
def test_training_tiles_are_unchanged(case):
    name, margin, res, max_size, seed = case
    mask = torch.from_numpy(_masks()[name])
    rng = np.random.default_rng(seed)
    wins = [_tile_around(mask, tuple(mask.shape), margin, res, max_size, rng) for _ in range(4)]
    assert [(w.box, w.region) for w in wins] == TRAINING_TILES[case]
