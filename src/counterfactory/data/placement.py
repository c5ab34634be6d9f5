"""Where defects go: placement learned from the few shots, and new mask shapes made from the shots' masks.

A real defect's relation to the product is part of its type: Magnetic Tile Breaks are chips on the tile edge,
Blowholes sit anywhere on the face. With a handful of shots the relation is learned per shot, not as a fitted
distribution: for every shot mask we record

- ``distance``: how far (px) its closest pixel lies from the product's edge (the boundary of the foreground, the
  image border counting as edge), and
- ``normal``: the direction from that pixel to the edge.

:class:`PlacementModel` places a (deformed) shot mask on a new image so that its closest pixel lands at the same
distance from the new image's edge, rotated so that its edge-facing side faces the new edge, and clipped to the
product: an edge chip stays an edge chip, an interior spot stays interior. ``placement="uniform"`` ignores the
relation (the mask lands anywhere on the product). :class:`MaskSampler` makes new plausible shapes from a shot
mask: an elastic deformation plus a mild affine one, anchored at the edge-facing pixel, clipped to the product.

Hand-written on scipy.ndimage (distance transform, resampling) because no library ships few-shot defect placement.
Everything is deterministic given the torch generator passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from ..errors import input_error

PLACEMENTS = ("learned", "uniform")


def _rng(gen: torch.Generator | None) -> np.random.Generator:
    seed = int(torch.randint(0, 2**62, (1,), generator=gen)) if gen is not None else 0
    return np.random.default_rng(seed)


def product_region(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """The product in view (H, W) bool: brighter than half the median luminance, closed, holes filled, largest part.

    ``image`` (C, H, W) or (H, W) in [0, 1]. Grain and small dark defects inside the product do not make edges;
    dark background bands at the border (a tile's surroundings) do.
    """
    a = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    lum = a.mean(axis=0) if a.ndim == 3 else a
    fg = lum > 0.5 * float(np.median(lum))
    padded = np.pad(fg, 4, mode="edge")
    fg = ndimage.binary_closing(padded, iterations=3)[4:-4, 4:-4]
    fg = ndimage.binary_fill_holes(fg)
    labels, n = ndimage.label(fg)
    if n > 1:
        sizes = ndimage.sum(fg, labels, range(1, n + 1))
        fg = labels == (1 + int(np.argmax(sizes)))
    return fg if fg.any() else np.ones_like(fg, dtype=bool)


def product_distance(product: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance (px) of every pixel to the product's edge and the (y, x) of the nearest edge pixel.

    ``product`` (H, W) bool; pixels outside it, and beyond the image border, count as edge.
    """
    padded = np.pad(product.astype(bool), 1, constant_values=False)
    dist, idx = ndimage.distance_transform_edt(padded, return_indices=True)
    return dist[1:-1, 1:-1], idx[:, 1:-1, 1:-1] - 1


@dataclass(frozen=True)
class ShotGeometry:
    """A shot mask's relation to its product edge (see the module docstring)."""

    distance: float  # px from the mask's closest pixel to the product edge (1 = touching the edge)
    anchor: tuple[float, float]  # (y, x) of that closest pixel (the centre of the closest pixels when several)
    normal: tuple[float, float]  # unit (dy, dx) from the anchor towards the edge

    @property
    def angle(self) -> float:
        return math.atan2(self.normal[0], self.normal[1])


def shot_geometry(mask: np.ndarray, product: np.ndarray | None = None) -> ShotGeometry:
    """The :class:`ShotGeometry` of a binary mask (H, W) on its product (default: the whole image)."""
    m = np.asarray(mask) > 0.5
    if not m.any():
        raise input_error("mask", "empty", "a mask with at least one pixel set")
    prod = np.ones_like(m) if product is None else (np.asarray(product).astype(bool) | m)
    dist, idx = product_distance(prod)
    dmin = float(dist[m].min())
    ys, xs = np.nonzero(m & (dist <= dmin + 0.5))
    ay, ax = float(ys.mean()), float(xs.mean())
    # direction to the edge: mean over the closest pixels of (nearest edge pixel - pixel)
    vy = float((idx[0][ys, xs] - ys).mean())
    vx = float((idx[1][ys, xs] - xs).mean())
    n = math.hypot(vy, vx)
    if n < 1e-9:  # symmetric case (e.g. a mask spanning the image): point to the nearest border
        h, w = m.shape
        cands = [(ay + 1, (-1.0, 0.0)), (h - ay, (1.0, 0.0)), (ax + 1, (0.0, -1.0)), (w - ax, (0.0, 1.0))]
        vy, vx = min(cands)[1]
        n = 1.0
    return ShotGeometry(distance=dmin, anchor=(ay, ax), normal=(vy / n, vx / n))


@dataclass(frozen=True)
class MaskSampler:
    """New mask shapes from a shot mask: elastic + affine deformation about the edge-facing anchor.

    ``elastic`` is the displacement amplitude as a fraction of the mask's size, ``smoothness`` the Gaussian width of
    the displacement field as a fraction of the mask's size; ``rotate_degrees`` and ``scale`` the affine part.
    """

    elastic: float = 0.08
    smoothness: float = 0.25
    rotate_degrees: float = 15.0
    scale: tuple[float, float] = (0.85, 1.15)

    def __post_init__(self):
        if not 0 <= self.elastic <= 0.5:
            raise input_error("elastic", self.elastic, "a fraction in [0, 0.5]")
        if not 0 < self.smoothness <= 2:
            raise input_error("smoothness", self.smoothness, "a fraction in (0, 2]")
        if not 0 <= self.rotate_degrees <= 180:
            raise input_error("rotate_degrees", self.rotate_degrees, "a number in [0, 180]")
        if not (0.25 <= self.scale[0] <= self.scale[1] <= 4):
            raise input_error("scale", self.scale, "a (low, high) pair with 0.25 <= low <= high <= 4")

    def sample(self, mask: np.ndarray, product: np.ndarray | None, gen: torch.Generator | None,
               pixels: np.ndarray | None = None):
        """A deformed copy of ``mask`` (H, W) in the same frame, inside ``product``; never empty.

        With ``pixels`` (C, H, W), the image is deformed by the same map and ``(mask, pixels)`` is returned.
        """
        m = np.asarray(mask) > 0.5
        prod = np.ones_like(m) if product is None else (np.asarray(product).astype(bool) | m)
        rng = _rng(gen)
        geo = shot_geometry(m, prod)
        ys, xs = np.nonzero(m)
        size = max(2.0, float(max(ys.max() - ys.min(), xs.max() - xs.min()) + 1))
        h, w = m.shape
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        # inverse affine about the anchor: output pixel -> source pixel
        a = math.radians(rng.uniform(-self.rotate_degrees, self.rotate_degrees))
        s = rng.uniform(*self.scale)
        cy, cx = geo.anchor
        dy, dx = yy - cy, xx - cx
        sy = cy + (math.cos(a) * dy - math.sin(a) * dx) / s
        sx = cx + (math.sin(a) * dy + math.cos(a) * dx) / s
        if self.elastic > 0:
            sigma = self.smoothness * size
            for grid in (sy, sx):
                field = ndimage.gaussian_filter(rng.standard_normal((h, w)), sigma, mode="nearest")
                field /= max(float(np.abs(field).max()), 1e-12)
                grid += self.elastic * size * field
        out = ndimage.map_coordinates(m.astype(np.float32), [sy, sx], order=1, mode="constant", cval=0.0) > 0.5
        out &= prod
        if not out.any():
            return m if pixels is None else (m, pixels)
        if pixels is None:
            return out
        warped = np.stack([ndimage.map_coordinates(c.astype(np.float32), [sy, sx], order=1, mode="nearest")
                           for c in np.asarray(pixels)])
        return out, warped


def _rotate_patch(patch: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate a binary patch (counter-clockwise, image axes) on an enlarged canvas; exact for multiples of 90."""
    k = degrees / 90.0
    if abs(k - round(k)) < 1e-6:
        return np.rot90(patch, int(round(k)) % 4).copy()
    return ndimage.rotate(patch.astype(np.float32), degrees, reshape=True, order=1) > 0.5


def _rotate_pixels(pixels: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate (C, h, w) pixels exactly like :func:`_rotate_patch` rotates their mask."""
    k = degrees / 90.0
    if abs(k - round(k)) < 1e-6:
        return np.rot90(pixels, int(round(k)) % 4, axes=(1, 2)).copy()
    return np.stack([ndimage.rotate(c, degrees, reshape=True, order=1, mode="nearest") for c in pixels])


class PlacementModel:
    """Places shot masks on new images, keeping each shot's distance and orientation to the product edge."""

    def __init__(self, shots: dict[str, list[tuple]], placement: str = "learned",
                 sampler: MaskSampler | None = None, min_coverage: float = 0.6):
        """``shots``: per type, ``(mask (H, W), product (H, W) bool or None)`` of each few-shot defect, optionally
        with a third item, the shot image (C, H, W) float, whose defect pixels :meth:`place` then carries along."""
        if placement not in PLACEMENTS:
            raise input_error("placement", placement, f"one of {', '.join(PLACEMENTS)}")
        if not 0 < min_coverage <= 1:
            raise input_error("min_coverage", min_coverage, "a fraction in (0, 1]")
        self.placement = placement
        self.sampler = sampler
        self.min_coverage = min_coverage
        self.shots: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        for t, items in shots.items():
            usable = []
            for mask, product, *image in items:
                m = np.asarray(mask) > 0.5
                if m.any():
                    usable.append((m, np.ones_like(m) if product is None else np.asarray(product).astype(bool) | m,
                                   np.asarray(image[0], dtype=np.float32) if image and image[0] is not None else None))
            if not usable:
                raise input_error("shots", t, "at least one non-empty shot mask per type")
            self.shots[t] = usable

    def edge_bound(self, defect_type: str) -> float:
        """Fraction of the type's shots whose mask touches the product edge (within 2 px)."""
        geos = [shot_geometry(m, p) for m, p in self.shots[defect_type]]
        return sum(g.distance <= 2.0 for g in geos) / len(geos)

    def place(self, defect_type: str, product: np.ndarray, gen: torch.Generator | None) -> tuple[np.ndarray, dict]:
        """A mask (H, W) bool on a target image whose product is ``product`` (H, W), and a record of the draw."""
        mask, _, meta = self.place_with_pixels(defect_type, product, gen)
        return mask, meta

    def place_with_pixels(self, defect_type: str, product: np.ndarray, gen: torch.Generator | None):
        """``(mask (H, W) bool, pixels (C, H, W) or None, record)``: the mask as :meth:`place` draws it and, when the
        shot came with its image, that shot's pixels moved by the same transform (valid where the mask is set)."""
        if defect_type not in self.shots:
            raise input_error("defect_type", defect_type, f"one of {sorted(self.shots)}")
        prod = np.asarray(product).astype(bool)
        if not prod.any():
            raise input_error("product", "empty", "a target image with some product (foreground) in view")
        rng = _rng(gen)
        pool = self.shots[defect_type]
        best, best_cov = None, -1.0
        for _ in range(24):
            k = int(rng.integers(len(pool)))
            mask, shot_prod, pixels = pool[k]
            if self.sampler is not None:
                sub = torch.Generator().manual_seed(int(rng.integers(2**62)))
                if pixels is None:
                    mask = self.sampler.sample(mask, shot_prod, sub)
                else:
                    mask, pixels = self.sampler.sample(mask, shot_prod, sub, pixels=pixels)
            placed, placed_pixels, meta = self._place_one(mask, shot_prod, prod, rng, pixels)
            if placed is None:
                continue
            cov = meta.pop("_coverage")
            ok = meta.pop("_distance_ok")
            meta["shot"] = k
            if cov >= self.min_coverage and ok:
                return placed, placed_pixels, meta
            if cov > best_cov:
                best, best_cov = (placed, placed_pixels, meta), cov
        if best is None:
            raise input_error("product", f"{prod.shape[1]}x{prod.shape[0]} px",
                              f"a target large enough for a {defect_type!r} shot mask")
        return best

    def _place_one(self, mask, shot_prod, prod, rng, pixels=None):
        geo = shot_geometry(mask, shot_prod)
        ys, xs = np.nonzero(mask)
        y0, x0 = ys.min(), xs.min()
        patch = mask[y0 : ys.max() + 1, x0 : xs.max() + 1]
        pix = None if pixels is None else pixels[:, y0 : ys.max() + 1, x0 : xs.max() + 1]
        h, w = prod.shape
        dist, idx = product_distance(prod)
        if self.placement == "uniform":
            angle = float(rng.choice([0.0, 90.0, 180.0, 270.0]))
            rp = _rotate_patch(patch, angle)
            rpix = None if pix is None else _rotate_pixels(pix, angle)
            ph, pw = rp.shape
            if ph > h or pw > w:
                return None, None, {}
            oy, ox = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
            anchor_dist = None
        else:
            # anchor candidates: product pixels at the shot's distance from the edge (nearest available distance)
            cand = prod & (np.abs(dist - geo.distance) <= max(0.5, 0.1 * geo.distance))
            if not cand.any():
                cand = prod & (dist >= min(geo.distance, float(dist.max())) - 0.5)
            cy, cx = np.nonzero(cand)
            j = int(rng.integers(len(cy)))
            qy, qx = int(cy[j]), int(cx[j])
            ty, tx = idx[0][qy, qx] - qy, idx[1][qy, qx] - qx
            if ty == 0 and tx == 0:  # deep inside a symmetric product: any direction
                ty, tx = 1.0, 0.0
            target_angle = math.atan2(ty, tx)
            # rotate so the shot's edge normal points along the target's (image y axis points down: sign flip)
            degrees = math.degrees(geo.angle - target_angle)
            if rng.random() < 0.5:  # mirror across the normal: the same relation to the edge, another shape
                vertical_normal = abs(geo.normal[0]) > abs(geo.normal[1])
                patch = patch[:, ::-1] if vertical_normal else patch[::-1, :]
                if pix is not None:
                    pix = pix[:, :, ::-1] if vertical_normal else pix[:, ::-1, :]
                ay, ax = geo.anchor[0] - y0, geo.anchor[1] - x0
                if abs(geo.normal[0]) > abs(geo.normal[1]):
                    ax = patch.shape[1] - 1 - ax
                else:
                    ay = patch.shape[0] - 1 - ay
            else:
                ay, ax = geo.anchor[0] - y0, geo.anchor[1] - x0
            marker = np.zeros(patch.shape, dtype=np.float32)
            marker[int(round(min(max(ay, 0), patch.shape[0] - 1))), int(round(min(max(ax, 0), patch.shape[1] - 1)))] = 1
            rp = _rotate_patch(patch, degrees)
            rpix = None if pix is None else _rotate_pixels(np.ascontiguousarray(pix), degrees)
            rm = ndimage.rotate(marker, degrees, reshape=True, order=1) if abs(degrees / 90 - round(degrees / 90)) > 1e-6 \
                else np.rot90(marker, int(round(degrees / 90)) % 4)
            my, mx = np.unravel_index(int(np.argmax(rm)), rm.shape)
            oy, ox = qy - int(my), qx - int(mx)
            anchor_dist = float(dist[qy, qx])
        ph, pw = rp.shape
        out = np.zeros((h, w), dtype=bool)
        sy0, sx0 = max(0, -oy), max(0, -ox)
        dy0, dx0 = max(0, oy), max(0, ox)
        hh, ww = min(ph - sy0, h - dy0), min(pw - sx0, w - dx0)
        if hh <= 0 or ww <= 0:
            return None, None, {}
        out[dy0 : dy0 + hh, dx0 : dx0 + ww] = rp[sy0 : sy0 + hh, sx0 : sx0 + ww]
        out &= prod
        total = int(rp.sum())
        if not out.any():
            return None, None, {}
        placed_pixels = None
        if rpix is not None:
            placed_pixels = np.zeros((rpix.shape[0], h, w), dtype=np.float32)
            placed_pixels[:, dy0 : dy0 + hh, dx0 : dx0 + ww] = rpix[:, sy0 : sy0 + hh, sx0 : sx0 + ww]
        meta = {"placement": self.placement, "offset": [int(oy), int(ox)], "shot_distance": round(geo.distance, 2),
                "_coverage": float(out.sum()) / max(total, 1)}
        meta["_distance_ok"] = True
        if anchor_dist is not None:
            actual = float(dist[out].min())
            meta["target_distance"] = round(actual, 2)
            meta["_distance_ok"] = abs(actual - geo.distance) <= max(1.0, 0.15 * geo.distance)
        return out, placed_pixels, meta
