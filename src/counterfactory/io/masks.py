"""Masks: binarize, bounding boxes, dilation, components, crop-around-mask and paste-back.

Convention: a mask is float {0,1}, **1 = region to change**. Real masks are not clean 0/255 (Magnetic Tile
masks hold noisy values 0..255): every mask read from disk goes through :func:`binarize`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..errors import input_error
from .images import read_array

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (x1, y1 exclusive)


def binarize(mask: np.ndarray | torch.Tensor, threshold: float = 0.5):
    """Values >= threshold become 1, the rest 0. ``threshold`` is on the [0,1] scale (128/255 ≈ 0.5)."""
    if not 0.0 < threshold <= 1.0:
        raise input_error("threshold", threshold, "a number in (0, 1]")
    # 0..255 masks (any dtype) are scaled to [0,1]; {0,1} masks are kept, whatever their dtype (uint8 0/1 included)
    if isinstance(mask, torch.Tensor):
        m = mask.float()
        if m.numel() and m.max() > 1:
            m = m / 255.0
        return (m >= threshold).float()
    m = np.asarray(mask).astype(np.float32)
    if m.max(initial=0) > 1:
        m = m / 255.0
    return (m >= threshold).astype(np.float32)


def read_mask(path: str | os.PathLike, threshold: float = 0.5) -> np.ndarray:
    """Read a mask file as float32 (H,W) in {0,1}; any colour mask counts by its gray value."""
    return binarize(read_array(path, mode="L", alpha="drop"), threshold)


def bbox(mask: np.ndarray | torch.Tensor) -> Box | None:
    """Tight box ``(x0, y0, x1, y1)`` (end exclusive) of the nonzero pixels of a (H,W) mask; None if empty."""
    m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    m = m.reshape(m.shape[-2:]) if m.ndim > 2 else m
    ys, xs = np.nonzero(m > 0.5)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of a (...,H,W) mask by a square of side 2*radius+1."""
    if radius <= 0:
        return mask
    shape = mask.shape
    m = mask.reshape(-1, 1, *shape[-2:]).float()
    m = F.max_pool2d(m, kernel_size=2 * radius + 1, stride=1, padding=radius)
    return m.reshape(shape)


def border_band(mask: torch.Tensor, width: int) -> torch.Tensor:
    """The pixels of a (...,H,W) binary mask within ``width`` px (Euclidean) of its edge, same shape and dtype.

    The image border is not an edge: a region touching it gets no band along it. ``width`` >= the region's
    half side returns the whole region."""
    if width <= 0:
        return torch.zeros_like(mask)
    m = mask.detach().cpu().reshape(-1, *mask.shape[-2:]).numpy() > 0.5
    out = np.stack([mi & (ndimage.distance_transform_edt(mi) <= width) for mi in m])
    return torch.from_numpy(out).reshape(mask.shape).to(device=mask.device, dtype=mask.dtype)


def components(mask: np.ndarray, connectivity: int = 2) -> list[np.ndarray]:
    """Connected components of a (H,W) binary mask, largest first (8-connected by default)."""
    structure = ndimage.generate_binary_structure(2, connectivity)
    labels, n = ndimage.label(np.asarray(mask) > 0.5, structure=structure)
    comps = [(labels == i).astype(np.float32) for i in range(1, n + 1)]
    return sorted(comps, key=lambda c: -c.sum())


@dataclass(frozen=True)
class CropWindow:
    """A square window of the source image that is inpainted at working resolution.

    ``region``: when set (a tile of a large region, see :func:`tile_windows`), only the mask pixels inside this box
    are painted by this window; the mask pixels of the window outside it are context, like the unmasked ones.
    """

    box: Box  # in source pixels, inside the image
    region: Box | None = None

    def paint_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """The part of ``mask`` (...,H,W, the whole image) this window paints, cropped to the window."""
        x0, y0, x1, y1 = self.box
        m = mask[..., y0:y1, x0:x1]
        if self.region is None:
            return m
        rx0, ry0, rx1, ry1 = self.region
        keep = torch.zeros_like(m)
        keep[..., max(ry0 - y0, 0) : max(ry1 - y0, 0), max(rx0 - x0, 0) : max(rx1 - x0, 0)] = 1
        return m * keep

    def overlaps(self, other: CropWindow) -> bool:
        a, b = self.box, other.box
        return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]

    @property
    def size(self) -> int:
        return self.box[2] - self.box[0]


