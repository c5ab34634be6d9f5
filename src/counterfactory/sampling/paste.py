"""Place a defect's own pixels into an image: the paste half of paste-and-refine, and seamless (Poisson) cloning.

:func:`paste_defect` puts a defect crop and its mask at a position of an image, plainly or by Poisson cloning, and
returns the pasted image and the placed mask. Refining it is the pipelines' ``strength``: call
:class:`~counterfactory.pipelines.defect_inpaint.DefectInpaintPipeline` (or the reference pipeline) on the pasted
image with the placed mask dilated by a few pixels (:func:`counterfactory.io.masks.dilate`) and ``strength`` < 1::

    pasted, placed = paste_defect(image, defect, defect_mask, top_left=(40, 12), mode="poisson")
    out = pipe(pasted, dilate(placed[None], 2), "crack", strength=0.5, generator=g).images

:func:`poisson_blend` is the one Poisson solver of the project (the insertion benchmark's baseline uses it too).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from scipy import sparse
from scipy.sparse.linalg import splu

from ..errors import input_error
from ..io.masks import Box, binarize

PASTE_MODES = ("plain", "poisson")


def resize_image(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(C,h,w) in [0,1] → (C,H,W): bilinear with antialiasing, clamped; unchanged when already that size."""
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    return torch.nn.functional.interpolate(x[None].float(), size=hw, mode="bilinear", antialias=True,
                                           align_corners=False)[0].clamp(0, 1)


def poisson_blend(target: torch.Tensor, box: Box, reference: torch.Tensor, region: torch.Tensor | None = None) -> torch.Tensor:
    """Seamless cloning of the reference into ``box`` (Pérez et al. 2003, "normal" cloning).

    Inside the region Ω (the box, or ``region`` (H,W) restricted to it) solve ``Δf = Δs`` with ``f = target`` on
    the pixels just outside Ω, where ``s`` is the reference resized to the box grown by one pixel (so its
    gradients exist across Ω's border). 4-neighbour discrete Laplacian; neighbours outside the image are dropped
    (Neumann). One sparse LU factorisation, solved per channel. Pixels outside Ω are returned unchanged.
    """
    c, h, w = target.shape
    x0, y0, x1, y1 = box
    gx0, gy0, gx1, gy1 = max(0, x0 - 1), max(0, y0 - 1), min(w, x1 + 1), min(h, y1 + 1)
    ref = reference.expand(c, -1, -1) if reference.shape[0] == 1 else reference
    src = resize_image(ref, (gy1 - gy0, gx1 - gx0)).double().numpy()
    tgt = target.double().numpy()
    omega = np.zeros((h, w), dtype=bool)
    omega[y0:y1, x0:x1] = True
    if region is not None:
        omega &= region.reshape(h, w).numpy() > 0.5
    ys, xs = np.nonzero(omega)
    n = len(ys)
    if n == 0:
        return target.clone()
    idx = -np.ones((h, w), dtype=np.int64)
    idx[ys, xs] = np.arange(n)
    rows, cols, vals = [], [], []
    diag = np.zeros(n)
    b = np.zeros((c, n))
    s_at = src[:, ys - gy0, xs - gx0]
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        ny, nx = ys + dy, xs + dx
        ok = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        diag[ok] += 1
        p = np.nonzero(ok)[0]
        qy, qx = ny[ok], nx[ok]
        # guidance: s_p - s_q (q lies in the grown box, so s is defined there)
        b[:, p] += s_at[:, p] - src[:, qy - gy0, qx - gx0]
        inside = idx[qy, qx] >= 0
        rows.append(p[inside])
        cols.append(idx[qy[inside], qx[inside]])
        vals.append(-np.ones(int(inside.sum())))
        border = ~inside
        b[:, p[border]] += tgt[:, qy[border], qx[border]]
    a = sparse.csc_matrix((np.concatenate([diag] + vals), (np.concatenate([np.arange(n)] + rows),
                                                           np.concatenate([np.arange(n)] + cols))), shape=(n, n))
    lu = splu(a)
    out = target.clone()
    sol = np.stack([lu.solve(b[k]) for k in range(c)])
    out[:, ys, xs] = torch.from_numpy(np.clip(sol, 0.0, 1.0)).to(out.dtype)
    return out


