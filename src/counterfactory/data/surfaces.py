"""Procedural surfaces with defects: the embedded default dataset (demo, tests, base pre-training).

A surface is a textured tile or plate that fills most of the image (brushed metal, cast/granular metal or
ceramic grain under an uneven illumination), sometimes with a dark background band along some image edges
where the tile ends. Four defect types are drawn on it, each with an exact mask:

- ``crack``: thin (1-3 px at 128 px), dark, jagged and branching line;
- ``scratch``: straight thin line, lighter or darker than the surface;
- ``spot``: roundish blob of another tone (stain, rust, residue) with a soft edge;
- ``chip``: missing material at the tile edge, exposing the background.

"Exact" means: the returned image differs from the input only where the mask is 1, and every mask pixel
belongs to the defect. Sizes are relative to the image size, so a 64 px crop around a defect looks alike at
any resolution. Everything is deterministic given the ``numpy.random.Generator``; numpy and scipy only.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import input_error
from ..io.names import check_path_name

DEFECT_TYPES = ("crack", "scratch", "spot", "chip")
SURFACE_KINDS = ("brushed", "cast", "ceramic")
MIN_SIZE = 16
SYNTH_MARKER = ".counterfactory-synth.json"  # marks a folder written by synth_dataset (safe to replace)

# background (where the tile ends) and tile brightness ranges: kept apart so the tile edge can be found
_BG_RANGE = (0.04, 0.11)
_TILE_MIN_LUM = 0.30


def _hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        h = w = int(size)
    elif (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(isinstance(v, (int, np.integer)) for v in size)
    ):
        h, w = int(size[0]), int(size[1])
    else:
        raise input_error("size", size, f"an int or a (height, width) pair of ints, each >= {MIN_SIZE}")
    if h < MIN_SIZE or w < MIN_SIZE:
        raise input_error("size", size, f"height and width >= {MIN_SIZE}")
    return h, w


def _lowfreq(rng: np.random.Generator, h: int, w: int, cells: float) -> np.ndarray:
    """Smooth noise with about ``cells`` blobs across the shorter side, unit std (fast: upsampled grid)."""
    gh = max(2, int(round(cells * h / min(h, w))) + 2)
    gw = max(2, int(round(cells * w / min(h, w))) + 2)
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    up = ndimage.zoom(grid, (h / (gh - 1), w / (gw - 1)), order=3, mode="nearest", grid_mode=False)
    up = up[:h, :w]
    if up.shape != (h, w):  # zoom rounding
        up = np.pad(up, ((0, h - up.shape[0]), (0, w - up.shape[1])), mode="edge")
    return (up - up.mean()) / (up.std() + 1e-6)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-6)


def _texture(rng: np.random.Generator, h: int, w: int, kind: str, s: float) -> np.ndarray:
    """Zero-mean luminance texture of a surface kind (H,W) float32."""
    white = rng.standard_normal((h, w)).astype(np.float32)
    if kind == "brushed":
        # long streaks along one axis + fine grain + a few stronger brushing lines
        axis = int(rng.integers(0, 2))
        streak = _unit(ndimage.gaussian_filter1d(white, sigma=12.0 * s, axis=axis, mode="wrap"))
        streak = _unit(ndimage.gaussian_filter1d(streak, sigma=0.5 * s, axis=1 - axis))
        n_across = h if axis == 1 else w
        lines = rng.standard_normal(n_across).astype(np.float32) * (rng.random(n_across) < 0.08)
        lines = lines[:, None] if axis == 1 else lines[None, :]
        grain = _unit(ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), 0.6 * s))
        tex = 0.045 * streak + 0.025 * lines + 0.015 * grain + 0.02 * _lowfreq(rng, h, w, 3)
    elif kind == "cast":
        # granular, sand-cast / sintered look: multi-scale isotropic grain + faint pores
        fine = _unit(ndimage.gaussian_filter(white, 0.7 * s))
        med = _unit(ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), 2.0 * s))
        pores = (rng.random((h, w)) < 0.004).astype(np.float32)
        pores = ndimage.gaussian_filter(pores, 0.6 * s) * 6.0
        tex = 0.05 * fine + 0.03 * med + 0.035 * _lowfreq(rng, h, w, 5) - 0.04 * np.minimum(pores, 1.0)
    elif kind == "ceramic":
        # smooth glaze with fine speckle and soft mottling
        speckle = _unit(ndimage.gaussian_filter(white, 0.5 * s))
        dots = (rng.random((h, w)) < 0.01).astype(np.float32) * rng.choice([-1.0, 1.0], (h, w)).astype(
            np.float32
        )
        tex = 0.025 * speckle + 0.025 * _lowfreq(rng, h, w, 4) + 0.02 * _lowfreq(rng, h, w, 12) + 0.03 * dots
    else:
        raise input_error("kind", kind, f"one of {', '.join(SURFACE_KINDS)}")
    return tex.astype(np.float32)


def render_surface(
    rng: np.random.Generator, size: int | tuple[int, int], kind: str | None = None
) -> np.ndarray:
    """A defect-free textured surface, (H,W,3) float32 in [0,1].

    ``kind`` picks the material (one of :data:`SURFACE_KINDS`; random when None). Tone, tint, grain,
    illumination gradient and hot-spot, and the background bands at the image edges vary with ``rng``.
    """
    h, w = _hw(size)
    if kind is not None and kind not in SURFACE_KINDS:
        raise input_error("kind", kind, f"one of {', '.join(SURFACE_KINDS)} or None")
    s = min(h, w) / 128.0
    kind = kind or SURFACE_KINDS[int(rng.integers(0, len(SURFACE_KINDS)))]
    tone = {"brushed": (0.45, 0.72), "cast": (0.40, 0.62), "ceramic": (0.50, 0.78)}[kind]
    base = float(rng.uniform(*tone))
    tint = {
        "brushed": np.array([-0.01, 0.0, 0.02]),  # cool steel
        "cast": np.array([0.02, 0.005, -0.02]),  # warm grey iron
        "ceramic": np.array([0.025, 0.015, -0.01]),  # off-white / beige
    }[kind] + rng.normal(0.0, 0.012, 3)

    lum = base + _texture(rng, h, w, kind, s)

    # illumination: linear gradient + soft hot-spot (multiplicative)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy /= max(h - 1, 1)
    xx /= max(w - 1, 1)
    phi = rng.uniform(0, 2 * np.pi)
    grad = (xx - 0.5) * np.cos(phi) + (yy - 0.5) * np.sin(phi)
    cy, cx = rng.uniform(0.1, 0.9, 2)
    spot_r = rng.uniform(0.35, 0.8)
    hot = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * spot_r**2))
    illum = 1.0 + rng.uniform(0.08, 0.3) * grad + rng.uniform(0.05, 0.2) * (hot - hot.mean())
    lum = lum * illum
    lum = np.maximum(lum, _TILE_MIN_LUM + 0.02 + 0.03 * _unit(ndimage.gaussian_filter(lum, 1.0)).clip(-1, 1))

    # background bands where the tile ends (each side with some probability), with a bevel at the tile edge
    bands = [
        int(round(rng.uniform(0.04, 0.12) * (h if i < 2 else w))) if rng.random() < 0.35 else 0
        for i in range(4)
    ]
    top, bottom, left, right = bands
    tile = np.zeros((h, w), bool)
    tile[top : h - bottom, left : w - right] = True
    img = lum[..., None] + tint[None, None, :].astype(np.float32)
    if not tile.all():
        bg_tone = rng.uniform(*_BG_RANGE)
        bg = bg_tone + 0.012 * rng.standard_normal((h, w)).astype(np.float32)
        bg = np.clip(bg, _BG_RANGE[0] - 0.03, _BG_RANGE[1] + 0.02)
        # bevel: a 1-2 px lighter (lit) rim just inside the tile edge
        rim = tile & ~ndimage.binary_erosion(tile, iterations=max(1, int(round(1.5 * s))), border_value=1)
        img = img + (rim[..., None] * rng.uniform(0.04, 0.1)).astype(np.float32)
        img = np.where(tile[..., None], img, bg[..., None])
    return np.clip(img, 0.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------------------------- defects


def _luminance(image: np.ndarray) -> np.ndarray:
    return image.mean(axis=2)


def tile_bands(image: np.ndarray) -> tuple[int, int, int, int]:
    """Widths of the dark background bands (top, bottom, left, right) of a surface image."""
    lum = _luminance(image)
    h, w = lum.shape
    ref = float(np.median(lum[h // 4 : 3 * h // 4 + 1, w // 4 : 3 * w // 4 + 1]))
    thr = min(0.5 * ref, (_BG_RANGE[1] + _TILE_MIN_LUM) / 2 + 0.02)
    out = []
    for side in range(4):
        n = h if side < 2 else w
        depth = max(1, int(0.4 * n))
        if side == 0:
            prof = lum[:depth, w // 5 : 4 * w // 5 + 1].mean(axis=1)
        elif side == 1:
            prof = lum[::-1][:depth, w // 5 : 4 * w // 5 + 1].mean(axis=1)
        elif side == 2:
            prof = lum[h // 5 : 4 * h // 5 + 1, :depth].mean(axis=0)
        else:
            prof = lum[h // 5 : 4 * h // 5 + 1, ::-1][:, :depth].mean(axis=0)
        above = prof >= thr
        out.append(int(np.argmax(above)) if above.any() else 0)
    return tuple(out)  # type: ignore[return-value]


def _finish(image: np.ndarray, new: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep ``image`` bit-identical outside ``mask``; return (image, mask float32 {0,1})."""
    m = mask.astype(bool)
    out = np.where(m[..., None], np.clip(new, 0.0, 1.0), image).astype(np.float32)
    return out, m.astype(np.float32)


