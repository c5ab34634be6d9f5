"""Distribution metrics between real and generated feature sets: FD, KID, k-NN precision / recall.

All statistics are float64. :class:`FeatureStats` streams (sum, sum of outer products, count), so FD needs
no stored features; KID and precision/recall need the features themselves and keep them (float32 features,
float64 arithmetic). Metric names carry the extractor (``FD_compact``, ``KID_compact``, ...); the Fréchet
distance is called ``FID`` only when the features come from the Inception network.

- FD: ‖μ₁−μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½), covariances with the unbiased (n−1) normalisation, as torchmetrics.
  The trace of the matrix square root is computed as Σ√λᵢ of the symmetric PSD matrix Σ₁^½ Σ₂ Σ₁^½.
- KID: unbiased MMD² with the cubic polynomial kernel k(x,y) = (xᵀy/d + 1)³, averaged over ``subsets`` random
  subsets of ``subset_size`` features from each side (drawn without replacement inside a subset, with a
  seeded generator); mean and std over subsets. Raw scale (not ×1000).
- Precision / recall (Kynkäänniemi et al. 2019): a generated sample is "precise" if it falls inside the
  k-NN ball of some real sample; a real sample is "recalled" if it falls inside the k-NN ball of some
  generated sample (k = 3 by default, Euclidean distance in feature space).
"""

from __future__ import annotations

import math

import torch

from ..errors import input_error


class FeatureStats:
    """Streaming float64 mean / covariance of feature vectors; optionally keeps the features."""

    def __init__(self, num_features: int, keep_features: bool = True):
        self.num_features = int(num_features)
        self.n = 0
        self.sum = torch.zeros(self.num_features, dtype=torch.float64)
        self.outer = torch.zeros(self.num_features, self.num_features, dtype=torch.float64)
        self.keep_features = keep_features
        self._feats: list[torch.Tensor] = []

    def update(self, features: torch.Tensor) -> FeatureStats:
        f = features.detach().reshape(features.shape[0], -1)
        if f.shape[1] != self.num_features:
            raise input_error("features", tuple(f.shape), f"(N, {self.num_features})")
        if not torch.isfinite(f).all():
            raise input_error("features", "NaN/inf", "finite feature values")
        f64 = f.double()
        self.n += f64.shape[0]
        self.sum += f64.sum(0)
        self.outer += f64.t() @ f64
        if self.keep_features:
            self._feats.append(f.float().cpu())
        return self

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / max(self.n, 1)

    @property
    def cov(self) -> torch.Tensor:
        if self.n < 2:
            raise input_error("features", f"{self.n} samples", "at least 2 samples for a covariance")
        mu = self.mean
        return (self.outer - self.n * torch.outer(mu, mu)) / (self.n - 1)

    @property
    def features(self) -> torch.Tensor:
        if not self.keep_features:
            raise RuntimeError("FeatureStats(keep_features=False) does not store features")
        if not self._feats:
            return torch.zeros(0, self.num_features)
        return torch.cat(self._feats)

    @classmethod
    def of(cls, features: torch.Tensor) -> FeatureStats:
        return cls(features.shape[1]).update(features)


