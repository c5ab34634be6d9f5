import json
import os
from pathlib import Path

import pytest

from counterfactory.errors import InputError
from counterfactory.retrieval.cirr import (
    Triplet,
    dumps_triplets,
    read_split,
    read_triplet_folder,
    read_triplets,
    write_split,
    write_triplets,
)

SHARED = Path(os.environ.get("COUNTERFACTORY_SHARED", Path(__file__).resolve().parents[2].parent / "shared"))
CIRR = SHARED / "data" / "cirr"


def _t(pairid=1, target="b"):
    return Triplet(pairid=pairid, reference="a", caption="make it thicker", set_id=7,
                   members=("a", "b", "c", "d", "e", "f"), reference_rank=0, target_hard=target,
                   target_soft={target: 1.0} if target else None, target_rank=1 if target else None)


def test_write_read_round_trip(tmp_path):
    ts = [_t(1), _t(2, target=None)]
    p = write_triplets(tmp_path / "cap.rc2.train.json", ts)
    assert read_triplets(p) == ts
    first, second = json.loads(p.read_text())
    assert list(first) == ["pairid", "reference", "target_hard", "target_soft", "caption", "img_set"]
    assert list(second) == ["pairid", "reference", "caption", "img_set"]
    assert list(first["img_set"]) == ["id", "members", "reference_rank", "target_rank"]


def test_missing_key_names_the_entry_and_key(tmp_path):
    bad = [_t(1).to_dict()]
    del bad[0]["caption"]
    (tmp_path / "cap.json").write_text(json.dumps(bad))
    with pytest.raises(InputError, match=r"cap\.json\[0\].*missing caption"):
        read_triplets(tmp_path / "cap.json")
    bad = [_t(1).to_dict()]
    del bad[0]["img_set"]["members"]
    (tmp_path / "cap.json").write_text(json.dumps(bad))
    with pytest.raises(InputError, match=r"img_set.*missing members"):
        read_triplets(tmp_path / "cap.json")
    (tmp_path / "cap.json").write_text("{not json")
    with pytest.raises(InputError, match=r"^triplets="):
        read_triplets(tmp_path / "cap.json")


def test_triplet_folder_checks_names_and_images(tmp_path):
    from PIL import Image

    write_triplets(tmp_path / "cap.rc2.train.json", [_t(1)])
    paths = {n: f"./img/{n}.png" for n in "abcdef"}
    write_split(tmp_path / "split.rc2.train.json", paths)
    (tmp_path / "img").mkdir()
    for n in "abcde":
        Image.new("L", (28, 28)).save(tmp_path / "img" / f"{n}.png")
    with pytest.raises(InputError, match=r"missing ./img/f.png"):
        read_triplet_folder(tmp_path)
    Image.new("L", (28, 28)).save(tmp_path / "img" / "f.png")
    tf = read_triplet_folder(tmp_path)
    assert tf.split == "train" and tf.image_path("f").is_file() and read_split(tmp_path / "split.rc2.train.json") == paths
    write_split(tmp_path / "split.rc2.train.json", {n: p for n, p in paths.items() if n != "b"})
    with pytest.raises(InputError, match=r"target_hard=b"):
        read_triplet_folder(tmp_path)


@pytest.mark.realdata
@pytest.mark.skipif(not (CIRR / "cap.rc2.val.json").is_file(), reason=f"CIRR annotations not at {CIRR}")
@pytest.mark.parametrize("name", ["cap.rc2.val.json", "cap.rc2.test1.json"])
def test_real_cirr_annotations_round_trip_byte_for_byte(name, tmp_path):
    raw = (CIRR / name).read_text(encoding="utf-8")
    ts = read_triplets(CIRR / name)
    assert len(ts) == {"cap.rc2.val.json": 4181, "cap.rc2.test1.json": 4148}[name]
    assert dumps_triplets(ts) == raw
    assert write_triplets(tmp_path / name, ts).read_text(encoding="utf-8") == raw
    if name == "cap.rc2.val.json":
        split = read_split(CIRR / "split.rc2.val.json")
        assert len(split) == 2297
        assert write_split(tmp_path / "s.json", split).read_text() == (CIRR / "split.rc2.val.json").read_text()
        assert all(t.reference in split and t.target_hard in split and set(t.members) <= set(split) for t in ts)
