"""Tiny procedural data for the evaluation tests: a real MVTec-layout dataset and a 'generated' folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from counterfactory.data.surfaces import add_defect, synth_dataset
from counterfactory.io.images import load_image, save_image


def make_generated(real_root: Path, out: Path, types=("crack", "spot"), n_per_type=12, seed=0, size=None) -> Path:
    """Fake generator output in anomalib Folder layout: defects drawn on the dataset's train/good images,
    plus a manifest whose source_image points at the pre-edit image."""
    goods = sorted((real_root / "train" / "good").glob("*.png"))
    rng = np.random.default_rng(seed)
    lines = []
    for t in types:
        for i in range(n_per_type):
            src = goods[i % len(goods)]
            img = load_image(src).permute(1, 2, 0).numpy()
            new, mask = add_defect(rng, img, t)
            gid = f"{t}_{i:03d}"
            save_image(np.clip(new, 0, 1), out / t / f"{gid}.png")
            save_image((mask * 255).astype(np.uint8), out / "ground_truth" / t / f"{gid}_mask.png")
            lines.append(json.dumps({"id": gid, "type": t, "source_image": str(src), "seed": i}))
    (out / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return out


@pytest.fixture(scope="session")
def tiny_real(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("real")
    return synth_dataset(root, seed=0, size=64, n_train_good=12, n_test_good=9, n_per_type=12, types=("crack", "spot"))


@pytest.fixture(scope="session")
def tiny_generated(tmp_path_factory, tiny_real) -> Path:
    return make_generated(tiny_real, tmp_path_factory.mktemp("gen") / "gen")