def _densify(pts: np.ndarray, widths: np.ndarray, spacing: float = 0.4) -> tuple[np.ndarray, np.ndarray]:
    seg = np.diff(pts, axis=0)
    lens = np.hypot(seg[:, 0], seg[:, 1])
    cum = np.concatenate([[0.0], np.cumsum(lens)])
    t = np.arange(0.0, cum[-1] + 1e-9, spacing)
    return (
        np.stack([np.interp(t, cum, pts[:, 0]), np.interp(t, cum, pts[:, 1])], axis=1),
        np.interp(t, cum, widths),
    )


def _walk(rng, start, theta, length, step, jag):
    n = max(2, int(length / step))
    d = rng.normal(0.0, jag, n)
    drift = np.cumsum(rng.normal(0.0, jag * 0.2, n))
    ang = theta + drift + d
    steps = np.stack([np.sin(ang), np.cos(ang)], axis=1) * step
    pts = np.concatenate([np.asarray(start, float)[None], start + np.cumsum(steps, axis=0)])
    return pts, ang


def _line_alpha(
    shape, pts: np.ndarray, widths: np.ndarray, margin: int
) -> tuple[np.ndarray, tuple[slice, slice]]:
    """Anti-aliased coverage of a polyline with per-point width, computed on its bounding box only."""
    h, w = shape
    y0 = max(0, int(np.floor(pts[:, 0].min())) - margin)
    y1 = min(h, int(np.ceil(pts[:, 0].max())) + margin + 1)
    x0 = max(0, int(np.floor(pts[:, 1].min())) - margin)
    x1 = min(w, int(np.ceil(pts[:, 1].max())) + margin + 1)
    if y1 <= y0 or x1 <= x0:
        return np.zeros((0, 0), np.float32), (slice(0, 0), slice(0, 0))
    iy = np.round(pts[:, 0]).astype(int) - y0
    ix = np.round(pts[:, 1]).astype(int) - x0
    ok = (iy >= 0) & (iy < y1 - y0) & (ix >= 0) & (ix < x1 - x0)
    center = np.zeros((y1 - y0, x1 - x0), bool)
    width = np.zeros((y1 - y0, x1 - x0), np.float32)
    if not ok.any():
        return np.zeros((y1 - y0, x1 - x0), np.float32), (slice(y0, y1), slice(x0, x1))
    center[iy[ok], ix[ok]] = True
    np.maximum.at(width, (iy[ok], ix[ok]), widths[ok].astype(np.float32))
    dist, (ny, nx) = ndimage.distance_transform_edt(~center, return_indices=True)
    alpha = np.clip(width[ny, nx] / 2.0 + 0.5 - dist, 0.0, 1.0).astype(np.float32)
    return alpha, (slice(y0, y1), slice(x0, x1))


