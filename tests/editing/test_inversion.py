import pytest
import torch

from counterfactory.editing.inversion import METHODS, invert, reconstruct
from counterfactory.errors import InputError

from .conftest import tiny_model


def _setup(n=3):
    m = tiny_model()
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(n, 1, 28, 28, generator=g) * 2 - 1
    with torch.no_grad():
        cond = m.encode(["a thick, upright, bright seven"] * n)
        null = m.encode([""] * n)

    def eps_fn(x, t, ctx):
        return m.unet(x, t, encoder_hidden_states=ctx).sample

    return m, x0, cond, null, eps_fn


def _err(a, b):
    return (a - b).pow(2).mean().item()


def test_ddim_inversion_is_exact_for_a_state_independent_denoiser():
    m = tiny_model()
    c = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))

    def eps_fn(x, t, ctx):  # epsilon independent of x: the DDIM ODE is exactly reversible
        return c

    x0 = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    ctx = torch.zeros(2, 4, 16)
    inv = invert(eps_fn, m.scheduler, x0, ctx, ctx, method="ddim", num_inference_steps=5)
    back, calls = reconstruct(eps_fn, m.scheduler, inv, ctx, guidance_scale=1.0)
    assert torch.allclose(back, x0, atol=1e-4)
    assert inv.unet_calls == 5 and calls == 5
    assert not torch.allclose(inv.x_T, x0, atol=1e-2)


def test_direct_reconstructs_exactly_and_negative_prompt_uses_one_call_per_step():
    m, x0, cond, null, eps_fn = _setup()
    inv = invert(eps_fn, m.scheduler, x0, cond, null, method="direct", num_inference_steps=4)
    back, calls = reconstruct(eps_fn, m.scheduler, inv, cond, guidance_scale=3.0)
    assert torch.equal(back, x0) and calls == 0 and inv.unet_calls == 4
    npi = invert(eps_fn, m.scheduler, x0, cond, null, method="negative-prompt", num_inference_steps=4)
    back_npi, calls_npi = reconstruct(eps_fn, m.scheduler, npi, cond, guidance_scale=3.0)
    ddim = invert(eps_fn, m.scheduler, x0, cond, null, method="ddim", num_inference_steps=4)
    back_g1, _ = reconstruct(eps_fn, m.scheduler, ddim, cond, guidance_scale=1.0)
    assert calls_npi == 4
    assert torch.allclose(back_npi, back_g1, atol=1e-6)  # guidance cancels: the guidance-1 reverse path


def test_null_text_beats_ddim_at_guidance_and_costs_more_calls():
    m, x0, cond, null, eps_fn = _setup()
    ddim = invert(eps_fn, m.scheduler, x0, cond, null, method="ddim", num_inference_steps=4, guidance_scale=4.0)
    nti = invert(eps_fn, m.scheduler, x0, cond, null, method="null-text", num_inference_steps=4, guidance_scale=4.0,
                 inner_steps=10, inner_lr=5e-2)
    rd, _ = reconstruct(eps_fn, m.scheduler, ddim, cond, guidance_scale=4.0)
    rn, calls = reconstruct(eps_fn, m.scheduler, nti, cond, guidance_scale=4.0)
    assert _err(rn, x0) < _err(rd, x0)
    assert nti.unet_calls > 4 * ddim.unet_calls and nti.backward_calls > 0 and calls == 8
    assert len(nti.null_embeddings) == 4 and not torch.equal(nti.null_embeddings[0], null)


def test_bad_method_is_named():
    m, x0, cond, null, eps_fn = _setup(1)
    with pytest.raises(InputError, match=r"method=exact: one of " + ", ".join(METHODS)):
        invert(eps_fn, m.scheduler, x0, cond, null, method="exact")


def test_fixed_point_inversion_retraces_better_than_plain_inversion_and_counts_its_calls():
    m, x0, cond, null, eps_fn = _setup()
    npi = invert(eps_fn, m.scheduler, x0, cond, null, method="negative-prompt", num_inference_steps=3)
    fp = invert(eps_fn, m.scheduler, x0, cond, null, method="fixed-point", num_inference_steps=3, fixed_point_iters=4)
    back_npi, _ = reconstruct(eps_fn, m.scheduler, npi, cond, guidance_scale=3.0)
    back_fp, calls = reconstruct(eps_fn, m.scheduler, fp, cond, guidance_scale=3.0)
    assert fp.unet_calls == 3 * (1 + 4) and calls == 3  # caption as unconditional context: one call per step
    assert _err(back_fp, x0) < 0.1 * _err(back_npi, x0)
    # zero iterations is plain DDIM inversion sampled back like negative-prompt inversion
    fp0 = invert(eps_fn, m.scheduler, x0, cond, null, method="fixed-point", num_inference_steps=3, fixed_point_iters=0)
    assert torch.equal(fp0.x_T, npi.x_T)
    # more iterations, closer (the fixed point is the exact inverse of the sampling step)
    fp1 = invert(eps_fn, m.scheduler, x0, cond, null, method="fixed-point", num_inference_steps=3, fixed_point_iters=1)
    back_fp1, _ = reconstruct(eps_fn, m.scheduler, fp1, cond, guidance_scale=3.0)
    assert _err(back_fp, x0) < _err(back_fp1, x0) < _err(back_npi, x0)


def test_every_method_is_bit_identical_on_a_rerun():
    for method in METHODS:
        outs = []
        for _ in range(2):
            m, x0, cond, null, eps_fn = _setup(2)
            with torch.enable_grad() if method == "null-text" else torch.no_grad():
                inv = invert(eps_fn, m.scheduler, x0, cond, null, method=method, num_inference_steps=2, inner_steps=2)
            outs.append(reconstruct(eps_fn, m.scheduler, inv, cond, guidance_scale=3.0)[0])
        assert torch.equal(outs[0], outs[1]), method


def test_bad_fixed_point_iters_is_named():
    m, x0, cond, null, eps_fn = _setup(1)
    with pytest.raises(InputError, match=r"fixed_point_iters=-1: an integer >= 0"):
        invert(eps_fn, m.scheduler, x0, cond, null, method="fixed-point", fixed_point_iters=-1)
