import os
from pathlib import Path

import pytest
import torch

from counterfactory.causal.metrics import evaluate_model
from counterfactory.causal.structures import build_variant
from counterfactory.causal.training import load_causal_model, load_predictors, train_all
from counterfactory.data.morphomnist import StructureData, build_structures, load_morphomnist

from .helpers import tiny_config

SHARED = Path(os.environ.get("COUNTERFACTORY_SHARED", Path(__file__).resolve().parents[2].parent / "shared"))
DATA = SHARED / "data" / "morphomnist"

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not (DATA / "t10k-morpho.csv").is_file(), reason=f"Morpho-MNIST not at {DATA}"),
]


def _head(d: StructureData, n: int) -> StructureData:
    return StructureData(*(t[:n] for t in (d.images, d.area, d.intensity, d.digit, d.source, d.csv_intensity)))


def test_real_morphomnist_smoke(tmp_path):
    data = load_morphomnist(DATA)
    assert len(data) == 10_000 and data.images.shape == (10_000, 28, 28)
    train, test = build_structures(data, "train", 1), build_structures(data, "test", 1)
    assert (len(train), len(test)) == (8000, 1000)
    assert set(train.source[:, 0].tolist()).isdisjoint(test.source[:, 0].tolist())
    # the measured intensity (median foreground value) agrees with the csv's intensity variable
    assert float((train.intensity - train.csv_intensity).abs().mean()) < 1.0
    assert 15 <= float(train.area.min()) and float(train.area.max()) <= 400
    pair = build_structures(data, "test", 2)
    assert pair.images.shape == (1000, 1, 28, 56) and not torch.equal(pair.source[:, 0], pair.source[:, 1])
    # a few steps of the whole chain on real digits
    out = tmp_path / "run"
    train_all(out, _head(train, 256), "reg", 0, tiny_config(), progress=False)
    vae, scm, _ = load_causal_model(out / "reg" / "seed0", "reg")
    reg, seg, _ = load_predictors(out / "predictors")
    r = evaluate_model(vae, scm, reg, seg, _head(test, 20), scales=(0.7, 1.3))
    assert r["evaluated_interventions"] > 0 and r["area_mape"] == r["area_mape"]


def test_correlated_pairs_on_real_digits():
    data = load_morphomnist(DATA)
    for split in ("train", "test"):
        corr = build_variant(data, split, "pair-corr")
        rand = build_variant(data, split, "pair")
        assert torch.equal(corr.source[:, 0], rand.source[:, 0])  # the same digits on the left
        assert not (corr.source[:, 0] == corr.source[:, 1]).any()
        r = float(torch.corrcoef(corr.area.T)[0, 1])
        assert 0.88 < r < 0.95, r  # documented: 0.92 (train), 0.91 (test)
        assert abs(float(torch.corrcoef(rand.area.T)[0, 1])) < 0.1
