"""Counterfactual metrics on a test split: effectiveness, locality, composition, reversibility.

All area and intensity numbers on counterfactuals come from the **independent measurement** of
data/morphomnist.py (foreground = pixels >= half the structure's brightest; area = their count; intensity =
their median), not from the regressor or segmentor that guided fine-tuning. What the two guides read on the
same counterfactuals is reported alongside (``guide_*``), which shows when a variant pleases its guide more
than the pixels.

Counterfactual = ``x + mu(z, pa*) - mu(z, pa)`` (vae.py), or ``mu(z, pa*)`` in the latent-only mode. Interventions ``do(area_k = area_k * s)`` whose value
falls outside the training range of area are not evaluated; how many were left out is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ..data.morphomnist import StructureData, foreground, measure, structure_columns
from ..errors import input_error
from ..evaluation.stats import mean_std
from .predictors import Regressor, Segmentor, regressor_decode
from .scm import ParentSCM
from .vae import CondVAE, check_mode

DEFAULT_SCALES = (0.6, 0.7, 0.8, 0.9, 1.1, 1.2, 1.3, 1.4)
REVERSE_SCALES = (0.7, 1.3)
FAR_RADIUS = 3  # "far" pixels: more than this many pixels (Chebyshev) from the original stroke


def check_scales(scales, lo: float, hi: float) -> tuple[float, ...]:
    """Scales must lie in the range CFT was trained on (refused otherwise: exit 2 in the CLI)."""
    scales = tuple(float(s) for s in scales)
    if not scales:
        raise input_error("scales", scales, "at least one scale")
    bad = [s for s in scales if not lo <= s <= hi]
    if bad:
        raise input_error("scales", bad, f"intervention scales inside the trained range [{lo:g}, {hi:g}]")
    return scales


@dataclass
class _Acc:
    """Running sums for one metric (sum and count)."""

    total: float = 0.0
    n: int = 0

    def add(self, values: torch.Tensor) -> None:
        self.total += float(values.sum())
        self.n += int(values.numel())

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else float("nan")


@torch.no_grad()
def evaluate_model(
    vae: CondVAE,
    scm: ParentSCM,
    regressor: Regressor,
    segmentor: Segmentor,
    test: StructureData,
    scales=DEFAULT_SCALES,
    batch: int = 250,
    progress=None,
    mode: str = "noise",
    reverse: bool = True,
) -> dict:
    """Metrics of one causal model on ``test`` (means over examples, structures and scales).

    ``mode``: the counterfactual (vae.py): ``"noise"`` abducts the pixel noise, ``"latent"`` predicts x* from
    the model alone. ``reverse=False`` skips reversibility and composition (faster, for model selection).
    """
    check_mode(mode)
    vae.eval()
    K = test.num_structures
    cols = structure_columns(K)
    acc: dict[str, _Acc] = {}
    per_scale: dict[float, _Acc] = {s: _Acc() for s in scales}

    def add(name: str, v: torch.Tensor) -> None:
        acc.setdefault(name, _Acc()).add(v)

    left_out = 0
    own = torch.zeros(K, 1, test.images.shape[-1], dtype=torch.bool)  # columns of structure k
    for k in range(K):
        own[k, :, cols[k]] = True
    for start in range(0, len(test), batch):
        sl = slice(start, start + batch)
        x, a, i, d = test.images[sl], test.area[sl], test.intensity[sl], test.digit[sl]
        B = x.shape[0]
        cond = scm.condition(a, i, d)
        z, u = vae.abduct(x, cond)
        if mode == "latent":
            u = torch.zeros_like(u)
        mu0 = vae.decode(z, cond)
        null_area = measure((mu0 + u).clamp(0, 1), K)[0] if K > 1 else None  # the null intervention's areas
        near = F.max_pool2d(foreground(x, K).any(1, keepdim=True).float(), 2 * FAR_RADIUS + 1, 1, FAR_RADIUS) > 0
        for s in scales:
            for k in range(K):
                new = a[:, k] * s
                ok = scm.in_range(new)
                left_out += int((~ok).sum())
                if not ok.any():
                    continue
                kk = torch.full((B,), k, dtype=torch.long)
                a_cf, i_cf = scm.intervene_area(a, i, d, kk, torch.where(ok, new, a[:, k]))
                x_cf = (vae.decode(z, scm.condition(a_cf, i_cf, d)) + u).clamp(0, 1)
                x_cf, xo, a_cf, i_cf, nr = x_cf[ok], x[ok], a_cf[ok], i_cf[ok], near[ok]
                null_ok = null_area[ok] if null_area is not None else None
                ma, mi = measure(x_cf, K)
                err = (ma[:, k] - a_cf[:, k]).abs()
                add("area_mae", err)
                add("area_mape", 100 * err / a_cf[:, k])
                per_scale[s].add(100 * err / a_cf[:, k])
                add("intensity_mae", (mi[:, k] - i_cf[:, k]).abs())
                ra, _ = regressor_decode(scm, regressor(x_cf))
                add("guide_regressor_area_mae", (ra[:, k] - a_cf[:, k]).abs())
                add("guide_segmentor_area_mae", (segmentor.soft_area(x_cf)[:, k] - a_cf[:, k]).abs())
                diff = (x_cf - xo).abs()[:, 0]
                far = ~nr[:, 0] & own[k]
                add("far_change", (diff * far).flatten(1).sum(1) / far.flatten(1).sum(1).clamp(min=1))
                for j in range(K):
                    if j != k:
                        add("other_change", diff[:, :, cols[j]].flatten(1).mean(1))
                        add("other_area_drift", (ma[:, j] - a_cf[:, j]).abs())
                        add("other_area_shift", (ma[:, j] - null_ok[:, j]).abs())
        if not reverse:
            if progress is not None:
                progress.update(B)
            continue
        # composition: the model's own reconstruction, applied 1x and 10x under the null intervention
        xr = mu0
        add("composition_1x", (xr - x).abs().flatten(1).mean(1))
        for _ in range(9):
            xr = vae.reconstruct(xr, cond)
        add("composition_10x", (xr - x).abs().flatten(1).mean(1))
        # reversibility: do(area_k * s) then back to the observed parents
        for s in REVERSE_SCALES:
            for k in range(K):
                new = a[:, k] * s
                ok = scm.in_range(new)
                if not ok.any():
                    continue
                kk = torch.full((B,), k, dtype=torch.long)
                a_cf, i_cf = scm.intervene_area(a, i, d, kk, torch.where(ok, new, a[:, k]))
                c_cf = scm.condition(a_cf, i_cf, d)
                x_cf = vae.counterfactual(x, cond, c_cf, mode)
                back = vae.counterfactual(x_cf, c_cf, cond, mode)
                add("reversibility", (back - x).abs()[ok].flatten(1).mean(1))
        add("test_nelbo", vae.nelbo(x, cond, torch.Generator().manual_seed(start)))
        if progress is not None:
            progress.update(B)
    out = {name: v.mean for name, v in acc.items()}
    out["area_mape_by_scale"] = {f"{s:g}": per_scale[s].mean for s in scales}
    out["left_out_out_of_range"] = left_out
    out["evaluated_interventions"] = acc["area_mae"].n
    return out


METRIC_INFO = {  # name → (label, lower is better?, format)
    "area_mae": ("area MAE (px)", True, "{:.2f}"),
    "area_mape": ("area MAPE (%)", True, "{:.2f}"),
    "intensity_mae": ("intensity MAE (/255)", True, "{:.2f}"),
    "guide_regressor_area_mae": ("regressor-read area MAE (px)", True, "{:.2f}"),
    "guide_segmentor_area_mae": ("segmentor-read area MAE (px)", True, "{:.2f}"),
    "other_change": ("other digit: mean abs change (x100)", True, "{:.3f}"),
    "other_area_drift": ("other digit area drift (px)", True, "{:.2f}"),
    "other_area_shift": ("other digit area shift vs null intervention (px)", True, "{:.2f}"),
    "far_change": (f"far field (>{FAR_RADIUS}px from stroke): mean abs change (x100)", True, "{:.3f}"),
    "composition_1x": ("composition L1 1x (x100)", True, "{:.3f}"),
    "composition_10x": ("composition L1 10x (x100)", True, "{:.3f}"),
    "reversibility": ("reversibility L1 (x100)", True, "{:.3f}"),
    "test_nelbo": ("test -ELBO (nats/px)", True, "{:.4f}"),
}
PERCENT_SCALED = {"other_change", "far_change", "composition_1x", "composition_10x", "reversibility"}


def summarize(per_seed: list[dict]) -> dict[str, tuple[float, float]]:
    """mean and sample std (over seeds, ddof = 1) of every scalar metric; pixel L1 metrics are multiplied by 100."""
    out = {}
    for name in per_seed[0]:
        if not isinstance(per_seed[0][name], (int, float)):
            continue
        out[name] = mean_std([float(r[name]) * (100 if name in PERCENT_SCALED else 1) for r in per_seed])
    return out
