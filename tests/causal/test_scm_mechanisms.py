import pytest
import torch

from counterfactory.causal.scm import ParentSCM
from counterfactory.errors import InputError


def _fit():
    g = torch.Generator().manual_seed(0)
    area = 40 + 200 * torch.rand(500, 2, generator=g)
    digit = torch.randint(0, 10, (500, 2), generator=g)
    intensity = 0.5 * area + 3.0 * digit + 60 + 5 * torch.randn(500, 2, generator=g)
    return ParentSCM.fit(area, intensity, digit), area, intensity, digit


def test_fit_recovers_the_intensity_mechanism():
    scm, *_ = _fit()
    assert scm.w_area == pytest.approx(0.5, abs=0.02)
    assert scm.b_digit[4] - scm.b_digit[1] == pytest.approx(9.0, abs=2.0)
    assert scm.sd_int == pytest.approx(5.0, abs=0.6)
    assert ParentSCM.from_dict(scm.to_dict()) == scm


def test_fit_equals_least_squares_and_is_bit_stable():
    scm, area, intensity, digit = _fit()
    a, i, d = area.flatten().double(), intensity.flatten().double(), digit.flatten()
    design = torch.cat([a[:, None], torch.nn.functional.one_hot(d, 10).double()], dim=1)
    coef = torch.linalg.lstsq(design, i[:, None], driver="gelsd").solution[:, 0]
    assert scm.w_area == pytest.approx(float(coef[0]), rel=1e-9)
    assert scm.b_digit == pytest.approx([float(c) for c in coef[1:]], rel=1e-9)
    # the same numbers from copies at other memory offsets (LAPACK's rounding depended on alignment), and
    # with digits absent (a rank-deficient design): absent digits fall back to the pooled offset
    for pad in (1, 3, 7):
        shifted = [torch.cat([torch.zeros(pad, 2, dtype=t.dtype), t])[pad:] for t in (area, intensity, digit)]
        assert ParentSCM.fit(*shifted) == scm
    few = ParentSCM.fit(area[:6], intensity[:6], digit[:6])
    assert all(v == v for v in few.b_digit) and ParentSCM.fit(area[:6], intensity[:6], digit[:6]) == few


def test_intervention_keeps_noise_and_the_other_structure():
    scm, area, intensity, digit = _fit()
    k = torch.zeros(500, dtype=torch.long)
    a_cf, i_cf = scm.intervene_area(area, intensity, digit, k, area[:, 0] * 1.1)
    assert torch.equal(a_cf[:, 1], area[:, 1]) and torch.equal(i_cf[:, 1], intensity[:, 1])
    inside = (i_cf[:, 0] > scm.int_min) & (i_cf[:, 0] < scm.int_max)
    u0 = scm.abduct_intensity(area, intensity, digit)[inside, 0]
    u1 = scm.abduct_intensity(a_cf, i_cf, digit)[inside, 0]
    assert torch.allclose(u0, u1, atol=1e-4)  # abduction–action–prediction keeps the exogenous noise
    same, _ = scm.intervene_area(area, intensity, digit, k, area[:, 0])
    assert torch.equal(same, area)


def test_out_of_range_intervention_is_refused():
    scm, *_ = _fit()
    with pytest.raises(InputError, match="training range"):
        scm.check_area(scm.area_max + 1)
    scm.check_area(scm.area_min)
