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

import torch

from ..errors import input_error
from ..io.masks import Box
from ..sampling.paste import poisson_blend, resize_image

BASELINES = ("copy_paste", "poisson", "unchanged")  # unchanged: the target as is (a calibration row)


def copy_paste(target: torch.Tensor, box: Box, reference: torch.Tensor) -> torch.Tensor:
    """The reference (C,h,w), resized to the box, pasted into the box of ``target`` (C,H,W); nothing else changes."""
    x0, y0, x1, y1 = box
    out = target.clone()
    ref = reference.expand(target.shape[0], -1, -1) if reference.shape[0] == 1 else reference
    out[:, y0:y1, x0:x1] = resize_image(ref, (y1 - y0, x1 - x0)).to(out.dtype)
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
