"""generate's placement and paste-and-refine modes: the shot's pixels are pasted, refined from `strength`, and
nothing outside the refined region changes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from counterfactory.data import open_dataset
from counterfactory.data.splits import load_split
from counterfactory.errors import InputError
from counterfactory.io.images import load_image
from counterfactory.pipelines.defect_inpaint import DefectInpaintPipeline
from counterfactory.pipelines.generate import GenerateConfig, generate, split_masks

TYPES = ["crack", "spot"]


@pytest.fixture(scope="module")
def parts(tiny_base, tiny_adapter, tiny_data):
    pipe = DefectInpaintPipeline.from_compact(tiny_base, tiny_adapter)
    ds = open_dataset(tiny_data)
    split = load_split(Path(tiny_adapter) / "split.json")
    return pipe, ds.good(), split_masks(ds, split, TYPES, "train", with_images=True), split_masks(ds, split, TYPES, "train")


def _run(parts, out, masks=None, **kw):
    pipe, backgrounds, with_images, _ = parts
    cfg = GenerateConfig(out=str(out), n_per_type=2, num_inference_steps=4, batch_size=2, **kw)
    generate(pipe, backgrounds, masks or with_images, cfg, progress=False)
    return [json.loads(line) for line in (Path(out) / "manifest.jsonl").read_text().splitlines()]


def _arr(path):
    return np.asarray(Image.open(path)).astype(np.int16)


def test_strength_zero_is_the_plain_paste_of_the_shot(parts, tmp_path):
    recs = _run(parts, tmp_path / "s0", strength=0.0)
    for r in recs:
        out, mask = _arr(tmp_path / "s0" / r["image"]), _arr(tmp_path / "s0" / r["mask"]) > 127
        src = np.round(load_image(r["source_image"]).numpy().transpose(1, 2, 0) * 255).astype(np.int16)
        assert mask.any() and r["strength"] == 0.0 and r["placement"] == "learned"
        assert np.array_equal(out[~mask], src[~mask])  # only the defect's own pixels were placed
        assert np.abs(out[mask] - src[mask]).max() > 0


def test_refine_changes_only_the_dilated_region_and_is_deterministic(parts, tmp_path):
    a = _run(parts, tmp_path / "a", strength=0.5, refine_dilate=2)
    _run(parts, tmp_path / "b", strength=0.5, refine_dilate=2)
    for r in a:
        out = _arr(tmp_path / "a" / r["image"])
        assert np.array_equal(out, _arr(tmp_path / "b" / r["image"]))
        mask = torch.from_numpy(_arr(tmp_path / "a" / r["mask"]) > 127).float()[None]
        grown = torch.nn.functional.max_pool2d(mask[None], 5, 1, 2)[0, 0].numpy() > 0.5
        src = np.round(load_image(r["source_image"]).numpy().transpose(1, 2, 0) * 255).astype(np.int16)
        assert np.array_equal(out[~grown], src[~grown])


def test_paste_needs_the_shots_pixels_and_modes_are_checked(parts, tmp_path):
    with pytest.raises(InputError, match="strength"):
        _run(parts, tmp_path / "x", masks=parts[3], strength=0.5)
    for bad in (dict(strength=1.5), dict(placement="random"), dict(paste="blend"), dict(refine_dilate=-1)):
        with pytest.raises(InputError):
            GenerateConfig(out=str(tmp_path / "y"), **bad)


def test_resume_with_another_placement_or_strength_is_refused(parts, tmp_path):
    _run(parts, tmp_path / "r", strength=0.0)
    with pytest.raises(InputError, match="strength"):
        _run(parts, tmp_path / "r", strength=0.5)
    with pytest.raises(InputError, match="placement"):
        _run(parts, tmp_path / "r", strength=0.0, placement="uniform")
