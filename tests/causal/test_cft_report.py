import json

from counterfactory.causal.evaluate import evaluate_run, markdown_table
from counterfactory.causal.training import train_all

from .helpers import tiny_config, tiny_digits


def test_harness_writes_results_and_an_offline_report(tmp_path):
    train, test, cfg = tiny_digits(16), tiny_digits(6, seed=1), tiny_config(vae_steps=2, cft_steps=2, predictor_steps=2)
    for seed in (0, 1):
        for variant in ("none", "reg", "seg"):
            train_all(tmp_path, train, variant, seed, cfg, progress=False)
    report = tmp_path / "report.html"
    results = evaluate_run(tmp_path, test, ["none", "reg", "seg"], [0, 1], (0.7, 1.3), report, "cmd", progress=False)
    assert json.loads((tmp_path / "results.json").read_text())["seeds"] == [0, 1]
    summary = results["variants"]["seg"]["summary"]
    assert set(summary) >= {"area_mae", "area_mape", "intensity_mae", "far_change", "reversibility", "composition_10x"}
    html = report.read_text()
    n_rows = html.count("data:image/png;base64,") - 1  # minus the MAPE-by-scale plot
    assert n_rows > 0 and n_rows % (3 * 5) == 0  # one grid per variant, 5 columns
    assert "Seg-CFT" in html and "http" not in html.replace("http-equiv", "")  # offline: nothing fetched
    table = markdown_table(results, ["none", "reg", "seg"])
    assert table.splitlines()[0].startswith("| metric") and "**" in table