def _tile_mask(shape, bands) -> np.ndarray:
    h, w = shape
    top, bottom, left, right = bands
    m = np.zeros((h, w), bool)
    m[top : h - bottom, left : w - right] = True
    return m


def _interior_point(rng, shape, bands, margin_frac: float) -> np.ndarray:
    h, w = shape
    top, bottom, left, right = bands
    my, mx = margin_frac * h, margin_frac * w
    lo_y, hi_y = top + my, h - bottom - my
    lo_x, hi_x = left + mx, w - right - mx
    y = rng.uniform(lo_y, hi_y) if hi_y > lo_y else (top + h - bottom) / 2
    x = rng.uniform(lo_x, hi_x) if hi_x > lo_x else (left + w - right) / 2
    return np.array([y, x])


def _crack(rng, image, bands, s):
    h, w = image.shape[:2]
    n = min(h, w)
    length = rng.uniform(0.3, 0.55) * n
    start = _interior_point(rng, (h, w), bands, 0.2)
    theta = rng.uniform(0, 2 * np.pi)
    vert, ang = _walk(
        rng, start - 0.5 * length * np.array([np.sin(theta), np.cos(theta)]), theta, length, 3.0 * s, 0.35
    )
    t = np.linspace(0.0, 1.0, len(vert))
    w0 = rng.uniform(1.1, 2.0) * s
    widths = w0 * (0.35 + 0.65 * np.sin(np.pi * np.clip(t * 0.9 + 0.05, 0, 1)) ** 0.6)
    pts, wd = _densify(vert, widths)
    all_pts, all_w = [pts], [wd]
    for _ in range(int(rng.integers(1, 4))):  # branches
        k = int(rng.integers(int(0.2 * len(vert)), max(int(0.8 * len(vert)), int(0.2 * len(vert)) + 1)))
        bt = ang[min(k, len(ang) - 1)] + rng.choice([-1.0, 1.0]) * rng.uniform(0.45, 1.1)
        blen = rng.uniform(0.15, 0.4) * length
        bv, _ = _walk(rng, vert[k], bt, blen, 2.5 * s, 0.4)
        bw = widths[k] * 0.8 * np.linspace(1.0, 0.35, len(bv))
        p, q = _densify(bv, bw)
        all_pts.append(p)
        all_w.append(q)
    pts, wd = np.concatenate(all_pts), np.concatenate(all_w)
    alpha_box, sl = _line_alpha((h, w), pts, wd, margin=int(np.ceil(3 * s)) + 2)
    alpha = np.zeros((h, w), np.float32)
    alpha[sl] = alpha_box
    mask = (alpha > 0.3) & _tile_mask((h, w), bands)
    depth = rng.uniform(0.6, 0.85)
    new = image * (1.0 - depth * alpha)[..., None]
    return new, mask