def _as_chw(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise input_error(name, type(x).__name__, "a (C,H,W) float tensor in [0,1]")
    t = x[None] if x.ndim == 2 else x
    if t.ndim != 3 or t.shape[0] not in (1, 3):
        raise input_error(f"{name} shape", tuple(x.shape), "(C,H,W) with C = 1 or 3, or (H,W)")
    if not t.is_floating_point() or not torch.isfinite(t).all() or t.min() < 0 or t.max() > 1:
        raise input_error(f"{name} values", f"{t.dtype}, range ({float(t.min()):g}, {float(t.max()):g})",
                          "finite floats in [0,1]")
    return t.float()


def paste_defect(image: torch.Tensor, defect: torch.Tensor, defect_mask: torch.Tensor, top_left: tuple[int, int],
                 mode: Literal["plain", "poisson"] = "plain") -> tuple[torch.Tensor, torch.Tensor]:
    """Place a defect's own pixels and mask into ``image`` with the crop's top-left corner at ``top_left``.

    Args:
        image: (C,H,W) float in [0,1] (C = 1 or 3).
        defect: (C',h,w) the defect crop in [0,1]; a gray crop for an RGB image is repeated over the channels, an
            RGB crop for a gray image is averaged.
        defect_mask: (1,h,w) or (h,w), 1 = the defect's pixels (binarized at 0.5); must not be empty.
        top_left: ``(x, y)`` integer pixels; the whole crop must lie inside the image.
        mode: ``"plain"`` copies the defect's pixels where its mask is 1; ``"poisson"`` clones them seamlessly
            (the defect's gradients, the image's values on the mask's border: :func:`poisson_blend`).

    Returns:
        ``(pasted (C,H,W), placed mask (1,H,W) float in {0,1})``. Pixels where the placed mask is 0 equal the
        image's exactly.
    """
    img = _as_chw(image, "image")
    d = _as_chw(defect, "defect")
    m = defect_mask if isinstance(defect_mask, torch.Tensor) else None
    if m is None:
        raise input_error("defect_mask", type(defect_mask).__name__, "a (1,h,w) or (h,w) tensor")
    m = m[None] if m.ndim == 2 else m
    if m.ndim != 3 or m.shape[0] != 1 or tuple(m.shape[-2:]) != tuple(d.shape[-2:]):
        raise input_error("defect_mask shape", tuple(defect_mask.shape), f"(1,h,w) or (h,w) with (h,w) = the defect's {tuple(d.shape[-2:])}")
    m = binarize(m.float(), 0.5)
    if not m.any():
        raise input_error("defect_mask", "empty", "a mask with at least one defect pixel")
    if mode not in PASTE_MODES:
        raise input_error("mode", mode, f"one of {', '.join(PASTE_MODES)}")
    try:
        x, y = (int(v) for v in top_left)
        ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in top_left)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise input_error("top_left", top_left, "two integers (x, y): where the crop's top-left pixel goes")
    c, hh, ww = img.shape
    h, w = d.shape[-2:]
    if x < 0 or y < 0 or x + w > ww or y + h > hh:
        raise input_error("top_left", (x, y), f"a position that keeps the {w}x{h} defect crop inside the {ww}x{hh} "
                          f"image: 0 <= x <= {ww - w}, 0 <= y <= {hh - h}" if w <= ww and h <= hh else
                          f"a crop no larger than the image: the defect is {w}x{h}, the image {ww}x{hh} (W x H)")
    if d.shape[0] != c:
        d = d.expand(c, -1, -1) if d.shape[0] == 1 else d.mean(0, keepdim=True)
    placed = torch.zeros(1, hh, ww)
    placed[:, y : y + h, x : x + w] = m
    if mode == "plain":
        out = img.clone()
        out[:, y : y + h, x : x + w] = torch.where(m > 0.5, d, img[:, y : y + h, x : x + w])
        return out, placed
    # Poisson: the crop padded by one replicated pixel covers the box grown by one, so the guidance field is the
    # defect's own gradients at native scale (no resize), also across the mask's border
    pad = torch.nn.functional.pad(d[None], (1, 1, 1, 1), mode="replicate")[0]
    gx0, gy0, gx1, gy1 = max(0, x - 1), max(0, y - 1), min(ww, x + w + 1), min(hh, y + h + 1)
    ref = pad[:, gy0 - (y - 1) : gy1 - (y - 1), gx0 - (x - 1) : gx1 - (x - 1)]
    out = poisson_blend(img, (x, y, x + w, y + h), ref, region=placed[0])
    return out, placed
