"""One dataset type for every layout: a list of :class:`Sample` plus what was wrong with the folder.

``open_dataset(path)`` detects the layout (MVTec-AD or Magnetic Tile), reads it and returns a
:class:`Dataset`. In ``strict`` mode (the default, used by training and generation) the first problem found
raises :class:`InputError`; with ``strict=False`` (used by ``data inspect``) problems are collected in
``Dataset.problems`` and every readable sample is kept. ``skip_broken=True`` (``data split``, training and
generation on real data) is the middle way: each problem is reported as a one-line warning, the affected sample
is left out, a count closes the list, and only a type left with no usable sample is an error.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..errors import InputError, input_error
from ..io.images import IMAGE_EXTENSIONS
from ..io.masks import read_mask
from .sample import GOOD, Sample

LAYOUTS = ("mvtec", "magnetic_tile")

MIN_IMAGE_SIDE = 16  # smaller images (or masks) cannot hold a defect with context at any working resolution
NOISE_COVERAGE = 0.4  # a mask covering more than this fraction of its image ...
NOISE_FRAGMENTS = 20  # ... in more than this many separate pieces is noise (a bad threshold or export), not a defect

LAYOUT_HELP = (
    "a folder in MVTec-AD layout (<category>/train/good/, test/<type>/, ground_truth/<type>/<id>_mask.png) "
    "or Magnetic Tile layout (MT_<Type>/Imgs/<stem>.jpg + <stem>.png)"
)


def natural_key(text: str) -> tuple:
    """Sort key that orders digit runs by value: ``"2" < "10"``, ``"img2" < "img10"``."""
    return tuple(int(p) if i % 2 else p for i, p in enumerate(re.split(r"(\d+)", text)))


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: the file, a short kind and a one-line message (value + what is allowed)."""

    path: str
    kind: str  # missing_mask | orphan_mask | size_mismatch | empty_mask | full_mask | noise_mask | nonempty_good_mask | not_an_image | unreadable | too_small | misplaced | empty_type
    message: str

    def to_dict(self) -> dict:
        return {"path": self.path, "kind": self.kind, "message": self.message}


class Problems:
    """Collects problems; in strict mode the first one raises InputError."""

    def __init__(self, strict: bool, min_side: int = MIN_IMAGE_SIDE):
        self.strict = strict
        self.min_side = max(1, int(min_side))
        self.items: list[Problem] = []

    def add(self, path: str | os.PathLike, kind: str, argument: str, allowed: str) -> None:
        err = input_error(argument, str(path), allowed)
        if self.strict:
            raise err
        self.items.append(Problem(str(path), kind, str(err)))

    def add_error(self, path: str | os.PathLike, kind: str, err: InputError) -> None:
        """Record (or raise) an InputError that already names the file and what is allowed."""
        if self.strict:
            raise err
        self.items.append(Problem(str(path), kind, str(err)))


def visible_entries(folder: Path) -> list[Path]:
    """Entries of a folder, hidden ones (``.DS_Store``, temp files of atomic writes) left out, sorted naturally."""
    return sorted(
        (p for p in folder.iterdir() if not p.name.startswith(".")), key=lambda p: natural_key(p.name)
    )


def image_size(path: Path, verify: bool, problems: Problems, what: str = "image") -> tuple[int, int] | None:
    """(H,W) of an image file, or None after recording why it cannot be used.

    Without ``verify`` only the header is read (fast); with it the whole file is decoded the way training
    will decode it (catches truncated files, transparency, ...).
    """
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        problems.add(
            path, "not_an_image", what, f"an image file ending in one of {', '.join(IMAGE_EXTENSIONS)}"
        )
        return None
    try:
        with Image.open(path) as im:
            w, h = im.size
            if verify:  # decode fully, as training will (a truncated file fails here, not mid-training)
                im.load()
                if "A" in im.getbands() and what == "image":
                    a = im.getchannel("A")
                    if a.getextrema()[0] < 255:
                        raise input_error(
                            "image",
                            str(path),
                            "an image without transparency (this one has an alpha channel in use; flatten it first)",
                        )
            # EXIF orientation (read_array applies it); for PNG the EXIF chunk may follow the pixel data, so
            # only look there once the file has been read in full
            orientation = im.getexif().get(0x0112, 1) if verify or im.format in ("JPEG", "MPO", "TIFF") else 1
    except InputError as exc:
        problems.add_error(path, "unreadable", exc)
        return None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        reason = (
            "truncated or corrupt"
            if "truncated" in str(exc) or "broken" in str(exc)
            else "not a readable image"
        )
        problems.add(path, "unreadable", what, f"a readable image file ({reason}: {exc})")
        return None
    if orientation in (5, 6, 7, 8):  # EXIF-rotated by a quarter turn: read_array returns it transposed
        h, w = w, h
    if min(h, w) < problems.min_side:
        problems.add(path, "too_small", what, f"an image at least {problems.min_side} px on each side (this one is "
                                              f"{w}x{h})")
        return None
    return h, w