def _scratch(rng, image, bands, s):
    h, w = image.shape[:2]
    n = min(h, w)
    length = rng.uniform(0.35, 0.75) * n
    center = _interior_point(rng, (h, w), bands, 0.2)
    theta = rng.uniform(0, np.pi)
    d = np.array([np.sin(theta), np.cos(theta)])
    a = center - 0.5 * length * d
    width = rng.uniform(1.0, 1.8) * s
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    py, px = yy - a[0], xx - a[1]
    t = np.clip((py * d[0] + px * d[1]) / length, 0.0, 1.0)
    dist = np.hypot(py - t * length * d[0], px - t * length * d[1])
    # intensity fades at both ends and varies a little along the line
    ends = np.clip(np.minimum(t, 1.0 - t) / 0.08, 0.0, 1.0)
    k = rng.uniform(2, 6)
    along = 0.8 + 0.2 * np.sin(2 * np.pi * k * t + rng.uniform(0, 2 * np.pi))
    alpha = np.clip(width / 2.0 + 0.5 - dist, 0.0, 1.0) * ends * along
    mask = (alpha > 0.3) & _tile_mask((h, w), bands)
    amp = rng.uniform(0.5, 0.75)
    if rng.random() < 0.65:  # bright scratch (bare metal catches light)
        new = image + (1.0 - image) * (amp * alpha)[..., None]
    else:
        new = image * (1.0 - 0.8 * amp * alpha)[..., None]
    return new, mask


