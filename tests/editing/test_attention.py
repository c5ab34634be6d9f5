import pytest
import torch
from diffusers import UNet2DConditionModel

from counterfactory.editing.attention import P2PController, install, refine_alignment, uninstall
from counterfactory.editing.inversion import invert
from counterfactory.errors import InputError
from counterfactory.pipelines.text_edit import p2p_sample


def tiny_sd_unet():
    torch.manual_seed(0)
    return UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4,
                                out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8).eval()


def _probs(n=2, heads=2, q=16, k=6, guidance=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = (2 if guidance else 1) * 2 * n
    return torch.rand(rows * heads, q, k, generator=g).softmax(-1)


def _cond(p, n, heads):
    return p.view(2, 2, n, heads, *p.shape[1:])[1]


def test_replace_copies_source_cross_attention_only_in_its_steps():
    n, heads = 2, 2
    toks = [["a", "thin", "seven"]] * n
    tgt = [["a", "thick", "seven"]] * n
    c = P2PController(n, 10, toks, tgt, edit_type="replace", cross_replace_steps=0.5, self_replace_steps=0.0)
    p = _probs(n, heads)
    c.begin_step(2)
    out = _cond(c(p.clone(), True, heads), n, heads)
    assert torch.equal(out[1], _cond(p, n, heads)[0])  # target reads the source's map
    assert torch.equal(out[0], _cond(p, n, heads)[0])  # source untouched
    unc_before, unc_after = p.view(2, -1)[0], c(p.clone(), True, heads).view(2, -1)[0]
    assert torch.equal(unc_before, unc_after)  # unconditional half untouched
    c.begin_step(7)
    assert torch.equal(c(p.clone(), True, heads), p)


def test_refine_keeps_added_words_and_reweight_scales():
    idx, alpha = refine_alignment(["a", "thin", "seven"], ["a", "thin", ",", "dim", "seven"])
    assert alpha.tolist() == [1, 1, 0, 0, 1] and idx[4] == 2
    n, heads = 1, 1
    c = P2PController(n, 4, [["a", "thin", "seven"]], [["a", "thin", ",", "dim", "seven"]], edit_type="refine",
                      cross_replace_steps=1.0, self_replace_steps=0.0, reweight=2.0, reweight_positions=[[4]])
    p = _probs(n, heads, k=8)
    c.begin_step(0)
    src, tgt = _cond(p, n, heads)
    out = _cond(c(p.clone(), True, heads), n, heads)[1]
    assert torch.equal(out[..., 5], src[..., 3])  # "seven": target pos 5 reads source pos 3
    assert torch.allclose(out[..., 4], 2.0 * tgt[..., 4])  # added "dim", reweighted x2
    assert torch.equal(out[..., 3], tgt[..., 3])  # added "," keeps its own map


def test_self_replace_respects_query_limit_and_steps():
    n, heads = 1, 2
    c = P2PController(n, 10, edit_type="none", cross_replace_steps=0.0, self_replace_steps=0.3, self_max_queries=16)
    p = _probs(n, heads, q=16, k=16)
    c.begin_step(1)
    out = _cond(c(p.clone(), False, heads), n, heads)
    assert torch.equal(out[1], out[0])
    big = _probs(n, heads, q=64, k=64)
    assert torch.equal(c(big.clone(), False, heads), big)
    c.begin_step(5)
    assert torch.equal(c(p.clone(), False, heads), p)


def test_replace_with_other_word_count_falls_back_or_errors():
    s, t = [["a", "thin", "seven"]], [["a", "thick", ",", "dim", "seven"]]
    assert P2PController(1, 4, s, t, edit_type="replace").edit_types == ["refine"]
    with pytest.raises(InputError, match="same number of words"):
        P2PController(1, 4, s, t, edit_type="replace", on_mismatch="error")
    with pytest.raises(InputError, match="cross_replace_steps"):
        P2PController(1, 4, s, s, cross_replace_steps=1.5)


def test_processor_without_edit_matches_diffusers_on_tiny_sd_unet():
    unet = tiny_sd_unet()
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    ctx = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = unet(x, 10, encoder_hidden_states=ctx).sample
        prev = install(unet, None)
        ours = unet(x, 10, encoder_hidden_states=ctx).sample
        uninstall(unet, prev)
        again = unet(x, 10, encoder_hidden_states=ctx).sample
    assert torch.allclose(ours, ref, atol=1e-5)
    assert torch.equal(again, ref)


def test_same_processors_edit_a_tiny_sd_unet():
    from diffusers import DDIMScheduler

    unet = tiny_sd_unet()
    sched = DDIMScheduler(num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=True)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(1, 4, 16, 16, generator=g)
    src, tgt, null = (torch.randn(1, 7, 32, generator=g) for _ in range(3))

    def eps_fn(x, t, c):
        return unet(x, t, encoder_hidden_states=c).sample

    with torch.no_grad():
        inv = invert(eps_fn, sched, x0, src, null, method="direct", num_inference_steps=3)
        toks = [["w1", "w2", "w3", "w4", "w5"]]
        npi = invert(eps_fn, sched, x0, src, null, method="negative-prompt", num_inference_steps=3)
        same = P2PController(1, 3, toks, toks, cross_replace_steps=1.0, self_replace_steps=1.0)
        s1, t1, calls = p2p_sample(unet, sched, npi, src, src, same, 2.0, null)
        edit = Checked(1, 3, toks, toks, cross_replace_steps=1.0, self_replace_steps=1.0)
        s2, t2, _ = p2p_sample(unet, sched, inv, src, tgt, edit, 2.0, null)
        free = P2PController(1, 3, toks, toks, edit_type="none", cross_replace_steps=0.0, self_replace_steps=0.0)
        s3, t3, _ = p2p_sample(unet, sched, inv, src, tgt, free, 2.0, null)
    assert torch.equal(s2, x0)  # direct inversion: the source branch is the image
    assert torch.equal(t1, s1)  # same prompt under negative-prompt inversion: the target is the source
    assert calls == 12  # negative-prompt: 4 rows per step
    # every attention layer of the SD U-Net went through the controller, and the target read the source's maps
    layers = len(unet.attn_processors) // 2  # attn1 (self) and attn2 (cross) per transformer block
    assert edit.seen == {"cross": 3 * layers, "self": 3 * layers}
    assert not torch.allclose(t2, t3, atol=1e-4)  # attention control changed the edited branch


class Checked(P2PController):
    seen = None

    def __call__(self, probs, is_cross, heads):
        out = super().__call__(probs, is_cross, heads)
        self.seen = self.seen or {"cross": 0, "self": 0}
        self.seen["cross" if is_cross else "self"] += 1
        cond = out.view(-1, heads, *out.shape[1:])[-2 * self.n:].view(2, self.n, heads, *out.shape[1:])
        assert torch.equal(cond[1], cond[0])
        return out


def test_direct_edit_skips_the_source_unconditional_row_with_the_same_result():
    """Direct inversion resets the source branch every step, so its guided prediction is not computed (3 rows per
    image and step instead of 4); the edited image is the one the full 4-row batch gives."""
    from diffusers import DDIMScheduler

    from counterfactory.editing.inversion import sample_step, sampling_schedule

    unet = tiny_sd_unet()
    sched = DDIMScheduler(num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=True)
    g = torch.Generator().manual_seed(4)
    n, steps = 2, 3
    x0 = torch.randn(n, 4, 16, 16, generator=g)
    src, tgt, null = (torch.randn(n, 7, 32, generator=g) for _ in range(3))
    toks_s, toks_t = [["w1", "w2", "w3", "w4", "w5"]] * n, [["w1", "w2", "x3", "w4", "w5"]] * n

    def eps_fn(x, t, c):
        return unet(x, t, encoder_hidden_states=c).sample

    def controller():
        return P2PController(n, steps, toks_s, toks_t, cross_replace_steps=0.7, self_replace_steps=0.4)

    with torch.no_grad():
        inv = invert(eps_fn, sched, x0, src, null, method="direct", num_inference_steps=steps)
        s_new, t_new, calls = p2p_sample(unet, sched, inv, src, tgt, controller(), 2.0, null)
        # the full batch: [uncond source, uncond target, cond source, cond target]
        c = controller()
        prev = install(unet, c)
        ts, stride = sampling_schedule(sched, steps)
        x = torch.cat([inv.x_T, inv.x_T])
        for i, t in enumerate(ts):
            c.begin_step(i)
            e = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([null, null, src, tgt])).sample
            eu, ec = e.chunk(2)
            x = sample_step(sched, x, eu + 2.0 * (ec - eu), t, stride)
            x = torch.cat([inv.latents[steps - 1 - i], x[n:]])
        uninstall(unet, prev)
    assert calls == 3 * steps
    assert torch.equal(s_new, x0)
    assert torch.allclose(t_new, x[n:], atol=1e-5)
    assert (t_new - x0).abs().max() > 1e-3  # an edit happened
