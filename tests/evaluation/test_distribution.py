"""FD / KID / precision-recall: parity with torchmetrics given the same extractor, and known properties."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from counterfactory.errors import InputError
from counterfactory.evaluation.distribution import (
    FeatureStats,
    distribution_metrics,
    fd_from_stats,
    kernel_distance,
    precision_recall,
)
from counterfactory.evaluation.features import CompactExtractor, CompactExtractorConfig


def _images(seed, n=24, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 32, 32, generator=g) * 0.8 + shift).clamp(0, 1)


@pytest.fixture(scope="module")
def extractor():
    torch.manual_seed(0)
    return CompactExtractor(CompactExtractorConfig(input_size=32, channels=(8, 8, 16), num_features=16)).eval()


def test_fd_parity_with_torchmetrics(extractor):
    real, fake = _images(0, 40), _images(1, 30, shift=0.15)
    fid = FrechetInceptionDistance(feature=extractor, normalize=True)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    expected = float(fid.compute())
    with torch.no_grad():
        fr, ff = extractor(real), extractor(fake)
    # streaming in two chunks gives the same statistics
    a = FeatureStats(16).update(fr[:17]).update(fr[17:])
    b = FeatureStats.of(ff)
    ours = fd_from_stats(a, b)
    assert ours == pytest.approx(expected, rel=1e-5, abs=1e-8)
    assert ours > 0


def test_kid_parity_with_torchmetrics_full_subset(extractor):
    real, fake = _images(2, 20), _images(3, 20, shift=0.1)
    kid = KernelInceptionDistance(feature=extractor, subsets=1, subset_size=20, normalize=True)
    kid.update(real, real=True)
    kid.update(fake, real=False)
    expected = float(kid.compute()[0])
    with torch.no_grad():
        ours, std = kernel_distance(extractor(real), extractor(fake), subsets=1, subset_size=20)
    assert ours == pytest.approx(expected, rel=2e-3)  # torchmetrics KID works in float32
    assert std == 0.0


def test_same_distribution_is_near_zero_and_named_by_extractor():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 8, generator=g, dtype=torch.float64).float()
    y = torch.randn(400, 8, generator=g, dtype=torch.float64).float()
    far = y + 3.0
    m_same = distribution_metrics(x, y, "compact", kid_subsets=20, kid_subset_size=100)
    m_far = distribution_metrics(x, far, "compact", kid_subsets=20, kid_subset_size=100)
    assert set(m_same) == {"FD_compact", "KID_compact", "KID_compact_std", "precision_compact", "recall_compact"}
    assert m_same["FD_compact"] < 0.2 < m_far["FD_compact"]
    assert abs(m_same["KID_compact"]) < 0.05 < m_far["KID_compact"]
    assert m_same["precision_compact"] > 0.8 and m_far["precision_compact"] < 0.1
    assert "FID" in distribution_metrics(x, y, "inception", kid_subsets=2, kid_subset_size=10)
    assert "FID" not in m_same


def test_precision_recall_mode_collapse():
    g = torch.Generator().manual_seed(1)
    real = torch.randn(200, 4, generator=g)
    collapsed = real[:5].repeat(40, 1) + 0.01 * torch.randn(200, 4, generator=g)
    p, r = precision_recall(real, collapsed, k=3)
    assert p > 0.9 and r < 0.3


def test_kid_subset_larger_than_set_is_input_error():
    x = torch.randn(10, 4)
    with pytest.raises(InputError, match="subset size"):
        kernel_distance(x, x, subset_size=32)


def test_fd_matches_closed_form_for_diagonal_gaussians():
    from counterfactory.evaluation.distribution import frechet_distance

    mu1, mu2 = torch.zeros(3), torch.tensor([1.0, 0.0, 0.0])
    s1, s2 = torch.diag(torch.tensor([1.0, 4.0, 9.0])), torch.diag(torch.tensor([4.0, 4.0, 1.0]))
    expected = 1.0 + sum((a**0.5 - b**0.5) ** 2 for a, b in [(1, 4), (4, 4), (9, 1)])
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)
