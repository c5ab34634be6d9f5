"""Classical insertion baselines (pure functions, no model) for the reference-insertion benchmark.

:func:`copy_paste` (the reference resized into the box) and :func:`poisson_blend` (seamless cloning: the
Poisson equation with the reference's gradients as guidance and the target as Dirichlet boundary, solved with a
sparse direct solver; written here because OpenCV's ``seamlessClone`` would add a heavy dependency for one
function). ``unchanged`` returns the target as is: for reinsertion that is the ground truth (the best reachable
row), for insertion a defect-free crop (what the realism metric gives when nothing is inserted): it calibrates
the table.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy import sparse
from scipy.sparse.linalg import splu

from ..errors import input_error
from ..io.masks import Box

BASELINES = ("copy_paste", "poisson", "unchanged")  # unchanged: the target as is (a calibration row)


def _resize(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    return torch.nn.functional.interpolate(x[None].float(), size=hw, mode="bilinear", antialias=True,
                                           align_corners=False)[0].clamp(0, 1)


def copy_paste(target: torch.Tensor, box: Box, reference: torch.Tensor) -> torch.Tensor:
    """The reference (C,h,w), resized to the box, pasted into the box of ``target`` (C,H,W); nothing else changes."""
    x0, y0, x1, y1 = box
    out = target.clone()
    ref = reference.expand(target.shape[0], -1, -1) if reference.shape[0] == 1 else reference
    out[:, y0:y1, x0:x1] = _resize(ref, (y1 - y0, x1 - x0)).to(out.dtype)
    return out


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
    src = _resize(ref, (gy1 - gy0, gx1 - gx0)).double().numpy()
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


def baseline_method(name: str) -> Callable:
    """``fn(target (3,H,W), box, reference (3,h,w), case) -> result`` for a baseline name."""
    if name == "copy_paste":
        return lambda target, box, reference, case=None: copy_paste(target, box, reference)
    if name == "poisson":
        return lambda target, box, reference, case=None: poisson_blend(target, box, reference)
    if name == "unchanged":  # reinsertion: the ground truth itself; insertion: no defect at all
        return lambda target, box, reference, case=None: target.clone()
    raise input_error("method", name, f"one of {', '.join(BASELINES)}")