def check_mask(
    mask: Path, image_hw: tuple[int, int] | None, verify: bool, problems: Problems, *, good: bool = False
) -> bool:
    """Validate a mask file against its image: readable, same size, nonempty (empty for good). True if usable."""
    if mask.suffix.lower() not in IMAGE_EXTENSIONS:
        problems.add(
            mask, "not_an_image", "mask", f"an image file ending in one of {', '.join(IMAGE_EXTENSIONS)}"
        )
        return False
    try:
        m = read_mask(mask)
    except InputError as exc:
        problems.add_error(mask, "unreadable", exc)
        return False
    if image_hw is not None and tuple(m.shape) != tuple(image_hw):
        problems.add(
            mask,
            "size_mismatch",
            "mask",
            f"a mask of its image's size {image_hw[1]}x{image_hw[0]} (W x H); this one is {m.shape[1]}x{m.shape[0]}",
        )
        return False
    if good:
        if m.any():
            problems.add(mask, "nonempty_good_mask", "mask", "an all-background mask for a defect-free image")
            return False
        return True
    if not m.any():
        problems.add(
            mask,
            "empty_mask",
            "mask",
            "a mask with defect pixels (>= 0.5 after scaling to [0,1]); this one is all background",
        )
        return False
    why = mask_quality(m)
    if why:
        problems.add(mask, why[0], "mask", why[1])
        return False
    return True


def mask_quality(m) -> tuple[str, str] | None:
    """``(kind, what is allowed)`` when a binary (H,W) defect mask is all defect or mostly noise, else None.

    Noise: more than ``NOISE_COVERAGE`` of the image in more than ``NOISE_FRAGMENTS`` separate pieces (what a
    wrong threshold or a JPEG-compressed mask export looks like); a real large defect is one or a few pieces.
    """
    import numpy as np
    from scipy import ndimage

    m = np.asarray(m) > 0.5
    frac = float(m.mean())
    if m.all():
        return "full_mask", "a mask that marks a defect region, not the whole image (this one is all defect)"
    if frac > NOISE_COVERAGE:
        _, pieces = ndimage.label(m)
        if pieces > NOISE_FRAGMENTS:
            return "noise_mask", (f"a defect mask, not noise (this one covers {frac:.0%} of the image in {pieces} "
                                  f"pieces; check the threshold or export of the mask)")
    return None


@dataclass
class Dataset:
    """Every image of a dataset folder as :class:`Sample` objects, good and defect."""

    layout: str
    root: Path
    samples: list[Sample]
    problems: list[Problem] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(
        default_factory=dict
    )  # type → {"images": n, "masks": n} as found on disk

    @property
    def defect_types(self) -> list[str]:
        """Sorted defect type names, "good" excluded."""
        types = {s.defect_type for s in self.samples if s.defect_type != GOOD}
        types |= {t for t in self.counts if t != GOOD}
        return sorted(types)

    @property
    def types(self) -> list[str]:
        """Defect types plus "good" when the dataset has defect-free images."""
        return self.defect_types + ([GOOD] if self.good() else [])

    def of_type(self, defect_type: str) -> list[Sample]:
        """Samples of one type (``"good"`` allowed), sorted by id with numbers by value."""
        if defect_type == GOOD:
            return self.good()
        if defect_type not in self.defect_types:
            allowed = ", ".join(self.defect_types + [GOOD]) or "(none: the dataset has no images)"
            raise input_error("defect_type", defect_type, f"one of {allowed} (the types of {self.root})")
        return sorted(
            (s for s in self.samples if s.defect_type == defect_type), key=lambda s: natural_key(s.source_id)
        )

    def good(self) -> list[Sample]:
        """Defect-free samples in reading order (MVTec: train/good first, then test/good; each by id)."""
        return [s for s in self.samples if s.defect_type == GOOD]

    def by_id(self) -> dict[str, Sample]:
        return {s.source_id: s for s in self.samples}

    def summary(self) -> dict:
        """What ``data inspect --json`` prints."""
        types = {
            t: {
                "images": self.counts.get(t, {}).get("images", 0),
                "masks": self.counts.get(t, {}).get("masks", 0),
            }
            for t in self.defect_types
        }
        return {
            "layout": self.layout,
            "root": str(self.root),
            "types": types,
            "good": self.counts.get(GOOD, {}).get("images", len(self.good())),
            "problems": [p.to_dict() for p in self.problems],
        }


