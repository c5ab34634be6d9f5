"""The real Magnetic Tile copy (../shared/data/magnetic_tile from the project root): skipped when absent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from counterfactory.cli.main import main
from counterfactory.data import GOOD, few_shot_split, open_dataset

MT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "magnetic_tile"

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not MT.is_dir(), reason=f"real data not present at {MT}"),
]


def test_inspect_magnetic_tile_counts_and_no_false_problems(capsys):
    assert main(["data", "inspect", str(MT), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layout"] == "magnetic_tile"
    assert report["types"] == {
        "Blowhole": {"images": 115, "masks": 115},
        "Break": {"images": 85, "masks": 85},
        "Crack": {"images": 57, "masks": 57},
    }
    assert report["good"] == 952
    assert report["problems"] == []


def test_magnetic_tile_split_and_samples():
    ds = open_dataset(MT)
    assert ds.defect_types == ["Blowhole", "Break", "Crack"]
    sp = few_shot_split(ds)
    assert {t: len(v) for t, v in sp.train.items()} == {"Blowhole": 38, "Break": 28, "Crack": 19, GOOD: 317}
    s = sp.samples(ds, "train", "Crack")[0]
    img, mask = s.load_image(), s.load_mask()
    assert img.shape[1:] == mask.shape[1:] and 0 < mask.sum() < mask.numel()
    assert set(mask.unique().tolist()) == {0.0, 1.0}
