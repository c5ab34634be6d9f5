"""Locality and effectiveness of an edit: did it change only the masked region, and did it change it?

Inputs are the pre-edit ``source``, the edited ``result`` (both (B,C,H,W) or (C,H,W) in [0,1]) and the
``mask`` ((B,1,H,W), 1 = region that should change; binarized at 0.5). Per image:

- ``outside_mask_max_abs_change`` / ``outside_mask_mean_abs_change``: largest / mean |result − source| over
  pixels outside the mask (all channels). 0 means the background is bit-identical.
- ``outside_psnr``: PSNR (data range 1) of result vs source over the outside pixels; ``inf`` when identical.
- ``outside_ssim``: mean of the SSIM map (Gaussian window 11, σ 1.5, torchmetrics' definition) over outside
  pixels, computed after copying the source into the mask region of the result, so that the edit itself
  does not leak into the score through the SSIM window: 1.0 exactly when the outside is unchanged.
- ``mask_changed_fraction``: fraction of mask pixels whose change (max over channels) exceeds
  ``change_threshold``: how much of the requested region was actually edited.
- ``outside_changed_fraction``: the same fraction for pixels outside the mask.
- ``change_mask_iou``: IoU between the thresholded change map and the mask (1.0 when both are empty).

An empty outside region (the mask covers the whole image) gives NaN for the outside metrics; an empty mask
gives NaN for ``mask_changed_fraction``.
"""

from __future__ import annotations

import math

import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from ..errors import input_error
from ..io.images import as_batch

LOCALITY_KEYS = (
    "outside_mask_max_abs_change",
    "outside_mask_mean_abs_change",
    "outside_psnr",
    "outside_ssim",
    "mask_changed_fraction",
    "outside_changed_fraction",
    "change_mask_iou",
)
# which direction is better, for tables and plots
HIGHER_IS_BETTER = {
    "outside_mask_max_abs_change": False,
    "outside_mask_mean_abs_change": False,
    "outside_psnr": True,
    "outside_ssim": True,
    "mask_changed_fraction": True,
    "outside_changed_fraction": False,
    "change_mask_iou": True,
}
DEFAULT_CHANGE_THRESHOLD = 0.05  # |Δ| on the [0,1] scale (≈ 13/255): above JPEG/quantisation noise


def _check(source, result, mask, change_threshold: float):
    src = as_batch(source, name="source").double()
    res = as_batch(result, name="result").double()
    m = mask if isinstance(mask, torch.Tensor) else as_batch(mask, mode="L", name="mask")
    m = m.float()
    if m.ndim == 2:
        m = m[None, None]
    elif m.ndim == 3:
        m = m[None] if m.shape[0] == 1 and src.shape[0] == 1 else m[:, None]
    if src.shape != res.shape:
        raise input_error("result", tuple(res.shape), f"the shape of source {tuple(src.shape)}")
    if m.ndim != 4 or m.shape[1] != 1 or m.shape[0] != src.shape[0] or m.shape[-2:] != src.shape[-2:]:
        raise input_error(
            "mask", tuple(m.shape), f"(B,1,H,W) matching the images {(src.shape[0], 1, *src.shape[-2:])}"
        )
    if not 0.0 <= float(change_threshold) < 1.0:
        raise input_error("change_threshold", change_threshold, "a number in [0, 1)")
    if min(src.shape[-2:]) < 6:
        raise input_error("source", tuple(src.shape), "images at least 6 px on each side (SSIM window)")
    return src, res, (m >= 0.5).double()


