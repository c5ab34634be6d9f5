import json

import numpy as np
import pytest
import torch

from counterfactory.editing import captions
from counterfactory.errors import InputError
from counterfactory.pipelines.text_edit import TextEditPipeline
from counterfactory.pipelines.triplets import TripletConfig, write_triplets
from tests.editing.conftest import fake_morpho, tiny_model  # noqa: F401  (fixture)

CIRR_KEYS = ["pairid", "reference", "target_hard", "target_soft", "caption", "img_set"]


@pytest.fixture(autouse=True)
def _loose_filter(monkeypatch):
    """An untrained model barely edits: loosen the measured filter so some triplets pass and the files can be read."""
    torch.set_num_threads(1)
    monkeypatch.setattr(captions, "EDIT_MARGINS", {k: 0.0 for k in captions.EDIT_MARGINS})
    monkeypatch.setattr(captions, "EDIT_TOLERANCES", {k: 1e9 for k in captions.EDIT_TOLERANCES})


@pytest.fixture(scope="module")
def instruments(tmp_path_factory):
    """A tiny digit classifier and a tiny dual encoder (a few steps on stroke digits), saved like the shipped ones."""
    from counterfactory.retrieval.encoders import save_dual_encoder
    from counterfactory.retrieval.train import train_digit_classifier, train_dual_encoder
    from tests.editing.conftest import stroke_digits

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("instruments")
    imgs = torch.from_numpy(stroke_digits(40, seed=1)).float()[:, None] / 255.0
    labels = torch.arange(40) % 10
    train_digit_classifier(imgs, labels, steps=3, batch_size=16).save(root / "clf")
    caps = captions.AttributeCaptioner().caption((imgs[:, 0] * 255).byte().numpy(), labels.tolist())
    save_dual_encoder(train_dual_encoder(imgs, caps, list(captions.VOCABULARY) + list(captions.MODIFICATION_WORDS),
                                         steps=2, batch_size=16), root / "enc")
    return {"classifier": str(root / "clf"), "encoder": str(root / "enc")}


INSTRUMENTS: dict = {}


@pytest.fixture(autouse=True)
def _instruments(instruments):
    INSTRUMENTS.update(instruments)


