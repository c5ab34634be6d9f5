import math

import numpy as np
import pytest

from counterfactory.evaluation.stats import mean_std, paired_difference, summarize


def test_summarize_uses_sample_std_and_skips_undefined():
    s = summarize([1.0, 2.0, None, float("nan"), 3.0])
    assert s["n"] == 3
    assert s["mean"] == pytest.approx(2.0)
    assert s["std"] == pytest.approx(np.std([1, 2, 3], ddof=1))
    assert mean_std([]) [0] != mean_std([])[0]  # NaN when nothing is defined


def test_paired_difference_interval_matches_t_distribution():
    a = [0.30, 0.32, 0.35, 0.31, 0.33]
    b = [0.20, 0.25, 0.22, 0.21, 0.24]
    r = paired_difference(a, b)
    d = np.array(a) - np.array(b)
    half = 2.7764451051977987 * d.std(ddof=1) / math.sqrt(5)  # t_{0.975, 4}
    assert r["mean"] == pytest.approx(d.mean())
    assert r["ci_low"] == pytest.approx(d.mean() - half)
    assert r["ci_high"] == pytest.approx(d.mean() + half)
    assert r["excludes_zero"] is True


def test_paired_difference_never_claims_from_noise_or_one_pair():
    assert paired_difference([0.1, 0.3, 0.2], [0.2, 0.1, 0.25])["excludes_zero"] is False
    assert paired_difference([0.9], [0.1])["excludes_zero"] is False
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1.0], [1.0, 2.0])
