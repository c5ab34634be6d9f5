"""Mask-aware geometric augmentation: one sampled transform applied identically to an image and its mask.

Flips (per axis, switchable), rotation, mild scale and translation, sampled so that every defect pixel stays
inside the frame (a defect is never cropped out). Images are resampled bilinearly, masks with nearest
neighbour (they stay binary); both use reflection padding, so no black corners appear. No photometric change.

The sampled :class:`AugmentParams` are returned, so the same transform can be re-applied to other tensors
(``aug.apply(params, image, mask)``), e.g. to a second image of the same scene.
"""

from __future__ import annotations

import math
import operator
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, input_error

_MAX_TRIES = 16
_EPS = 1e-4


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """One of the 8 symmetries of the square on the last two axes, ``k`` in 0..7: bit 2 (``k & 4``) mirrors
    left-right first, then ``k % 4`` quarter turns (``torch.rot90``). The same ``k`` on an image and its mask
    keeps them aligned; a random ``k`` drawn from 0..7 gives uniform flip-and-rotate augmentation."""
    try:
        index = None if isinstance(k, bool) else operator.index(k)  # int, numpy or 0-d torch integers
    except TypeError:
        index = None
    if index is None or not 0 <= index <= 7:
        raise input_error("k", k, "an integer in 0..7")
    k = index
    if k & 4:
        x = x.flip(-1)
    return torch.rot90(x, k & 3, dims=(-2, -1))


@dataclass(frozen=True)
class AugmentConfig:
    hflip: bool = True  # mirror left-right with probability 1/2
    vflip: bool = True  # mirror top-bottom with probability 1/2
    rotate_degrees: float = 20.0  # rotation drawn uniformly in [-rotate_degrees, +rotate_degrees]
    scale: tuple[float, float] = (0.9, 1.1)  # isotropic zoom drawn uniformly in this range (1 = none)
    translate: bool = True  # random shift (keeps every defect pixel inside the frame)
    max_translate: float = 0.25  # largest shift, as a fraction of the image side
    max_fill: float = (
        0.1  # how far (fraction of the side) the output may reach past the source edge (filled by reflection)
    )

    def __post_init__(self):
        if (
            not isinstance(self.hflip, bool)
            or not isinstance(self.vflip, bool)
            or not isinstance(self.translate, bool)
        ):
            raise ConfigError(
                f"hflip/vflip/translate=({self.hflip!r}, {self.vflip!r}, {self.translate!r}): allowed: True or False"
            )
        if not (isinstance(self.rotate_degrees, (int, float)) and 0.0 <= float(self.rotate_degrees) <= 180.0):
            raise input_error("rotate_degrees", self.rotate_degrees, "a number in [0, 180]", ConfigError)
        sc = self.scale
        if (
            not isinstance(sc, (tuple, list))
            or len(sc) != 2
            or not all(isinstance(v, (int, float)) for v in sc)
            or not 0.25 <= sc[0] <= sc[1] <= 4.0
        ):
            raise input_error("scale", sc, "a (low, high) pair with 0.25 <= low <= high <= 4", ConfigError)
        object.__setattr__(self, "scale", (float(sc[0]), float(sc[1])))
        if not (isinstance(self.max_translate, (int, float)) and 0.0 <= float(self.max_translate) <= 1.0):
            raise input_error("max_translate", self.max_translate, "a fraction in [0, 1]", ConfigError)
        if not (isinstance(self.max_fill, (int, float)) and 0.0 <= float(self.max_fill) <= 0.5):
            raise input_error("max_fill", self.max_fill, "a fraction in [0, 0.5]", ConfigError)


@dataclass(frozen=True)
class AugmentParams:
    """One sampled transform. Applied as: flips, then rotation + scale about the centre, then the shift."""

    hflip: bool = False
    vflip: bool = False
    angle: float = 0.0  # degrees (positive turns clockwise on screen: y points down)
    scale: float = 1.0
    tx: float = 0.0  # shift in pixels (right positive)
    ty: float = 0.0  # shift in pixels (down positive)

    @property
    def is_identity_affine(self) -> bool:
        return self.angle == 0.0 and self.scale == 1.0 and self.tx == 0.0 and self.ty == 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _linear(angle_deg: float, scale: float) -> np.ndarray:
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s], [s, c]], dtype=np.float64) * scale


