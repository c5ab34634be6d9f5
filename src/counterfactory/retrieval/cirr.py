"""CIRR-format triplet files: read, validate, write (byte-identical round trip of the real annotations).

The format (Liu et al., ICCV 2021; ``Cuberick-Orion/CIRR``, branch ``cirr_dataset``)::

    cap.rc2.<split>.json    [{"pairid": int, "reference": name, "target_hard": name,
                              "target_soft": {name: float}, "caption": modification text,
                              "img_set": {"id": int, "members": [6 names], "reference_rank": int,
                                          "target_rank": int}}, ...]
    split.rc2.<split>.json  {name: "./relative/path.png"}   (the split's images: the retrieval gallery)

A test split omits ``target_hard``, ``target_soft`` and ``target_rank``. A *triplet folder* written by this
project holds ``cap.rc2.<split>.json``, ``split.rc2.<split>.json`` and the images at the paths the split file
names (relative to the folder).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import input_error

KEYS = ("pairid", "reference", "target_hard", "target_soft", "caption", "img_set")
TEST_KEYS = ("pairid", "reference", "caption", "img_set")
SET_KEYS = ("id", "members", "reference_rank", "target_rank")
SET_SIZE = 6


@dataclass(frozen=True)
class Triplet:
    """One CIRR entry. ``target_hard``/``target_soft``/``target_rank`` are None on a test split."""

    pairid: int
    reference: str
    caption: str
    set_id: int
    members: tuple[str, ...]
    reference_rank: int
    target_hard: str | None = None
    target_soft: dict | None = None
    target_rank: int | None = None

    def to_dict(self) -> dict:
        d: dict = {"pairid": self.pairid, "reference": self.reference}
        if self.target_hard is not None:
            d["target_hard"] = self.target_hard
            d["target_soft"] = dict(self.target_soft if self.target_soft is not None else {self.target_hard: 1.0})
        d["caption"] = self.caption
        s = {"id": self.set_id, "members": list(self.members), "reference_rank": self.reference_rank}
        if self.target_rank is not None:
            s["target_rank"] = self.target_rank
        d["img_set"] = s
        return d


def _entry(item, where: str) -> Triplet:
    if not isinstance(item, dict):
        raise input_error(where, type(item).__name__, "a JSON object with CIRR keys")
    has_target = "target_hard" in item
    need = KEYS if has_target else TEST_KEYS
    missing = [k for k in need if k not in item]
    if missing:
        raise input_error(where, f"keys {sorted(item)}", f"CIRR keys {', '.join(need)} (missing {', '.join(missing)})")
    s = item["img_set"]
    if not isinstance(s, dict):
        raise input_error(f"{where}.img_set", s, "an object with id, members, reference_rank")
    smissing = [k for k in SET_KEYS[: 4 if has_target else 3] if k not in s]
    if smissing:
        raise input_error(f"{where}.img_set", f"keys {sorted(s)}", f"keys {', '.join(SET_KEYS)} (missing {', '.join(smissing)})")
    members = s["members"]
    if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
        raise input_error(f"{where}.img_set.members", members, "a list of image names")
    if not isinstance(item["pairid"], int) or not isinstance(item["reference"], str) or not isinstance(item["caption"], str):
        raise input_error(where, {k: item[k] for k in ("pairid", "reference", "caption")},
                          "an int pairid, a reference name and a caption string")
    if has_target and not isinstance(item["target_soft"], dict):
        raise input_error(f"{where}.target_soft", item["target_soft"], "an object {image name: score}")
    return Triplet(
        pairid=item["pairid"], reference=item["reference"], caption=item["caption"], set_id=s["id"],
        members=tuple(members), reference_rank=s["reference_rank"],
        target_hard=item.get("target_hard"), target_soft=item.get("target_soft"), target_rank=s.get("target_rank"),
    )


def read_triplets(path: str | os.PathLike) -> list[Triplet]:
    """Read a ``cap.rc2.<split>.json`` file; a missing key names the entry and the key."""
    path = Path(path)
    if not path.is_file():
        raise input_error("triplets", str(path), "an existing CIRR caption file (cap.rc2.<split>.json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise input_error("triplets", str(path), f"a JSON file ({exc})") from None
    if not isinstance(data, list):
        raise input_error("triplets", str(path), "a JSON list of CIRR entries")
    return [_entry(item, f"{path.name}[{i}]") for i, item in enumerate(data)]


def dumps_triplets(triplets: Iterable[Triplet]) -> str:
    """The file text, formatted like the released CIRR files (``json.dumps`` defaults, one line)."""
    return json.dumps([t.to_dict() for t in triplets])


def write_triplets(path: str | os.PathLike, triplets: Sequence[Triplet]) -> Path:
    from ..io.manifest import atomic_write_text

    return atomic_write_text(Path(path), dumps_triplets(triplets))


def read_split(path: str | os.PathLike) -> dict[str, str]:
    """Read a ``split.rc2.<split>.json`` file: image name → relative path."""
    path = Path(path)
    if not path.is_file():
        raise input_error("split file", str(path), "an existing CIRR image split file (split.rc2.<split>.json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise input_error("split file", str(path), f"a JSON file ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise input_error("split file", str(path), "a JSON object {image name: relative path}")
    return data


def write_split(path: str | os.PathLike, names_to_paths: dict[str, str]) -> Path:
    from ..io.manifest import atomic_write_text

    return atomic_write_text(Path(path), json.dumps(dict(names_to_paths)))


def check_triplets(triplets: Sequence[Triplet], gallery: Iterable[str]) -> None:
    """Every reference, target and set member must be in the gallery; targets must be set members."""
    names = set(gallery)
    if not names:
        raise input_error("gallery", "empty", "at least one image")
    for t in triplets:
        for role, name in (("reference", t.reference), ("target_hard", t.target_hard)):
            if name is not None and name not in names:
                raise input_error(f"pairid {t.pairid} {role}", name, "an image name of the split file")
        bad = [m for m in t.members if m not in names]
        if bad:
            raise input_error(f"pairid {t.pairid} img_set.members", bad[0], "image names of the split file")


@dataclass(frozen=True)
class TripletFolder:
    """A folder of CIRR-format triplets plus their images (see the module docstring)."""

    root: Path
    split: str
    triplets: list[Triplet]
    paths: dict[str, str]

    def image_path(self, name: str) -> Path:
        return (self.root / self.paths[name]).resolve()


def read_triplet_folder(root: str | os.PathLike, split: str | None = None) -> TripletFolder:
    """Read ``cap.rc2.<split>.json`` + ``split.rc2.<split>.json`` from ``root`` (the split is found when alone)."""
    root = Path(root)
    if not root.is_dir():
        raise input_error("triplet folder", str(root), "a folder holding cap.rc2.<split>.json and split.rc2.<split>.json")
    if split is None:
        found = sorted(p.name[len("cap.rc2."):-len(".json")] for p in root.glob("cap.rc2.*.json"))
        if len(found) != 1:
            raise input_error("triplet folder", str(root), f"exactly one cap.rc2.<split>.json (found {found or 'none'})")
        split = found[0]
    triplets = read_triplets(root / f"cap.rc2.{split}.json")
    paths = read_split(root / f"split.rc2.{split}.json")
    check_triplets(triplets, paths)
    missing = [n for n, p in paths.items() if not (root / p).is_file()]
    if missing:
        raise input_error("triplet folder", str(root), f"every image the split file names (missing {paths[missing[0]]})")
    return TripletFolder(root, split, triplets, paths)
