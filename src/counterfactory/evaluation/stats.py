"""Statistics over seeds and images: the one home for mean ± std and paired differences.

Convention: ``std`` is the sample standard deviation (ddof = 1); with one value it is NaN-free 0.0 and the
interval is undefined (NaN). Undefined inputs (None, NaN) are skipped and counted out of ``n``.
Hand-written because scipy's ``stats.t`` gives the quantile but no summary/paired helper of this shape.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import stats as _st


def _defined(values: Iterable[float | None]) -> np.ndarray:
    return np.array([float(v) for v in values if v is not None and not math.isnan(float(v))], dtype=np.float64)


def summarize(values: Iterable[float | None]) -> dict[str, float]:
    """Mean, sample std (ddof = 1), median, 10/90th percentiles and the count of defined values."""
    v = _defined(values)
    if v.size == 0:
        nan = float("nan")
        return {"mean": nan, "std": nan, "median": nan, "p10": nan, "p90": nan, "n": 0}
    p10, p50, p90 = np.percentile(v, [10, 50, 90])
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "median": float(p50),
            "p10": float(p10), "p90": float(p90), "n": int(v.size)}


def mean_std(values: Iterable[float | None]) -> tuple[float, float]:
    """``(mean, sample std)`` of the defined values; ``(nan, nan)`` when there are none."""
    s = summarize(values)
    return s["mean"], s["std"]


def paired_difference(a: Sequence[float | None], b: Sequence[float | None], confidence: float = 0.95) -> dict:
    """``a - b`` paired by position (same seed): mean, sample std, Student-t interval and whether it excludes 0.

    Pairs where either side is undefined are dropped. ``excludes_zero`` is False when the interval is undefined
    (fewer than two pairs), so a gain is never claimed from one seed.
    """
    if len(a) != len(b):
        raise ValueError(f"paired_difference: a has {len(a)} values and b has {len(b)}; pairs need equal lengths")
    d = np.array([float(x) - float(y) for x, y in zip(a, b)
                  if x is not None and y is not None and not math.isnan(float(x)) and not math.isnan(float(y))],
                 dtype=np.float64)
    n = int(d.size)
    nan = float("nan")
    if n == 0:
        return {"mean": nan, "std": nan, "ci_low": nan, "ci_high": nan, "n": 0, "confidence": confidence,
                "excludes_zero": False}
    mean = float(d.mean())
    if n < 2:
        return {"mean": mean, "std": 0.0, "ci_low": nan, "ci_high": nan, "n": n, "confidence": confidence,
                "excludes_zero": False}
    std = float(d.std(ddof=1))
    half = float(_st.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    lo, hi = mean - half, mean + half
    return {"mean": mean, "std": std, "ci_low": lo, "ci_high": hi, "n": n, "confidence": confidence,
            "excludes_zero": bool(lo > 0 or hi < 0)}
