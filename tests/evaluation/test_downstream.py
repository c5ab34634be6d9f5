"""Downstream benchmark: exact metrics vs torchmetrics, and the whole CLI on tiny procedural data."""

from __future__ import annotations

import json

import pytest
import torch
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_precision_recall_curve,
)

from counterfactory.cli.main import main
from counterfactory.errors import InputError
from counterfactory.evaluation.downstream import SmallUNet, binary_metrics


def test_binary_metrics_match_torchmetrics_with_ties():
    g = torch.Generator().manual_seed(0)
    y = torch.rand(3000, generator=g) < 0.1
    s = torch.round((torch.rand(3000, generator=g) + 0.4 * y) * 20) / 20  # many ties
    m = binary_metrics(s, y)
    assert m["AP"] == pytest.approx(float(binary_average_precision(s, y.long())), abs=1e-6)
    assert m["AUROC"] == pytest.approx(float(binary_auroc(s, y.long())), abs=1e-6)
    p, r, _ = binary_precision_recall_curve(s, y.long())
    f1 = (2 * p * r / (p + r).clamp_min(1e-12)).max()
    assert m["F1max"] == pytest.approx(float(f1), abs=1e-6)
    perfect = binary_metrics(y.float(), y)
    assert perfect == {"AP": 1.0, "F1max": 1.0, "AUROC": 1.0}


def test_unet_any_size():
    net = SmallUNet((4, 8, 8))
    assert net(torch.rand(1, 3, 37, 50)).shape == (1, 1, 37, 50)


def _run(args):
    return main(args)


def test_downstream_cli_tiny(tiny_real, tiny_generated, tmp_path, capsys):
    out = tmp_path / "ds"
    rc = _run(["benchmark", "downstream", "--data", str(tiny_real), "--generated", str(tiny_generated), "--out", str(out),
               "--steps", "3", "--seeds", "0,1", "--eval-good", "3", "--crop", "32", "--batch-size", "4"])
    assert rc == 0
    res = json.loads((out / "downstream.json").read_text())
    assert set(res["summary"]) == {"real", "ours", "perlin", "copypaste"}
    for s in res["summary"].values():
        for m in ("pixel_AP", "pixel_F1max", "pixel_AUROC", "image_AUROC"):
            assert 0.0 <= s["all"][m]["mean"] <= 1.0 and s["all"][m]["n"] == 2
    assert len(res["runs"]) == 8
    html = (out / "report.html").read_text()
    assert "(iii) real + Perlin" in html and "<script" not in html
    # a rerun resumes from runs.jsonl and gives the same numbers
    capsys.readouterr()
    assert _run(["benchmark", "downstream", "--data", str(tiny_real), "--generated", str(tiny_generated), "--out", str(out),
                 "--steps", "3", "--seeds", "0,1", "--eval-good", "3", "--crop", "32", "--batch-size", "4"]) == 0
    assert "reusing" in capsys.readouterr().err
    assert json.loads((out / "downstream.json").read_text())["summary"] == res["summary"]


def test_downstream_is_deterministic_without_generated(tiny_real, tmp_path):
    outs = []
    for k in range(2):
        out = tmp_path / f"d{k}"
        assert _run(["benchmark", "downstream", "--data", str(tiny_real), "--out", str(out), "--settings", "real,perlin",
                     "--steps", "2", "--seeds", "0", "--eval-good", "2", "--crop", "32", "--batch-size", "4"]) == 0
        outs.append(json.loads((out / "downstream.json").read_text())["summary"])
    assert outs[0] == outs[1] and set(outs[0]) == {"real", "perlin"}


def test_downstream_bad_input(tiny_real, tmp_path, capsys):
    assert _run(["benchmark", "downstream", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert _run(["benchmark", "downstream", "--data", str(tiny_real), "--out", str(tmp_path / "o"), "--settings", "ours"]) == 2
    assert _run(["benchmark", "downstream", "--data", str(tiny_real), "--out", str(tmp_path / "o"), "--seeds", "a"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("counterfactory benchmark: error:") for line in err)


def test_adding_generated_later_reuses_the_other_settings(tiny_real, tiny_generated, tmp_path, capsys):
    common = ["--data", str(tiny_real), "--out", str(tmp_path / "o"), "--steps", "2", "--seeds", "0", "--eval-good", "2",
              "--crop", "32", "--batch-size", "4"]
    assert _run(["benchmark", "downstream", *common, "--settings", "real"]) == 0
    capsys.readouterr()
    assert _run(["benchmark", "downstream", *common, "--settings", "real,ours", "--generated", str(tiny_generated)]) == 0
    err = capsys.readouterr().err
    assert "real/seed0: done earlier" in err and "ours/seed0: pixel AP" in err


def test_mix_add_keeps_every_real_crop_and_puts_synthetic_on_top(tiny_real, tmp_path, capsys):
    from counterfactory.evaluation.downstream import CropSampler, DownstreamConfig, load_downstream_data

    cfg = DownstreamConfig(data=str(tiny_real), out=str(tmp_path / "o"), crop=32, batch_size=8, eval_good=2)
    data = load_downstream_data(cfg, log=lambda m: None)
    replace = CropSampler(data, "perlin", cfg, 0)
    add = CropSampler(data, "perlin", DownstreamConfig(**{**cfg.__dict__, "mix": "add"}), 0)
    real = CropSampler(data, "real", cfg, 0)
    assert replace.slots == ["real"] * 2 + ["synthetic"] * 2 + ["good"] * 4
    assert add.slots == ["real"] * 4 + ["synthetic"] * 2 + ["good"] * 4 and real.slots.count("real") == 4
    x, y = add.batch()
    assert x.shape[0] == y.shape[0] == 10 and y[:6].flatten(1).amax(1).min() > 0 and y[6:].max() == 0
    with pytest.raises(InputError, match="--mix"):
        DownstreamConfig(data=str(tiny_real), out=str(tmp_path / "o"), mix="blend")
    # real runs are shared by both mixes; perlin runs are not
    common = ["--data", str(tiny_real), "--out", str(tmp_path / "o"), "--steps", "2", "--seeds", "0", "--eval-good", "2",
              "--crop", "32", "--batch-size", "4"]
    assert _run(["benchmark", "downstream", *common, "--settings", "real,perlin"]) == 0
    capsys.readouterr()
    assert _run(["benchmark", "downstream", *common, "--settings", "real,perlin", "--mix", "add"]) == 0
    err = capsys.readouterr().err
    assert "real/seed0: done earlier" in err and "perlin/seed0: done earlier" not in err