def _linear_inv(angle_deg: float, scale: float) -> np.ndarray:
    return _linear(-angle_deg, 1.0 / scale)


def forward_points(params: AugmentParams, xy: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Map pixel-centre coordinates (N,2) as (x, y) in pixels (pixel (i,j) has centre (j+0.5, i+0.5)) through
    the transform; returns their (x, y) positions in the output image."""
    h, w = hw
    p = np.array(xy, dtype=np.float64, copy=True).reshape(-1, 2)
    if params.hflip:
        p[:, 0] = w - p[:, 0]
    if params.vflip:
        p[:, 1] = h - p[:, 1]
    center = np.array([w / 2.0, h / 2.0])
    return (p - center) @ _linear(params.angle, params.scale).T + center + np.array([params.tx, params.ty])


def source_corners(params: AugmentParams, hw: tuple[int, int]) -> np.ndarray:
    """Where the output frame's four corners come from in the (flipped) source, (4,2) as (x, y) pixels."""
    h, w = hw
    corners = np.array([[0.0, 0.0], [w, 0.0], [0.0, h], [w, h]])
    center = np.array([w / 2.0, h / 2.0])
    return (corners - center - np.array([params.tx, params.ty])) @ _linear_inv(
        params.angle, params.scale
    ).T + center


def _fill_ok(params: AugmentParams, hw: tuple[int, int], max_fill: float) -> bool:
    h, w = hw
    c = source_corners(params, hw)
    mx, my = max_fill * w + _EPS, max_fill * h + _EPS
    return bool(
        (c[:, 0] >= -mx).all()
        and (c[:, 0] <= w + mx).all()
        and (c[:, 1] >= -my).all()
        and (c[:, 1] <= h + my).all()
    )


def _grid(params: AugmentParams, h: int, w: int, device, dtype) -> torch.Tensor:
    """Sampling grid (1,H,W,2) for grid_sample: output pixel → input location (normalized, align_corners=False)."""
    a_inv = _linear_inv(params.angle, params.scale)
    d = np.diag([w / 2.0, h / 2.0])
    d_inv = np.diag([2.0 / w, 2.0 / h])
    lin = d_inv @ a_inv @ d
    off = -(d_inv @ a_inv @ np.array([params.tx, params.ty]))
    # (F.affine_grid is slow on CPU in some torch builds; the grid is two outer sums)
    xs = (np.arange(w, dtype=np.float64) * 2.0 + 1.0) / w - 1.0  # pixel centres, align_corners=False
    ys = (np.arange(h, dtype=np.float64) * 2.0 + 1.0) / h - 1.0
    gx = lin[0, 0] * xs[None, :] + lin[0, 1] * ys[:, None] + off[0]
    gy = lin[1, 0] * xs[None, :] + lin[1, 1] * ys[:, None] + off[1]
    grid = np.stack([gx, gy], axis=-1)[None].astype(np.float32)
    return torch.from_numpy(grid).to(device=device, dtype=dtype)


def _check(image: torch.Tensor, mask: torch.Tensor | None) -> None:
    if not isinstance(image, torch.Tensor) or image.ndim != 3:
        raise input_error("image", getattr(image, "shape", type(image).__name__), "a (C,H,W) tensor in [0,1]")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.ndim != 3 or mask.shape[0] != 1:
            raise input_error(
                "mask", getattr(mask, "shape", type(mask).__name__), "a (1,H,W) tensor in {0,1}"
            )
        if mask.shape[-2:] != image.shape[-2:]:
            raise input_error(
                "mask size", tuple(mask.shape[-2:]), f"the image's size {tuple(image.shape[-2:])}"
            )


class MaskAwareAugment:
    """``img2, mask2, params = aug(image (C,H,W), mask (1,H,W), generator)``; ``aug.apply(params, image, mask)``."""

    def __init__(self, config: AugmentConfig | None = None):
        self.config = config or AugmentConfig()

    def sample(
        self, mask: torch.Tensor | None, hw: tuple[int, int], generator: torch.Generator | None = None
    ) -> AugmentParams:
        """Draw parameters that keep every nonzero pixel of ``mask`` (1,H,W) inside the output frame."""
        cfg = self.config
        h, w = hw
        pts = None
        if mask is not None:
            ys, xs = np.nonzero(mask.detach().reshape(h, w).cpu().numpy() > 0.5)
            if len(xs):
                pts = np.stack([xs, ys], axis=1).astype(np.float64) + 0.5
        u = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
        hflip = bool(cfg.hflip and u[0] < 0.5)
        vflip = bool(cfg.vflip and u[1] < 0.5)
        lo_s, hi_s = cfg.scale
        for _ in range(_MAX_TRIES):
            v = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
            angle = (2.0 * v[0] - 1.0) * float(cfg.rotate_degrees)
            scale = lo_s + (hi_s - lo_s) * v[1]
            base = AugmentParams(hflip, vflip, angle, scale, 0.0, 0.0)
            limit_x = cfg.max_translate * w if cfg.translate else 0.0
            limit_y = cfg.max_translate * h if cfg.translate else 0.0
            lo_x, hi_x, lo_y, hi_y = -limit_x, limit_x, -limit_y, limit_y
            if pts is not None:
                q = forward_points(base, pts, hw)
                lo_x = max(lo_x, 0.5 - float(q[:, 0].min()))
                hi_x = min(hi_x, w - 0.5 - float(q[:, 0].max()))
                lo_y = max(lo_y, 0.5 - float(q[:, 1].min()))
                hi_y = min(hi_y, h - 0.5 - float(q[:, 1].max()))
            if lo_x > hi_x + _EPS or lo_y > hi_y + _EPS:
                continue
            tx = lo_x + (hi_x - lo_x) * v[2] if hi_x > lo_x else 0.5 * (lo_x + hi_x)
            ty = lo_y + (hi_y - lo_y) * v[3] if hi_y > lo_y else 0.5 * (lo_y + hi_y)
            # prefer the drawn shift; shrink it towards the feasible point nearest 0 if the frame reaches too far out
            zx, zy = min(max(0.0, lo_x), hi_x), min(max(0.0, lo_y), hi_y)
            for f in (1.0, 0.5, 0.0):
                cx, cy = zx + f * (tx - zx), zy + f * (ty - zy)
                cand = AugmentParams(hflip, vflip, float(angle), float(scale), float(cx), float(cy))
                if _fill_ok(cand, hw, cfg.max_fill):
                    return AugmentParams(
                        hflip,
                        vflip,
                        float(angle),
                        float(scale),
                        0.0 if abs(cx) < 1e-9 else float(cx),
                        0.0 if abs(cy) < 1e-9 else float(cy),
                    )
        return AugmentParams(hflip, vflip)  # flips alone always keep the defect inside

    def apply(
        self, params: AugmentParams, image: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Apply ``params`` to ``image`` (C,H,W) (bilinear) and ``mask`` (1,H,W) (nearest, stays binary)."""
        _check(image, mask)
        dims = [d for d, on in ((-1, params.hflip), (-2, params.vflip)) if on]
        if dims:
            image = torch.flip(image, dims)
            mask = torch.flip(mask, dims) if mask is not None else None
        if params.is_identity_affine:
            return image, mask
        h, w = image.shape[-2:]
        grid = _grid(params, h, w, image.device, image.dtype if image.is_floating_point() else torch.float32)
        img = F.grid_sample(
            image[None].float(), grid.float(), mode="bilinear", padding_mode="reflection", align_corners=False
        )[0]
        img = img.clamp(0.0, 1.0).to(image.dtype if image.is_floating_point() else torch.float32)
        if mask is not None:
            m = F.grid_sample(
                mask[None].float(),
                grid.float(),
                mode="nearest",
                padding_mode="reflection",
                align_corners=False,
            )[0]
            mask = (m > 0.5).to(mask.dtype if mask.is_floating_point() else torch.float32)
        return img, mask

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, AugmentParams]:
        _check(image, mask)
        params = self.sample(mask, tuple(image.shape[-2:]), generator)
        img, m = self.apply(params, image, mask)
        return img, m, params
