"""Evaluation on the real Magnetic Tile copy (../shared/data/magnetic_tile): skipped when absent."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from counterfactory.data import open_dataset
from counterfactory.evaluation.anomalies import copy_paste_anomaly, perlin_anomaly
from counterfactory.evaluation.downstream import (
    DownstreamConfig,
    evaluate_maps,
    load_downstream_data,
    predict,
    train_segmenter,
)

MT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "magnetic_tile"

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not MT.is_dir(), reason=f"real data not present at {MT}"),
]


def test_synthetic_anomalies_on_real_tiles():
    ds = open_dataset(MT)
    good = ds.good()[0].load_image()
    crack = ds.of_type("Crack")[0]
    g = torch.Generator().manual_seed(0)
    crop = good[:, :64, :64]
    out, m = perlin_anomaly(crop, g, texture_pool=[good])
    assert m.sum() > 0 and torch.equal(out * (1 - m), crop * (1 - m))
    out, m = copy_paste_anomaly(crop, crack.load_image(), crack.load_mask(), g)
    assert m.sum() > 0 and torch.equal(out[0], out[1])  # gray stays gray


@pytest.mark.slow
def test_downstream_pipeline_runs_on_magnetic_tile(tmp_path):
    cfg = DownstreamConfig(data=str(MT), out=str(tmp_path), steps=2, eval_good=2, channels=(4, 8, 8), batch_size=4)
    data = load_downstream_data(cfg, log=lambda *_: None)
    assert data.types == ["Blowhole", "Break", "Crack"]
    assert data.info["train"] == {"Blowhole": 38, "Break": 28, "Crack": 19, "good": 317}
    assert len(data.real_defects) == 85 and len(data.eval_images) == 77 + 57 + 38 + 2
    model, _ = train_segmenter(data, "copypaste", 0, cfg, tmp_path / "run")
    res = evaluate_maps(predict(model, data.eval_images), data.eval_masks, data.eval_types, data.types, cfg.image_pool)
    assert set(res) == {"all", "Blowhole", "Break", "Crack"}
    assert all(0 <= v <= 1 for v in res["all"].values())
