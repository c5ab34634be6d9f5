"""Magnetic Tile surface-defect layout (Huang, Qiu, Yuan 2020), read only.

::

    MT_<Type>/Imgs/<stem>.jpg     the image
    MT_<Type>/Imgs/<stem>.png     its mask (same stem; noisy values 0..255, binarized at 0.5)

``MT_Free`` holds the defect-free images (type ``"good"``; their masks are all background and are not used).
Types are named without the prefix (``"Blowhole"``, ``"Break"``, ``"Crack"``, ...). ``Sample.source_id`` is
``"<Type>/<stem>"`` (``"Free/<stem>"`` for good images).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..io.images import IMAGE_EXTENSIONS
from .dataset import MIN_IMAGE_SIDE, Dataset, Problems, check_mask, image_size, natural_key, visible_entries
from .sample import GOOD, Sample

PREFIX = "MT_"
FREE = "Free"
MASK_EXT = ".png"


def read_magnetic_tile(
    root: str | os.PathLike, strict: bool = True, verify: bool = False, min_side: int = MIN_IMAGE_SIDE
) -> Dataset:
    """Read a Magnetic Tile folder. ``strict``/``verify``: see :func:`open_dataset`.

    Good masks are only read with ``verify`` (to report a non-empty one); defect masks are always read.
    """
    root = Path(root)
    problems = Problems(strict, min_side)
    samples: list[Sample] = []
    counts: dict[str, dict[str, int]] = {}
    for type_dir in visible_entries(root):
        if not (type_dir.is_dir() and type_dir.name.startswith(PREFIX)):
            continue
        name = type_dir.name[len(PREFIX) :]
        t = GOOD if name == FREE else name
        imgs = type_dir / "Imgs"
        c = counts.setdefault(t, {"images": 0, "masks": 0})
        if not imgs.is_dir():
            problems.add(
                type_dir,
                "misplaced",
                "folder",
                f"a type folder holding Imgs/ ({type_dir.name}/Imgs/<stem>.jpg + .png)",
            )
            continue
        by_stem: dict[str, dict[str, list[Path]]] = {}
        for f in visible_entries(imgs):
            if f.is_dir():
                continue
            ext = f.suffix.lower()
            if ext not in IMAGE_EXTENSIONS:
                image_size(f, verify, problems)  # records not_an_image
                continue
            kind = "mask" if ext == MASK_EXT else "image"
            by_stem.setdefault(f.stem, {"image": [], "mask": []})[kind].append(f)
        for stem in sorted(by_stem, key=natural_key):
            entry = by_stem[stem]
            masks = entry["mask"]
            c["masks"] += len(masks)
            if not entry["image"]:
                problems.add(
                    masks[0],
                    "orphan_mask",
                    "mask",
                    f"a mask whose image {stem}.jpg exists in {imgs} (none found)",
                )
                continue
            for img in entry["image"][1:]:
                problems.add(
                    img, "misplaced", "image", f"one image per stem; {stem} has {len(entry['image'])}"
                )
            img = entry["image"][0]
            c["images"] += 1
            hw = image_size(img, verify, problems)
            sid = f"{name}/{stem}"
            if t == GOOD:
                if (
                    masks
                    and verify
                    and hw is not None
                    and not check_mask(masks[0], hw, verify, problems, good=True)
                ):
                    continue
                if hw is not None:
                    samples.append(Sample(img, None, GOOD, sid))
                continue
            if not masks:
                problems.add(
                    img,
                    "missing_mask",
                    "image",
                    f"a defect image with a same-stem mask {imgs / (stem + MASK_EXT)} (none found)",
                )
                continue
            if hw is not None and check_mask(masks[0], hw, verify, problems):
                samples.append(Sample(img, masks[0], t, sid))
    samples.sort(
        key=lambda s: (
            0 if s.defect_type == GOOD else 1,
            natural_key(s.defect_type),
            natural_key(s.source_id),
        )
    )
    return Dataset("magnetic_tile", root, samples, problems.items, counts)
