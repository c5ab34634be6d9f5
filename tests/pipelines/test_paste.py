"""sampling.paste: paste_defect (plain and Poisson) places a defect's own pixels and mask; paste-and-refine with
the defect pipeline (paste, dilate the placed mask, strength)."""

from __future__ import annotations

import pytest
import torch

from counterfactory.errors import InputError
from counterfactory.io.masks import dilate
from counterfactory.sampling.paste import paste_defect, poisson_blend


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _defect(c: int = 3, h: int = 10, w: int = 14):
    d = torch.rand(c, h, w, generator=_g(1)) * 0.3  # a dark defect
    m = torch.zeros(1, h, w)
    m[:, 2:8, 3:11] = 1
    return d, m


def test_plain_paste_puts_the_defect_pixels_inside_its_mask_only():
    img = torch.rand(3, 40, 48, generator=_g(0))
    d, m = _defect()
    out, placed = paste_defect(img, d, m, top_left=(20, 5))
    assert placed.shape == (1, 40, 48) and placed.sum() == m.sum()
    assert torch.equal(placed[:, 5:15, 20:34], m)
    inside = placed.expand_as(img) > 0.5
    assert torch.equal(out[~inside], img[~inside])
    assert torch.equal(out[:, 5:15, 20:34][m.expand(3, -1, -1) > 0.5], d[m.expand(3, -1, -1) > 0.5])


def test_poisson_paste_is_seamless_local_and_keeps_the_defects_structure():
    img = torch.full((3, 40, 48), 0.7) + 0.02 * torch.rand(3, 40, 48, generator=_g(0))
    d, m = _defect()
    plain, placed = paste_defect(img, d, m, top_left=(20, 5))
    poisson, placed2 = paste_defect(img, d, m, top_left=(20, 5), mode="poisson")
    assert torch.equal(placed, placed2)
    inside = placed.expand_as(img) > 0.5
    assert torch.equal(poisson[~inside], img[~inside])
    # the seam: plain leaves a 0.5 step at the border, Poisson takes the surface's level there
    assert (poisson[inside].mean() - img[inside].mean()).abs() < (plain[inside].mean() - img[inside].mean()).abs()
    # the structure: inside, Poisson keeps the defect's own gradients (up to a smooth harmonic correction)
    dp = (poisson[:, 5:15, 20:34][:, 3:7, 4:10]).flatten()
    dd = d[:, 3:7, 4:10].flatten()
    assert torch.corrcoef(torch.stack([dp, dd]))[0, 1] > 0.9


def test_poisson_paste_at_the_image_border_and_channel_conversion():
    img = torch.rand(1, 30, 30, generator=_g(0))  # gray image, RGB defect: averaged
    d, m = _defect()
    for pos in [(0, 0), (16, 20)]:
        for mode in ("plain", "poisson"):
            out, placed = paste_defect(img, d, m, top_left=pos, mode=mode)
            assert out.shape == (1, 30, 30)
            assert torch.equal(out[placed < 0.5], img[placed < 0.5])
    out, _ = paste_defect(torch.rand(3, 30, 30), d[:1], m, top_left=(1, 1))  # gray defect, RGB image: repeated
    assert torch.equal(out[0, 3:9, 4:12], out[1, 3:9, 4:12])


def test_poisson_blend_is_the_one_solver_the_benchmark_uses():
    from counterfactory.evaluation import insertion

    assert insertion.poisson_blend is poisson_blend


@pytest.mark.parametrize("kwargs, name", [
    (dict(top_left=(40, 5)), "top_left"),
    (dict(top_left=(-1, 0)), "top_left"),
    (dict(top_left=(1.5, 2)), "top_left"),
    (dict(mode="seamless"), "mode"),
    (dict(defect_mask=torch.zeros(1, 10, 14)), "defect_mask"),
    (dict(defect_mask=torch.ones(1, 9, 14)), "defect_mask shape"),
    (dict(defect=torch.rand(3, 60, 14), defect_mask=torch.ones(1, 60, 14)), "top_left"),
    (dict(image=torch.rand(3, 40, 48) * 2), "image values"),
])
def test_bad_paste_arguments(kwargs, name):
    d, m = _defect()
    args = dict(image=torch.rand(3, 40, 48), defect=d, defect_mask=m, top_left=(2, 2))
    args.update(kwargs)
    with pytest.raises(InputError, match=f"^{name}") as exc:
        paste_defect(**args)
    assert "\n" not in str(exc.value)


def test_paste_and_refine_with_the_defect_pipeline(tiny_base, tiny_adapter):
    """Paste a defect, dilate the placed mask by 2 px, refine: strength 0 is the paste, outside is exact."""
    from counterfactory.pipelines.defect_inpaint import DefectInpaintPipeline

    pipe = DefectInpaintPipeline.from_pretrained(tiny_base, adapter=tiny_adapter)
    pipe.set_progress_bar_config(disable=True)
    img = torch.rand(3, 48, 48, generator=_g(0))
    d, m = _defect()
    pasted, placed = paste_defect(img, d, m, top_left=(20, 15), mode="poisson")
    region = dilate(placed[None], 2)
    assert region.sum() > placed.sum()
    kw = dict(num_inference_steps=4, generator=_g(3))
    assert torch.equal(pipe(pasted, region, "crack", strength=0.0, **kw).images[0], pasted)
    refined = pipe(pasted, region, "crack", strength=0.5, num_inference_steps=4, generator=_g(3)).images[0]
    keep = region[0].expand_as(img) < 0.5
    assert torch.equal(refined[keep], img[keep])
    assert (refined[~keep] - pasted[~keep]).abs().max() > 1e-3