def locality_per_image(source, result, mask, change_threshold: float = DEFAULT_CHANGE_THRESHOLD) -> dict[str, torch.Tensor]:
    """Every locality metric per image: a dict of float64 tensors of shape (B,)."""
    src, res, m = _check(source, result, mask, change_threshold)
    b, c = src.shape[:2]
    inside = m  # (B,1,H,W)
    outside = 1.0 - m
    absdiff = (res - src).abs()  # (B,C,H,W)
    change = absdiff.amax(dim=1, keepdim=True)  # (B,1,H,W)

    n_out = outside.flatten(1).sum(1)  # pixels
    n_in = inside.flatten(1).sum(1)
    nan = torch.full((b,), math.nan, dtype=torch.float64)

    out_max = torch.where(n_out > 0, (change * outside).flatten(1).amax(1), nan)
    out_sum = (absdiff * outside).flatten(1).sum(1)
    out_mean = torch.where(n_out > 0, out_sum / (n_out * c).clamp_min(1), nan)
    mse = ((res - src) ** 2 * outside).flatten(1).sum(1) / (n_out * c).clamp_min(1)
    psnr = torch.where(mse > 0, 10.0 * torch.log10(1.0 / mse.clamp_min(1e-300)), torch.full_like(mse, math.inf))
    psnr = torch.where(n_out > 0, psnr, nan)

    composite = res * outside + src * inside  # the edit itself cannot leak into the SSIM window
    _, ssim_map = structural_similarity_index_measure(  # float32: float64 convolutions are ~10x slower on CPU
        composite.float(), src.float(), data_range=1.0, reduction="none", return_full_image=True
    )
    ssim_out = (ssim_map.double() * outside).flatten(1).sum(1) / (n_out * c).clamp_min(1)
    ssim_out = torch.where(n_out > 0, ssim_out, nan)

    changed = (change > change_threshold).double()
    in_changed = torch.where(n_in > 0, (changed * inside).flatten(1).sum(1) / n_in.clamp_min(1), nan)
    out_changed = torch.where(n_out > 0, (changed * outside).flatten(1).sum(1) / n_out.clamp_min(1), nan)
    inter = (changed * inside).flatten(1).sum(1)
    union = ((changed + inside) > 0).double().flatten(1).sum(1)
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
    return {
        "outside_mask_max_abs_change": out_max,
        "outside_mask_mean_abs_change": out_mean,
        "outside_psnr": psnr,
        "outside_ssim": ssim_out,
        "mask_changed_fraction": in_changed,
        "outside_changed_fraction": out_changed,
        "change_mask_iou": iou,
    }


def locality_metrics(
    source, result, mask, change_threshold: float = DEFAULT_CHANGE_THRESHOLD, reduction: str = "mean"
) -> dict:
    """Locality metrics of a batch of edits.

    ``reduction="mean"`` (default) gives plain floats: the mean over images (NaNs ignored) of every metric,
    except ``outside_mask_max_abs_change``, which is the worst case (max) over the batch, and ``outside_psnr``,
    the mean of the finite values (``inf`` when every image is unchanged outside). ``reduction="none"`` gives
    the per-image (B,) tensors of :func:`locality_per_image`. The dict also records ``change_threshold`` and ``n``.
    """
    if reduction not in ("mean", "none"):
        raise input_error("reduction", reduction, "'mean' or 'none'")
    per = locality_per_image(source, result, mask, change_threshold)
    if reduction == "none":
        return per
    return {**reduce_locality(per), "change_threshold": float(change_threshold)}


def reduce_locality(per: dict[str, torch.Tensor]) -> dict:
    """Reduce per-image locality values (tensors or lists, possibly concatenated from many batches)."""
    out: dict = {}
    for key, values in per.items():
        v = torch.as_tensor(values, dtype=torch.float64).flatten()
        ok = v[~torch.isnan(v)]
        if key == "outside_mask_max_abs_change":
            out[key] = float(ok.max()) if ok.numel() else math.nan
        elif key == "outside_psnr":
            finite = ok[torch.isfinite(ok)]
            out[key] = float(finite.mean()) if finite.numel() else (math.inf if ok.numel() else math.nan)
        else:
            out[key] = float(ok.mean()) if ok.numel() else math.nan
    n = next(iter(per.values()))
    out["n"] = int(torch.as_tensor(n).numel())
    return out
