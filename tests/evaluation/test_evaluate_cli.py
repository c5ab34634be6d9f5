"""`counterfactory evaluate`: the whole run on tiny procedural data, and one-line exit-2 errors on bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from counterfactory.cli.main import main
from counterfactory.io.images import save_image

FAST = ["--kid-subset-size", "6", "--kid-subsets", "10", "--compact-steps", "4"]


def test_evaluate_end_to_end(tiny_real, tiny_generated, tmp_path):
    out = tmp_path / "ev"
    assert main(["evaluate", "--real", str(tiny_real), "--generated", str(tiny_generated), "--out", str(out), *FAST]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["extractor"]["name"] == "compact" and m["extractor"]["trained_here"]
    for t in ("crack", "spot", "all types"):
        pt = m["per_type"][t]
        for k in ("FD_compact", "KID_compact", "precision_compact", "recall_compact", "FD_compact_crop", "KID_compact_crop"):
            assert k in pt and isinstance(pt[k], float)
        assert "FID" not in pt
    # the fake generator pastes defects onto the source: perfectly local
    assert m["per_type"]["crack"]["outside_mask_max_abs_change"] == 0.0
    assert m["per_type"]["crack"]["outside_psnr"] == "inf"
    assert m["per_type"]["crack"]["mask_changed_fraction"] > 0.3
    # appearance: the fake generator pastes real procedural defects, so generated and real medians agree in sign
    a = m["appearance"]["crack"]
    assert a["ring_contrast"]["generated"]["n"] > 0 and a["ring_contrast"]["real"]["n"] > 0
    assert a["ring_contrast"]["generated"]["median"] < 0 and a["ring_contrast"]["real"]["median"] < 0
    assert m["per_type"]["crack"]["ring_contrast_median"] == a["ring_contrast"]["generated"]["median"]
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") > 10 and "<script" not in html and "FD_compact" in html
    assert "grain_ratio generated" in html
    # second run reuses the cached extractor and reproduces the numbers
    assert main(["evaluate", "--real", str(tiny_real), "--generated", str(tiny_generated), "--out", str(out), *FAST]) == 0
    m2 = json.loads((out / "metrics.json").read_text())
    assert m2["per_type"] == m["per_type"] and m2["extractor"].get("cached")


def test_evaluate_with_split_and_flat_generated(tiny_real, tiny_generated, tmp_path):
    split = tmp_path / "split.json"
    assert main(["data", "split", str(tiny_real), "--out", str(split)]) == 0
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in sorted((tiny_generated / "crack").glob("*.png")):
        shutil.copy(p, flat / p.name)
    out = tmp_path / "ev"
    assert main(["evaluate", "--real", str(tiny_real), "--generated", str(flat), "--split", str(split), "--out", str(out),
                 *FAST]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert list(m["per_type"]) == ["all"]  # a flat folder is compared with every real defect
    assert m["counts"]["all"]["real_reference"] == 16  # held-out: 2/3 of 12 per type, two types
    assert "IC_dist_compact_real" in m["per_type"]["all"]


def _copy_gen(src, dst):
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("case", ["empty", "missing_mask", "kid_too_small", "bad_weights", "mixed_sizes", "source_size", "bad_type"])
def test_bad_input_is_one_line_exit_2(case, tiny_real, tiny_generated, tmp_path, capsys):
    gen = _copy_gen(tiny_generated, tmp_path / "gen")
    args = ["evaluate", "--real", str(tiny_real), "--generated", str(gen), "--out", str(tmp_path / "o"), *FAST]
    if case == "empty":
        empty = tmp_path / "empty"
        empty.mkdir()
        args[4] = str(empty)
    elif case == "missing_mask":
        next((gen / "ground_truth" / "crack").glob("*_mask.png")).unlink()
    elif case == "kid_too_small":
        args += ["--kid-subset-size", "50"]
    elif case == "bad_weights":
        args += ["--extractor", "dinov2", "--extractor-weights", str(tmp_path / "nowhere")]
    elif case == "mixed_sizes":  # a generated image whose source has another size
        p = next((gen / "crack").glob("*.png"))
        save_image(np.zeros((40, 70, 3), np.float32), p)
    elif case == "source_size":  # --source holds a pre-edit image of another size
        src = tmp_path / "src"
        for line in (gen / "manifest.jsonl").read_text().splitlines():
            rec = json.loads(line)
            dst = src / rec["type"] / f"{rec['id']}.png"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(rec["source_image"], dst)
        save_image(np.zeros((64, 60, 3), np.float32), dst)
        args += ["--source", str(src)]
    elif case == "bad_type":
        (gen / "crack").rename(gen / "dent")
        (gen / "ground_truth" / "crack").rename(gen / "ground_truth" / "dent")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("counterfactory evaluate: error:"), err  # before any heavy work


def test_same_folder_as_real_and_generated_gives_zero_distance(tiny_generated, tmp_path):
    out = tmp_path / "same"
    assert main(["evaluate", "--real", str(tiny_generated), "--generated", str(tiny_generated), "--out", str(out), *FAST]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["inputs"]["real_layout"] == "folder"
    for t in ("crack", "spot"):
        pt = m["per_type"][t]
        assert pt["FD_compact"] == pytest.approx(0.0, abs=1e-6) and pt["FD_compact_crop"] == pytest.approx(0.0, abs=1e-6)
        assert pt["precision_compact"] == 1.0 and pt["recall_compact"] == 1.0
