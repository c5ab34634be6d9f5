import gzip

import numpy as np
import pytest
import torch

from counterfactory.data.morphomnist import (
    IMAGES_FILE,
    LABELS_FILE,
    MORPHO_FILE,
    build_structures,
    label_map,
    load_morphomnist,
    measure,
    pair_partners,
    read_idx,
    split_indices,
    write_idx,
)
from counterfactory.errors import InputError


def _write_set(root, n=20, seed=0):
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        images[i, 5 : 10 + i % 10, 10:14] = 100 + i  # a 4-wide bar, (5 + i%10) rows
    labels = rng.integers(0, 10, n).astype(np.uint8)
    write_idx(root / IMAGES_FILE, images)
    write_idx(root / LABELS_FILE, labels)
    rows = "\n".join(f"{i},{2.0 + i / 10},{100 + i}" for i in range(n))
    (root / MORPHO_FILE).write_text("index,thickness,intensity\n" + rows + "\n")
    return images, labels


def test_reader_round_trip_gz_and_plain(tmp_path):
    images, labels = _write_set(tmp_path)
    data = load_morphomnist(tmp_path)
    assert len(data) == 20 and data.images.dtype == np.uint8
    assert np.array_equal(data.images, images) and np.array_equal(data.labels, labels)
    assert data.intensity[3] == pytest.approx(103)
    write_idx(tmp_path / "plain", images, compress=False)
    assert np.array_equal(read_idx(tmp_path / "plain"), images)


def test_reader_rejects_bad_files(tmp_path):
    _write_set(tmp_path)
    (tmp_path / "bad").write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00\x00\x00\x02" * 3 + b"\x00" * 5))
    with pytest.raises(InputError, match="data bytes"):
        read_idx(tmp_path / "bad")
    (tmp_path / "magic").write_bytes(b"\x12\x34\x08\x01\x00\x00\x00\x01\x00")
    with pytest.raises(InputError, match="IDX"):
        read_idx(tmp_path / "magic")
    (tmp_path / MORPHO_FILE).write_text("index,thickness,intensity\n0,1,2\n")
    with pytest.raises(InputError, match="one row per image"):
        load_morphomnist(tmp_path)
    (tmp_path / LABELS_FILE).unlink()
    with pytest.raises(InputError, match="missing"):
        load_morphomnist(tmp_path)


def test_area_and_intensity_measurement():
    x = torch.zeros(2, 1, 28, 56)
    x[0, 0, 4:7, 4:8] = 200 / 255  # 12 bright pixels in digit 0
    x[0, 0, 10, 10] = 90 / 255  # below half of the brightest: background
    x[0, 0, 3:5, 30:33] = 50 / 255  # digit 1: 6 dim pixels, its own brightest is 50
    area, intensity = measure(x, 2)
    assert area[0].tolist() == [12, 6]
    assert intensity[0].tolist() == pytest.approx([200, 50], abs=1e-3)
    assert area[1].tolist() == [0, 0]  # an empty structure has no foreground
    lab = label_map(x, 2)
    assert (lab[0] == 1).sum() == 12 and (lab[0] == 2).sum() == 6 and lab[1].sum() == 0
    with pytest.raises(InputError):
        measure(x, 1)  # 56 columns are two structures


def test_split_is_fixed_disjoint_and_pairs_are_derangements(tmp_path):
    parts = {s: split_indices(100, s) for s in ("train", "val", "test")}
    assert [len(p) for p in parts.values()] == [80, 10, 10]
    assert len(set(np.concatenate(list(parts.values())))) == 100
    assert np.array_equal(split_indices(100, "test"), parts["test"])
    partners = pair_partners(parts["train"], seed=3)
    assert not np.any(partners == parts["train"]) and set(partners) == set(parts["train"])
    _write_set(tmp_path, n=20)
    pair = build_structures(load_morphomnist(tmp_path), "train", 2)
    assert pair.images.shape == (16, 1, 28, 56) and pair.area.shape == (16, 2)
    assert torch.equal(pair.area[:, 0], build_structures(load_morphomnist(tmp_path), "train", 1).area[:, 0])
