"""Self-reference training (PbE recipe): regions, references, determinism, export and exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from counterfactory.models.reference import ENCODER_WEIGHTS, REFERENCE_ADAPTER_CONFIG
from counterfactory.training.reference import (
    ReferenceTrainConfig,
    augment_reference,
    defect_items,
    extend_box,
    irregular_region,
    reference_batch_for_step,
    train_reference,
)
from counterfactory.training.trainer import LoopConfig


def test_extended_box_stays_between_box_and_limits():
    rng = np.random.default_rng(0)
    for _ in range(50):
        e = extend_box((10, 12, 20, 30), (0, 0, 64, 64), rng, 0.4)
        assert 10 - 0.4 * 10 <= e[0] <= 10 and 12 - 0.4 * 12 <= e[1] <= 12
        assert 20 <= e[2] <= 20 + 0.4 * 44 and 30 <= e[3] <= 30 + 0.4 * 34


def test_irregular_region_contains_box_inside_extension_and_is_not_the_rectangle():
    rng = np.random.default_rng(1)
    box, ext = (20, 20, 40, 36), (10, 8, 54, 50)
    shapes = set()
    for _ in range(10):
        r = irregular_region(box, ext, (64, 64), rng)
        assert r[20:36, 20:40].min() == 1  # the defect box is always repainted
        outside = np.ones((64, 64), bool)
        outside[8:50, 10:54] = False
        assert r[outside].max() == 0  # nothing beyond the extended box
        assert 0 < r[8:50, 10:54].mean() < 1  # corners cut: not the extended rectangle
        shapes.add(r.tobytes())
    assert len(shapes) == 10  # random outlines


def test_training_batch_is_a_pure_function_of_seed_and_step(tiny_data):
    cfg = ReferenceTrainConfig(out="unused", data=str(tiny_data), batch_size=3)
    types, items = defect_items(str(tiny_data), None, None, 4)
    a = reference_batch_for_step(items, types, 32, 24, cfg, step=5)
    b = reference_batch_for_step(items, types, 32, 24, cfg, step=5)
    c = reference_batch_for_step(items, types, 32, 24, cfg, step=6)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[1], c[1])
    x0, region, refs, null_rows, hints = a
    assert hints.shape == (3, 3, 32, 32)
    # the hint lies in the defect box, inside the region: its indicator channel is a rectangle within the region
    for k in range(3):
        ind = hints[k, 2]
        assert ind.sum() > 0 and (region[k, 0][ind > 0] == 1).all()
        ys, xs = torch.nonzero(ind, as_tuple=True)
        assert ind[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].all()
    assert null_rows.dtype == torch.bool and not null_rows.any()  # no defect-free images given: no null rows
    assert x0.shape == (3, 3, 32, 32) and x0.min() >= -1 and x0.max() <= 1
    assert region.shape == (3, 1, 32, 32) and set(region.unique().tolist()) <= {0.0, 1.0}
    assert (region.flatten(1).sum(1) > 0).all()
    assert refs.shape == (3, 3, 24, 24) and refs.min() >= 0 and refs.max() <= 1


def test_background_rows_use_defect_free_images_and_the_null_reference(tiny_data):
    from counterfactory.training.reference import background_items

    cfg = ReferenceTrainConfig(out="unused", data=str(tiny_data), batch_size=8, background_prob=0.5)
    types, items = defect_items(str(tiny_data), None, None, 4)
    goods = background_items(str(tiny_data), None, 10)
    assert goods and all(g.defect_type == "good" and g.boxes == () for g in goods)
    _, region, _, null_rows, hints = reference_batch_for_step(items, types, 32, 24, cfg, step=1, backgrounds=goods)
    assert 0 < int(null_rows.sum()) < 8 and (region.flatten(1).sum(1) > 0).all()
    assert hints[null_rows].abs().sum() == 0 and (hints[~null_rows, 2].flatten(1).sum(1) > 0).all()


def test_mask_perturbation_switch(tiny_data):
    """mask_perturb off: the region is exactly the defect box the hint marks; on: a larger, varied region."""
    types, items = defect_items(str(tiny_data), None, None, 4)
    off = ReferenceTrainConfig(out="unused", data=str(tiny_data), batch_size=6, mask_perturb=False)
    on = ReferenceTrainConfig(out="unused", data=str(tiny_data), batch_size=6, mask_perturb=True)
    _, r_off, _, _, h_off = reference_batch_for_step(items, types, 32, 24, off, step=3)
    _, r_on, _, _, h_on = reference_batch_for_step(items, types, 32, 24, on, step=3)
    assert torch.equal(r_off[:, 0], h_off[:, 2])
    assert (r_on[:, 0] >= h_on[:, 2]).all() and (r_on.sum() > h_on[:, 2].sum())


def test_reference_augmentation_keeps_shape_and_range():
    cfg = ReferenceTrainConfig(out="x", data="x", blur_prob=1.0)
    ref = torch.rand(3, 20, 14)
    out = augment_reference(ref, np.random.default_rng(0), cfg)
    assert out.shape == ref.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, ref)


def test_export_layout(ref_adapter):
    cfg = json.loads((ref_adapter / REFERENCE_ADAPTER_CONFIG).read_text())
    assert cfg["format"] == "counterfactory.reference_adapter.v1" and cfg["base_kind"] == "compact"
    assert cfg["steps"] == 2 and cfg["complete"] and cfg["encoder"] == "compact"
    lora = load_file(str(ref_adapter / "pytorch_lora_weights.safetensors"))
    assert any("conv1" in k for k in lora) and any("to_q" in k for k in lora)  # attention + conv targets
    assert "null" in load_file(str(ref_adapter / ENCODER_WEIGHTS))
    assert (ref_adapter / "split.json").is_file()


def _cfg(out, tiny_data, tiny_base, **loop):
    return ReferenceTrainConfig(out=str(out), data=str(tiny_data), base=str(tiny_base), lora_rank=2, batch_size=2,
                                reference_size=32, loop=LoopConfig(steps=3, lr=1e-2, warmup_steps=1, ema_decay=0.9,
                                                                   checkpoint_every=1, **loop))


@pytest.mark.slow
def test_killed_run_resumes_exactly(tmp_path, tiny_data, tiny_base):
    straight = train_reference(_cfg(tmp_path / "a", tiny_data, tiny_base), progress=False)
    first = train_reference(_cfg(tmp_path / "b", tiny_data, tiny_base, max_minutes=1e-9), progress=False)
    assert first["stopped_early"] and first["steps"] == 1
    resumed = train_reference(_cfg(tmp_path / "b", tiny_data, tiny_base), progress=False)
    assert resumed["resumed_from"] == 1 and resumed["steps"] == 3
    for name in ("pytorch_lora_weights.safetensors", ENCODER_WEIGHTS):
        a, b = load_file(str(tmp_path / "a" / name)), load_file(str(tmp_path / "b" / name))
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight["final_loss"] == resumed["final_loss"]
