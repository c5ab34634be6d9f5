"""Downstream benchmark: metrics against a brute-force reference, pairing, resume, paired statistics, the CLI."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch

from counterfactory.cli.main import main
from counterfactory.errors import InputError
from counterfactory.evaluation.downstream import (
    CropSampler,
    DownstreamConfig,
    SmallUNet,
    binary_metrics,
    build_segmenter,
    choose_budget,
    load_downstream_data,
    paired_table,
    train_segmenter,
)


def _brute_force(scores: list[float], labels: list[int]) -> dict[str, float]:
    """Definitions, evaluated threshold by threshold (O(n²)): AP = Σ (R_k − R_{k−1}) P_k over the distinct scores
    taken as thresholds from high to low; F1-max over those thresholds; AUROC = P(s+ > s−) + ½ P(s+ = s−)."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    ap, r_prev, f1 = 0.0, 0.0, 0.0
    for th in sorted(set(scores), reverse=True):
        tp = sum(s >= th for s in pos)
        fp = sum(s >= th for s in neg)
        p, r = tp / (tp + fp), tp / len(pos)
        ap += (r - r_prev) * p
        r_prev = r
        if p + r > 0:
            f1 = max(f1, 2 * p * r / (p + r))
    auroc = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))
    return {"AP": ap, "F1max": f1, "AUROC": auroc}


def test_binary_metrics_match_brute_force_with_ties():
    g = torch.Generator().manual_seed(0)
    y = torch.rand(300, generator=g) < 0.15
    s = torch.round((torch.rand(300, generator=g) + 0.4 * y) * 20) / 20  # many ties
    m = binary_metrics(s, y)
    ref = _brute_force(s.tolist(), y.long().tolist())
    for k in ("AP", "F1max", "AUROC"):
        assert m[k] == pytest.approx(ref[k], abs=1e-5), k
    assert 0.5 < m["AUROC"] < 1.0 and m["AP"] > y.float().mean()  # informative, not perfect
    assert binary_metrics(y.float(), y) == {"AP": 1.0, "F1max": 1.0, "AUROC": 1.0}
    assert all(math.isnan(v) for v in binary_metrics(s, torch.zeros_like(y)).values())


def test_unet_any_size():
    net = SmallUNet((4, 8, 8))
    assert net(torch.rand(1, 3, 37, 50)).shape == (1, 1, 37, 50)


