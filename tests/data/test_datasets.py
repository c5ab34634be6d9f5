"""MVTec and Magnetic Tile readers, open_dataset and the few-shot split protocol."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from counterfactory.data import GOOD, few_shot_split, load_split, open_dataset, save_split, write_mvtec_sample
from counterfactory.data.dataset import natural_key
from counterfactory.data.splits import Split
from counterfactory.errors import InputError

from .helpers import blob_mask, make_magnetic_tile, make_mvtec


def test_natural_sort():
    names = ["10", "2", "1", "img10", "img9", "a"]
    assert sorted(names, key=natural_key) == ["1", "2", "10", "a", "img9", "img10"]


def test_mvtec_reader(tmp_path):
    root = make_mvtec(tmp_path / "cat", stems=["2", "10", "1", "33"])
    ds = open_dataset(root)
    assert ds.layout == "mvtec" and ds.root == root
    assert ds.defect_types == ["crack", "spot"]
    assert [s.source_id for s in ds.of_type("crack")] == [
        "test/crack/1",
        "test/crack/2",
        "test/crack/10",
        "test/crack/33",
    ]
    # good: train split first, then test, each by id
    assert [s.source_id for s in ds.good()] == [f"train/good/{i:03d}" for i in range(3)] + [
        f"test/good/{i:03d}" for i in range(3)
    ]
    assert all(s.mask_path is None and s.defect_type == GOOD for s in ds.good())
    s = ds.of_type("spot")[0]
    assert s.mask_path == root / "ground_truth" / "spot" / "1_mask.png"
    assert s.load_mask().shape == (1, 32, 32) and set(s.load_mask().unique().tolist()) == {0.0, 1.0}
    assert ds.good()[0].load_mask().sum() == 0
    assert len(ds.samples) == 6 + 8
    assert ds.of_type("good") == ds.good()
    # a folder holding exactly one category is descended into
    assert open_dataset(tmp_path).root == root


def test_mvtec_written_masks_are_0_255_and_anomalib_named(tmp_path):
    img = torch.rand(3, 16, 16)
    m = torch.from_numpy(blob_mask(16, 16, 8, 8, 3))[None]
    p = write_mvtec_sample(tmp_path, "test", "crack", "007", img, m)
    assert p == tmp_path / "test" / "crack" / "007.png"
    from PIL import Image

    arr = np.asarray(Image.open(tmp_path / "ground_truth" / "crack" / "007_mask.png"))
    assert arr.dtype == np.uint8 and set(np.unique(arr)) == {0, 255}
    # uint8 arrays are written as they are (not saturated)
    u8 = (np.arange(16 * 16 * 3) % 256).astype(np.uint8).reshape(16, 16, 3)
    write_mvtec_sample(tmp_path, "train", "good", "000", u8)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "train" / "good" / "000.png")), u8)
    with pytest.raises(InputError, match="defect_type=crack"):
        write_mvtec_sample(tmp_path, "train", "crack", "x", img, m)
    with pytest.raises(InputError, match="mask"):
        write_mvtec_sample(tmp_path, "test", "crack", "x", img, None)
    with pytest.raises(InputError, match="mask"):
        write_mvtec_sample(tmp_path, "test", "crack", "x", img, torch.zeros(1, 16, 16))
    with pytest.raises(InputError, match="mask size"):
        write_mvtec_sample(tmp_path, "test", "crack", "x", img, torch.ones(1, 8, 8))
    with pytest.raises(InputError, match="split"):
        write_mvtec_sample(tmp_path, "val", "good", "x", img)
    with pytest.raises(InputError, match="stem"):
        write_mvtec_sample(tmp_path, "test", "good", "../x", img)
    assert not (tmp_path / "test" / "crack" / "x.png").exists()


def test_several_categories_is_an_error(tmp_path):
    make_mvtec(tmp_path / "a", n_per_type=2)
    make_mvtec(tmp_path / "b", n_per_type=2)
    with pytest.raises(InputError, match="holds 2: a, b"):
        open_dataset(tmp_path)


def test_magnetic_tile_reader(tmp_path):
    make_magnetic_tile(tmp_path)
    ds = open_dataset(tmp_path, verify=True)
    assert ds.layout == "magnetic_tile"
    assert ds.defect_types == ["Blowhole", "Crack"]
    assert len(ds.good()) == 6 and ds.problems == []
    ids = [s.source_id for s in ds.of_type("Blowhole")]
    assert ids == [
        "Blowhole/exp1_num_7",
        "Blowhole/exp1_num_14",
        "Blowhole/exp1_num_21",
        "Blowhole/exp1_num_28",
    ]
    assert ds.good()[0].source_id == "Free/exp1_num_7"
    # noisy 0..255 masks are binarized at 0.5: exactly the 5x6 defect block
    m = ds.of_type("Crack")[0].load_mask()
    assert m.shape == (1, 24, 28) and m.sum() == 30
    summary = ds.summary()
    assert summary["types"] == {"Blowhole": {"images": 4, "masks": 4}, "Crack": {"images": 3, "masks": 3}}
    assert summary["good"] == 6 and summary["problems"] == []


def test_unknown_type_names_the_allowed_ones(tmp_path):
    ds = open_dataset(make_magnetic_tile(tmp_path))
    with pytest.raises(InputError, match=r"defect_type=Fray: one of Blowhole, Crack, good"):
        ds.of_type("Fray")


def test_few_shot_split_first_third(tmp_path):
    ds = open_dataset(make_mvtec(tmp_path / "c", n_per_type=7, n_good=4))
    sp = few_shot_split(ds)
    assert sp.train["crack"] == ["test/crack/000", "test/crack/001"]
    assert len(sp.held_out["crack"]) == 5
    assert sp.train[GOOD] == ["train/good/000", "train/good/001"]  # 8 good: first third = 2
    assert len(sp.held_out[GOOD]) == 6
    for t in sp.types:
        assert not set(sp.train[t]) & set(sp.held_out[t])
    assert sp.protocol == {"name": "few_shot", "rule": "first_third", "shots": None}
    assert few_shot_split(ds) == sp  # deterministic


def test_few_shot_split_shots_and_errors(tmp_path):
    ds = open_dataset(make_mvtec(tmp_path / "c", n_per_type=4, n_good=2))
    sp = few_shot_split(ds, shots=3)
    assert len(sp.train["spot"]) == 3 and len(sp.held_out["spot"]) == 1
    with pytest.raises(InputError, match="shots=4: fewer than the 4 images of type 'crack'"):
        few_shot_split(ds, shots=4)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InputError, match="shots="):
            few_shot_split(ds, shots=bad)
    one = open_dataset(make_mvtec(tmp_path / "d", n_per_type=1, n_good=2))
    with pytest.raises(InputError, match="at least 2 images of type 'crack'"):
        few_shot_split(one)


def test_split_file_roundtrip(tmp_path):
    ds = open_dataset(make_mvtec(tmp_path / "c", n_per_type=6))
    sp = few_shot_split(ds, shots=2)
    path = save_split(sp, tmp_path / "split.json")
    obj = json.loads(path.read_text())
    assert obj["format"] == "counterfactory.split/1" and obj["root"] == str((tmp_path / "c").resolve())
    assert obj["protocol"]["shots"] == 2 and obj["counts"]["crack"] == {"train": 2, "held_out": 4}
    back = load_split(path)
    assert back == sp
    got = back.samples(ds, "train", "crack")
    assert [s.source_id for s in got] == sp.train["crack"] and all(s.mask_path for s in got)
    with pytest.raises(InputError, match="part=test"):
        back.samples(ds, "test", "crack")
    with pytest.raises(InputError, match="defect_type=dent"):
        back.samples(ds, "train", "dent")
    other = open_dataset(make_magnetic_tile(tmp_path / "mt"))
    with pytest.raises(InputError, match="ids present in the dataset"):
        back.samples(other, "train", "crack")


def test_load_split_bad_files(tmp_path):
    with pytest.raises(InputError, match="split="):
        load_split(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="does not parse"):
        load_split(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(InputError, match="format"):
        load_split(tmp_path / "other.json")
    assert Split({"a": ["x"]}, {"a": ["y"]}).types == ["a"]
