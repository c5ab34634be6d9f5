"""Tiny seeded text-to-image components and a fake Morpho-MNIST folder for the text-editing tests."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from counterfactory.data.morphomnist import IMAGES_FILE, LABELS_FILE, MORPHO_FILE, write_idx
from counterfactory.editing.captions import VOCABULARY
from counterfactory.models.text2image import Text2ImageConfig, Text2ImageModel

TINY = Text2ImageConfig(block_out_channels=(8, 16, 16), text_hidden=16, text_layers=1, text_heads=2, norm_num_groups=4)


def tiny_model(seed: int = 0) -> Text2ImageModel:
    return Text2ImageModel.from_words(VOCABULARY, TINY, seed=seed)


@pytest.fixture
def model() -> Text2ImageModel:
    return tiny_model()


def stroke_digits(n: int, seed: int = 0) -> np.ndarray:
    """(n,28,28) uint8 strokes of random thickness, slant and brightness (measurable like real digits)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, 28, 28), dtype=np.uint8)
    for i in range(n):
        im = Image.new("L", (28, 28))
        d = ImageDraw.Draw(im)
        dx = int(rng.integers(-6, 7))
        width = int(rng.integers(1, 5))
        v = int(rng.integers(120, 256))
        d.line([(14 - dx, 4), (14 + dx, 24)], fill=v, width=width)
        d.line([(14 + dx, 24), (20, 24)], fill=v, width=width)
        out[i] = np.asarray(im)
    return out


@pytest.fixture
def fake_morpho(tmp_path):
    root = tmp_path / "morpho"
    root.mkdir()
    imgs = stroke_digits(80)
    labels = np.arange(80, dtype=np.uint8) % 10
    write_idx(root / IMAGES_FILE, imgs)
    write_idx(root / LABELS_FILE, labels)
    rows = ["index,thickness,intensity"] + [f"{i},2.0,200.0" for i in range(80)]
    (root / MORPHO_FILE).write_text("\n".join(rows) + "\n")
    return root
