"""Downstream metrics: pixel AP / F1-max / AUROC and image AUROC from torchmetrics' binary functional metrics."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_precision_recall_curve,
)

from ...data import GOOD


def binary_metrics(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """AP, F1-max (over every threshold of the precision-recall curve) and AUROC; NaN when one class is absent."""
    s = scores.flatten().float()
    y = labels.flatten().long()
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.numel():
        return {"AP": math.nan, "F1max": math.nan, "AUROC": math.nan}
    # inputs are built here (scores in [0, 1], labels in {0, 1}): skip torchmetrics' per-element checks
    ap = float(binary_average_precision(s, y, validate_args=False))
    auroc = float(binary_auroc(s, y, validate_args=False))
    p, r, _ = binary_precision_recall_curve(s, y, validate_args=False)
    f1 = float((2 * p * r / (p + r).clamp_min(1e-12)).max())
    return {"AP": ap, "F1max": f1, "AUROC": auroc}


@torch.no_grad()
def predict(model: torch.nn.Module, images: list[torch.Tensor]) -> list[torch.Tensor]:
    """Anomaly maps (1,H,W) in [0,1] of uint8 or float images (3,H,W), on the model's device, returned on CPU."""
    device = next(model.parameters()).device
    out = []
    for im in images:
        x = im.float() / 255.0 if im.dtype == torch.uint8 else im.float()
        out.append(torch.sigmoid(model(x[None].to(device)))[0].cpu())
    return out


def evaluate_maps(maps: list[torch.Tensor], eval_masks: list[torch.Tensor], eval_types: list[str], types: list[str],
                  image_pool: int) -> dict:
    """group ("all" or a defect type: its images + every defect-free one) → metric → value.

    Image score = max of the ``image_pool``×``image_pool`` average-pooled anomaly map.
    """

    def image_score(m):
        k = min(image_pool, *m.shape[-2:])
        return float(F.avg_pool2d(m[None], k, stride=1).max())

    scores = torch.tensor([image_score(m) for m in maps])
    labels = torch.tensor([t != GOOD for t in eval_types])
    groups = {"all": list(range(len(maps)))}
    for t in types:
        groups[t] = [i for i, tt in enumerate(eval_types) if tt in (t, GOOD)]
    res = {}
    for name, ids in groups.items():
        px = binary_metrics(torch.cat([maps[i].flatten() for i in ids]), torch.cat([eval_masks[i].flatten() for i in ids]))
        im = binary_metrics(scores[ids], labels[ids])
        res[name] = {"pixel_AP": px["AP"], "pixel_F1max": px["F1max"], "pixel_AUROC": px["AUROC"], "image_AUROC": im["AUROC"]}
    return res
