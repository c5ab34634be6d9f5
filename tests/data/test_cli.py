"""`counterfactory data synth | inspect | split` end to end (small sizes), and --help everywhere."""

from __future__ import annotations

import json

import pytest

from counterfactory.cli.main import main
from counterfactory.data import load_split, open_dataset


@pytest.mark.parametrize("argv", [["data"], ["data", "synth"], ["data", "inspect"], ["data", "split"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    assert "usage: counterfactory" in capsys.readouterr().out


def test_synth_inspect_split(tmp_path, capsys):
    out = tmp_path / "ds"
    assert (
        main(
            [
                "data",
                "synth",
                "--out",
                str(out),
                "--seed",
                "3",
                "--size",
                "48",
                "--n-train-good",
                "3",
                "--n-test-good",
                "3",
                "--n-per-type",
                "4",
            ]
        )
        == 0
    )
    assert "wrote" in capsys.readouterr().out
    assert main(["data", "inspect", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layout"] == "mvtec"
    assert report["types"] == {t: {"images": 4, "masks": 4} for t in ("chip", "crack", "scratch", "spot")}
    assert report["good"] == 6 and report["problems"] == []
    assert main(["data", "inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "layout: mvtec" in text and "problems: 0" in text

    split = tmp_path / "split.json"
    assert main(["data", "split", str(out), "--out", str(split)]) == 0
    sp = load_split(split)
    assert {t: len(v) for t, v in sp.train.items()} == {
        "chip": 1,
        "crack": 1,
        "good": 2,
        "scratch": 1,
        "spot": 1,
    }
    assert main(["data", "split", str(out), "--out", str(split), "--shots", "2"]) == 0
    sp = load_split(split)
    assert len(sp.train["crack"]) == 2 and len(sp.held_out["crack"]) == 2
    ds = open_dataset(out)
    assert [s.source_id for s in sp.samples(ds, "train", "crack")] == ["test/crack/000", "test/crack/001"]
