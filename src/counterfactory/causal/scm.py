"""The parent mechanisms of the structural causal model, fitted to the real training split.

Graph, per structure k (one digit; two in the side-by-side variant)::

    digit_k ──► area_k ──► intensity_k
        │          │            │
        └──────────┴────────────┴──► image  (conditional VAE, see vae.py; one image for all structures)

- ``area_k | digit_k ~ Normal(mu_d, sd_d)``  (per-digit mean and std of the measured area)
- ``intensity_k = w_area * area_k + b_digit + sd_int * u_k``  (least squares; ``u_k`` is the exogenous noise)

A counterfactual ``do(area_k = a*)`` is computed by abduction–action–prediction: abduct ``u_k`` from the
observed (area, intensity, digit), set area_k, predict ``intensity_k* = w_area * a* + b_digit + sd_int * u_k``;
the other structure's variables are untouched (no arrows between structures). Interventions outside the
training range of area are refused (:meth:`ParentSCM.check_area`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..errors import InputError, input_error

NUM_DIGITS = 10


@dataclass(frozen=True)
class ParentSCM:
    area_mean: float  # normalisation of area (train split, all structures pooled)
    area_std: float
    int_mean: float  # normalisation of intensity (0..255)
    int_std: float
    area_min: float  # training range of area: interventions outside it are refused
    area_max: float
    int_min: float
    int_max: float
    w_area: float  # intensity mechanism: slope on area
    b_digit: tuple[float, ...]  # intensity mechanism: per-digit offset
    sd_int: float  # intensity mechanism: residual std (at least 1e-3)
    area_mu_digit: tuple[float, ...]  # area mechanism: per-digit mean
    area_sd_digit: tuple[float, ...]  # area mechanism: per-digit std
    num_structures: int = 1

    @classmethod
    def fit(cls, area: torch.Tensor, intensity: torch.Tensor, digit: torch.Tensor) -> ParentSCM:
        """Least squares in closed form (float64 numpy), so that the same data gives the same bits everywhere.

        ``intensity = w_area * area + b_digit`` is a one-way fixed-effects regression: ``w_area`` is the pooled
        within-digit slope and ``b_digit = mean_i(d) - w_area * mean_a(d)``. A LAPACK ``lstsq`` would give the same
        numbers up to rounding, but its rounding depends on memory alignment (and it is rank-deficient when a
        digit is absent), which made resumed runs differ from straight ones.
        """
        a = area.detach().cpu().double().flatten().numpy()
        i = intensity.detach().cpu().double().flatten().numpy()
        d = digit.detach().cpu().flatten().numpy()
        present = [k for k in range(NUM_DIGITS) if (d == k).any()]
        mean_a = {k: a[d == k].mean() for k in present}
        mean_i = {k: i[d == k].mean() for k in present}
        da = a - np.array([mean_a[k] for k in d])
        di = i - np.array([mean_i[k] for k in d])
        sxx = float((da * da).sum())
        w = float((da * di).sum()) / sxx if sxx > 0 else 0.0
        b = [float(mean_i[k] - w * mean_a[k]) if k in mean_a else float(i.mean() - w * a.mean()) for k in range(NUM_DIGITS)]
        resid = i - (w * a + np.array(b)[d])
        mu = [float(mean_a[k]) if k in mean_a else float(a.mean()) for k in range(NUM_DIGITS)]
        sd = [float(a[d == k].std(ddof=1)) if (d == k).sum() > 1 else float(a.std(ddof=1)) for k in range(NUM_DIGITS)]
        return cls(
            area_mean=float(a.mean()),
            area_std=float(a.std(ddof=1)),
            int_mean=float(i.mean()),
            int_std=float(i.std(ddof=1)),
            area_min=float(a.min()),
            area_max=float(a.max()),
            int_min=float(i.min()),
            int_max=float(i.max()),
            w_area=w,
            b_digit=tuple(b),
            sd_int=max(float(resid.std(ddof=1)) if len(resid) > 1 else 0.0, 1e-3),  # floor: an exact fit (tiny data) has none
            area_mu_digit=tuple(mu),
            area_sd_digit=tuple(sd),
            num_structures=int(area.shape[1]),
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ParentSCM:
        d = dict(d)
        for key in ("b_digit", "area_mu_digit", "area_sd_digit"):
            d[key] = tuple(d[key])
        return cls(**d)

    # ------------------------------------------------------------------ normalisation and conditioning
    def norm_area(self, a: torch.Tensor) -> torch.Tensor:
        return (a - self.area_mean) / self.area_std

    def norm_int(self, i: torch.Tensor) -> torch.Tensor:
        return (i - self.int_mean) / self.int_std

    @property
    def cond_dim(self) -> int:
        return self.num_structures * (2 + NUM_DIGITS)

    def condition(self, area: torch.Tensor, intensity: torch.Tensor, digit: torch.Tensor) -> torch.Tensor:
        """(B,K) parents → (B, K*12) conditioning vector of the image mechanism."""
        onehot = torch.nn.functional.one_hot(digit, NUM_DIGITS).float()
        parts = torch.cat([self.norm_area(area)[..., None], self.norm_int(intensity)[..., None], onehot], dim=-1)
        return parts.flatten(1)

    # ------------------------------------------------------------------ mechanisms
    def intensity_mean(self, area: torch.Tensor, digit: torch.Tensor) -> torch.Tensor:
        b = torch.tensor(self.b_digit, dtype=area.dtype)[digit]
        return self.w_area * area + b

    def abduct_intensity(self, area: torch.Tensor, intensity: torch.Tensor, digit: torch.Tensor) -> torch.Tensor:
        return (intensity - self.intensity_mean(area, digit)) / self.sd_int

    def check_area(self, value: torch.Tensor | float, name: str = "area") -> None:
        v = torch.as_tensor(value, dtype=torch.float32)
        lo, hi = float(v.min()), float(v.max())
        if lo < self.area_min or hi > self.area_max:
            raise input_error(
                name, f"{lo:.1f}..{hi:.1f}", f"values inside the training range of area [{self.area_min:.0f}, {self.area_max:.0f}] pixels"
            )

    def in_range(self, area: torch.Tensor) -> torch.Tensor:
        return (area >= self.area_min) & (area <= self.area_max)

    def intervene_area(
        self, area: torch.Tensor, intensity: torch.Tensor, digit: torch.Tensor, structure: torch.Tensor, new_area: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Counterfactual parents of ``do(area[b, structure[b]] = new_area[b])``: (area*, intensity*), both (B,K).

        The intervened structure's intensity follows its mechanism with the abducted noise (kept inside the
        training range of intensity); the other structures keep their values.
        """
        if new_area.shape != (area.shape[0],) or structure.shape != (area.shape[0],):
            raise InputError(f"new_area/structure: shapes {tuple(new_area.shape)}/{tuple(structure.shape)}; allowed: ({area.shape[0]},)")
        rows = torch.arange(area.shape[0])
        u = self.abduct_intensity(area, intensity, digit)
        area_cf = area.clone()
        area_cf[rows, structure] = new_area.to(area.dtype)
        int_new = self.intensity_mean(area_cf, digit) + self.sd_int * u
        int_cf = intensity.clone()
        int_cf[rows, structure] = int_new[rows, structure].clamp(self.int_min, self.int_max)
        return area_cf, int_cf
