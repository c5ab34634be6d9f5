"""Read any folder of images (+ masks, + pre-edit sources) into one :class:`ImageSet` for evaluation.

Accepted layouts, tried in this order:

1. A dataset the data layer knows (MVTec-AD category, Magnetic Tile): its defect samples by type; the
   defect-free ones are kept apart in ``ImageSet.good``.
2. anomalib Folder layout, what our generator writes and many other tools can: ``<dir>/<type>/<id>.<ext>``
   with masks at ``<dir>/ground_truth/<type>/<id>_mask.png`` (or ``<id>.png``), optional ``manifest.jsonl``.
3. A flat folder of images: ``<dir>/<id>.<ext>`` (type ``"all"``), masks at ``<dir>/ground_truth/<id>_mask.png``
   or beside the image as ``<id>_mask.png``.

Either every image has a mask or none does (a partial set is an error). The pre-edit image of a generated
one comes from ``--source DIR`` (``<src>/<type>/<id>.*`` or ``<src>/<id>.*``) or from the manifest's
``source_image``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..data.dataset import natural_key
from ..errors import input_error
from ..io.images import IMAGE_EXTENSIONS

FLAT_TYPE = "all"
_MASK_DIRS = ("ground_truth", "masks")


def type_key(name: str) -> str:
    """Case-insensitive type match that ignores Magnetic Tile's ``MT_`` prefix."""
    n = name.strip().lower()
    return n[3:] if n.startswith("mt_") else n


@dataclass(frozen=True)
class Item:
    id: str  # unique in the set: "<type>/<stem>" (or the dataset's source_id)
    type: str
    image_path: Path
    mask_path: Path | None = None
    source_path: Path | None = None  # pre-edit image, for locality


@dataclass
class ImageSet:
    root: Path
    layout: str  # "mvtec" | "magnetic_tile" | "folder" | "flat"
    items: list[Item]
    good: list[Item] = field(default_factory=list)
    manifest: dict[str, dict] = field(default_factory=dict)

    @property
    def types(self) -> list[str]:
        return sorted({i.type for i in self.items}, key=natural_key)

    def of_type(self, t: str) -> list[Item]:
        return [i for i in self.items if i.type == t]

    @property
    def has_masks(self) -> bool:
        return bool(self.items) and all(i.mask_path is not None for i in self.items)

    @property
    def has_sources(self) -> bool:
        return bool(self.items) and all(i.source_path is not None for i in self.items)


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
         and not p.stem.endswith("_mask")),
        key=lambda p: natural_key(p.name),
    )


def _find_mask(candidates: list[Path]) -> Path | None:
    for c in candidates:
        if c.is_file():
            return c
    return None


def _mask_candidates(root: Path, t: str | None, stem: str, image_dir: Path) -> list[Path]:
    out = []
    for md in _MASK_DIRS:
        base = root / md / t if t is not None else root / md
        out += [base / f"{stem}_mask.png", base / f"{stem}.png"]
    out.append(image_dir / f"{stem}_mask.png")
    return out


def _is_dataset(path: Path) -> bool:
    try:
        from ..data import detect_layout

        detect_layout(path)
        return True
    except Exception:  # noqa: BLE001 - unknown layout: read it as a plain folder
        return False


def _read_manifest(root: Path, name: str) -> dict[str, dict]:
    path = root / "manifest.jsonl"
    if not path.is_file():
        return {}
    from ..io.manifest import Manifest

    try:
        records = Manifest(path).read()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise input_error(f"{name} manifest", str(path), f"a JSON-lines manifest ({exc})") from None
    out = {}
    for r in records:
        if "id" in r:
            out[str(r["id"])] = r
    return out


def _resolve(p: str, root: Path) -> Path | None:
    cand = [Path(p)] if Path(p).is_absolute() else [Path(p), root / p, root.parent / p]
    for c in cand:
        if c.is_file():
            return c
    return None


def _source_for(item_type: str | None, stem: str, source_dir: Path | None, record: dict | None, root: Path) -> Path | None:
    if source_dir is not None:
        for base in ([source_dir / item_type] if item_type else []) + [source_dir]:
            for ext in IMAGE_EXTENSIONS:
                c = base / f"{stem}{ext}"
                if c.is_file():
                    return c
        return None
    if record and record.get("source_image"):
        return _resolve(str(record["source_image"]), root)
    return None