def _sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh((a + a.t()) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.t()


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """Fréchet distance between N(μ₁,Σ₁) and N(μ₂,Σ₂), float64."""
    mu1, mu2, sigma1, sigma2 = (t.double() for t in (mu1, mu2, sigma1, sigma2))
    s1 = _sqrtm_psd(sigma1)
    m = s1 @ sigma2 @ s1
    tr_sqrt = torch.linalg.eigvalsh((m + m.t()) / 2).clamp_min(0).sqrt().sum()
    d = (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * tr_sqrt
    return float(d.clamp_min(0))


def fd_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    return frechet_distance(a.mean, a.cov, b.mean, b.cov)


def _poly_mmd2_unbiased(x: torch.Tensor, y: torch.Tensor, degree: int = 3, coef: float = 1.0) -> float:
    d = x.shape[1]
    gamma = 1.0 / d
    kxx = (x @ x.t() * gamma + coef) ** degree
    kyy = (y @ y.t() * gamma + coef) ** degree
    kxy = (x @ y.t() * gamma + coef) ** degree
    m, n = x.shape[0], y.shape[0]
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    sxy = kxy.sum() / (m * n)
    return float(sxx + syy - 2 * sxy)


def kernel_distance(
    real: torch.Tensor, fake: torch.Tensor, subsets: int = 100, subset_size: int = 32, seed: int = 0, name: str = "KID"
) -> tuple[float, float]:
    """KID (unbiased, polynomial kernel) mean and std over ``subsets`` random subsets of ``subset_size``."""
    if subset_size < 2:
        raise input_error("kid_subset_size", subset_size, "an integer >= 2")
    if subsets < 1:
        raise input_error("kid_subsets", subsets, "an integer >= 1")
    for which, f in (("real", real), ("generated", fake)):
        if f.shape[0] < subset_size:
            raise input_error(
                f"{name} {which} images", f.shape[0], f"at least the KID subset size {subset_size} (lower --kid-subset-size)"
            )
    x, y = real.double(), fake.double()
    g = torch.Generator().manual_seed(seed)
    vals = []
    for _ in range(subsets):
        ix = torch.randperm(x.shape[0], generator=g)[:subset_size]
        iy = torch.randperm(y.shape[0], generator=g)[:subset_size]
        vals.append(_poly_mmd2_unbiased(x[ix], y[iy]))
    v = torch.tensor(vals, dtype=torch.float64)
    return float(v.mean()), float(v.std(unbiased=False)) if len(vals) > 1 else 0.0


def _kth_radius(x: torch.Tensor, k: int) -> torch.Tensor:
    d = torch.cdist(x, x)
    # the (k+1)-th smallest includes the point itself at distance 0
    return d.kthvalue(min(k + 1, x.shape[0]), dim=1).values


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """k-NN precision and recall (Kynkäänniemi et al. 2019), Euclidean, float64."""
    if k < 1:
        raise input_error("pr_k", k, "an integer >= 1")
    for which, f in (("real", real), ("generated", fake)):
        if f.shape[0] < k + 1:
            raise input_error(f"{which} images", f.shape[0], f"at least k+1 = {k + 1} for k-NN precision/recall")
    x, y = real.double(), fake.double()
    rx, ry = _kth_radius(x, k), _kth_radius(y, k)
    d = torch.cdist(y, x)  # (n_fake, n_real)
    precision = (d <= rx[None, :]).any(dim=1).double().mean()
    recall = (d.t() <= ry[None, :]).any(dim=1).double().mean()
    return float(precision), float(recall)


def distribution_metrics(
    real: torch.Tensor,
    fake: torch.Tensor,
    extractor_name: str,
    kid_subsets: int = 100,
    kid_subset_size: int = 32,
    pr_k: int = 3,
    seed: int = 0,
    suffix: str = "",
) -> dict[str, float]:
    """FD / KID / precision / recall of two feature sets, named after the extractor.

    ``extractor_name="inception"`` gives ``FID``; any other name ``FD_<name>``. ``suffix`` is appended to every
    key (e.g. ``"_crop"`` for defect-crop views).
    """
    if real.shape[0] < 2 or fake.shape[0] < 2:
        raise input_error("images", (real.shape[0], fake.shape[0]), "at least 2 real and 2 generated images")
    fd_name = "FID" if extractor_name == "inception" else f"FD_{extractor_name}"
    kid_name = "KID" if extractor_name == "inception" else f"KID_{extractor_name}"
    out = {f"{fd_name}{suffix}": fd_from_stats(FeatureStats.of(real), FeatureStats.of(fake))}
    kid, kid_std = kernel_distance(real, fake, kid_subsets, kid_subset_size, seed, name=kid_name + suffix)
    out[f"{kid_name}{suffix}"] = kid
    out[f"{kid_name}{suffix}_std"] = kid_std
    p, r = precision_recall(real, fake, pr_k)
    out[f"precision_{extractor_name}{suffix}"] = p
    out[f"recall_{extractor_name}{suffix}"] = r
    return out


def is_finite_number(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
