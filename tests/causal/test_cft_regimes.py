"""Latent-only counterfactuals, the correlated-pair data variant, predictor cross-talk, and their refusals."""

import numpy as np
import pytest
import torch

from counterfactory.causal.evaluate import run_mode
from counterfactory.causal.metrics import evaluate_model
from counterfactory.causal.predictors import crosstalk
from counterfactory.causal.structures import (
    build_variant,
    correlated_partners,
    data_variant_name,
    run_data_variant,
)
from counterfactory.causal.training import Lagrange, TrainConfig, cft_step, train_all
from counterfactory.data.morphomnist import MorphoMNIST, split_indices
from counterfactory.errors import CheckpointError, InputError

from .helpers import tiny_config, tiny_digits, tiny_models


def _fake_morpho(n=160, seed=0) -> MorphoMNIST:
    """Bars of random height and width: areas from ~12 to ~130 px."""
    g = np.random.default_rng(seed)
    imgs = np.zeros((n, 28, 28), np.uint8)
    for b in range(n):
        h, w = g.integers(4, 22), g.integers(2, 7)
        imgs[b, 3 : 3 + h, 5 : 5 + w] = 200
    return MorphoMNIST(imgs, g.integers(0, 10, n), np.ones(n, np.float32), np.full(n, 200.0, np.float32))


def test_latent_counterfactual_is_the_decoder_alone_and_noise_keeps_the_null_exact():
    data = tiny_digits(6)
    scm, vae, _, _ = tiny_models(data)
    x = data.images
    cond = scm.condition(data.area, data.intensity, data.digit)
    cond_cf = scm.condition(data.area * 1.2, data.intensity, data.digit)
    z, _ = vae.encode(x, cond)
    assert torch.equal(vae.counterfactual(x, cond, cond_cf, "latent"), vae.decode(z, cond_cf))
    assert torch.allclose(vae.counterfactual(x, cond, cond, "noise"), x, atol=1e-6)  # null intervention: x itself
    assert (vae.counterfactual(x, cond, cond, "latent") - x).abs().mean() > 1e-3  # latent: the reconstruction
    nelbo, x_cf = vae.nelbo_and_counterfactual(x, cond, cond_cf, torch.Generator().manual_seed(3), "latent")
    assert torch.allclose(nelbo, vae.nelbo(x, cond, torch.Generator().manual_seed(3)), atol=1e-5)
    assert torch.allclose(x_cf, vae.decode(z, cond_cf), atol=1e-6)
    with pytest.raises(InputError, match="counterfactual=.*'latent'"):
        vae.counterfactual(x, cond, cond_cf, "pixels")


@pytest.mark.parametrize("mode", ["noise", "latent"])
def test_cft_step_uses_the_configured_counterfactual(mode, monkeypatch):
    data = tiny_digits(8)
    scm, vae, reg, seg = tiny_models(data)
    seen = {}
    real = vae.nelbo_and_counterfactual

    def spy(*args, **kw):
        seen["mode"] = args[4] if len(args) > 4 else kw.get("mode")
        return real(*args, **kw)

    monkeypatch.setattr(vae, "nelbo_and_counterfactual", spy)
    cfg = tiny_config(counterfactual=mode)
    loss, _ = cft_step(vae, scm, reg, seg, "seg", data.images, data.area, data.intensity, data.digit,
                       torch.Generator().manual_seed(0), -1.0, Lagrange(), cfg)  # fmt: skip
    loss.backward()
    assert seen["mode"] == mode
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in vae.parameters())


def test_bad_train_settings_are_refused():
    with pytest.raises(InputError, match="counterfactual=.*'noise'"):
        TrainConfig(counterfactual="pixels")
    with pytest.raises(InputError, match="cft_lr=5"):
        TrainConfig(cft_lr=5.0)


def test_resume_with_another_counterfactual_mode_is_refused_and_the_mode_is_recorded(tmp_path):
    data = tiny_digits(12)
    meta = train_all(tmp_path, data, "seg", 0, tiny_config(counterfactual="latent"), progress=False)
    assert meta["counterfactual"] == "latent" and meta["data_variant"] == "single"
    with pytest.raises(CheckpointError, match="other settings"):
        train_all(tmp_path, data, "seg", 0, tiny_config(), progress=False)
    assert run_mode([meta]) == "latent"
    with pytest.raises(InputError, match="counterfactual=noise: 'latent'"):
        run_mode([meta], "noise")
    assert run_mode([{"variant": "none"}], "latent") == "latent" and run_mode([{"variant": "none"}]) == "noise"
    with pytest.raises(CheckpointError, match="modes"):
        run_mode([meta, {"variant": "reg", "counterfactual": "noise"}])