def _hash(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def tiny_data(tiny_real, tiny_generated, tmp_path_factory):
    cfg = DownstreamConfig(data=str(tiny_real), out=str(tmp_path_factory.mktemp("o")), generated=str(tiny_generated),
                           crop=32, batch_size=8, eval_good=2, channels=(4, 8, 8), warmup_steps=2)
    return cfg, load_downstream_data(cfg, log=lambda m: None)


def test_same_seed_same_init_and_same_real_batches_in_every_setting(tiny_data):
    cfg, data = tiny_data
    for step in (0, 1, 7):
        real_hashes, good_hashes, syn_hashes = set(), set(), set()
        for setting in ("real", "ours", "perlin", "copypaste"):
            p = CropSampler(data, setting, cfg, seed=3).parts(step)
            real_hashes.add(_hash(*p["real"]))
            good_hashes.add(_hash(*p["good"]))
            if setting != "real":
                syn_hashes.add(_hash(*p["synthetic"]))
                assert p["synthetic"][0].shape[0] == 2 and p["synthetic"][1].flatten(1).amax(1).min() > 0
        assert len(real_hashes) == 1 and len(good_hashes) == 1  # paired: identical real and defect-free crops
        assert len(syn_hashes) == 3  # only the synthetic crops on top differ
    other = CropSampler(data, "real", cfg, seed=4).parts(0)
    assert _hash(*other["real"]) != _hash(*CropSampler(data, "real", cfg, seed=3).parts(0)["real"])
    # initial weights: a function of the seed alone
    init = [_hash(*[p.detach() for p in build_segmenter(cfg.channels, s).parameters()]) for s in (3, 3, 4)]
    assert init[0] == init[1] != init[2]


def test_batch_is_a_pure_function_of_seed_and_step(tiny_data):
    cfg, data = tiny_data
    a = CropSampler(data, "perlin", cfg, seed=0)
    for step in range(3):
        a.batch(step)
    x1, y1 = a.batch(3)
    x2, y2 = CropSampler(data, "perlin", cfg, seed=0).batch(3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, a.batch(4)[0])


def test_replace_mix_keeps_real_onlys_first_real_crops(tiny_data):
    cfg, data = tiny_data
    rep = DownstreamConfig(**{**cfg.__dict__, "mix": "replace"})
    real = CropSampler(data, "real", rep, seed=1)
    cp = CropSampler(data, "copypaste", rep, seed=1)
    assert real.slots == ["real"] * 4 + ["good"] * 4 and cp.slots == ["real"] * 2 + ["synthetic"] * 2 + ["good"] * 4
    add = CropSampler(data, "copypaste", cfg, seed=1)
    assert add.slots == ["real"] * 4 + ["synthetic"] * 2 + ["good"] * 4
    x, y = add.batch(0)
    assert x.shape[0] == 10 and y[:6].flatten(1).amax(1).min() > 0 and y[6:].max() == 0
    assert torch.equal(cp.parts(5)["real"][0], real.parts(5)["real"][0][:2])


def test_resume_and_extension_give_the_uninterrupted_run(tiny_data, tmp_path):
    cfg, data = tiny_data
    straight, _ = train_segmenter(data, "copypaste", 0, cfg, tmp_path / "a", steps=4, checkpoint_every=1)
    _, first = train_segmenter(data, "copypaste", 0, cfg, tmp_path / "b", steps=2, checkpoint_every=1)
    extended, second = train_segmenter(data, "copypaste", 0, cfg, tmp_path / "b", steps=4, checkpoint_every=1)
    assert first["steps"] == 2 and second["resumed_from"] == 2 and second["steps"] == 4
    for p, q in zip(straight.parameters(), extended.parameters()):
        assert torch.equal(p, q)
    init = build_segmenter(cfg.channels, 0)
    assert any(not torch.equal(p, q) for p, q in zip(straight.parameters(), init.parameters()))  # it did train
    with pytest.raises(InputError, match="steps=3"):
        train_segmenter(data, "copypaste", 0, cfg, tmp_path / "b", steps=3)


def _runs(values: dict[str, list[float]]) -> list[dict]:
    return [{"setting": s, "seed": k, "metrics": {"all": {"pixel_AP": v, "pixel_F1max": v, "pixel_AUROC": v,
                                                          "image_AUROC": v}}}
            for s, vs in values.items() for k, v in enumerate(vs)]


def test_paired_table_claims_a_gain_only_where_the_interval_excludes_zero():
    real = [0.10, 0.20, 0.15, 0.12, 0.18]  # large seed spread, shared by the pairs
    runs = _runs({
        "real": real,
        "ours": [r + d for r, d in zip(real, [0.03, 0.04, 0.02, 0.035, 0.025])],  # small but consistent gain
        "perlin": [r + d for r, d in zip(real, [0.05, -0.04, 0.03, -0.05, 0.01])],  # noise around 0
        "copypaste": [r - d for r, d in zip(real, [0.02, 0.03, 0.025, 0.02, 0.03])],  # consistent loss
    })
    rows = {(r["setting"], r["reference"]): r for r in paired_table(runs, [], (0, 1, 2, 3, 4)) if r["metric"] == "pixel_AP"}
    assert set(rows) == {("ours", "real"), ("perlin", "real"), ("copypaste", "real"), ("ours", "copypaste"),
                         ("perlin", "copypaste")}
    ours = rows[("ours", "real")]
    assert ours["mean"] == pytest.approx(0.03) and ours["n"] == 5 and ours["verdict"] == "gain"
    assert 0 < ours["ci_low"] < 0.03 < ours["ci_high"]
    assert rows[("perlin", "real")]["verdict"] == "no clear difference" and rows[("perlin", "real")]["ci_low"] < 0
    assert rows[("copypaste", "real")]["verdict"] == "loss"
    # an unpaired comparison of the same numbers would drown the gain in the seed spread (std of real ≈ 0.04)
    assert rows[("ours", "copypaste")]["mean"] == pytest.approx(0.055)
    one_seed = paired_table(_runs({"real": [0.1], "ours": [0.5]}), [], (0,))
    assert all(r["verdict"] == "no clear difference" and math.isnan(r["ci_low"]) for r in one_seed)


def test_choose_budget_takes_the_first_step_within_one_standard_error_of_the_best():
    curve = {100: [0.02, 0.03, 0.025], 200: [0.06, 0.07, 0.065], 300: [0.08, 0.09, 0.085], 400: [0.083, 0.09, 0.088]}
    rows = [{"step": st, "seed": k, "metrics": {"all": {"pixel_AP": v}}} for st, vs in curve.items() for k, v in enumerate(vs)]
    c = choose_budget(rows)
    assert c["best_step"] == 400 and c["chosen_step"] == 300 and c["still_rising"]
    assert [p["step"] for p in c["curve"]] == [100, 200, 300, 400] and c["curve"][0]["n"] == 3


def _run(args):
    return main(args)


TINY = ["--steps", "3", "--eval-good", "3", "--crop", "32", "--batch-size", "4"]


def test_downstream_cli_tiny(tiny_real, tiny_generated, tmp_path, capsys):
    out = tmp_path / "ds"
    args = ["benchmark", "downstream", "--data", str(tiny_real), "--generated", str(tiny_generated), "--out", str(out),
            "--seeds", "0,1", *TINY]
    assert _run(args) == 0
    printed = capsys.readouterr().out
    assert "paired difference, pixel_AP" in printed and "ours       - copypaste" in printed
    res = json.loads((out / "downstream.json").read_text())
    assert set(res["summary"]) == {"real", "ours", "perlin", "copypaste"}
    for s in res["summary"].values():
        for m in ("pixel_AP", "pixel_F1max", "pixel_AUROC", "image_AUROC"):
            assert 0.0 <= s["all"][m]["mean"] <= 1.0 and s["all"][m]["n"] == 2
    assert len(res["runs"]) == 8
    pairs = {(r["setting"], r["reference"]) for r in res["paired"]}
    assert pairs == {("ours", "real"), ("perlin", "real"), ("copypaste", "real"), ("ours", "copypaste"),
                     ("perlin", "copypaste")}
    assert all(r["n"] == 2 and r["verdict"] in ("gain", "loss", "no clear difference") for r in res["paired"])
    html = (out / "report.html").read_text()
    assert "(iii) real + Perlin" in html and "Paired differences" in html and "<script" not in html
    # a rerun resumes from runs.jsonl and gives the same numbers
    capsys.readouterr()
    assert _run(args) == 0
    assert "reusing" in capsys.readouterr().err
    assert json.loads((out / "downstream.json").read_text())["summary"] == res["summary"]


def test_downstream_is_deterministic_and_resumes_an_interrupted_run(tiny_real, tmp_path):
    outs = []
    for k in range(2):
        out = tmp_path / f"d{k}"
        if k == 1:  # an earlier run that stopped after 2 of the 3 steps leaves a checkpoint to continue from
            cfg = DownstreamConfig(data=str(tiny_real), out=str(out), settings=("real",), seeds=(0,), steps=2,
                                   eval_good=3, crop=32, batch_size=4)
            train_segmenter(load_downstream_data(cfg, log=lambda m: None), "real", 0, cfg,
                            out / "runs" / cfg.run_folder_name("real", 0), checkpoint_every=1)
        assert _run(["benchmark", "downstream", "--data", str(tiny_real), "--out", str(out), "--settings", "real,perlin",
                     "--seeds", "0", *TINY]) == 0
        res = json.loads((out / "downstream.json").read_text())
        outs.append(res["summary"])
    assert outs[0] == outs[1] and set(outs[0]) == {"real", "perlin"}
    assert {r["setting"]: r["resumed_from"] for r in res["runs"]} == {"real": 2, "perlin": None}


def test_downstream_bad_input(tiny_real, tmp_path, capsys):
    assert _run(["benchmark", "downstream", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert _run(["benchmark", "downstream", "--data", str(tiny_real), "--out", str(tmp_path / "o"), "--settings", "ours"]) == 2
    assert _run(["benchmark", "downstream", "--data", str(tiny_real), "--out", str(tmp_path / "o"), "--seeds", "a"]) == 2
    assert _run(["benchmark", "downstream", "--data", str(tiny_real), "--out", str(tmp_path / "o"), "--seeds", "1,1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("counterfactory benchmark: error:") for line in err)
    assert "seeds=" in err[3]
    with pytest.raises(InputError, match="mix=blend"):
        DownstreamConfig(data=str(tiny_real), out=str(tmp_path / "o"), mix="blend")


def test_adding_generated_later_reuses_the_other_settings(tiny_real, tiny_generated, tmp_path, capsys):
    common = ["--data", str(tiny_real), "--out", str(tmp_path / "o"), "--seeds", "0", *TINY]
    assert _run(["benchmark", "downstream", *common, "--settings", "real"]) == 0
    capsys.readouterr()
    assert _run(["benchmark", "downstream", *common, "--settings", "real,ours", "--generated", str(tiny_generated)]) == 0
    err = capsys.readouterr().err
    assert "real/seed0: done earlier" in err and "ours/seed0: pixel AP" in err
    # real runs are shared by both mixes; perlin runs are not
    assert _run(["benchmark", "downstream", *common, "--settings", "real,perlin", "--mix", "replace"]) == 0
    err = capsys.readouterr().err
    assert "real/seed0: done earlier" in err and "perlin/seed0: done earlier" not in err