def _is_mvtec(path: Path) -> bool:
    return (path / "test").is_dir() or (path / "train").is_dir()


def _is_magnetic_tile(path: Path) -> bool:
    return any(p.is_dir() and p.name.startswith("MT_") and (p / "Imgs").is_dir() for p in path.iterdir())


def detect_layout(path: str | os.PathLike) -> tuple[str, Path]:
    """``(layout, root)`` of a dataset folder; a folder holding exactly one dataset is descended into."""
    path = Path(path)
    if not path.exists():
        raise input_error("dataset", str(path), "an existing directory (this path does not exist)")
    if not path.is_dir():
        raise input_error("dataset", str(path), f"a directory, not a file; {LAYOUT_HELP}")
    if _is_mvtec(path):
        return "mvtec", path
    if _is_magnetic_tile(path):
        return "magnetic_tile", path
    subdirs = [p for p in visible_entries(path) if p.is_dir()]
    found = [(p, "mvtec") for p in subdirs if _is_mvtec(p)] + [
        (p, "magnetic_tile") for p in subdirs if _is_magnetic_tile(p)
    ]
    if len(found) == 1:  # e.g. an MVTec download of one category, or a data folder holding one dataset
        return found[0][1], found[0][0]
    if len(found) > 1:
        names = ", ".join(sorted(p.name for p, _ in found))
        raise input_error(
            "dataset", str(path), f"one dataset or MVTec category folder; this holds {len(found)}: {names}"
        )
    raise input_error("dataset", str(path), f"{LAYOUT_HELP}; found neither (unknown layout)")


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def open_dataset(
    path: str | os.PathLike,
    strict: bool = True,
    verify: bool = False,
    *,
    skip_broken: bool = False,
    min_side: int = MIN_IMAGE_SIDE,
    warn: Callable[[str], None] | None = None,
) -> Dataset:
    """Read a dataset folder, detecting its layout.

    ``strict``: raise :class:`InputError` at the first problem (missing/mismatched/empty/noise mask, unreadable,
    too small or non-image file); otherwise collect them in ``Dataset.problems``. ``verify``: decode every image
    fully (slower; catches truncated files) instead of reading headers only. Masks of defect images are always
    read. ``skip_broken``: leave out every sample with a problem, passing one line per problem and then a count
    to ``warn`` (default: stderr); raise only when a type that has files is left with no usable sample.
    ``min_side``: images smaller than this on a side are a ``too_small`` problem.
    """
    layout, root = detect_layout(path)
    if layout == "mvtec":
        from .mvtec import read_mvtec as read
    else:
        from .magnetic_tile import read_magnetic_tile as read
    ds = read(root, strict=strict and not skip_broken, verify=verify, min_side=min_side)
    if skip_broken:
        report_skipped(ds, warn or _stderr)
    return ds


def report_skipped(ds: Dataset, warn: Callable[[str], None]) -> None:
    """Warn once per problem of ``ds`` and with a count; InputError if a type has files but no usable sample."""
    for p in ds.problems:
        warn(f"warning: skipped [{p.kind}] {p.message}")  # the message names the file
    usable = {t: len(ds.of_type(t)) for t in ds.defect_types}
    empty = [t for t, n in usable.items() if n == 0]
    if ds.problems:
        warn(f"warning: {len(ds.problems)} file(s) with problems skipped in {ds.root}; "
             f"usable samples: {', '.join(f'{t} {n}' for t, n in usable.items())}, good {len(ds.good())}")
    if empty:
        raise input_error("dataset", str(ds.root), f"at least one usable sample of every type; none is left of "
                                                   f"{', '.join(repr(t) for t in empty)} after skipping the files "
                                                   f"with problems (see `counterfactory data inspect {ds.root}`)")


def sort_samples(samples: Iterable[Sample]) -> list[Sample]:
    return sorted(samples, key=lambda s: natural_key(s.source_id))
