"""The IoU quality filter: a judge trained on the real shots keeps the pairs whose mask it finds."""

import json
import shutil

import pytest
import torch

from counterfactory.errors import InputError
from counterfactory.evaluation.downstream.filter import FILTER_FILE, REJECTED, filter_by_iou, mask_iou
from counterfactory.evaluation.folders import read_image_folder


def test_mask_iou():
    m = torch.zeros(8, 8)
    m[2:6, 2:6] = 1
    s = torch.zeros(1, 8, 8)
    assert mask_iou(s, m) == 0.0
    s[0, 2:6, 2:4] = 0.9
    assert mask_iou(s, m) == pytest.approx(0.5)
    assert mask_iou(torch.zeros(8, 8), torch.zeros(8, 8)) == 0.0


def _count(root) -> int:
    f = read_image_folder(root, name="generated")
    return sum(len(f.of_type(t)) for t in f.types)


def test_filter_moves_rejected_pairs_and_records_every_iou(tiny_real, tiny_generated, tmp_path):
    gen = tmp_path / "gen"
    shutil.copytree(tiny_generated, gen)
    n = _count(gen)
    res = filter_by_iou(gen, tiny_real, None, 0.05, steps=2, progress=False, log=lambda *_: None)
    kept = sum(c["kept"] for c in res["per_type"].values())
    assert sum(c["total"] for c in res["per_type"].values()) == n == len(res["pairs"])
    assert _count(gen) == kept  # the folder holds exactly the kept pairs
    rejected = [p for p in (gen / REJECTED).rglob("*.png") if "judge" not in p.parts and "_mask" not in p.name]
    assert len(rejected) == n - kept
    for s in res["pairs"].values():
        assert 0.0 <= s["iou"] <= 1.0 and s["kept"] == (s["iou"] >= 0.05)
    # a rerun with the same settings changes nothing; other settings are refused
    again = filter_by_iou(gen, tiny_real, None, 0.05, steps=2, progress=False, log=lambda *_: None)
    assert again == json.loads((gen / FILTER_FILE).read_text()) == res
    with pytest.raises(InputError, match="filtered with"):
        filter_by_iou(gen, tiny_real, None, 0.5, steps=2, progress=False, log=lambda *_: None)
    with pytest.raises(InputError, match="threshold"):
        filter_by_iou(gen, tiny_real, None, 0.0, steps=2, progress=False)
