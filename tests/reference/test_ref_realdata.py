"""Magnetic Tile (real data): the three tasks build as defined and the baselines keep the outside intact.
Skipped when ../shared/data/magnetic_tile is absent."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

MT = Path(__file__).resolve().parents[3] / "shared" / "data" / "magnetic_tile"
pytestmark = [pytest.mark.realdata, pytest.mark.skipif(not MT.is_dir(), reason=f"real data not present at {MT}")]


def test_magnetic_tile_tasks_and_baselines():
    from counterfactory.data import few_shot_split, open_dataset
    from counterfactory.evaluation.insertion import (
        build_cases,
        copy_paste,
        insertion_region,
        load_case,
        poisson_blend,
    )

    ds = open_dataset(MT)
    split = few_shot_split(ds)
    for task in ("reinsertion", "replacement", "insertion"):
        cases = build_cases(ds, split, task, n=3, seed=0)
        assert len(cases) == 3, task
        assert len({c.defect_type for c in cases}) == 3  # balanced over Blowhole / Break / Crack
        for c in cases:
            target, ref = load_case(c)
            w, h = c.box[2] - c.box[0], c.box[3] - c.box[1]
            rw, rh = c.reference_box[2] - c.reference_box[0], c.reference_box[3] - c.reference_box[1]
            if task == "replacement":
                assert c.reference_id != c.target_id and abs(rw - w) <= 0.15 * w and abs(rh - h) <= 0.15 * h
            if task == "insertion":
                assert c.target_id in split.held_out["good"]
                assert insertion_region(target)[c.box[1]:c.box[3], c.box[0]:c.box[2]].mean() >= 0.9
            for out in (copy_paste(target, c.box, ref), poisson_blend(target, c.box, ref)):
                keep = torch.ones(target.shape[-2:], dtype=torch.bool)
                keep[c.box[1]:c.box[3], c.box[0]:c.box[2]] = False
                assert torch.equal(out[:, keep], target[:, keep])
