"""MVTec-AD layout, read and write (anomalib-compatible).

One category folder::

    <category>/train/good/<id>.png
    <category>/test/good/<id>.png
    <category>/test/<type>/<id>.png
    <category>/ground_truth/<type>/<id>_mask.png     (0 = background, 255 = defect)

``Sample.source_id`` is ``"<split>/<type>/<stem>"``, e.g. ``"test/crack/000"``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import input_error
from ..io.images import IMAGE_EXTENSIONS, save_image, to_uint8
from ..io.masks import binarize
from .dataset import MIN_IMAGE_SIDE, Dataset, Problems, check_mask, image_size, natural_key, visible_entries
from .sample import GOOD, Sample

SPLITS = ("train", "test")
MASK_SUFFIX = "_mask"


def mask_path_for(root: Path, defect_type: str, stem: str) -> Path:
    return Path(root) / "ground_truth" / defect_type / f"{stem}{MASK_SUFFIX}.png"


def _check_name(argument: str, name: str) -> None:
    if not isinstance(name, str) or not name or name.startswith(".") or any(c in name for c in "/\\\0"):
        raise input_error(argument, name, "a plain, non-empty file name part (no '/', not starting with '.')")


def read_mvtec(
    root: str | os.PathLike, strict: bool = True, verify: bool = False, min_side: int = MIN_IMAGE_SIDE
) -> Dataset:
    """Read one MVTec-AD category folder (see module doc). ``strict``/``verify``: see :func:`open_dataset`."""
    root = Path(root)
    problems = Problems(strict, min_side)
    samples: list[Sample] = []
    counts: dict[str, dict[str, int]] = {}
    matched_masks: set[Path] = set()

    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        for type_dir in visible_entries(split_dir):
            if not type_dir.is_dir():
                problems.add(
                    type_dir, "misplaced", "file", f"only type folders inside {split}/ (e.g. {split}/good/)"
                )
                continue
            t = type_dir.name
            if split == "train" and t != GOOD:
                problems.add(
                    type_dir,
                    "misplaced",
                    "folder",
                    "train/ holds only good/ in MVTec-AD layout (defects go in test/<type>/)",
                )
                continue
            c = counts.setdefault(t, {"images": 0, "masks": 0})
            files = [p for p in visible_entries(type_dir) if not p.is_dir()]
            if not files and t != GOOD:
                problems.add(type_dir, "empty_type", "folder", "a defect type folder with at least one image")
            for img in files:
                stem = img.stem
                if img.suffix.lower() not in IMAGE_EXTENSIONS:
                    image_size(img, verify, problems)  # records not_an_image
                    continue
                c["images"] += 1
                hw = image_size(img, verify, problems)
                if t == GOOD:
                    if hw is not None:
                        samples.append(Sample(img, None, GOOD, f"{split}/{t}/{stem}"))
                    continue
                mask = mask_path_for(root, t, stem)
                if not mask.is_file():
                    problems.add(
                        img, "missing_mask", "image", f"a defect image with a mask at {mask} (none found)"
                    )
                    continue
                matched_masks.add(mask)
                if hw is None:
                    continue
                if check_mask(mask, hw, verify, problems):
                    samples.append(Sample(img, mask, t, f"{split}/{t}/{stem}"))

    gt = root / "ground_truth"
    if gt.is_dir():
        for type_dir in visible_entries(gt):
            if not type_dir.is_dir():
                continue
            t = type_dir.name
            for m in visible_entries(type_dir):
                if m.is_dir():
                    continue
                if t in counts:
                    counts[t]["masks"] += 1
                if m in matched_masks or t == GOOD:
                    continue
                if m.suffix.lower() != ".png" or not m.stem.endswith(MASK_SUFFIX):
                    problems.add(
                        m,
                        "orphan_mask",
                        "mask",
                        f"a file named <id>{MASK_SUFFIX}.png matching test/{t}/<id>.<ext>",
                    )
                else:
                    problems.add(
                        m,
                        "orphan_mask",
                        "mask",
                        f"a mask whose image test/{t}/{m.stem[: -len(MASK_SUFFIX)]}.<ext> exists (none found)",
                    )

    def order(s: Sample) -> tuple:
        split, t, stem = s.source_id.split("/", 2)
        return (
            0 if t == GOOD else 1,
            SPLITS.index(split) if t == GOOD else 0,
            natural_key(t),
            natural_key(stem),
        )

    samples.sort(key=order)
    return Dataset("mvtec", root, samples, problems.items, counts)


def _as_hwc_uint8(image, argument: str) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB") if image.mode not in ("L", "RGB") else image)
    if isinstance(image, torch.Tensor):
        if image.ndim == 4 and image.shape[0] == 1:
            image = image[0]
        if image.ndim != 3 and image.ndim != 2:
            raise input_error(
                argument, tuple(image.shape), "a (C,H,W) tensor, an (H,W[,C]) array or a PIL image"
            )
    arr = np.asarray(image) if not isinstance(image, torch.Tensor) else None
    if arr is not None and arr.dtype == np.uint8:
        return arr
    if arr is not None and arr.ndim not in (2, 3):
        raise input_error(argument, arr.shape, "a (C,H,W) tensor, an (H,W[,C]) array or a PIL image")
    src = image if isinstance(image, torch.Tensor) else arr
    vals = src.float() if isinstance(src, torch.Tensor) else np.asarray(src, dtype=np.float32)
    lo, hi = float(vals.min()), float(vals.max())
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0 or hi > 1:
        raise input_error(f"{argument} range", (lo, hi), "finite values in [0,1] (or uint8)")
    return to_uint8(src)


def write_mvtec_sample(
    root: str | os.PathLike, split: str, defect_type: str, stem: str, image, mask=None
) -> Path:
    """Write one image (and its mask for defect types) into an MVTec-AD category folder; returns the image path.

    ``image``: (C,H,W) tensor / (H,W[,C]) array in [0,1] or uint8 / PIL. ``mask``: (H,W) or (1,H,W), binarized
    at 0.5, required and non-empty for defect types, None (or all zero) for ``"good"``. Each file is written
    atomically, the mask before the image, so an image on disk always has its mask.
    """
    root = Path(root)
    if split not in SPLITS:
        raise input_error("split", split, "one of train, test")
    _check_name("defect_type", defect_type)
    _check_name("stem", stem)
    if split == "train" and defect_type != GOOD:
        raise input_error(
            "defect_type", defect_type, "'good' for split 'train' (MVTec-AD trains on defect-free images)"
        )
    img = _as_hwc_uint8(image, "image")
    hw = img.shape[:2]
    m = None
    if mask is not None:
        mt = mask.detach().cpu().float().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        mt = mt.reshape(mt.shape[-2:]) if mt.ndim == 3 and mt.shape[0] == 1 else mt
        if mt.ndim != 2:
            raise input_error("mask", tuple(mt.shape), "an (H,W) or (1,H,W) mask")
        if tuple(mt.shape) != tuple(hw):
            raise input_error("mask size", tuple(mt.shape), f"the image's size {tuple(hw)}")
        m = binarize(mt)
    if defect_type == GOOD:
        if m is not None and m.any():
            raise input_error(
                "mask", f"{int(m.sum())} defect pixels", "no mask (or an empty one) for a 'good' image"
            )
    else:
        if m is None or not m.any():
            raise input_error(
                "mask",
                "empty" if m is not None else None,
                f"a non-empty mask for defect type {defect_type!r}",
            )
        save_image((m * 255).astype(np.uint8), mask_path_for(root, defect_type, stem))
    return save_image(img, root / split / defect_type / f"{stem}.png")
