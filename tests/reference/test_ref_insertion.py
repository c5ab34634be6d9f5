"""Insertion benchmark pieces: task builders (AnydoorMed definitions), copy-paste / Poisson baselines, metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from counterfactory.data import few_shot_split, open_dataset
from counterfactory.errors import InputError
from counterfactory.evaluation.features import CompactExtractor, CompactExtractorConfig
from counterfactory.evaluation.insertion import (
    InsertionEvalConfig,
    baseline_method,
    build_cases,
    copy_paste,
    evaluate_insertion,
    insertion_region,
    load_case,
    paired_box_metrics,
    place_box,
    poisson_blend,
    real_defect_crops,
)

BOX = (10, 12, 30, 26)


def _smooth(seed=0, h=48, w=64):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.interpolate(torch.rand(1, 3, 6, 8, generator=g), size=(h, w), mode="bilinear",
                                           align_corners=False)[0]


def test_copy_paste_puts_resized_reference_in_box_only():
    t, ref = _smooth(0), torch.rand(3, 7, 10)
    out = copy_paste(t, BOX, ref)
    m = torch.zeros(48, 64, dtype=torch.bool)
    m[12:26, 10:30] = True
    assert torch.equal(out[:, ~m], t[:, ~m])
    assert out[:, m].shape[1] == 14 * 20 and not torch.equal(out[:, m], t[:, m])


def test_poisson_reproduces_target_when_reference_is_the_target_region():
    t = _smooth(1)
    grown = t[:, 11:27, 9:31]  # the box grown by one pixel: same gradients as the target
    out = poisson_blend(t, BOX, grown)
    assert torch.allclose(out, t, atol=1e-5)


def test_poisson_is_seamless_and_local():
    t = _smooth(2)
    ref = (t[:, 11:27, 9:31] + 0.3).clamp(0, 1)  # brighter reference: Poisson removes the offset, copy-paste does not
    cp, po = copy_paste(t, BOX, ref[:, 1:-1, 1:-1]), poisson_blend(t, BOX, ref)
    m = torch.zeros(48, 64, dtype=torch.bool)
    m[12:26, 10:30] = True
    assert torch.equal(po[:, ~m], t[:, ~m])
    assert (po[:, m] - t[:, m]).abs().mean() < 0.5 * (cp[:, m] - t[:, m]).abs().mean()


def test_poisson_box_at_image_border():
    t = _smooth(3)
    out = poisson_blend(t, (0, 0, 12, 10), torch.rand(3, 9, 9))
    assert out.shape == t.shape and torch.equal(out[:, 10:], t[:, 10:]) and out.min() >= 0 and out.max() <= 1


def test_foreground_and_placement():
    img = torch.full((3, 60, 80), 0.6)
    img[:, :, :20] = 0.02  # dark background band
    fg = insertion_region(img, erode_px=2)
    assert not fg[:, :20].any() and fg[2:-2, 30:70].all()  # eroded off the band and the image edge
    rng = np.random.default_rng(0)
    for _ in range(20):
        b = place_box(fg, (10, 8), rng)
        assert b is not None and fg[b[1]:b[3], b[0]:b[2]].mean() >= 0.9
    assert place_box(fg, (90, 8), rng) is None  # larger than the image
    assert place_box(np.zeros_like(fg), (10, 8), rng) is None  # no product anywhere


def test_build_cases_follow_the_task_definitions(boxes_data):
    ds = open_dataset(boxes_data)
    split = few_shot_split(ds)
    re_ = build_cases(ds, split, "reinsertion", n=3, seed=0)
    assert len(re_) == 3 and all(c.target_id == c.reference_id and c.box == c.reference_box for c in re_)
    assert {c.target_id for c in re_} <= set(split.held_out["dent"])
    rp = build_cases(ds, split, "replacement", n=4, seed=0)
    assert rp
    for c in rp:
        w, h = c.box[2] - c.box[0], c.box[3] - c.box[1]
        rw, rh = c.reference_box[2] - c.reference_box[0], c.reference_box[3] - c.reference_box[1]
        assert c.reference_id != c.target_id
        assert abs(rw - w) <= 0.15 * w and abs(rh - h) <= 0.15 * h
    assert all((c.box[2] - c.box[0], c.box[3] - c.box[1]) != (20, 8) for c in rp)  # 20x8 has no size match
    ins = build_cases(ds, split, "insertion", n=3, seed=0)
    assert len(ins) == 3 and all(c.target_id in split.held_out["good"] for c in ins)
    for c in ins:
        target, _ = load_case(c)
        fg = insertion_region(target)
        assert fg[c.box[1]:c.box[3], c.box[0]:c.box[2]].mean() >= 0.9
        assert (c.box[2] - c.box[0], c.box[3] - c.box[1]) == (c.reference_box[2] - c.reference_box[0],
                                                              c.reference_box[3] - c.reference_box[1])
    assert [c.to_dict() for c in ins] == [c.to_dict() for c in build_cases(ds, split, "insertion", n=3, seed=0)]
    with pytest.raises(InputError, match="task"):
        build_cases(ds, split, "teleport")


def test_paired_metrics():
    t = _smooth(4)
    same = paired_box_metrics(t, t, BOX)
    assert same["L1_box"] == 0 and math.isinf(same["PSNR_box"]) and same["SSIM_box"] == pytest.approx(1.0)
    other = paired_box_metrics(copy_paste(t, BOX, torch.zeros(3, 8, 8)), t, BOX)
    assert other["L1_box"] > 0.1 and other["SSIM_box"] < 0.9
    tiny = paired_box_metrics(t, t, (3, 3, 6, 5))  # smaller than the SSIM window: context window used
    assert tiny["SSIM_box"] == pytest.approx(1.0)


def test_evaluate_end_to_end_with_baselines(tmp_path, boxes_data):
    ds = open_dataset(boxes_data)
    split = few_shot_split(ds)
    cases = build_cases(ds, split, "reinsertion", n=4) + build_cases(ds, split, "insertion", n=4)
    ext = CompactExtractor(CompactExtractorConfig(input_size=16, channels=(8, 16), num_features=16, groups=8))
    held = [s for s in ds.samples if s.source_id in split.held_out["dent"]]
    real = real_defect_crops(held, ext.input_size)
    methods = {m: baseline_method(m) for m in ("copy_paste", "poisson")}
    cfg = InsertionEvalConfig(out=str(tmp_path / "run"), kid_subsets=5)
    summary = evaluate_insertion(cases, methods, ext, real, cfg, identity={"x": 1}, progress=False, log=lambda s: None)
    rows = {(r["task"], r["method"]): r for r in summary["rows"]}
    assert set(rows) == {(t, m) for t in ("reinsertion", "insertion") for m in methods}
    for r in rows.values():
        assert r["outside_mask_max_abs_change"] == 0.0  # the baselines never touch pixels outside the box
        assert "FD_compact_crop" in r and "KID_compact_crop" in r and -1 <= r["ref_cos_compact"] <= 1 and "ref_cos_compact_shuffled" in r
    assert "L1_box" in rows[("reinsertion", "poisson")] and "L1_box" not in rows[("insertion", "poisson")]
    out = tmp_path / "run"
    assert (out / "report.html").is_file() and (out / "metrics.json").is_file()
    assert len((out / "cases.jsonl").read_text().splitlines()) == len(cases)
    assert len(list((out / "insertion" / "poisson").glob("*.png"))) == 4
    again = evaluate_insertion(cases, methods, ext, real, cfg, identity={"x": 1}, progress=False, log=lambda s: None)
    strip = [{k: v for k, v in r.items() if k != "seconds_per_case"} for r in summary["rows"]]
    assert again["rows"] == strip  # finished results are reused (nothing re-generated, so no timings)
    with pytest.raises(InputError, match="--out"):
        evaluate_insertion(cases, methods, ext, real, cfg, identity={"x": 2}, progress=False, log=lambda s: None)


def test_seam_ratio_sees_a_pasted_edge():
    from counterfactory.evaluation.insertion import seam_ratio

    g = torch.Generator().manual_seed(0)
    image = (0.5 + 0.05 * torch.randn(1, 64, 64, generator=g)).clamp(0, 1).expand(3, -1, -1).clone()
    box = (20, 20, 40, 40)
    assert 0.7 < seam_ratio(image, box) < 1.3  # the surface's own texture: about 1
    pasted = image.clone()
    pasted[:, 20:40, 20:40] += 0.3
    assert seam_ratio(pasted, box) > 3  # a step all around the box
    blended = image.clone()
    ramp = torch.linspace(0, 1, 10)
    bump = torch.minimum(ramp.view(-1, 1), ramp.view(1, -1))
    bump = torch.minimum(bump, bump.flip(0).flip(1))
    blended[:, 20:30, 20:30] += 0.3 * bump  # a bump that fades out before the edge
    assert seam_ratio(blended, (20, 20, 30, 30)) < seam_ratio(pasted, box)
    assert math.isnan(seam_ratio(image, (0, 0, 64, 64)))  # no ring left outside


def test_aligned_structure_finds_a_shifted_copy():
    from counterfactory.evaluation.insertion import aligned_structure
    from counterfactory.models.reference import reference_crop

    g = torch.Generator().manual_seed(1)
    image = torch.rand(3, 80, 80, generator=g)
    box = (20, 20, 50, 50)
    ref = reference_crop(image, box, (0.1, 0.1)).clone()
    assert aligned_structure(image, box, ref) > 0.99
    shifted = torch.roll(image, shifts=(2, 1), dims=(1, 2))
    assert aligned_structure(shifted, box, ref) > 0.8  # a 2 px misplacement is aligned away
    other = torch.rand(3, 80, 80, generator=torch.Generator().manual_seed(2))
    assert aligned_structure(other, box, ref) < 0.35
    toned = (image * 0.5 + 0.25)
    assert aligned_structure(toned, box, ref) > 0.99  # tone and contrast do not count