def _cfg(out, data, **kw):
    base = dict(out=str(out), data=str(data), n=100, split="train", batch_size=4, num_inference_steps=2,
                outside_tolerance=1.0, max_candidates=8, filters=("attribute", "others", "local"), **INSTRUMENTS)
    base.update(kw)
    return TripletConfig(**base)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_triplets_cirr_layout_resume_bit_identical(tmp_path, fake_morpho):  # noqa: F811
    pipe = TextEditPipeline(tiny_model())
    full = write_triplets(_cfg(tmp_path / "full", fake_morpho), pipe, progress=False)
    assert full["candidates"] == 8 and full["kept"] >= 1
    part = write_triplets(_cfg(tmp_path / "part", fake_morpho, max_candidates=4), pipe, progress=False)
    assert part["candidates"] == 4
    # every finished batch leaves a readable folder: the caption file lists the kept triplets so far
    assert len(json.loads((tmp_path / "part" / "cap.rc2.train.json").read_text())) == part["kept"]
    # a kill between batches: the rerun continues and ends with the same bytes as the uninterrupted run
    lines = (tmp_path / "part" / "manifest.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "part" / "manifest.jsonl").write_text("".join(lines) + lines[0][:10])  # torn tail
    again = write_triplets(_cfg(tmp_path / "part", fake_morpho), pipe, progress=False)
    assert again["candidates"] == 8
    a, b = _files(tmp_path / "full"), _files(tmp_path / "part")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)

    entries = json.loads((tmp_path / "full" / "cap.rc2.train.json").read_text())
    split = json.loads((tmp_path / "full" / "split.rc2.train.json").read_text())
    assert len(entries) == full["kept"]
    for e in entries:
        assert list(e) == CIRR_KEYS
        assert list(e["img_set"]) == ["id", "members", "reference_rank", "target_rank"]
        members = e["img_set"]["members"]
        assert len(members) == 6 and members[e["img_set"]["target_rank"]] == e["target_hard"]
        assert members[e["img_set"]["reference_rank"]] == e["reference"]
        assert all((tmp_path / "full" / split[m]).is_file() for m in members)
        assert e["caption"] in {t for texts in captions.MODIFICATIONS.values() for t in texts}
    records = [json.loads(x) for x in (tmp_path / "full" / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == 8 and sum(r["kept"] for r in records) == full["kept"]
    assert all(r["attribute"] in captions.ATTRIBUTE_WORDS for r in records)
    assert "<del>" in (tmp_path / "full" / "report.html").read_text()


def test_strict_filter_rejects_untrained_edits_and_other_settings_refused(tmp_path, fake_morpho, monkeypatch):  # noqa: F811
    monkeypatch.setattr(captions, "EDIT_MARGINS", {k: 1e9 for k in captions.EDIT_MARGINS})
    pipe = TextEditPipeline(tiny_model())
    s = write_triplets(_cfg(tmp_path / "o", fake_morpho, max_candidates=4), pipe, progress=False)
    assert s["kept"] == 0 and s["moved_rate"] == 0.0
    assert json.loads((tmp_path / "o" / "cap.rc2.train.json").read_text()) == []
    with pytest.raises(InputError, match="same settings"):
        write_triplets(_cfg(tmp_path / "o", fake_morpho, seed=1), pipe, progress=False)


def test_each_filter_is_recorded_switchable_and_summarised(tmp_path, fake_morpho, monkeypatch):  # noqa: F811
    """Every filter is computed for every candidate; only the enabled ones decide `kept`; the summary's per-filter
    and per-edit pass rates and the kept edits' change and drift agree with the manifest."""
    from counterfactory.pipelines.triplets import FILTERS, format_summary

    pipe = TextEditPipeline(tiny_model())
    runs = {}
    for name, filters, thr in [("none", (), 0.2), ("sim", ("similarity",), 0.0), ("all", FILTERS, 0.0)]:
        runs[name] = write_triplets(_cfg(tmp_path / name, fake_morpho, filters=filters, similarity_threshold=thr),
                                    pipe, progress=False)
    recs = {n: [json.loads(x) for x in (tmp_path / n / "manifest.jsonl").read_text().splitlines()] for n in runs}
    # filters off: everything is kept; the filter outcomes are still recorded, the same for the same seed
    assert runs["none"]["kept"] == 8 and runs["none"]["pass_rate"] == 1.0
    assert all(set(r["passed"]) == set(FILTERS) for r in recs["none"])
    for a, b in zip(recs["none"], recs["all"]):  # same seed, same edits: same measurements, whatever is enabled
        assert (a["similarity"], a["change"], a["predicted_class"]) == (b["similarity"], b["change"], b["predicted_class"])
        assert {k: v for k, v in a["passed"].items() if k != "similarity"} == \
            {k: v for k, v in b["passed"].items() if k != "similarity"}
    for r in recs["sim"]:
        assert r["kept"] == (r["similarity"] >= 0.0) and -1.0 <= r["similarity"] <= 1.0
        assert r["predicted_class"] in range(10) and -1.0 <= r["image_similarity"] <= 1.0
    for r in recs["all"]:
        assert r["kept"] == all(r["passed"].values())
        assert r["passed"]["class"] == (r["predicted_class"] == r["label"])
    s = runs["none"]
    for f in FILTERS:
        assert s["filter_pass_rate"][f] == pytest.approx(sum(r["passed"][f] for r in recs["none"]) / 8, abs=1e-4)
    assert sum(g["candidates"] for g in s["per_edit"].values()) == 8
    name, g = next(iter(s["per_edit"].items()))
    mine = [r for r in recs["none"] if f"{r['attribute']}{'+' if r['direction'] > 0 else '-'}" == name]
    assert g["kept_change"]["mean"] == pytest.approx(np.mean([r["change"] for r in mine]), abs=1e-3)
    assert set(g["kept_drift"]) == set(mine[0]["drift"]) and mine[0]["attribute"] not in g["kept_drift"]
    table = format_summary(s)
    assert "| all | 8 | 8 | 100.0 |" in table and "drift" in table
    # a strict threshold rejects everything the similarity filter decides
    strict = write_triplets(_cfg(tmp_path / "strict", fake_morpho, filters=("similarity",), similarity_threshold=1.0),
                            pipe, progress=False)
    assert strict["kept"] == 0 and strict["filter_pass_rate"]["similarity"] == 0.0


def test_filter_options_are_checked(tmp_path, fake_morpho):  # noqa: F811
    from counterfactory.cli.main import main
    from counterfactory.errors import CheckpointError, ConfigError

    with pytest.raises(ConfigError, match=r"^filters=.*'colour'"):
        _cfg(tmp_path / "x", fake_morpho, filters=("colour",))
    with pytest.raises(ConfigError, match=r"^similarity_threshold="):
        _cfg(tmp_path / "x", fake_morpho, similarity_threshold=2.0)
    with pytest.raises(CheckpointError, match=r"^classifier="):
        write_triplets(_cfg(tmp_path / "x", fake_morpho, filters=("class",), classifier=str(tmp_path / "nope")),
                       TextEditPipeline(tiny_model()), progress=False)
    with pytest.raises(SystemExit) as e:
        main(["triplets", "--data", str(fake_morpho), "--out", str(tmp_path / "y"), "--filters", "attribute,colour"])
    assert e.value.code == 2
    assert not (tmp_path / "y").exists()


def test_cli_triplets_with_the_shipped_model_and_instruments(tmp_path, fake_morpho, capsys):  # noqa: F811
    """The command with every default instrument (shipped text-to-image model, classifier and encoder) prints the
    per-filter table and the json summary."""
    from counterfactory.cli.main import main

    out = tmp_path / "t"
    assert main(["triplets", "--data", str(fake_morpho), "--out", str(out), "--n", "2", "--batch-size", "2",
                 "--max-candidates", "2", "--num-inference-steps", "2", "--quiet"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed.strip().splitlines()[-1])
    assert summary["filters"] == ["attribute", "others", "class", "local", "similarity"]
    assert set(summary["filter_pass_rate"]) == set(summary["filters"]) and summary["candidates"] == 2
    assert "| all | 2 |" in printed
    settings = json.loads((out / "settings.json").read_text())
    assert settings["filters"] == summary["filters"] and settings["similarity_threshold"] == 0.2


def test_restore_intensity_undoes_an_unasked_gain_inside_the_region_only():
    from counterfactory.data.morphomnist import measure
    from counterfactory.pipelines.triplets import restore_intensity
    from tests.editing.conftest import stroke_digits

    before = stroke_digits(3, seed=5)
    after = np.round(before.astype(np.float64) * 0.6).astype(np.uint8)  # the edit dimmed every stroke
    region = np.ones_like(before, dtype=bool)
    region[2, :, :14] = False  # the third edit may change only its right half
    which = np.array([True, False, True])  # the second edit was asked for intensity: left alone
    out, gains = restore_intensity(before, after, region, which)

    def intensity(u8):
        return measure(torch.from_numpy(u8).float()[:, None] / 255.0)[1][:, 0].numpy()

    assert abs(intensity(out[:1])[0] - intensity(before[:1])[0]) <= 1.0
    assert np.array_equal(out[1], after[1]) and gains[1] == 1.0
    assert np.array_equal(out[2][:, :14], after[2][:, :14])  # outside the region: untouched
    assert not np.array_equal(out[2][:, 14:], after[2][:, 14:])
    assert gains[0] == pytest.approx(1 / 0.6, rel=0.02)


def test_complete_batches_keeps_finished_batches_once_in_pairid_order():
    from counterfactory.pipelines.triplets import complete_batches

    def rec(i, batch, pairid):
        return {"id": str(i), "batch": batch, "pairid": pairid, "kept": True}

    records = [rec(1, 0, 1), rec(0, 0, 0), rec(2, 1, 2),  # batch 1 has one of its two candidates: cut by a kill
               rec(1, 0, 99), rec(4, 2, 4), rec(5, 2, 5)]  # a second copy of id 1 (a redone batch) is ignored
    done = complete_batches(records, batch_size=2)
    assert sorted(done) == [0, 2]
    assert [r["pairid"] for r in done[0]] == [0, 1]
    assert [r["pairid"] for r in done[2]] == [4, 5]
    assert complete_batches(records, batch_size=3) == {}