def window_around(box: Box, image_hw: tuple[int, int], margin: float = 0.5, min_size: int = 0) -> CropWindow:
    """A square window containing ``box`` plus ``margin`` × its larger side of context on each side.

    The window is at least ``min_size`` (capped by the image), centred on the box and shifted to lie
    inside the image. If the image is smaller than the window in some axis, the window is clipped to it.
    """
    h, w = image_hw
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0)
    size = int(np.ceil(side * (1 + 2 * margin)))
    size = max(size, min_size, 1)
    size = min(size, max(h, w))
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    wx = min(size, w)
    wy = min(size, h)
    nx0 = int(round(cx - wx / 2.0))
    ny0 = int(round(cy - wy / 2.0))
    nx0 = min(max(nx0, 0), w - wx)
    ny0 = min(max(ny0, 0), h - wy)
    return CropWindow((nx0, ny0, nx0 + wx, ny0 + wy))


def group_windows(mask: np.ndarray, image_hw: tuple[int, int], margin: float, min_size: int) -> list[CropWindow]:
    """One window per connected component; components whose windows overlap are merged into one window."""
    boxes = [bbox(c) for c in components(mask)]
    boxes = [b for b in boxes if b is not None]
    merged = True
    while merged and len(boxes) > 1:
        merged = False
        wins = [window_around(b, image_hw, margin, min_size).box for b in boxes]
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = wins[i], wins[j]
                if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                    u = boxes[i]
                    v = boxes[j]
                    boxes[i] = (min(u[0], v[0]), min(u[1], v[1]), max(u[2], v[2]), max(u[3], v[3]))
                    del boxes[j]
                    merged = True
                    break
            if merged:
                break
    return [window_around(b, image_hw, margin, min_size) for b in boxes]


def tile_windows(mask: np.ndarray, image_hw: tuple[int, int], margin: float, min_size: int,
                 max_size: int | None) -> list[CropWindow]:
    """:func:`group_windows`, with every window wider than ``max_size`` px replaced by tiles of at most that size.

    Resizing a large window to the working resolution shrinks thin structures away (a 2 px crack in a 400 px
    window is a third of a pixel at 64 px). A tile covers one cell of a grid laid over the region's mask pixels
    (cell side ``max_size / (1 + 2 * margin)``, so the cell plus its context fits ``max_size``) and paints only the
    mask pixels of its cell (``CropWindow.region``); neighbouring cells are its context. Cells are ordered row by
    row, and overlapping tiles must be denoised one after the other (:func:`~counterfactory.sampling.inpaint.inpaint_windows`
    does), so each tile sees the tiles painted before it. ``max_size=None`` keeps one window per region.
    """
    wins = group_windows(mask, image_hw, margin, min_size)
    if max_size is None:
        return wins
    m = np.asarray(mask) > 0.5
    cell = tile_cell_size(max_size, margin)
    out: list[CropWindow] = []
    for win in wins:
        if win.size <= max_size:
            out.append(win)
            continue
        x0, y0, x1, y1 = win.box
        inner = np.zeros_like(m)
        inner[y0:y1, x0:x1] = m[y0:y1, x0:x1]
        tight = bbox(inner)
        if tight is None:  # pragma: no cover - a window always holds mask pixels
            continue
        tx0, ty0, tx1, ty1 = tight
        for cy in range(ty0, ty1, cell):
            for cx in range(tx0, tx1, cell):
                tile = tile_for_cell(inner, (cx, cy, min(cx + cell, tx1), min(cy + cell, ty1)), image_hw, margin,
                                     min_size, max_size)
                if tile is not None:
                    out.append(tile)
    return out


