"""The shipped compact base in weights/: loads, matches its model card, and inpaints with the hard constraint."""

from __future__ import annotations

import re

import torch

from counterfactory.io.manifest import sha256_file
from counterfactory.models.compact import DEFAULT_WEIGHTS_DIR, WEIGHTS_FILE, load_compact, make_schedulers
from counterfactory.pipelines.defect_inpaint import DefectInpaintPipeline


def test_model_card_names_the_shipped_file_and_its_sha256():
    card = (DEFAULT_WEIGHTS_DIR / "MODEL_CARD.md").read_text()
    match = re.search(r"sha256: `([0-9a-f]{64})`", card)
    assert match, "MODEL_CARD.md must state the sha256 of the shipped weights"
    assert match.group(1) == sha256_file(DEFAULT_WEIGHTS_DIR / WEIGHTS_FILE)
    for field in ("Command", "counterfactory train-base", "Steps:", "seed", "Final loss", "Not for"):
        assert field in card
    assert (DEFAULT_WEIGHTS_DIR / WEIGHTS_FILE).stat().st_size <= 20 * 1024 * 1024


def test_shipped_base_loads_frozen_and_inpaints_only_the_mask():
    model = load_compact()  # default: the shipped weights/
    assert model.config.prediction_type == "sample"
    assert not any(p.requires_grad for p in model.parameters())
    pipe = DefectInpaintPipeline(model.unet, make_schedulers(model.config)[1], base_tokens=model.base_tokens,
                                 resolution=model.config.sample_size)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    image = torch.round(torch.rand(1, 3, 96, 96, generator=g) * 0.2 * 255 + 0.4 * 255) / 255
    mask = torch.zeros(1, 1, 96, 96)
    mask[..., 40:56, 30:70] = 1
    out = pipe(image, mask, None, num_inference_steps=2, generator=torch.Generator().manual_seed(1)).images
    keep = mask.expand_as(image) < 0.5
    assert torch.equal(out[keep], image[keep])
    inside = out[~keep]
    assert torch.isfinite(inside).all() and inside.min() >= 0 and inside.max() <= 1
    # a trained base fills a mid-gray textured image with mid-gray, not with garbage
    assert abs(float(inside.mean()) - float(image[keep].mean())) < 0.25
