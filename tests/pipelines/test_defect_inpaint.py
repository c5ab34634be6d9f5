"""DefectInpaintPipeline on the compact base (bare, and with a 2-step adapter): locality, determinism,
bypass, crop-to-mask, batch independence, input validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from counterfactory.errors import CheckpointError, InputError
from counterfactory.pipelines.defect_inpaint import DefectInpaintPipeline

STEPS = 2


@pytest.fixture(scope="module")
def bare(tiny_base):
    pipe = DefectInpaintPipeline.from_compact(tiny_base)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def adapted(tiny_base, tiny_adapter):
    pipe = DefectInpaintPipeline.from_compact(tiny_base, tiny_adapter)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(params=["bare", "adapter"])
def case(request, bare, adapted):
    """(pipeline, the defect type to paint with it)."""
    return (bare, None) if request.param == "bare" else (adapted, "crack")


def _image(seed: int, size: int = 32, batch: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _mask(size: int = 32, batch: int = 1, box=(8, 10, 20, 22)) -> torch.Tensor:
    m = torch.zeros(batch, 1, size, size)
    x0, y0, x1, y1 = box
    m[:, :, y0:y1, x0:x1] = 1
    return m


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_outside_mask_bit_identical_float(case):
    pipe, t = case
    img, mask = _image(0, batch=2), _mask(batch=2)
    mask[1, :, 2:6, 25:30] = 1  # a second component on image 1
    out = pipe(img, mask, t, num_inference_steps=STEPS, generator=_gen(0)).images
    assert out.shape == img.shape and out.dtype == torch.float32
    keep = (mask == 0).expand_as(img)
    assert torch.equal(out[keep], img[keep])
    assert (out[~keep] - img[~keep]).abs().max() > 0.05  # and the masked region was repainted
    assert out.min() >= 0 and out.max() <= 1


def test_outside_mask_bit_identical_uint8(case):
    pipe, t = case
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    m = np.zeros((32, 32), np.uint8)
    m[5:15, 12:24] = 255
    res = pipe(Image.fromarray(arr), Image.fromarray(m), t, num_inference_steps=STEPS, generator=_gen(1),
               output_type="np")
    out = res.images
    assert out.dtype == np.uint8 and out.shape == (1, 32, 32, 3)
    assert np.array_equal(out[0][m == 0], arr[m == 0])
    assert not np.array_equal(out[0][m > 0], arr[m > 0])
    pil = pipe(Image.fromarray(arr), Image.fromarray(m), t, num_inference_steps=STEPS, generator=_gen(1),
               output_type="pil").images
    assert isinstance(pil, list) and pil[0].size == (32, 32)
    assert np.array_equal(np.asarray(pil[0]), out[0])


def test_same_seed_same_bits_other_seed_other_result(case):
    pipe, t = case
    img, mask = _image(2), _mask()
    a = pipe(img, mask, t, num_inference_steps=STEPS, generator=_gen(7)).images
    b = pipe(img, mask, t, num_inference_steps=STEPS, generator=_gen(7)).images
    c = pipe(img, mask, t, num_inference_steps=STEPS, generator=_gen(8)).images
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_good_bypass_returns_the_image_unchanged(case):
    pipe, t = case
    img, mask = _image(3, batch=2), _mask(batch=2)
    mask[0] = 0  # a good sample needs no mask
    res = pipe(img, mask, ["good", t], num_inference_steps=STEPS, generator=_gen(0))
    assert res.bypassed == [True, False]
    assert torch.equal(res.images[0], img[0])
    assert res.windows[0] == [] and len(res.windows[1]) == 1
    assert not torch.equal(res.images[1], img[1])
    alone = pipe(img[:1], mask[:1], "good", num_inference_steps=STEPS)
    assert alone.bypassed == [True] and torch.equal(alone.images, img[:1])


def test_crop_to_mask_two_components_on_a_large_image(case):
    pipe, t = case
    img = _image(4, size=256)
    mask = torch.zeros(1, 1, 256, 256)
    mask[:, :, 20:28, 24:30] = 1
    mask[:, :, 200:211, 180:186] = 1
    res = pipe(img, mask, t, num_inference_steps=STEPS, generator=_gen(0))
    wins = sorted(res.windows[0])
    assert len(wins) == 2
    for (x0, y0, x1, y1), (bx0, by0, bx1, by1) in zip(wins, [(24, 20, 30, 28), (180, 200, 186, 211)]):
        assert x1 - x0 == y1 - y0 >= pipe.resolution  # square, at least the working resolution
        assert x0 <= bx0 and y0 <= by0 and bx1 <= x1 and by1 <= y1  # holds its component
        assert 0 <= x0 and 0 <= y0 and x1 <= 256 and y1 <= 256
    out = res.images
    changed = (out != img).any(dim=1, keepdim=True)
    assert not (changed & (mask == 0)).any()
    assert changed[:, :, 20:28, 24:30].any() and changed[:, :, 200:211, 180:186].any()


def test_components_close_together_share_one_window(bare):
    img = _image(5, size=128)
    mask = torch.zeros(1, 1, 128, 128)
    mask[:, :, 40:44, 40:44] = 1
    mask[:, :, 40:44, 50:54] = 1
    res = bare(img, mask, None, num_inference_steps=STEPS, generator=_gen(0))
    assert len(res.windows[0]) == 1


def test_per_image_generators_make_results_independent_of_the_batch(case):
    pipe, t = case
    img, mask = _image(6, batch=2), _mask(batch=2)
    mask[1] = _mask(box=(2, 3, 12, 30))[0]
    alone = pipe(img[:1], mask[:1], t, num_inference_steps=STEPS, generator=[_gen(11)]).images
    pair = pipe(img, mask, t, num_inference_steps=STEPS, generator=[_gen(11), _gen(12)]).images
    assert torch.allclose(alone[0], pair[0], atol=1e-5)  # batched: the same noise, kernel rounding only
    assert torch.equal(pipe(img, mask, t, num_inference_steps=STEPS, generator=[_gen(11), _gen(12)]).images, pair)
    one_by_one = pipe(img, mask, t, num_inference_steps=STEPS, generator=[_gen(11), _gen(12)], batch_size=1).images
    assert torch.equal(one_by_one[0], alone[0])
    swapped = pipe(img.flip(0), mask.flip(0), t, num_inference_steps=STEPS, generator=[_gen(12), _gen(11)],
                   batch_size=1).images
    assert torch.equal(swapped[1], one_by_one[0]) and torch.equal(swapped[0], one_by_one[1])


def test_whole_image_mode_keeps_the_outside(case):
    pipe, t = case
    img, mask = _image(7), _mask()
    out = pipe(img, mask, t, num_inference_steps=STEPS, generator=_gen(0), crop_to_mask=False)
    assert out.windows == [[(0, 0, 32, 32)]]
    keep = (mask == 0).expand_as(img)
    assert torch.equal(out.images[keep], img[keep])


def test_gray_input_is_painted_in_rgb(bare):
    gray = _image(8)[:, :1]
    out = bare(gray, _mask(), None, num_inference_steps=STEPS, generator=_gen(0)).images
    assert out.shape == (1, 3, 32, 32)
    assert torch.equal(out[:, :, 0, 0], gray[:, :, 0, 0].expand(1, 3))


def test_adapter_types_condition_the_result(adapted):
    assert adapted.defect_types == ("crack", "spot")
    img, mask = _image(9), _mask()
    a = adapted(img, mask, "crack", num_inference_steps=STEPS, generator=_gen(0)).images
    b = adapted(img, mask, "spot", num_inference_steps=STEPS, generator=_gen(0)).images
    assert not torch.equal(a, b)


def test_from_compact_with_a_folder_that_is_not_an_adapter(tiny_base, tmp_path):
    with pytest.raises(CheckpointError, match="adapter_config.json"):
        DefectInpaintPipeline.from_compact(tiny_base, tmp_path)


BAD = {
    "size mismatch": (dict(mask_image=_mask(size=16)), "mask_image"),
    "empty mask": (dict(mask_image=torch.zeros(1, 1, 32, 32)), "mask_image"),
    "full mask": (dict(mask_image=torch.ones(1, 1, 32, 32)), "mask_image"),
    "image above 1": (dict(image=_image(0) * 2), "image"),
    "image below 0": (dict(image=_image(0) - 0.5), "image"),
    "steps 0": (dict(num_inference_steps=0), "num_inference_steps"),
    "steps float": (dict(num_inference_steps=2.5), "num_inference_steps"),
    "guidance negative": (dict(guidance_scale=-1.0), "guidance_scale"),
    "guidance nan": (dict(guidance_scale=float("nan")), "guidance_scale"),
    "output type": (dict(output_type="latent"), "output_type"),
    "generators": (dict(generator=[_gen(0), _gen(1)]), "generator"),
    "batch size": (dict(batch_size=0), "batch_size"),
    "crop margin": (dict(crop_margin=9), "crop_margin"),
    "whole image size": (dict(image=_image(0, size=31), mask_image=_mask(size=31), crop_to_mask=False), "image size"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_inputs_name_the_argument(case, name):
    pipe, t = case
    override, argument = BAD[name]
    kwargs = dict(image=_image(0), mask_image=_mask(), defect_type=t, num_inference_steps=STEPS)
    kwargs.update(override)
    with pytest.raises(InputError) as exc:
        pipe(**kwargs)
    msg = str(exc.value)
    assert argument in msg and "\n" not in msg


@pytest.mark.parametrize("pipe_name, defect_type", [("adapter", "dent"), ("adapter", None), ("bare", "crack")])
def test_unknown_or_impossible_damage_type(bare, adapted, pipe_name, defect_type):
    pipe = adapted if pipe_name == "adapter" else bare
    with pytest.raises(InputError, match="defect_type"):
        pipe(_image(0), _mask(), defect_type, num_inference_steps=STEPS)


@pytest.mark.parametrize("hw, box", [((40, 72), (60, 0, 72, 9)), ((24, 24), (0, 10, 5, 24)), ((96, 50), (20, 40, 34, 47))])
def test_odd_sizes_and_border_masks_keep_the_outside(bare, hw, box):
    h, w = hw
    img = torch.rand(1, 3, h, w, generator=_gen(0))
    mask = torch.zeros(1, 1, h, w)
    x0, y0, x1, y1 = box
    mask[..., y0:y1, x0:x1] = 1
    out = bare(img, mask, None, num_inference_steps=STEPS, generator=_gen(1)).images
    assert out.shape == img.shape
    keep = (mask == 0).expand_as(img)
    assert torch.equal(out[keep], img[keep]) and not torch.equal(out[~keep], img[~keep])


def test_a_stochastic_scheduler_stays_reproducible(tiny_base):
    from diffusers import DDPMScheduler

    pipe = DefectInpaintPipeline.from_compact(tiny_base)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    img, mask = _image(3, batch=2), _mask(batch=2)
    a = pipe(img, mask, None, num_inference_steps=3, generator=[_gen(1), _gen(2)]).images
    torch.manual_seed(123)  # the global RNG must not matter: the step noise comes from the generators
    b = pipe(img, mask, None, num_inference_steps=3, generator=[_gen(1), _gen(2)]).images
    c = pipe(img, mask, None, num_inference_steps=3, generator=[_gen(1), _gen(5)]).images
    assert torch.equal(a, b)
    assert not torch.equal(a[1], c[1])
    keep = (mask == 0).expand_as(img)
    assert torch.equal(a[keep], img[keep])


def test_grain_transfer_adds_the_inputs_grain_inside_the_mask_only(case):
    from counterfactory.io.images import high_pass

    pipe, t = case
    img, mask = _image(9, batch=2), _mask(batch=2)
    plain = pipe(img, mask, [t, "good"] if t else t, num_inference_steps=STEPS, generator=[_gen(4), _gen(5)]).images
    grain = pipe(img, mask, [t, "good"] if t else t, num_inference_steps=STEPS, generator=[_gen(4), _gen(5)],
                 grain_transfer=1.0).images
    inside = (mask > 0.5).expand_as(img).clone()
    expected = (plain + high_pass(img)).clamp(0, 1)
    if t:  # image 1 is 'good': bypassed, untouched
        assert torch.equal(grain[1], img[1])
        inside[1] = False
    assert torch.allclose(grain[inside], expected[inside], atol=1e-6)
    assert torch.equal(grain[~inside], plain[~inside])
    with pytest.raises(InputError, match="grain_transfer"):
        pipe(img, mask, t, num_inference_steps=STEPS, grain_transfer=3.0)


def test_tile_windows_cover_a_long_thin_region_at_bounded_size():
    from counterfactory.io.masks import tile_windows

    mask = np.zeros((300, 300), np.float32)
    mask[150:152, 10:290] = 1  # a 2 px crack, 280 px long: one window would be 560 px, shrunk 9x to 64 px
    assert len(tile_windows(mask, (300, 300), 0.5, 32, None)) == 1
    wins = tile_windows(mask, (300, 300), 0.5, 32, 64)
    assert len(wins) > 1 and all(w.size <= 64 and w.region is not None for w in wins)
    painted = torch.zeros(1, 300, 300)
    for w in wins:
        x0, y0, x1, y1 = w.box
        painted[..., y0:y1, x0:x1] += w.paint_mask(torch.from_numpy(mask)[None])
    assert torch.equal(painted, torch.from_numpy(mask)[None])  # every mask pixel painted by exactly one tile


def test_max_window_scale_tiles_large_regions_and_keeps_the_outside(case):
    pipe, t = case
    img = _image(5, size=160)
    mask = torch.zeros(1, 1, 160, 160)
    mask[:, :, 78:81, 10:150] = 1  # long thin region
    one = pipe(img, mask, t, num_inference_steps=STEPS, generator=_gen(0))
    tiled = pipe(img, mask, t, num_inference_steps=STEPS, generator=_gen(0), max_window_scale=1.0)
    again = pipe(img, mask, t, num_inference_steps=STEPS, generator=_gen(0), max_window_scale=1.0)
    assert len(one.windows[0]) == 1 and len(tiled.windows[0]) > 1
    assert all(x1 - x0 <= pipe.resolution for x0, _, x1, _ in tiled.windows[0])
    assert torch.equal(tiled.images, again.images)  # same seed, same bits
    keep = (mask == 0).expand_as(img)
    assert torch.equal(tiled.images[keep], img[keep])
    assert (tiled.images[~keep] - img[~keep]).abs().mean() > 0.02 and not torch.equal(tiled.images, one.images)
    with pytest.raises(InputError, match="max_window_scale"):
        pipe(img, mask, t, num_inference_steps=STEPS, max_window_scale=0.5)