_SPOT_TONES = {
    "rust": np.array([0.55, 0.28, 0.12], np.float32),
    "stain": None,  # darker version of the surface
    "residue": np.array([0.90, 0.89, 0.84], np.float32),
    "oil": np.array([0.22, 0.22, 0.20], np.float32),
}


def _spot(rng, image, bands, s):
    h, w = image.shape[:2]
    n = min(h, w)
    radius = rng.uniform(0.06, 0.12) * n
    top, bottom, left, right = bands
    c = _interior_point(rng, (h, w), bands, 0.0)
    c[0] = np.clip(c[0], top + radius + 1, h - bottom - radius - 1)
    c[1] = np.clip(c[1], left + radius + 1, w - right - radius - 1)
    ext = int(np.ceil(radius * 1.6)) + 2
    y0, y1 = max(0, int(c[0]) - ext), min(h, int(c[0]) + ext + 1)
    x0, x1 = max(0, int(c[1]) - ext), min(w, int(c[1]) + ext + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dy, dx = yy - c[0], xx - c[1]
    th = np.arctan2(dy, dx)
    r = np.ones_like(th)
    for k in range(2, 6):
        r += rng.uniform(0.0, 0.18 / (k - 1)) * np.cos(k * th + rng.uniform(0, 2 * np.pi))
    sx = rng.uniform(0.7, 1.0)  # slightly elongated
    rot = rng.uniform(0, np.pi)
    u = (dx * np.cos(rot) + dy * np.sin(rot)) / sx
    v = -dx * np.sin(rot) + dy * np.cos(rot)
    q = np.hypot(u, v) / (radius * r)
    soft = rng.uniform(0.3, 0.6)
    alpha = np.clip((1.0 - q) / soft, 0.0, 1.0)
    grain = ndimage.gaussian_filter(rng.standard_normal(alpha.shape).astype(np.float32), 1.2 * s)
    alpha = np.clip(alpha * (0.85 + 0.6 * grain), 0.0, 1.0) * (q < 1.0)
    local = np.zeros((h, w), bool)
    local[y0:y1, x0:x1] = alpha > 0.12
    a_full = np.zeros((h, w), np.float32)
    a_full[y0:y1, x0:x1] = alpha
    name = list(_SPOT_TONES)[int(rng.integers(0, len(_SPOT_TONES)))]
    tone = _SPOT_TONES[name]
    if tone is None:
        target = image * rng.uniform(0.3, 0.45)
    else:
        surf = image.mean(axis=2, keepdims=True)
        target = tone[None, None, :] * (0.85 + 0.3 * surf)
    a = np.clip(a_full * rng.uniform(0.85, 1.0), 0, 1)[..., None]
    new = image * (1.0 - a) + target * a
    return new, local & _tile_mask((h, w), bands)


def _chip(rng, image, bands, s):
    h, w = image.shape[:2]
    bands = list(bands)
    banded = [i for i in range(4) if bands[i] > 0]
    side = int(rng.choice(banded)) if banded and rng.random() < 0.75 else int(rng.integers(0, 4))
    # work in a frame where the chipped side is the top: rows = depth from that image edge
    rot = {0: 0, 1: 2, 2: 3, 3: 1}[side]  # np.rot90 count bringing the side to the top
    img_r = np.rot90(image, rot)
    hh, ww = img_r.shape[:2]
    b = bands[side]
    # bands of the neighbouring sides, in the rotated frame (left, right)
    nb_left, nb_right = {
        0: (bands[2], bands[3]),
        1: (bands[3], bands[2]),
        2: (bands[1], bands[0]),
        3: (bands[0], bands[1]),
    }[side]
    n = min(hh, ww)
    width = rng.uniform(0.2, 0.38) * n
    depth = rng.uniform(0.09, 0.17) * n
    lo, hi = nb_left + 0.6 * width, ww - nb_right - 0.6 * width
    u0 = rng.uniform(lo, hi) if hi > lo else (nb_left + ww - nb_right) / 2
    cols = np.arange(ww, dtype=np.float32)
    # broken outline: a polygon through a few random vertices (conchoidal fracture) + fine jagged jitter
    nv = int(rng.integers(3, 6))
    vx = np.sort(rng.uniform(-0.6, 0.6, nv))
    vd = rng.uniform(0.6, 1.0, nv)
    vd[int(rng.integers(0, nv))] = 1.0
    x = (cols - u0) / (width / 2)
    prof = np.interp(
        x, np.concatenate([[-1.0], vx, [1.0]]), np.concatenate([[0.0], vd, [0.0]]), left=0.0, right=0.0
    )
    fine = ndimage.gaussian_filter1d(rng.standard_normal(ww), 1.5 * s) * 0.2
    dprof = np.where(prof > 0, np.maximum(depth * prof * (1.0 + fine), 0.0), 0.0)
    rows = np.arange(hh, dtype=np.float32)[:, None]
    chip = rows < (b + dprof[None, :])
    tile_r = np.rot90(_tile_mask((h, w), bands), rot)
    mask_r = chip & tile_r
    # fill with the background: the band's own look where there is one, else a dark tone
    if b > 0:
        band_px = img_r[:b, int(max(0, u0 - width)) : int(min(ww, u0 + width)) + 1].reshape(-1, 3)
        bg = band_px.mean(axis=0)
    else:
        bg = np.full(3, rng.uniform(*_BG_RANGE), np.float32)
    fill = bg[None, None, :] + 0.012 * rng.standard_normal((hh, ww, 1)).astype(np.float32)
    # fracture face: a thin lit / shadowed rim on the chip side of the break line
    dist_to_tile = ndimage.distance_transform_edt(chip | ~tile_r)
    rim = (dist_to_tile <= max(1.0, 1.3 * s)) & mask_r
    face = img_r * rng.uniform(0.55, 0.8) if rng.random() < 0.5 else img_r * 0.5 + 0.45
    new_r = np.where(rim[..., None], face, fill)
    new = np.rot90(new_r, -rot)
    mask = np.rot90(mask_r, -rot)
    return np.ascontiguousarray(new), np.ascontiguousarray(mask)


_DEFECTS = {"crack": _crack, "scratch": _scratch, "spot": _spot, "chip": _chip}
_MIN_PIXELS = {"crack": 6, "scratch": 6, "spot": 8, "chip": 8}


def add_defect(
    rng: np.random.Generator, image: np.ndarray, defect_type: str
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one defect on a surface image.

    ``image``: (H,W,3) float in [0,1] (a :func:`render_surface` output, or any similar surface).
    Returns ``(new_image, mask)``: (H,W,3) float32 and (H,W) float32 in {0,1}; ``new_image`` equals ``image``
    exactly wherever the mask is 0, and the mask is never empty.
    """
    if defect_type not in _DEFECTS:
        raise input_error("defect_type", defect_type, f"one of {', '.join(DEFECT_TYPES)}")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < MIN_SIZE:
        raise input_error("image", tuple(image.shape), f"an (H,W,3) array with H, W >= {MIN_SIZE}")
    image = image.astype(np.float32, copy=False)
    if not np.isfinite(image).all() or image.min() < 0 or image.max() > 1:
        raise input_error(
            "image range", (float(np.nanmin(image)), float(np.nanmax(image))), "finite values in [0,1]"
        )
    h, w = image.shape[:2]
    s = min(h, w) / 128.0
    bands = tile_bands(image)
    min_px = max(_MIN_PIXELS[defect_type], int(_MIN_PIXELS[defect_type] * s))
    for _ in range(12):
        new, mask = _DEFECTS[defect_type](rng, image, bands, s)
        if mask.sum() >= min_px:
            return _finish(image, new, mask)
    # last resort (very small or odd images): a spot, which always fits inside the tile
    new, mask = _spot(rng, image, (0, 0, 0, 0), s)
    return _finish(image, new, mask)


def render_sample(
    rng: np.random.Generator,
    size: int | tuple[int, int],
    defect_type: str | None = None,
    kind: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A surface and, unless ``defect_type`` is None or ``"good"``, one defect: ``(image (H,W,3), mask (H,W))``."""
    img = render_surface(rng, size, kind=kind)
    if defect_type is None or defect_type == "good":
        return img, np.zeros(img.shape[:2], np.float32)
    return add_defect(rng, img, defect_type)


# ----------------------------------------------------------------------------------------------- dataset


def _child_rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=key))


