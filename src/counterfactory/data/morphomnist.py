"""Morpho-MNIST: IDX + csv reader, the stroke-area measurement, a fixed split and the two-digit variant.

Layout read (as shipped with causal-gen, see ``../shared/data/morphomnist/README.md``)::

    <root>/t10k-images-idx3-ubyte.gz   10,000 x 28 x 28 uint8 (IDX, magic 0x00000803); plain (non-gz) also read
    <root>/t10k-labels-idx1-ubyte.gz   10,000 uint8 digit labels (IDX, magic 0x00000801)
    <root>/t10k-morpho.csv             index,thickness,intensity

**Foreground (the structure whose size is the "area" variable).** A pixel of a structure is foreground when
its value is at least half of the structure's brightest pixel (``x >= 0.5 * max`` and ``x > 0``). The rule is
relative on purpose: Morpho-MNIST's intensity variable rescales the whole stroke (its median foreground value
matches the csv ``intensity`` to 0.5/255 on average), so a fixed threshold would make "area" leak intensity;
the relative one measures stroke size alone. **area** = foreground pixel count; **measured intensity** = the
median foreground value (in 0..255). Both are measured on the real images here, and the same functions measure
counterfactuals in the evaluation (an independent measurement: neither learned predictor is involved).

**Structures.** The single-digit variant has one structure (the 28x28 digit). The two-structure variant puts
two real digits side by side (28x56); structure k is the digit in columns ``[28k, 28k+28)``, each with its own
area, intensity and label, so that an edit to one digit can be checked for change in the other.
"""

from __future__ import annotations

import csv
import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import input_error

IMAGES_FILE = "t10k-images-idx3-ubyte.gz"
LABELS_FILE = "t10k-labels-idx1-ubyte.gz"
MORPHO_FILE = "t10k-morpho.csv"
DIGIT = 28  # side of one digit; structure k of a multi-digit image spans columns [28k, 28k+28)
FOREGROUND_REL = 0.5  # foreground: pixel >= FOREGROUND_REL * (brightest pixel of its structure)

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzip or plain) into an array with the shape its header declares."""
    path = Path(path)
    if not path.is_file():
        raise input_error("idx file", str(path), "an existing IDX file (see ../shared/data/morphomnist/README.md)")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise input_error("idx file", str(path), f"a readable gzip file ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise input_error("idx file", str(path), "an IDX file (magic 0x0000<type><ndim>)")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise input_error("idx file", str(path), "a complete IDX header")
    shape = tuple(int(v) for v in np.frombuffer(raw[4:header], dtype=">u4"))
    count = int(np.prod(shape)) if shape else 1
    if len(raw) - header != count * dtype.itemsize:
        raise input_error(
            "idx file", str(path), f"{count * dtype.itemsize} data bytes for shape {shape} (found {len(raw) - header})"
        )
    return np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool = True) -> Path:
    """Write a uint8 array as IDX (the inverse of :func:`read_idx`; used by tests and tools)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    data = header + array.tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


@dataclass(frozen=True)
class MorphoMNIST:
    """The whole file set in memory: images (N,28,28) uint8, labels (N,), csv thickness and intensity (N,)."""

    images: np.ndarray
    labels: np.ndarray
    thickness: np.ndarray
    intensity: np.ndarray

    def __len__(self) -> int:
        return len(self.images)


def load_morphomnist(root: str | os.PathLike) -> MorphoMNIST:
    """Read the three files under ``root``; a missing or inconsistent file raises :class:`InputError`."""
    root = Path(root)
    if not root.is_dir():
        raise input_error("data", str(root), "a Morpho-MNIST folder (e.g. ../shared/data/morphomnist)")
    for name in (IMAGES_FILE, LABELS_FILE, MORPHO_FILE):
        if not (root / name).is_file():
            raise input_error("data", str(root), f"a folder holding {name} (missing)")
    images = read_idx(root / IMAGES_FILE)
    labels = read_idx(root / LABELS_FILE)
    if images.ndim != 3 or images.shape[1:] != (DIGIT, DIGIT) or images.dtype != np.uint8:
        raise input_error("images", f"{images.dtype}{images.shape}", "uint8 images of shape (N,28,28)")
    if labels.shape != (len(images),):
        raise input_error("labels", labels.shape, f"one label per image ({len(images)})")
    rows = _read_morpho_csv(root / MORPHO_FILE)
    if len(rows) != len(images) or not np.array_equal(rows[:, 0].astype(np.int64), np.arange(len(images))):
        raise input_error(MORPHO_FILE, f"{len(rows)} rows", f"one row per image, index 0..{len(images) - 1} in order")
    return MorphoMNIST(images, labels.astype(np.int64), rows[:, 1].astype(np.float32), rows[:, 2].astype(np.float32))


def _read_morpho_csv(path: Path) -> np.ndarray:
    with path.open(newline="") as f:
        reader = csv.reader(f)
        head = next(reader, None)
        if head is None or [h.strip() for h in head[:3]] != ["index", "thickness", "intensity"]:
            raise input_error(path.name, head, "a csv whose header starts index,thickness,intensity")
        try:
            rows = [[float(v) for v in r[:3]] for r in reader if r]
        except ValueError as exc:
            raise input_error(path.name, str(exc), "numeric index,thickness,intensity rows") from None
    return np.asarray(rows, dtype=np.float64).reshape(-1, 3)