def tile_cell_size(max_size: int, margin: float) -> int:
    """Side of the cell a tile paints: the cell plus ``margin`` × its side of context on each side fits ``max_size``."""
    return max(1, int(max_size // (1 + 2 * margin)))


def tile_for_cell(mask: np.ndarray | torch.Tensor, region: Box, image_hw: tuple[int, int], margin: float,
                  min_size: int, max_size: int) -> CropWindow | None:
    """The tile that paints the mask pixels of ``mask`` (H,W, the whole image) inside ``region`` (a cell of at most
    :func:`tile_cell_size` px): a window around their box (:func:`window_around`, at least ``min(min_size,
    max_size)`` px, so never wider than ``max_size``) with ``region`` set. None when the cell holds no mask pixel."""
    rx0, ry0, rx1, ry1 = region
    sub = bbox(mask[ry0:ry1, rx0:rx1])
    if sub is None:
        return None
    part = (rx0 + sub[0], ry0 + sub[1], rx0 + sub[2], ry0 + sub[3])
    return CropWindow(window_around(part, image_hw, margin, min(min_size, max_size)).box, region=region)


def crop(x: torch.Tensor, box: Box) -> torch.Tensor:
    """Crop (...,H,W) to ``box``."""
    x0, y0, x1, y1 = box
    return x[..., y0:y1, x0:x1]


def paste_back(original: torch.Tensor, patch: torch.Tensor, mask: torch.Tensor, box: Box | None = None) -> torch.Tensor:
    """Return ``original`` with ``patch`` written where ``mask`` is 1, inside ``box`` (whole image when None).

    ``patch`` and ``mask`` have the box's size; pixels where mask is 0 are taken from ``original`` unchanged,
    so the result outside the mask is bit-identical to ``original``.
    """
    out = original.clone()
    if box is None:
        box = (0, 0, original.shape[-1], original.shape[-2])
    x0, y0, x1, y1 = box
    region = out[..., y0:y1, x0:x1]
    keep = mask < 0.5
    out[..., y0:y1, x0:x1] = torch.where(keep, region, patch.to(region.dtype))
    return out


def check_box(box, image_hw: tuple[int, int], name: str = "box") -> Box:
    """Validate a user box ``(x0, y0, x1, y1)`` (pixels, end exclusive) against an image of size ``(H, W)``.

    Integers only (a float box is an error, not silently rounded); zero-area and inverted boxes, and boxes that
    reach outside the image, raise :class:`InputError` naming the box and the image size.
    """
    h, w = image_hw
    try:
        vals = [v.item() if isinstance(v, (torch.Tensor, np.generic)) else v for v in box]
    except TypeError:
        raise input_error(name, box, "four integers x0,y0,x1,y1 (pixels, end exclusive)") from None
    if len(vals) != 4 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in vals):
        raise input_error(name, box, "four integers x0,y0,x1,y1 (pixels, end exclusive)")
    x0, y0, x1, y1 = (int(v) for v in vals)
    if x1 <= x0 or y1 <= y0:
        raise input_error(name, (x0, y0, x1, y1), "a box with x1 > x0 and y1 > y0 (this one is degenerate: zero area or inverted)")
    if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
        raise input_error(name, (x0, y0, x1, y1), f"a box inside the image: 0 <= x0 < x1 <= {w}, 0 <= y0 < y1 <= {h}")
    return x0, y0, x1, y1


def box_mask(box: Box, image_hw: tuple[int, int]) -> torch.Tensor:
    """A (1,H,W) float mask, 1 inside ``box`` (end exclusive), 0 elsewhere."""
    h, w = image_hw
    x0, y0, x1, y1 = box
    m = torch.zeros(1, h, w)
    m[:, y0:y1, x0:x1] = 1.0
    return m
