import json

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


def _cfg(out, data, **kw):
    base = dict(out=str(out), data=str(data), n=100, split="train", batch_size=4, num_inference_steps=2,
                outside_tolerance=1.0, max_candidates=8)
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