# --------------------------------------------------------------------------------------------- measurement
def structure_columns(num_structures: int) -> list[slice]:
    return [slice(DIGIT * k, DIGIT * (k + 1)) for k in range(num_structures)]


def foreground(images: torch.Tensor, num_structures: int = 1, rel: float = FOREGROUND_REL) -> torch.Tensor:
    """(B,1,H,W) images in [0,1] → (B,K,H,W) bool foreground of each structure (zero outside its columns)."""
    x = images[:, 0]
    out = torch.zeros((x.shape[0], num_structures, *x.shape[1:]), dtype=torch.bool)
    for k, cols in enumerate(structure_columns(num_structures)):
        part = x[:, :, cols]
        peak = part.amax(dim=(1, 2), keepdim=True)
        out[:, k, :, cols] = (part >= rel * peak) & (part > 0)
    return out


def measure(images: torch.Tensor, num_structures: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Area (pixel count) and intensity (median foreground value, 0..255) per structure: two (B,K) tensors."""
    if images.ndim != 4 or images.shape[1] != 1 or images.shape[3] != DIGIT * num_structures:
        raise input_error("images", tuple(images.shape), f"(B,1,H,{DIGIT * num_structures}) for {num_structures} structure(s)")
    images = images.detach().float().cpu()
    fg = foreground(images, num_structures)
    area = fg.flatten(2).sum(-1).float()
    vals = images[:, 0].unsqueeze(1).expand_as(fg)
    masked = torch.where(fg, vals, torch.full_like(vals, float("nan"))).flatten(2)
    intensity = torch.nan_to_num(masked.nanquantile(0.5, dim=-1), nan=0.0) * 255.0
    return area, intensity


def label_map(images: torch.Tensor, num_structures: int = 1) -> torch.Tensor:
    """(B,H,W) int64 segmentation target: 0 background, k+1 foreground of structure k."""
    fg = foreground(images, num_structures)
    lab = torch.zeros(fg.shape[0], *fg.shape[2:], dtype=torch.long)
    for k in range(num_structures):
        lab[fg[:, k]] = k + 1
    return lab


# --------------------------------------------------------------------------------------------- split + variants
SPLIT_SEED = 0
SPLIT_SIZES = {"train": 8000, "val": 1000, "test": 1000}


def split_indices(n: int, split: str, seed: int = SPLIT_SEED) -> np.ndarray:
    """Fixed split: a seeded permutation of 0..n-1 cut 80/10/10 (8000/1000/1000 on the full file)."""
    if split not in SPLIT_SIZES:
        raise input_error("split", split, f"one of {', '.join(SPLIT_SIZES)}")
    perm = np.random.default_rng(seed).permutation(n)
    n_train, n_val = int(round(0.8 * n)), int(round(0.1 * n))
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, n)}
    lo, hi = bounds[split]
    return np.sort(perm[lo:hi])


def pair_partners(indices: np.ndarray, seed: int) -> np.ndarray:
    """A fixed partner for every index of a split (a derangement inside the split: never itself)."""
    n = len(indices)
    if n < 2:
        raise input_error("split size", n, "at least 2 images to make pairs")
    shift = 1 + int(np.random.default_rng(seed).integers(0, n - 1))
    order = np.random.default_rng(seed + 1).permutation(n)
    partner = np.empty(n, dtype=np.int64)
    partner[order] = order[(np.arange(n) + shift) % n]
    return indices[partner]


@dataclass(frozen=True)
class StructureData:
    """One split of a variant, ready for training: everything measured on the real pixels.

    images (N,1,28,28K) float in [0,1]; area, intensity (N,K) measured; digit (N,K) int64; source (N,K) indices
    into the file; csv_intensity (N,K) for reference.
    """

    images: torch.Tensor
    area: torch.Tensor
    intensity: torch.Tensor
    digit: torch.Tensor
    source: torch.Tensor
    csv_intensity: torch.Tensor

    @property
    def num_structures(self) -> int:
        return self.area.shape[1]

    def __len__(self) -> int:
        return self.images.shape[0]


def build_structures(data: MorphoMNIST, split: str, num_structures: int = 1, seed: int = SPLIT_SEED) -> StructureData:
    """The ``split`` of the single-digit (K=1) or two-digit side-by-side (K=2) variant."""
    if num_structures not in (1, 2):
        raise input_error("structures", num_structures, "1 (single digit) or 2 (two digits side by side)")
    idx = split_indices(len(data), split, seed)
    cols = [idx] if num_structures == 1 else [idx, pair_partners(idx, seed + 7)]
    images = np.concatenate([data.images[c] for c in cols], axis=2)
    x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
    area, intensity = measure(x, num_structures)
    src = np.stack(cols, axis=1)
    return StructureData(
        images=x,
        area=area,
        intensity=intensity,
        digit=torch.from_numpy(data.labels[src]),
        source=torch.from_numpy(src),
        csv_intensity=torch.from_numpy(data.intensity[src]),
    )

