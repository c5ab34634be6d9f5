"""Reference-insertion benchmark cases: the three AnydoorMed tasks built from a split's held-out images.

- ``reinsertion``: a defect's own crop back into its own box; the real image is the ground truth;
- ``replacement``: a defect from *another* image whose box is within ±15 % in width and height of the target
  box (same defect type by default), painted into the target's defect box;
- ``insertion``: a defect into a defect-free image at a random location where ≥ 90 % of the box lies on the
  product (:func:`insertion_region`; at most 20 tries per image).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import ndimage

from ..data.sample import GOOD
from ..errors import input_error
from ..io.images import load_image
from ..io.masks import Box, bbox, components
from ..models.reference import reference_crop

TASKS = ("reinsertion", "replacement", "insertion")
REFERENCE_CONTEXT = 0.1  # reference crop = defect box + 10 % of its side on each side (PbE: box + 10 px)


@dataclass(frozen=True)
class InsertionCase:
    """One benchmark case: paint the defect ``reference_box`` of ``reference_path`` into ``box`` of ``target_path``."""

    task: str
    case_id: str
    target_id: str
    target_path: str
    box: Box
    reference_id: str
    reference_path: str
    reference_box: Box
    defect_type: str

    @property
    def has_ground_truth(self) -> bool:
        return self.task == "reinsertion"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["box"], d["reference_box"] = list(self.box), list(self.reference_box)
        return d


@dataclass(frozen=True)
class _Instance:
    source_id: str
    path: str
    defect_type: str
    box: Box


def defect_instances(samples, min_area: int = 4, largest_only: bool = True) -> list[_Instance]:
    """Defect boxes (connected components of at least ``min_area`` px) of defect samples, largest first."""
    out = []
    for s in samples:
        if s.is_good:
            continue
        comps = [c for c in components(s.load_mask()[0].numpy()) if c.sum() >= min_area]
        for c in comps[: 1 if largest_only else None]:
            out.append(_Instance(s.source_id, str(s.image_path), s.defect_type, bbox(c)))
    return out


def insertion_region(image: torch.Tensor, erode_px: int = 4, window: int = 9, rel_threshold: float = 0.5) -> np.ndarray:
    """Where an insertion box may lie on an inspection image (C,H,W) in [0,1]: (H,W) bool numpy, True on product.

    The locally averaged gray level is above ``rel_threshold`` × the image's median (dark borders and background
    are out), holes are filled, and the region is eroded by ``erode_px`` so boxes keep off the product's edge
    (AnydoorMed erodes its breast mask the same way). The benchmark's cases are defined with this rule. The
    other foreground rules answer other questions: :func:`counterfactory.data.placement.product_region` (closed,
    largest part, not eroded) measures distances to the product's edge for learned mask placement;
    :func:`counterfactory.pipelines.generate.foreground` (the same brightness test per pixel, unsmoothed) is
    where a generated mask may overlap; :func:`counterfactory.data.morphomnist.foreground` (≥ a fraction of
    the digit's peak) finds Morpho-MNIST strokes."""
    gray = image.float().mean(0).numpy()
    smooth = ndimage.uniform_filter(gray, size=window, mode="nearest")
    fg = smooth > rel_threshold * float(np.median(gray))
    fg = ndimage.binary_fill_holes(fg)
    if erode_px > 0:
        fg = ndimage.binary_erosion(fg, iterations=erode_px, border_value=0)
    return fg


def place_box(fg: np.ndarray, size: tuple[int, int], rng: np.random.Generator, min_fraction: float = 0.9,
              max_tries: int = 20) -> Box | None:
    """A random box of ``size`` (w, h) inside the image with ≥ ``min_fraction`` of its pixels on ``fg``."""
    h, w = fg.shape
    bw, bh = size
    if bw > w or bh > h:
        return None
    integral = np.pad(fg.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    for _ in range(max_tries):
        x0, y0 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
        inside = integral[y0 + bh, x0 + bw] - integral[y0, x0 + bw] - integral[y0 + bh, x0] + integral[y0, x0]
        if inside >= min_fraction * bw * bh:
            return x0, y0, x0 + bw, y0 + bh
    return None


def _round_robin(by_type: dict[str, list], n: int, rng: np.random.Generator) -> list:
    """Up to ``n`` items drawn alternately from each type's shuffled list (balanced across types)."""
    queues = {t: [v[i] for i in rng.permutation(len(v))] for t, v in sorted(by_type.items()) if v}
    out = []
    while len(out) < n and any(queues.values()):
        for t in list(queues):
            if queues[t] and len(out) < n:
                out.append(queues[t].pop(0))
    return out


def build_cases(dataset, split, task: str, n: int = 20, seed: int = 0, part: str = "held_out",
                size_tolerance: float = 0.15, same_type: bool = True, min_fraction: float = 0.9,
                max_tries: int = 20, min_area: int = 4, types=None) -> list[InsertionCase]:
    """Up to ``n`` cases of ``task`` from the ``part`` ("held_out" by default) of ``split``; deterministic by seed."""
    if task not in TASKS:
        raise input_error("task", task, f"one of {', '.join(TASKS)}")
    if not isinstance(n, int) or n < 1:
        raise input_error("n", n, "an integer >= 1")
    rng = np.random.default_rng([seed, TASKS.index(task)])
    table = split.held_out if part == "held_out" else split.train
    index = dataset.by_id()
    wanted = [t for t in (types or sorted(t for t in table if t != GOOD))]
    defects = [index[i] for t in wanted for i in table.get(t, []) if i in index]
    inst = defect_instances(defects, min_area)
    by_type: dict[str, list[_Instance]] = {}
    for it in inst:
        by_type.setdefault(it.defect_type, []).append(it)
    cases: list[InsertionCase] = []

    def case(k, tgt_id, tgt_path, box, ref: _Instance):
        return InsertionCase(task, f"{task}-{k:04d}", tgt_id, tgt_path, tuple(int(v) for v in box), ref.source_id,
                             ref.path, ref.box, ref.defect_type)

    if task == "reinsertion":
        for k, it in enumerate(_round_robin(by_type, n, rng)):
            cases.append(case(k, it.source_id, it.path, it.box, it))
    elif task == "replacement":
        for it in _round_robin(by_type, len(inst), rng):
            if len(cases) >= n:
                break
            w, h = it.box[2] - it.box[0], it.box[3] - it.box[1]
            pool = [d for d in (by_type[it.defect_type] if same_type else inst) if d.source_id != it.source_id
                    and abs((d.box[2] - d.box[0]) - w) <= size_tolerance * w
                    and abs((d.box[3] - d.box[1]) - h) <= size_tolerance * h]
            if pool:
                cases.append(case(len(cases), it.source_id, it.path, it.box, pool[int(rng.integers(len(pool)))]))
    else:
        goods = [index[i] for i in table.get(GOOD, []) if i in index]
        if not goods:
            raise input_error("split", f"no defect-free {part} images", "defect-free ('good') images for the insertion task")
        donors = _round_robin(by_type, n, rng)
        order = [goods[i] for i in rng.permutation(len(goods))]
        gi = 0
        for ref in donors:
            for _ in range(len(order)):
                g = order[gi % len(order)]
                gi += 1
                fg = insertion_region(load_image(g.image_path))
                box = place_box(fg, (ref.box[2] - ref.box[0], ref.box[3] - ref.box[1]), rng, min_fraction, max_tries)
                if box is not None:
                    cases.append(case(len(cases), g.source_id, str(g.image_path), box, ref))
                    break
    return cases


def load_case(case: InsertionCase) -> tuple[torch.Tensor, torch.Tensor]:
    """(target (3,H,W), reference crop (3,h,w)) in [0,1]."""
    target = load_image(case.target_path)
    donor = target if case.reference_path == case.target_path else load_image(case.reference_path)
    return target, reference_crop(donor, case.reference_box, (REFERENCE_CONTEXT, REFERENCE_CONTEXT))