def read_image_folder(
    path: str | os.PathLike, name: str = "--generated", source_dir: str | os.PathLike | None = None
) -> ImageSet:
    """Read ``path`` (see the module doc). ``name`` is the argument named in errors."""
    root = Path(path)
    if not root.is_dir():
        raise input_error(name, str(path), "an existing folder of images")
    src = Path(source_dir) if source_dir is not None else None
    if src is not None and not src.is_dir():
        raise input_error("--source", str(source_dir), "an existing folder of the pre-edit images")

    if _is_dataset(root):
        from ..data import GOOD, open_dataset

        ds = open_dataset(root)
        items, good = [], []
        for s in ds.samples:
            stem = Path(s.image_path).stem
            it = Item(s.source_id, s.defect_type, Path(s.image_path), s.mask_path,
                      _source_for(s.defect_type, stem, src, None, root) if src else None)
            (good if s.defect_type == GOOD else items).append(it)
        if not items:
            raise input_error(name, str(path), "a dataset with defect images (found only defect-free ones)")
        return ImageSet(root, ds.layout, items, good)

    manifest = _read_manifest(root, name)
    subdirs = [d for d in sorted(root.iterdir(), key=lambda p: natural_key(p.name))
               if d.is_dir() and not d.name.startswith(".") and d.name not in _MASK_DIRS]
    typed = [(d, _images_in(d)) for d in subdirs]
    typed = [(d, ims) for d, ims in typed if ims]
    items: list[Item] = []
    if typed:
        layout = "folder"
        for d, ims in typed:
            for im in ims:
                rec = manifest.get(im.stem) or manifest.get(f"{d.name}/{im.stem}")
                items.append(Item(f"{d.name}/{im.stem}", d.name, im,
                                  _find_mask(_mask_candidates(root, d.name, im.stem, d)),
                                  _source_for(d.name, im.stem, src, rec, root)))
    else:
        layout = "flat"
        for im in _images_in(root):
            rec = manifest.get(im.stem)
            items.append(Item(im.stem, FLAT_TYPE, im, _find_mask(_mask_candidates(root, None, im.stem, root)),
                              _source_for(None, im.stem, src, rec, root)))
    if not items:
        raise input_error(name, str(path), f"a folder with images ({', '.join(IMAGE_EXTENSIONS)}); found none")
    with_mask = [i for i in items if i.mask_path is not None]
    if with_mask and len(with_mask) != len(items):
        missing = next(i for i in items if i.mask_path is None)
        raise input_error(
            f"{name} masks", f"{len(items) - len(with_mask)} of {len(items)} images without a mask, e.g. {missing.image_path}",
            "a mask for every image (ground_truth/<type>/<id>_mask.png) or for none",
        )
    if src is not None:
        lacking = [i for i in items if i.source_path is None]
        if lacking:
            raise input_error("--source", str(src), f"a pre-edit image for every generated one; none for {lacking[0].id}"
                              f" ({len(lacking)} missing; expected <source>/<type>/<id>.* or <source>/<id>.*)")
    return ImageSet(root, layout, items, [], manifest)


def _size(path: Path) -> tuple[int, int]:
    """(W, H) from the file header, after EXIF rotation."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
    except Exception as exc:  # noqa: BLE001
        raise input_error("image", str(path), f"a readable image file ({exc})") from None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def check_sizes(images: ImageSet, name: str) -> None:
    """Every image has its mask's and its source's size (headers only, before any heavy work)."""
    for it in images.items:
        size = _size(it.image_path)
        for what, other in (("mask", it.mask_path), ("source image", it.source_path)):
            if other is None:
                continue
            osize = _size(other)
            if osize != size:
                arg = "--source" if what == "source image" else f"{name} {what}"
                raise input_error(arg, str(other), f"the size of its image {it.image_path.name} "
                                  f"({size[0]}x{size[1]}); got {osize[0]}x{osize[1]} (images of mixed sizes)")