def synth_dataset(
    out: str | os.PathLike,
    seed: int = 0,
    size: int = 128,
    n_train_good: int = 32,
    n_test_good: int = 16,
    n_per_type: int = 16,
    types: Sequence[str] = DEFECT_TYPES,
    category: str = "surface",
) -> Path:
    """Write a procedural dataset in MVTec-AD layout under ``out/<category>`` and return that folder.

    ``<category>/train/good/NNN.png``, ``test/good/NNN.png``, ``test/<type>/NNN.png`` and
    ``ground_truth/<type>/NNN_mask.png`` (0/255). Same arguments → byte-identical files. The folder is built
    beside its final place and moved in when complete, so an interrupted run leaves nothing half-written; an
    existing folder is replaced only if an earlier ``synth_dataset`` wrote it.
    """
    from .mvtec import write_mvtec_sample  # local: mvtec imports torch via sample

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise input_error("seed", seed, "an integer >= 0")
    _hw(size)
    for name, v in (("n_train_good", n_train_good), ("n_test_good", n_test_good), ("n_per_type", n_per_type)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise input_error(name, v, "an integer >= 0")
    types = tuple(types)
    bad = [t for t in types if t not in DEFECT_TYPES]
    if bad or not types or len(set(types)) != len(types):
        raise input_error("types", list(types), f"distinct names among {', '.join(DEFECT_TYPES)}")
    check_path_name(category, "category")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise input_error("out", str(out), "a directory (or a path that does not exist yet)")
    final = out / category
    if final.exists() and not (final / SYNTH_MARKER).is_file():
        raise input_error(
            "out", str(final), "a folder that does not exist yet or was written by `data synth`"
        )

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{category}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        jobs = [("train", "good", i) for i in range(n_train_good)]
        jobs += [("test", "good", i) for i in range(n_test_good)]
        jobs += [("test", t, i) for t in types for i in range(n_per_type)]
        type_code = {"good": 0, **{t: k + 1 for k, t in enumerate(DEFECT_TYPES)}}
        for split, t, i in jobs:
            rng = _child_rng(int(seed), 0 if split == "train" else 1, type_code[t], i)
            img, mask = render_sample(rng, size, None if t == "good" else t)
            write_mvtec_sample(tmp, split, t, f"{i:03d}", img, None if t == "good" else mask)
        meta = {
            "generator": "counterfactory.data.surfaces.synth_dataset",
            "seed": int(seed),
            "size": size if isinstance(size, int) else list(size),
            "n_train_good": int(n_train_good),
            "n_test_good": int(n_test_good),
            "n_per_type": int(n_per_type),
            "types": list(types),
            "category": category,
        }
        (tmp / SYNTH_MARKER).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if final.exists():
            old = out / f".{category}.old-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
