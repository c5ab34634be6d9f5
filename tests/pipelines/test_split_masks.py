"""Mask sources for generation: held-out (field protocol) vs train (no leak into a held-out evaluation)."""

from __future__ import annotations

import pytest

from counterfactory.data import open_dataset
from counterfactory.data.splits import few_shot_split
from counterfactory.errors import InputError
from counterfactory.pipelines.generate import split_masks


def test_train_and_held_out_masks_come_from_their_part_only(tiny_data):
    ds = open_dataset(tiny_data)
    split = few_shot_split(ds, shots=1)
    types = ds.defect_types
    train = split_masks(ds, split, types, "train")
    held = split_masks(ds, split, types, "held_out")
    for t in types:
        assert [sid for sid, _ in train[t]] == split.train[t]
        assert [sid for sid, _ in held[t]] == split.held_out[t]
        assert not {sid for sid, _ in train[t]} & set(split.held_out[t])
        assert all(m.sum() > 0 and m.shape[0] == 1 for _, m in train[t])


def test_unknown_part_is_refused(tiny_data):
    ds = open_dataset(tiny_data)
    with pytest.raises(InputError, match="part"):
        split_masks(ds, few_shot_split(ds), ds.defect_types, "test")
