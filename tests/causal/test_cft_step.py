import pytest
import torch

from counterfactory.causal.metrics import check_scales, evaluate_model
from counterfactory.causal.training import Lagrange, cft_aux_loss, cft_step
from counterfactory.errors import InputError

from .helpers import tiny_config, tiny_digits, tiny_models


def _guide_area(variant, vae, scm, reg, seg, x, cond, cond_cf):
    x_cf = vae.counterfactual(x, cond, cond_cf)
    if variant == "seg":
        return seg.soft_area(x_cf)[:, 0]
    return reg(x_cf)[:, 0] * scm.area_std + scm.area_mean


@pytest.mark.parametrize("variant", ["reg", "seg"])
def test_cft_steps_move_the_guide_area_toward_the_intervention(variant):
    data = tiny_digits(16)
    scm, vae, reg, seg = tiny_models(data)
    x, a, i, d = data.images, data.area, data.intensity, data.digit
    k = torch.zeros(len(x), dtype=torch.long)
    cond = scm.condition(a, i, d)
    with torch.no_grad():
        now = _guide_area(variant, vae, scm, reg, seg, x, cond, cond)
    # intervene so that every target lies 30 px above what the frozen guide currently reads
    a_cf, i_cf = scm.intervene_area(a, i, d, k, now + 30)
    cond_cf = scm.condition(a_cf, i_cf, d)
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = cft_aux_loss(variant, vae.counterfactual(x, cond, cond_cf), a_cf, i_cf, scm, reg, seg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        after = _guide_area(variant, vae, scm, reg, seg, x, cond, cond_cf)
    assert losses[-1] < losses[0]
    assert float((after - now).mean()) > 0  # the measured area grew toward a* = now + 30


def test_constrained_step_reports_finite_stats_and_lagrange_ascends():
    data = tiny_digits(8)
    scm, vae, reg, seg = tiny_models(data)
    lag = Lagrange()
    cfg = tiny_config(damping=0.0)
    g = torch.Generator().manual_seed(0)
    loss, stats = cft_step(vae, scm, reg, seg, "seg", data.images, data.area, data.intensity, data.digit, g, -10.0, lag, cfg)
    opt_l = torch.optim.SGD(lag.parameters(), lr=1.0, maximize=True)
    loss.backward()
    opt_l.step()
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    assert float(lag.lmbda.detach()) > 0  # the ELBO constraint (nelbo <= -10) is violated: the multiplier grows


def test_metrics_on_a_tiny_model_and_scale_refusal():
    data = tiny_digits(12, structures=2)
    scm, vae, reg, seg = tiny_models(data)
    out = evaluate_model(vae, scm, reg, seg, data, scales=(0.5, 1.5), batch=5)
    for key in ("area_mae", "area_mape", "intensity_mae", "other_change", "composition_10x", "reversibility"):
        assert out[key] == out[key], key  # not NaN
    assert out["left_out_out_of_range"] + out["evaluated_interventions"] == 2 * 2 * 12
    with pytest.raises(InputError, match="trained range"):
        check_scales([0.3], 0.6, 1.4)


def test_fused_step_matches_separate_passes():
    data = tiny_digits(6)
    scm, vae, _, _ = tiny_models(data)
    cond = scm.condition(data.area, data.intensity, data.digit)
    cond_cf = scm.condition(data.area * 1.2, data.intensity, data.digit)
    nelbo, x_cf = vae.nelbo_and_counterfactual(data.images, cond, cond_cf, torch.Generator().manual_seed(3))
    assert torch.allclose(nelbo, vae.nelbo(data.images, cond, torch.Generator().manual_seed(3)), atol=1e-5)
    assert torch.allclose(x_cf, vae.counterfactual(data.images, cond, cond_cf), atol=1e-6)