def test_correlated_pairs_have_correlated_areas_and_random_pairs_do_not():
    data = _fake_morpho()
    corr, rand = build_variant(data, "train", "pair-corr"), build_variant(data, "train", "pair")
    assert corr.images.shape[-1] == 56 and len(corr) == len(split_indices(len(data), "train"))
    assert not (corr.source[:, 0] == corr.source[:, 1]).any()
    r_corr = float(torch.corrcoef(corr.area.T)[0, 1])
    r_rand = float(torch.corrcoef(rand.area.T)[0, 1])
    assert r_corr > 0.8 and r_corr > r_rand + 0.5, (r_corr, r_rand)
    idx = split_indices(len(data), "val")
    assert np.array_equal(correlated_partners(data, idx), correlated_partners(data, idx))  # seeded


def test_data_variant_names_and_refusals():
    assert data_variant_name(1) == "single" and data_variant_name(2) == "pair"
    assert data_variant_name(2, "correlated") == "pair-corr"
    with pytest.raises(InputError, match="structures=3"):
        data_variant_name(3)
    with pytest.raises(InputError, match="pairing=correlated"):
        data_variant_name(1, "correlated")
    with pytest.raises(InputError, match="data variant=triple"):
        build_variant(_fake_morpho(), "train", "triple")
    assert run_data_variant({"vae_config": {"width": 56}}) == "pair"  # older checkpoints: by width
    assert run_data_variant({"data_variant": "pair-corr"}) == "pair-corr"


def test_crosstalk_is_zero_for_a_local_reader_and_positive_for_a_global_one():
    data = tiny_digits(20, structures=2)
    own = lambda im: (im[:, 0, :, :28] > 0.1).flatten(1).sum(1, keepdim=True).float().repeat(1, 2)  # noqa: E731
    glob = lambda im: (im[:, 0] > 0.1).flatten(1).sum(1, keepdim=True).float().repeat(1, 2)  # noqa: E731
    # a reader of structure 0 that counts only its own columns ignores the other digit ...
    local = lambda im: torch.stack([own(im)[:, 0], (im[:, 0, :, 28:] > 0.1).flatten(1).sum(1).float()], 1)  # noqa: E731
    assert crosstalk(local, data.images, data.area) == pytest.approx(0.0, abs=1e-9)
    # ... one that counts the whole image follows the other digit one for one
    assert crosstalk(glob, data.images, data.area) == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("mode", ["noise", "latent"])
def test_metrics_in_both_modes_report_drift_against_observed_and_null(mode):
    data = tiny_digits(10, structures=2)
    scm, vae, reg, seg = tiny_models(data)
    out = evaluate_model(vae, scm, reg, seg, data, scales=(0.8, 1.2), batch=4, mode=mode, reverse=False)
    for key in ("area_mape", "other_area_drift", "other_area_shift", "far_change"):
        assert out[key] == out[key], key
    assert "reversibility" not in out


def test_cft_completes_a_vae_stage_whose_elbo_level_was_not_recorded(tmp_path):
    import json

    from counterfactory.causal.training import train_cft

    data = tiny_digits(12)
    train_all(tmp_path, data, "none", 0, tiny_config(), progress=False)
    cfg_file = tmp_path / "none" / "seed0" / "config.json"
    meta = json.loads(cfg_file.read_text())
    level = meta.pop("train_nelbo")
    cfg_file.write_text(json.dumps(meta))
    out = train_cft(tmp_path, data, "reg", 0, tiny_config(), progress=False)
    assert out["done"] and out["elbo_constraint"] == pytest.approx(level)
    assert json.loads(cfg_file.read_text())["train_nelbo"] == pytest.approx(level)


def test_reg_and_seg_cft_of_one_seed_see_the_same_batches_and_interventions(tmp_path, monkeypatch):
    """Seeds are paired across the compared variants: same seed → same batches, interventions and noise."""
    import counterfactory.causal.training as training

    data = tiny_digits(16)
    drawn: dict[str, list] = {"reg": [], "seg": []}
    real = training.sample_intervention
    current = {}

    def spy(scm, area, gen, lo, hi):
        k, new = real(scm, area, gen, lo, hi)
        drawn[current["variant"]].append((area.clone(), k.clone(), new.clone()))
        return k, new

    monkeypatch.setattr(training, "sample_intervention", spy)
    for variant in ("reg", "seg"):
        current["variant"] = variant
        train_all(tmp_path, data, variant, 0, tiny_config(), progress=False)
    assert len(drawn["reg"]) == len(drawn["seg"]) == 4
    for (a_r, k_r, n_r), (a_s, k_s, n_s) in zip(drawn["reg"], drawn["seg"]):
        assert torch.equal(a_r, a_s) and torch.equal(k_r, k_s) and torch.equal(n_r, n_s)
