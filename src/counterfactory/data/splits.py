"""The few-shot split protocol, written once to a file so every later step uses the same split.

Per defect type, samples sorted by id (numbers by value): the first third (at least one) trains, or the first
``shots`` when given; the rest is held out. Defect-free images ("good") split the same way by thirds (the
training ones are the normal backgrounds defects are painted on); MVTec lists train/good before test/good.
Every type needs at least one training and one held-out sample.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError, input_error
from ..io.manifest import atomic_write_json
from .dataset import Dataset
from .sample import GOOD, Sample

FORMAT = "counterfactory.split/1"
PARTS = ("train", "held_out")


@dataclass(frozen=True)
class Split:
    """Source ids per type for training and for held-out evaluation."""

    train: dict[str, list[str]]
    held_out: dict[str, list[str]]
    root: str | None = None  # the dataset folder it was made from
    layout: str | None = None
    protocol: dict = field(
        default_factory=dict
    )  # {"name": "few_shot", "rule": "first_third" | "first_k", "shots": k | None}

    @property
    def types(self) -> list[str]:
        return sorted(set(self.train) | set(self.held_out))

    @property
    def defect_types(self) -> list[str]:
        return [t for t in self.types if t != GOOD]

    def ids(self, part: str, defect_type: str) -> list[str]:
        if part not in PARTS:
            raise input_error("part", part, f"one of {', '.join(PARTS)}")
        table = self.train if part == "train" else self.held_out
        if defect_type not in table:
            raise input_error(
                "defect_type", defect_type, f"one of {', '.join(self.types)} (the types of this split)"
            )
        return list(table[defect_type])

    def samples(self, ds: Dataset, part: str, defect_type: str) -> list[Sample]:
        """The dataset's samples of one part and type, in split order; InputError if ``ds`` lacks some ids."""
        ids = self.ids(part, defect_type)
        index = ds.by_id()
        missing = [i for i in ids if i not in index]
        if missing:
            raise input_error(
                "split",
                f"{len(missing)} ids such as {missing[0]!r}",
                f"ids present in the dataset at {ds.root} (was this split made from {self.root}?)",
            )
        return [index[i] for i in ids]

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "root": self.root,
            "layout": self.layout,
            "protocol": dict(self.protocol),
            "counts": {
                t: {"train": len(self.train.get(t, [])), "held_out": len(self.held_out.get(t, []))}
                for t in self.types
            },
            "train": {t: list(v) for t, v in sorted(self.train.items())},
            "held_out": {t: list(v) for t, v in sorted(self.held_out.items())},
        }


def _validate_shots(shots) -> int | None:
    if shots is None:
        return None
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise input_error("shots", shots, "a whole number >= 1 (or none for the first third)")
    return shots


def few_shot_split(ds: Dataset, shots: int | None = None) -> Split:
    """Split ``ds`` by the protocol above. ``shots=k``: the first k per defect type train (good keeps thirds)."""
    shots = _validate_shots(shots)
    if not ds.defect_types:
        raise input_error("dataset", str(ds.root), "a dataset with at least one defect type to split")
    train: dict[str, list[str]] = {}
    held: dict[str, list[str]] = {}
    for t in ds.defect_types + ([GOOD] if ds.good() else []):
        ids = [s.source_id for s in ds.of_type(t)]
        n = len(ids)
        k = shots if (shots is not None and t != GOOD) else max(1, n // 3)
        if n - k < 1:
            if shots is not None and t != GOOD:
                raise input_error(
                    "shots", shots, f"fewer than the {n} images of type {t!r} (at least one must be held out)"
                )
            raise input_error(
                "dataset",
                str(ds.root),
                f"at least 2 images of type {t!r} (it has {n}): one trains, one is held out",
            )
        train[t], held[t] = ids[:k], ids[k:]
    protocol = {"name": "few_shot", "rule": "first_third" if shots is None else "first_k", "shots": shots}
    return Split(train, held, root=str(Path(ds.root).resolve()), layout=ds.layout, protocol=protocol)


def save_split(split: Split, path: str | os.PathLike) -> Path:
    """Write the split as JSON (atomically)."""
    return atomic_write_json(path, split.to_dict())


def load_split(path: str | os.PathLike) -> Split:
    path = Path(path)
    if not path.is_file():
        raise input_error("split", str(path), "an existing split file written by `counterfactory data split`")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise input_error("split", str(path), f"a JSON split file (this one does not parse: {exc})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise input_error("split", str(path), f"a split file with format {FORMAT!r}")
    try:
        train = {str(t): [str(i) for i in ids] for t, ids in obj["train"].items()}
        held = {str(t): [str(i) for i in ids] for t, ids in obj["held_out"].items()}
    except (KeyError, AttributeError, TypeError) as exc:
        raise InputError(
            f"split={path}: a split file with 'train' and 'held_out' maps of type -> ids ({exc})"
        ) from None
    return Split(
        train, held, root=obj.get("root"), layout=obj.get("layout"), protocol=dict(obj.get("protocol") or {})
    )
